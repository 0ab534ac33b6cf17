//! The x86-64 register file gdb sees, in QEMU's `i386-64bit.xml` order,
//! and its conversion to and from KVM's register structures.

use gdbstub::arch::{Arch, RegId, Registers};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// `gdbstub` architecture: x86-64 with segments, segment bases, control
/// registers, EFER, x87 and SSE.
#[derive(Debug)]
pub enum X86_64Kvm {}

impl Arch for X86_64Kvm {
    type Usize = u64;
    type Registers = X86_64Regs;
    type BreakpointKind = usize;
    type RegId = X86_64RegId;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// Sizes in bytes of registers 0..=65, in gdb's numbering.
const REG_SIZES: [usize; 66] = {
    let mut sizes = [0usize; 66];
    let mut i = 0;
    while i < 66 {
        sizes[i] = match i {
            0..=16 => 8,   // rax..r15, rip
            17..=23 => 4,  // eflags, cs ss ds es fs gs
            24..=32 => 8,  // fs_base gs_base k_gs_base cr0 cr2 cr3 cr4 cr8 efer
            33..=40 => 10, // st0..st7
            41..=48 => 4,  // fctrl fstat ftag fiseg fioff foseg fooff fop
            49..=64 => 16, // xmm0..xmm15
            _ => 4,        // mxcsr
        };
        i += 1;
    }
    sizes
};

/// A register number of [`X86_64Kvm`] (0 = rax … 65 = mxcsr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86_64RegId(pub usize);

impl X86_64RegId {
    /// Byte range of this register in the `g` packet.
    pub fn byte_range(self) -> std::ops::Range<usize> {
        let start: usize = REG_SIZES[..self.0].iter().sum();
        start..start + REG_SIZES[self.0]
    }
}

impl RegId for X86_64RegId {
    fn from_raw_id(id: usize) -> Option<(Self, Option<std::num::NonZeroUsize>)> {
        let size = *REG_SIZES.get(id)?;
        Some((X86_64RegId(id), std::num::NonZeroUsize::new(size)))
    }
}

/// Every register gdb can see.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct X86_64Regs {
    /// rax rbx rcx rdx rsi rdi rbp rsp r8..r15 (gdb's order).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS (low 32 bits).
    pub eflags: u32,
    /// Selectors: cs ss ds es fs gs.
    pub segments: [u32; 6],
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE.
    pub k_gs_base: u64,
    /// cr0 cr2 cr3 cr4 cr8.
    pub cr: [u64; 5],
    /// IA32_EFER.
    pub efer: u64,
    /// x87 registers, 80 bits each.
    pub st: [[u8; 10]; 8],
    /// fctrl fstat ftag fiseg fioff foseg fooff fop.
    pub x87_control: [u32; 8],
    /// xmm0..xmm15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

/// Total size of the `g` packet payload.
pub const REGS_BYTES: usize = {
    let mut total = 0;
    let mut i = 0;
    while i < REG_SIZES.len() {
        total += REG_SIZES[i];
        i += 1;
    }
    total
};

impl X86_64Regs {
    /// The registers as little-endian bytes in gdb's order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REGS_BYTES);
        for r in self.gpr {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&self.rip.to_le_bytes());
        out.extend_from_slice(&self.eflags.to_le_bytes());
        for s in self.segments {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for r in [self.fs_base, self.gs_base, self.k_gs_base] {
            out.extend_from_slice(&r.to_le_bytes());
        }
        for r in self.cr {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&self.efer.to_le_bytes());
        for st in &self.st {
            out.extend_from_slice(st);
        }
        for c in self.x87_control {
            out.extend_from_slice(&c.to_le_bytes());
        }
        for x in self.xmm {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(&self.mxcsr.to_le_bytes());
        out
    }

    /// Parse gdb's bytes; `None` unless exactly as long as [`Self::to_bytes`] gives.
    pub fn from_bytes(bytes: &[u8]) -> Option<X86_64Regs> {
        if bytes.len() != REGS_BYTES {
            return None;
        }
        let mut at = 0usize;
        let mut take = |n: usize| {
            let slice = &bytes[at..at + n];
            at += n;
            slice
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
        let mut regs = X86_64Regs::default();
        for r in regs.gpr.iter_mut() {
            *r = u64_of(take(8));
        }
        regs.rip = u64_of(take(8));
        regs.eflags = u32_of(take(4));
        for s in regs.segments.iter_mut() {
            *s = u32_of(take(4));
        }
        regs.fs_base = u64_of(take(8));
        regs.gs_base = u64_of(take(8));
        regs.k_gs_base = u64_of(take(8));
        for c in regs.cr.iter_mut() {
            *c = u64_of(take(8));
        }
        regs.efer = u64_of(take(8));
        for st in regs.st.iter_mut() {
            st.copy_from_slice(take(10));
        }
        for c in regs.x87_control.iter_mut() {
            *c = u32_of(take(4));
        }
        for x in regs.xmm.iter_mut() {
            *x = u128::from_le_bytes(take(16).try_into().unwrap_or_default());
        }
        regs.mxcsr = u32_of(take(4));
        Some(regs)
    }
}

impl Registers for X86_64Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        for b in self.to_bytes() {
            write_byte(Some(b));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        *self = X86_64Regs::from_bytes(bytes).ok_or(())?;
        Ok(())
    }
}

/// The KVM state a register file is read from and written to.
#[derive(Debug, Default, Clone)]
pub struct KvmState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// x87 / SSE state.
    pub fpu: kvm_fpu,
    /// IA32_KERNEL_GS_BASE.
    pub k_gs_base: u64,
}

/// Which parts of a [`KvmState`] a write changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// `kvm_regs` changed.
    pub regs: bool,
    /// `kvm_sregs` changed.
    pub sregs: bool,
    /// `kvm_fpu` changed.
    pub fpu: bool,
    /// IA32_KERNEL_GS_BASE changed.
    pub k_gs_base: bool,
}

