//! How an arm64 guest's addresses translate (the EL1&0 regime, 4 KiB
//! granule): the upper half through the kernel's table (TTBR1), the lower
//! half through a process's table (TTBR0) when one is chosen. A dump holds
//! no system registers: the kernel's root comes from VMCOREINFO or a scan
//! (`dump::arm_root`), a process's from `monitor vmem use`.

use crate::arch::aarch64::{Aarch64, Half};
use crate::arch::PageTableFormat;
use crate::target::machine::memory::{GuestRam, GuestTables};
use crate::vmem::{self, PhysAddr, TranslateFault};

/// The two halves of an arm64 address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArmPaging {
    /// The kernel's half (TTBR1's format).
    pub kernel: Aarch64,
    /// The kernel's root table (TTBR1).
    pub kernel_root: PhysAddr,
    /// A process's root table (TTBR0), if one is chosen.
    pub user_root: Option<PhysAddr>,
}

impl ArmPaging {
    /// The lower half's format (TTBR0's), as wide as the kernel's.
    pub(crate) fn lower(&self) -> Aarch64 {
        Aarch64::new(self.kernel.levels(), Half::Lower)
    }

    /// The physical address of `va` and how many bytes from it stay in the
    /// same page: upper-half addresses (bit 63 set) through TTBR1's table,
    /// lower-half ones through TTBR0's (not mapped while none is chosen).
    pub(crate) fn translate(
        &self,
        mem: &GuestRam,
        va: u64,
    ) -> Result<(PhysAddr, u64), TranslateFault> {
        let (format, root) = if va >> 63 == 1 {
            (self.kernel, self.kernel_root)
        } else {
            let lower = self.lower();
            let root = self.user_root.ok_or(TranslateFault::NonCanonical { va })?;
            (lower, root)
        };
        let tables = GuestTables::new(mem, root, None);
        let (pa, page) = vmem::translate_pa(&format, &tables, root, va)?;
        let size = page.bytes();
        Ok((pa, size - (va & (size - 1))))
    }
}
