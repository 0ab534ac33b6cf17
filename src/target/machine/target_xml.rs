//! The target descriptions gdb gets: QEMU's `i386-64bit.xml` register
//! numbering for a vCPU in long mode, and an `i386` one for a vCPU in
//! 32-bit protected mode, both with QEMU's flag types for eflags, the
//! control registers and EFER. Built from shared pieces at compile time.

/// Flag fields of eflags (a 32-bit register in both layouts).
macro_rules! eflags_flags {
    () => {
        r#"    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/>
      <field name="" start="1" end="1"/>
      <field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/>
      <field name="ZF" start="6" end="6"/>
      <field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/>
      <field name="IF" start="9" end="9"/>
      <field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/>
      <field name="IOPL" start="12" end="13"/>
      <field name="NT" start="14" end="14"/>
      <field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/>
      <field name="AC" start="18" end="18"/>
      <field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/>
      <field name="ID" start="21" end="21"/>
    </flags>
"#
    };
}

/// Flag fields of cr0, cr3 and cr4, registers of `$size` bytes whose
/// page-directory base ends at bit `$pdbr_end`.
macro_rules! cr_flags {
    ($size:literal, $pdbr_end:literal) => {
        concat!(
            r#"    <flags id="i386_cr0" size=""#,
            $size,
            r#"">
      <field name="PG" start="31" end="31"/>
      <field name="CD" start="30" end="30"/>
      <field name="NW" start="29" end="29"/>
      <field name="AM" start="18" end="18"/>
      <field name="WP" start="16" end="16"/>
      <field name="NE" start="5" end="5"/>
      <field name="ET" start="4" end="4"/>
      <field name="TS" start="3" end="3"/>
      <field name="EM" start="2" end="2"/>
      <field name="MP" start="1" end="1"/>
      <field name="PE" start="0" end="0"/>
    </flags>
    <flags id="i386_cr3" size=""#,
            $size,
            r#"">
      <field name="PDBR" start="12" end=""#,
            $pdbr_end,
            r#""/>
      <field name="PCID" start="0" end="11"/>
    </flags>
    <flags id="i386_cr4" size=""#,
            $size,
            r#"">
      <field name="PKE" start="22" end="22"/>
      <field name="SMAP" start="21" end="21"/>
      <field name="SMEP" start="20" end="20"/>
      <field name="OSXSAVE" start="18" end="18"/>
      <field name="PCIDE" start="17" end="17"/>
      <field name="FSGSBASE" start="16" end="16"/>
      <field name="SMXE" start="14" end="14"/>
      <field name="VMXE" start="13" end="13"/>
      <field name="LA57" start="12" end="12"/>
      <field name="UMIP" start="11" end="11"/>
      <field name="OSXMMEXCPT" start="10" end="10"/>
      <field name="OSFXSR" start="9" end="9"/>
      <field name="PCE" start="8" end="8"/>
      <field name="PGE" start="7" end="7"/>
      <field name="MCE" start="6" end="6"/>
      <field name="PAE" start="5" end="5"/>
      <field name="PSE" start="4" end="4"/>
      <field name="DE" start="3" end="3"/>
      <field name="TSD" start="2" end="2"/>
      <field name="PVI" start="1" end="1"/>
      <field name="VME" start="0" end="0"/>
    </flags>
"#,
        )
    };
}

/// Flag fields of EFER (64 bits in both layouts).
macro_rules! efer_flags {
    () => {
        r#"    <flags id="i386_efer" size="8">
      <field name="TCE" start="15" end="15"/>
      <field name="FFXSR" start="14" end="14"/>
      <field name="LMSLE" start="13" end="13"/>
      <field name="SVME" start="12" end="12"/>
      <field name="NXE" start="11" end="11"/>
      <field name="LMA" start="10" end="10"/>
      <field name="LME" start="8" end="8"/>
      <field name="SCE" start="0" end="0"/>
    </flags>
"#
    };
}

/// st0-st7 and the x87 control registers, numbered on from the last core
/// register.
macro_rules! x87_registers {
    () => {
        r#"    <reg name="st0" bitsize="80" type="i387_ext"/>
    <reg name="st1" bitsize="80" type="i387_ext"/>
    <reg name="st2" bitsize="80" type="i387_ext"/>
    <reg name="st3" bitsize="80" type="i387_ext"/>
    <reg name="st4" bitsize="80" type="i387_ext"/>
    <reg name="st5" bitsize="80" type="i387_ext"/>
    <reg name="st6" bitsize="80" type="i387_ext"/>
    <reg name="st7" bitsize="80" type="i387_ext"/>
    <reg name="fctrl" bitsize="32" type="int" group="float"/>
    <reg name="fstat" bitsize="32" type="int" group="float"/>
    <reg name="ftag" bitsize="32" type="int" group="float"/>
    <reg name="fiseg" bitsize="32" type="int" group="float"/>
    <reg name="fioff" bitsize="32" type="int" group="float"/>
    <reg name="foseg" bitsize="32" type="int" group="float"/>
    <reg name="fooff" bitsize="32" type="int" group="float"/>
    <reg name="fop" bitsize="32" type="int" group="float"/>
"#
    };
}

/// The SSE vector types and the mxcsr flags.
macro_rules! sse_types {
    () => {
        r#"    <vector id="v8bf16" type="bfloat16" count="8"/>
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v8_bfloat16" type="v8bf16"/>
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/>
      <field name="DE" start="1" end="1"/>
      <field name="ZE" start="2" end="2"/>
      <field name="OE" start="3" end="3"/>
      <field name="UE" start="4" end="4"/>
      <field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/>
      <field name="IM" start="7" end="7"/>
      <field name="DM" start="8" end="8"/>
      <field name="ZM" start="9" end="9"/>
      <field name="OM" start="10" end="10"/>
      <field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/>
      <field name="FZ" start="15" end="15"/>
    </flags>
"#
    };
}