fn gprs_mut(r: &mut kvm_regs) -> [&mut u64; 16] {
    // gdb orders rbp before rsp; kvm_regs the reverse.
    [
        &mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.rbp,
        &mut r.rsp, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
        &mut r.r14, &mut r.r15,
    ]
}

fn crs_mut(s: &mut kvm_sregs) -> [&mut u64; 5] {
    [&mut s.cr0, &mut s.cr2, &mut s.cr3, &mut s.cr4, &mut s.cr8]
}

/// Full tag word from the FXSAVE abridged tag byte (valid or empty).
fn full_tag(abridged: u8) -> u32 {
    (0..8).fold(0u32, |tag, i| {
        let empty = abridged & (1 << i) == 0;
        tag | if empty { 0b11 << (2 * i) } else { 0 }
    })
}

fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0u8, |tag, i| {
        let empty = (full >> (2 * i)) & 0b11 == 0b11;
        tag | if empty { 0 } else { 1 << i }
    })
}

impl KvmState {
    /// The registers gdb sees.
    pub fn to_gdb(&self) -> X86_64Regs {
        let mut regs = self.regs;
        let mut sregs = self.sregs;
        let gpr = gprs_mut(&mut regs).map(|r| *r);
        let cr = crs_mut(&mut sregs).map(|r| *r);
        let s = &self.sregs;
        let mut st = [[0u8; 10]; 8];
        for (dst, src) in st.iter_mut().zip(self.fpu.fpr.iter()) {
            dst.copy_from_slice(&src[..10]);
        }
        X86_64Regs {
            gpr,
            rip: self.regs.rip,
            eflags: self.regs.rflags as u32,
            segments: [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|seg| u32::from(seg.selector)),
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            k_gs_base: self.k_gs_base,
            cr,
            efer: s.efer,
            st,
            x87_control: [
                u32::from(self.fpu.fcw),
                u32::from(self.fpu.fsw),
                full_tag(self.fpu.ftwx),
                0,
                self.fpu.last_ip as u32,
                0,
                self.fpu.last_dp as u32,
                u32::from(self.fpu.last_opcode),
            ],
            xmm: self.fpu.xmm.map(u128::from_le_bytes),
            mxcsr: self.fpu.mxcsr,
        }
    }

