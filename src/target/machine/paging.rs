//! Guest-virtual to guest-physical translation for one vCPU, as its own
//! MMU does it (not `KVM_TRANSLATE`, which only knows the current CR3):
//! the paging mode comes from its control registers (CR0.PG off means
//! physical addresses; EFER.LMA selects IA-32e paging, CR4.LA57 5 levels;
//! otherwise 32-bit paging, CR4.PAE, CR4.PSE), and what entries mean from
//! the CPU the VMM gave it ([`CpuLimits`], from its CPUID) and CR0.WP,
//! CR4.SMEP / SMAP / PKE and EFER.NXE.

use kvm_bindings::{kvm_cpuid_entry2, kvm_sregs, kvm_xsave};

use crate::arch::{Amd64, PageTableFormat, X86Cpu, I686};
use crate::target::machine::memory::{GuestRam, GuestTables};
use crate::vmem::{self, PhysAddr, TranslateFault};

pub(crate) use crate::arch::controls::CR4_PKE;
use crate::arch::controls::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE,
};

/// What a vCPU's CPUID says about its MMU: MAXPHYADDR, 1 GiB pages and
/// PSE-36. Read once from `KVM_GET_CPUID2`, as the VMM set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuLimits {
    phys_bits: u8,
    page_1g: bool,
    pse36: bool,
    /// Where PKRU sits in the standard XSAVE layout (CPUID 0Dh.9 EBX), if
    /// the vCPU has it.
    pkru_offset: Option<usize>,
}

impl Default for CpuLimits {
    /// Before any vCPU's CPUID is known: `X86Cpu::ASSUMED`'s limits.
    fn default() -> Self {
        CpuLimits {
            phys_bits: X86Cpu::ASSUMED.phys_bits,
            page_1g: X86Cpu::ASSUMED.page_1g,
            pse36: X86Cpu::ASSUMED.pse36,
            pkru_offset: None,
        }
    }
}

impl CpuLimits {
    /// The limits in CPUID `entries`. Missing leaves mean what they mean
    /// to the CPU: MAXPHYADDR 36 without leaf 8000_0008h (SDM vol. 3A
    /// §4.1.4), no 1 GiB pages, no PSE-36.
    pub(crate) fn from_cpuid(entries: &[kvm_cpuid_entry2]) -> CpuLimits {
        let leaf = |function: u32| {
            entries
                .iter()
                .find(|e| e.function == function && e.index == 0)
        };
        let pkru = entries
            .iter()
            .find(|e| e.function == 0xd && e.index == 9 && e.eax >= 4);
        CpuLimits {
            phys_bits: leaf(0x8000_0008).map_or(36, |e| (e.eax & 0xff) as u8),
            page_1g: leaf(0x8000_0001).is_some_and(|e| e.edx & (1 << 26) != 0),
            pse36: leaf(1).is_some_and(|e| e.edx & (1 << 17) != 0),
            pkru_offset: pkru.map(|e| e.ebx as usize),
        }
    }

    /// The CPU model of a vCPU with these limits and special registers.
    pub(crate) fn cpu(&self, sregs: &kvm_sregs) -> X86Cpu {
        X86Cpu {
            phys_bits: self.phys_bits,
            page_1g: self.page_1g,
            pse36: self.pse36,
            nxe: sregs.efer & EFER_NXE != 0,
            wp: sregs.cr0 & CR0_WP != 0,
            smep: sregs.cr4 & CR4_SMEP != 0,
            smap: sregs.cr4 & CR4_SMAP != 0,
            pke: sregs.cr4 & CR4_PKE != 0,
            // Keys do not change where an address goes, only the rights
            // `monitor vmem translate` reports: see `Paging::with_pkru`.
            pkru: 0,
        }
    }

    /// PKRU in a vCPU's XSAVE area (standard layout, as KVM_GET_XSAVE
    /// returns it), when the vCPU has protection keys.
    pub(crate) fn pkru(&self, xsave: &kvm_xsave) -> Option<u32> {
        xsave.region.get(self.pkru_offset? / 4).copied()
    }
}

/// The x86 CPU model of a vCPU whose CPUID is `cpuid` (as the VMM sets it
/// with `KVM_SET_CPUID2`) and whose CR0, CR4 and EFER hold `cr0`, `cr4`
/// and `efer`: a VMM builds its guest's tables with the page sizes and
/// address width the vCPU really has.
pub fn vcpu_mmu(cpuid: &[kvm_cpuid_entry2], cr0: u64, cr4: u64, efer: u64) -> X86Cpu {
    let sregs = kvm_sregs {
        cr0,
        cr4,
        efer,
        ..Default::default()
    };
    CpuLimits::from_cpuid(cpuid).cpu(&sregs)
}

impl core::fmt::Display for CpuLimits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "MAXPHYADDR {}, 1 GiB pages {}, PSE-36 {}",
            self.phys_bits,
            if self.page_1g { "yes" } else { "no" },
            if self.pse36 { "yes" } else { "no" }
        )
    }
}
/// Entries one walk of a guest space may read before it gives up (bounds
/// hostile tables): the monitor's walks, lldb's memory regions.
pub(crate) const WALK_BUDGET: u64 = 1 << 24;