/// The start of a description for `$arch`, up to its core registers.
macro_rules! description_head {
    ($arch:literal, $cr_bytes:literal, $pdbr_end:literal) => {
        concat!(
            r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>"#,
            $arch,
            r#"</architecture>
  <feature name="org.gnu.gdb.i386.core">
"#,
            eflags_flags!(),
            cr_flags!($cr_bytes, $pdbr_end),
            efer_flags!(),
        )
    };
}

/// The segment selectors, then segment bases and control registers of
/// `$bits` bits (of type `$int`), then EFER, then the x87 registers; the
/// SSE feature up to its first register.
macro_rules! system_registers {
    ($bits:literal, $int:literal) => {
        concat!(
            r#"    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
"#,
            wide_register!("fs_base", $bits, $int),
            wide_register!("gs_base", $bits, $int),
            wide_register!("k_gs_base", $bits, $int),
            wide_register!("cr0", $bits, "i386_cr0"),
            wide_register!("cr2", $bits, $int),
            wide_register!("cr3", $bits, "i386_cr3"),
            wide_register!("cr4", $bits, "i386_cr4"),
            wide_register!("cr8", $bits, $int),
            r#"    <reg name="efer" bitsize="64" type="i386_efer"/>
"#,
            x87_registers!(),
            r#"  </feature>
  <feature name="org.gnu.gdb.i386.sse">
"#,
            sse_types!(),
        )
    };
}

/// One `<reg>` line.
macro_rules! wide_register {
    ($name:literal, $bits:literal, $type:literal) => {
        concat!(
            "    <reg name=\"",
            $name,
            "\" bitsize=\"",
            $bits,
            "\" type=\"",
            $type,
            "\"/>\n"
        )
    };
}

/// xmm0 (numbered `$regnum`) to xmm7.
macro_rules! xmm_low {
    ($regnum:literal) => {
        concat!(
            r#"    <reg name="xmm0" bitsize="128" type="vec128" regnum=""#,
            $regnum,
            r#""/>
"#,
            wide_register!("xmm1", "128", "vec128"),
            wide_register!("xmm2", "128", "vec128"),
            wide_register!("xmm3", "128", "vec128"),
            wide_register!("xmm4", "128", "vec128"),
            wide_register!("xmm5", "128", "vec128"),
            wide_register!("xmm6", "128", "vec128"),
            wide_register!("xmm7", "128", "vec128"),
        )
    };
}

/// mxcsr and the end of the description.
macro_rules! description_tail {
    () => {
        r#"    <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
  </feature>
</target>
"#
    };
}

/// The description for a vCPU in long mode (QEMU's numbering, 66 registers).
pub const TARGET_XML: &str = concat!(
    description_head!("i386:x86-64", "8", "63"),
    r#"    <reg name="rax" bitsize="64" type="int64" regnum="0"/>
    <reg name="rbx" bitsize="64" type="int64"/>
    <reg name="rcx" bitsize="64" type="int64"/>
    <reg name="rdx" bitsize="64" type="int64"/>
    <reg name="rsi" bitsize="64" type="int64"/>
    <reg name="rdi" bitsize="64" type="int64"/>
    <reg name="rbp" bitsize="64" type="data_ptr"/>
    <reg name="rsp" bitsize="64" type="data_ptr"/>
    <reg name="r8" bitsize="64" type="int64"/>
    <reg name="r9" bitsize="64" type="int64"/>
    <reg name="r10" bitsize="64" type="int64"/>
    <reg name="r11" bitsize="64" type="int64"/>
    <reg name="r12" bitsize="64" type="int64"/>
    <reg name="r13" bitsize="64" type="int64"/>
    <reg name="r14" bitsize="64" type="int64"/>
    <reg name="r15" bitsize="64" type="int64"/>
    <reg name="rip" bitsize="64" type="code_ptr"/>
    <reg name="eflags" bitsize="32" type="i386_eflags"/>
"#,
    system_registers!("64", "int64"),
    xmm_low!("49"),
    r#"    <reg name="xmm8" bitsize="128" type="vec128"/>
    <reg name="xmm9" bitsize="128" type="vec128"/>
    <reg name="xmm10" bitsize="128" type="vec128"/>
    <reg name="xmm11" bitsize="128" type="vec128"/>
    <reg name="xmm12" bitsize="128" type="vec128"/>
    <reg name="xmm13" bitsize="128" type="vec128"/>
    <reg name="xmm14" bitsize="128" type="vec128"/>
    <reg name="xmm15" bitsize="128" type="vec128"/>
"#,
    description_tail!(),
);

/// The description for a vCPU in 32-bit protected mode (50 registers:
/// gdb's i386 core and SSE sets, with the segment bases, control registers
/// and EFER after the segments, as QEMU's `i386-32bit.xml` has them).
pub const TARGET_XML_I386: &str = concat!(
    description_head!("i386", "4", "31"),
    r#"    <reg name="eax" bitsize="32" type="int32" regnum="0"/>
    <reg name="ecx" bitsize="32" type="int32"/>
    <reg name="edx" bitsize="32" type="int32"/>
    <reg name="ebx" bitsize="32" type="int32"/>
    <reg name="esp" bitsize="32" type="data_ptr"/>
    <reg name="ebp" bitsize="32" type="data_ptr"/>
    <reg name="esi" bitsize="32" type="int32"/>
    <reg name="edi" bitsize="32" type="int32"/>
    <reg name="eip" bitsize="32" type="code_ptr"/>
    <reg name="eflags" bitsize="32" type="i386_eflags"/>
"#,
    system_registers!("32", "int32"),
    xmm_low!("41"),
    description_tail!(),
);