    /// Apply what differs between `new` and the current registers, leaving
    /// everything else (hidden segment state, upper RFLAGS bits…) alone.
    pub fn apply(&mut self, new: &X86_64Regs) -> Changed {
        let old = self.to_gdb();
        let mut changed = Changed::default();
        if new.gpr != old.gpr || new.rip != old.rip || new.eflags != old.eflags {
            for (dst, src) in gprs_mut(&mut self.regs).into_iter().zip(new.gpr) {
                *dst = src;
            }
            self.regs.rip = new.rip;
            self.regs.rflags = (self.regs.rflags & !0xffff_ffff) | u64::from(new.eflags);
            changed.regs = true;
        }
        if new.segments != old.segments
            || (new.fs_base, new.gs_base, new.cr, new.efer)
                != (old.fs_base, old.gs_base, old.cr, old.efer)
        {
            let s = &mut self.sregs;
            let segs = [
                &mut s.cs, &mut s.ss, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs,
            ];
            for (seg, sel) in segs.into_iter().zip(new.segments) {
                seg.selector = sel as u16;
            }
            s.fs.base = new.fs_base;
            s.gs.base = new.gs_base;
            for (dst, src) in crs_mut(s).into_iter().zip(new.cr) {
                *dst = src;
            }
            s.efer = new.efer;
            changed.sregs = true;
        }
        if (new.st, new.x87_control, new.xmm, new.mxcsr)
            != (old.st, old.x87_control, old.xmm, old.mxcsr)
        {
            let f = &mut self.fpu;
            for (dst, src) in f.fpr.iter_mut().zip(new.st.iter()) {
                dst[..10].copy_from_slice(src);
            }
            f.fcw = new.x87_control[0] as u16;
            f.fsw = new.x87_control[1] as u16;
            f.ftwx = abridged_tag(new.x87_control[2]);
            f.last_ip = u64::from(new.x87_control[4]);
            f.last_dp = u64::from(new.x87_control[6]);
            f.last_opcode = new.x87_control[7] as u16;
            f.xmm = new.xmm.map(u128::to_le_bytes);
            f.mxcsr = new.mxcsr;
            changed.fpu = true;
        }
        if new.k_gs_base != old.k_gs_base {
            self.k_gs_base = new.k_gs_base;
            changed.k_gs_base = true;
        }
        changed
    }
}

