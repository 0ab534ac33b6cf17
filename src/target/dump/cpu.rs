//! [`DumpCpu`] (an x86 vCPU) and [`Aarch64Cpu`] (an arm64 one) as a dump
//! recorded them, and which of the two a dump holds ([`DumpArch`]).

use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::target::machine::x86_constants::flat_segment;

/// One vCPU as the dump recorded it.
#[derive(Debug, Clone, Copy)]
pub struct DumpCpu {
    /// General registers, rip and rflags.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers; EFER inferred (the
    /// dump has none): LME, LMA and NXE in 64-bit code.
    pub sregs: kvm_sregs,
    /// IA32_KERNEL_GS_BASE.
    pub kernel_gs_base: u64,
}

impl DumpCpu {
    /// A vCPU in 64-bit kernel code with these registers (the rest zero),
    /// for a raw RAM image whose VMM recorded only these.
    pub fn long_mode(rip: u64, rsp: u64, controls: [u64; 4]) -> DumpCpu {
        let [cr0, cr3, cr4, efer] = controls;
        let data = flat_segment(0x18, false, true);
        DumpCpu {
            regs: kvm_regs {
                rip,
                rsp,
                rflags: 0x2,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cs: flat_segment(0x10, true, true),
                ss: data,
                ds: data,
                es: data,
                cr0,
                cr3,
                cr4,
                efer,
                ..Default::default()
            },
            kernel_gs_base: 0,
        }
    }
}

/// The architecture of a dump's guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DumpArch {
    /// x86-64 (its vCPUs in [`crate::target::Dump::cpus`]).
    X86_64,
    /// AArch64 (its vCPUs in [`crate::target::Dump::aarch64_cpus`]).
    Aarch64,
}

/// One arm64 vCPU from its `NT_PRSTATUS` note: the general registers, as
/// Linux's `user_pt_regs` holds them. QEMU's dump has no system registers
/// (no TTBR0/TTBR1/TCR): the kernel's tables come from VMCOREINFO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aarch64Cpu {
    /// x0 … x30 (x30 is the link register, with its PAC bits).
    pub x: [u64; 31],
    /// The stack pointer of the exception level it ran at.
    pub sp: u64,
    /// The program counter.
    pub pc: u64,
    /// PSTATE (NZCV, DAIF, the exception level and SP selection …).
    pub pstate: u64,
    /// The FP/SIMD registers from its `NT_PRFPREG` note, if it has one.
    pub fp: Option<Aarch64Fp>,
}

/// One arm64 vCPU's FP/SIMD state (`user_fpsimd_state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aarch64Fp {
    /// v0 … v31 (the low 128 bits of SVE's z0 … z31).
    pub v: [u128; 32],
    /// FPSR.
    pub fpsr: u32,
    /// FPCR.
    pub fpcr: u32,
}
