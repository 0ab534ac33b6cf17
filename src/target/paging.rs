//! Guest-virtual to guest-physical translation for one vCPU, with the
//! paging mode read from its control registers (not `KVM_TRANSLATE`).

use kvm_bindings::kvm_sregs;

use super::memory::{GuestMemory, GuestTables};
use crate::arch::Amd64;
use crate::vmem::{self, PhysAddr, TranslateFault};

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
/// Root-table bits of CR3 (PCID and PWT/PCD dropped).
pub(crate) const CR3_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How a vCPU translates addresses right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paging {
    /// Paging off: addresses are physical.
    Off,
    /// IA-32e paging (4- or 5-level) rooted at `root`.
    Long { mode: Amd64, root: PhysAddr },
    /// 32-bit protected-mode paging (not yet supported).
    Legacy,
}

impl Paging {
    /// The mode of a vCPU with these special registers.
    pub(crate) fn of(sregs: &kvm_sregs) -> Paging {
        Self::from_regs(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
    }

    /// The mode given CR0, CR3, CR4 and EFER.
    pub(crate) fn from_regs(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Paging {
        if cr0 & CR0_PG == 0 {
            Paging::Off
        } else if efer & EFER_LMA != 0 {
            Paging::Long {
                mode: Amd64::new(cr4 & CR4_LA57 != 0),
                root: cr3 & CR3_ADDR_MASK,
            }
        } else {
            Paging::Legacy
        }
    }

    /// The physical address of `va` and how many bytes from it stay in the
    /// same page.
    pub(crate) fn translate(
        &self,
        mem: &GuestMemory,
        va: u64,
    ) -> Result<(PhysAddr, u64), TranslateFault> {
        match *self {
            Paging::Off => Ok((va, 4096 - (va & 4095))),
            Paging::Long { mode, root } => {
                let tables = GuestTables::new(mem, root, None);
                let t = vmem::translate_addr(&mode, &tables, root, va)?;
                let size = t.page_size.bytes();
                Ok((t.pa, size - (va & (size - 1))))
            }
            Paging::Legacy => Err(TranslateFault::NonCanonical { va }),
        }
    }
}