/// The target description: QEMU's register names and numbers.
pub const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386:x86-64</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">
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
    <flags id="i386_cr0" size="8">
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
    <flags id="i386_cr3" size="8">
      <field name="PDBR" start="12" end="63"/>
      <field name="PCID" start="0" end="11"/>
    </flags>
    <flags id="i386_cr4" size="8">
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
    <flags id="i386_efer" size="8">
      <field name="TCE" start="15" end="15"/>
      <field name="FFXSR" start="14" end="14"/>
      <field name="LMSLE" start="13" end="13"/>
      <field name="SVME" start="12" end="12"/>
      <field name="NXE" start="11" end="11"/>
      <field name="LMA" start="10" end="10"/>
      <field name="LME" start="8" end="8"/>
      <field name="SCE" start="0" end="0"/>
    </flags>
    <reg name="rax" bitsize="64" type="int64" regnum="0"/>
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
    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
    <reg name="fs_base" bitsize="64" type="int64"/>
    <reg name="gs_base" bitsize="64" type="int64"/>
    <reg name="k_gs_base" bitsize="64" type="int64"/>
    <reg name="cr0" bitsize="64" type="i386_cr0"/>
    <reg name="cr2" bitsize="64" type="int64"/>
    <reg name="cr3" bitsize="64" type="i386_cr3"/>
    <reg name="cr4" bitsize="64" type="i386_cr4"/>
    <reg name="cr8" bitsize="64" type="int64"/>
    <reg name="efer" bitsize="64" type="i386_efer"/>
    <reg name="st0" bitsize="80" type="i387_ext"/>
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
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <vector id="v8bf16" type="bfloat16" count="8"/>
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
    <reg name="xmm0" bitsize="128" type="vec128" regnum="49"/>
    <reg name="xmm1" bitsize="128" type="vec128"/>
    <reg name="xmm2" bitsize="128" type="vec128"/>
    <reg name="xmm3" bitsize="128" type="vec128"/>
    <reg name="xmm4" bitsize="128" type="vec128"/>
    <reg name="xmm5" bitsize="128" type="vec128"/>
    <reg name="xmm6" bitsize="128" type="vec128"/>
    <reg name="xmm7" bitsize="128" type="vec128"/>
    <reg name="xmm8" bitsize="128" type="vec128"/>
    <reg name="xmm9" bitsize="128" type="vec128"/>
    <reg name="xmm10" bitsize="128" type="vec128"/>
    <reg name="xmm11" bitsize="128" type="vec128"/>
    <reg name="xmm12" bitsize="128" type="vec128"/>
    <reg name="xmm13" bitsize="128" type="vec128"/>
    <reg name="xmm14" bitsize="128" type="vec128"/>
    <reg name="xmm15" bitsize="128" type="vec128"/>
    <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
  </feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let mut regs = X86_64Regs::default();
        regs.gpr[6] = 0x1111; // rbp
        regs.gpr[7] = 0x2222; // rsp
        regs.cr[2] = 0x1000; // cr3
        regs.efer = 0xd01;
        regs.xmm[15] = u128::MAX - 1;
        regs.mxcsr = 0x1f80;
        let bytes = regs.to_bytes();
        assert_eq!(bytes.len(), REGS_BYTES);
        assert_eq!(X86_64Regs::from_bytes(&bytes), Some(regs.clone()));
        assert_eq!(
            &bytes[X86_64RegId(29).byte_range()],
            &0x1000u64.to_le_bytes()
        );
        assert_eq!(
            &bytes[X86_64RegId(32).byte_range()],
            &0xd01u64.to_le_bytes()
        );
        assert_eq!(X86_64RegId(65).byte_range().end, REGS_BYTES);
        assert!(X86_64Regs::from_bytes(&bytes[1..]).is_none());
    }

    #[test]
    fn a_write_changes_only_what_was_written() {
        let mut state = KvmState::default();
        state.regs.rsp = 0x7000;
        state.regs.rbp = 0x8000;
        state.regs.rflags = 0x1_0000_0002;
        state.sregs.cs.selector = 8;
        state.sregs.cs.l = 1;
        let mut gdb = state.to_gdb();
        assert_eq!((gdb.gpr[6], gdb.gpr[7]), (0x8000, 0x7000));
        gdb.gpr[7] = 0x7100;
        let changed = state.apply(&gdb);
        assert_eq!(
            changed,
            Changed {
                regs: true,
                ..Changed::default()
            }
        );
        assert_eq!((state.regs.rsp, state.regs.rbp), (0x7100, 0x8000));
        assert_eq!(state.regs.rflags, 0x1_0000_0002, "upper RFLAGS kept");
        gdb.cr[2] = 0x5000;
        let changed = state.apply(&gdb);
        assert_eq!(
            changed,
            Changed {
                sregs: true,
                ..Changed::default()
            }
        );
        assert_eq!(state.sregs.cs.l, 1, "hidden segment state kept");
        assert_eq!(state.sregs.cr3, 0x5000);
    }
}