/// Root-table bits of CR3 (PCID and PWT/PCD dropped).
pub(crate) const CR3_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// A PAE CR3 points to a 32-byte aligned PDPT.
const CR3_PAE_MASK: u64 = 0xffff_ffe0;

/// The table format of a paged vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestFormat {
    /// IA-32e paging.
    Long(Amd64),
    /// 32-bit paging (with or without PAE / PSE).
    Protected(I686),
}

impl GuestFormat {
    pub(crate) fn as_dyn(&self) -> &(dyn PageTableFormat + Sync) {
        match self {
            GuestFormat::Long(m) => m,
            GuestFormat::Protected(m) => m,
        }
    }

    /// The root table named by a CR3 value in this mode.
    pub(crate) fn root(&self, cr3: u64) -> PhysAddr {
        match self {
            GuestFormat::Protected(m) if m.pae() => cr3 & CR3_PAE_MASK,
            GuestFormat::Protected(_) => cr3 & 0xffff_f000,
            GuestFormat::Long(_) => cr3 & CR3_ADDR_MASK,
        }
    }
}

/// How a vCPU translates addresses right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Paging {
    /// Paging off: addresses are physical.
    Off,
    /// Paged through the tables rooted at `root`.
    Paged { format: GuestFormat, root: PhysAddr },
}

impl Paging {
    /// The mode of a vCPU with these special registers and limits.
    pub(crate) fn of(sregs: &kvm_sregs, limits: &CpuLimits) -> Paging {
        let (cr0, cr4) = (sregs.cr0, sregs.cr4);
        if cr0 & CR0_PG == 0 {
            return Paging::Off;
        }
        let cpu = limits.cpu(sregs);
        let format = if sregs.efer & EFER_LMA != 0 {
            GuestFormat::Long(Amd64::with_cpu(cr4 & CR4_LA57 != 0, cpu))
        } else {
            GuestFormat::Protected(I686::with_cpu(cr4 & CR4_PAE != 0, cr4 & CR4_PSE != 0, cpu))
        };
        Paging::Paged {
            format,
            root: format.root(sregs.cr3),
        }
    }

    /// The same mode with the vCPU's PKRU, for the rights of user pages
    /// under CR4.PKE.
    pub(crate) fn with_pkru(self, pkru: u32) -> Paging {
        match self {
            Paging::Paged {
                format: GuestFormat::Long(m),
                root,
            } => Paging::Paged {
                format: GuestFormat::Long(Amd64::with_cpu(m.la57(), X86Cpu { pkru, ..*m.cpu() })),
                root,
            },
            other => other,
        }
    }

    /// The physical address of `va` and how many bytes from it stay in the
    /// same page.
    pub(crate) fn translate(
        &self,
        mem: &GuestRam,
        va: u64,
    ) -> Result<(PhysAddr, u64), TranslateFault> {
        match *self {
            Paging::Off => Ok((va, 4096 - (va & 4095))),
            Paging::Paged { format, root } => {
                let tables = GuestTables::new(mem, root, None);
                let (pa, page) = vmem::translate_pa(format.as_dyn(), &tables, root, va)?;
                let size = page.bytes();
                Ok((pa, size - (va & (size - 1))))
            }
        }
    }

    /// `len` bytes from `va` cut at page ends: each piece as (its
    /// guest-physical address, its offset in the range, its length). Ends
    /// early at the first address that does not translate.
    pub(crate) fn pieces<'m>(
        self,
        mem: &'m GuestRam,
        va: u64,
        len: usize,
    ) -> impl Iterator<Item = (PhysAddr, usize, usize)> + 'm {
        pieces(move |va| self.translate(mem, va), va, len)
    }
}

