//! [`DumpCpu`]: one vCPU as a dump recorded it.

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