/// `len` bytes from `va` cut at page ends by `translate` (an address's
/// guest-physical address and how many bytes from it stay in its page):
/// each piece as (its guest-physical address, its offset in the range,
/// its length). Ends early at the first address that does not translate.
pub(crate) fn pieces<F>(
    translate: F,
    va: u64,
    len: usize,
) -> impl Iterator<Item = (PhysAddr, usize, usize)>
where
    F: Fn(u64) -> Result<(PhysAddr, u64), TranslateFault>,
{
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let (gpa, in_page) = translate(va.wrapping_add(done as u64)).ok()?;
        let n = (len - done).min(usize::try_from(in_page).unwrap_or(usize::MAX));
        let piece = (gpa, done, n);
        done += n;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::target::machine::memory::{GuestRam, TablePool};
    use crate::vmem::{BasicMapping, MapRequest, MappingKind, TableOps};

    const RW: MappingKind = MappingKind::Basic(BasicMapping {
        readable: true,
        writable: true,
        executable: true,
    });

    /// Tables for `fmt` in guest RAM mapping VA 0xc0500000 to PA 0x500000.
    fn tables(mem: &GuestRam, fmt: &dyn PageTableFormat) -> u64 {
        let pool = TablePool::new(0x10_0000..0x20_0000);
        let root = GuestTables::new(mem, 0, Some(&pool)).alloc_table().unwrap();
        let t = GuestTables::new(mem, root, Some(&pool));
        vmem::map(
            fmt,
            &t,
            MapRequest::new(0xc040_0000, 0x40_0000, 0x40_0000, RW),
        )
        .unwrap();
        root
    }

    fn sregs(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> kvm_sregs {
        kvm_sregs {
            cr0,
            cr3,
            cr4,
            efer,
            ..Default::default()
        }
    }

    /// The mode comes from CR0.PG, CR4.PAE/PSE/LA57 and EFER.LMA, and each
    /// mode reads the guest's tables in its own format.
    #[test]
    fn every_paging_mode_translates_through_its_own_tables() {
        let ranges = [(GuestAddress(0), 16 << 20)];
        let mem = GuestRam::new(GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap());
        let cases: [(&dyn PageTableFormat, u64, u64); 4] = [
            (&I686::PSE, CR4_PSE, 0),
            (&I686::PAE, CR4_PAE, 0),
            (&Amd64::FOUR_LEVEL, CR4_PAE, EFER_LMA),
            (&Amd64::FIVE_LEVEL, CR4_PAE | CR4_LA57, EFER_LMA),
        ];
        for (fmt, cr4, efer) in cases {
            mem.write(0x10_0000, &[0u8; 0x10_0000]).unwrap();
            let root = tables(&mem, fmt);
            let paging = Paging::of(
                &sregs(CR0_PG | 1, root | 0x18, cr4, efer),
                &CpuLimits::default(),
            );
            assert!(
                matches!(paging, Paging::Paged { root: r, .. } if r == root),
                "{paging:?}"
            );
            let (gpa, in_page) = paging.translate(&mem, 0xc050_0123).unwrap();
            assert_eq!(gpa, 0x50_0123, "{paging:?}");
            assert!(in_page > 0);
            assert!(paging.translate(&mem, 0x1000).is_err(), "{paging:?}");
        }
        // Paging off: physical addresses.
        let off = Paging::of(&sregs(1, 0, CR4_PAE, 0), &CpuLimits::default());
        assert_eq!(off, Paging::Off);
        assert_eq!(off.translate(&mem, 0x1234), Ok((0x1234, 0xdcc)));
        // 2-level without CR4.PSE.
        assert!(matches!(
            Paging::of(&sregs(CR0_PG, 0x5000, 0, 0), &CpuLimits::default()),
            Paging::Paged {
                format: GuestFormat::Protected(m),
                root: 0x5000
            } if m == I686::with_cpu(false, false, X86Cpu { nxe: false, wp: false, ..X86Cpu::ASSUMED })
        ));
    }

    /// The vCPU's CPUID and control registers make its format: without
    /// Page1GB a PDPTE with PS faults, without EFER.NXE bit 63 is reserved.
    #[test]
    fn the_vcpu_model_comes_from_cpuid_and_control_registers() {
        let entry = |function, eax, edx| kvm_cpuid_entry2 {
            function,
            eax,
            edx,
            ..Default::default()
        };
        let limits = CpuLimits::from_cpuid(&[entry(0x8000_0008, 0x3030, 0), entry(1, 0, 1 << 17)]);
        assert_eq!(
            (limits.phys_bits, limits.page_1g, limits.pse36),
            (48, false, true)
        );
        let sregs = sregs(CR0_PG | CR0_WP, 0x5000, CR4_PAE | CR4_SMEP, EFER_LMA);
        let Paging::Paged {
            format: GuestFormat::Long(m),
            ..
        } = Paging::of(&sregs, &limits)
        else {
            panic!("long mode");
        };
        let cpu = m.cpu();
        assert_eq!(
            (
                cpu.phys_bits,
                cpu.page_1g,
                cpu.nxe,
                cpu.wp,
                cpu.smep,
                cpu.smap
            ),
            (48, false, false, true, true, false)
        );
        assert!(!m.leaf_allowed(1));
        assert_eq!(CpuLimits::from_cpuid(&[]).phys_bits, 36);
        // PKRU from the XSAVE area, where CPUID 0Dh.9 puts it.
        let keys = CpuLimits::from_cpuid(&[kvm_cpuid_entry2 {
            function: 0xd,
            index: 9,
            eax: 8,
            ebx: 2688,
            ..Default::default()
        }]);
        let mut xsave = kvm_xsave::default();
        xsave.region[2688 / 4] = 0x55;
        assert_eq!(keys.pkru(&xsave), Some(0x55));
        assert_eq!(limits.pkru(&xsave), None);
        let sregs = super::tests::sregs(CR0_PG, 0x5000, CR4_PAE | CR4_PKE, EFER_LMA | EFER_NXE);
        let Paging::Paged {
            format: GuestFormat::Long(m),
            ..
        } = Paging::of(&sregs, &keys).with_pkru(0x55)
        else {
            panic!("long mode");
        };
        assert_eq!((m.cpu().pke, m.cpu().pkru), (true, 0x55));
    }
}
