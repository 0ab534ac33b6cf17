//! An arm64 dump's kernel translation. The dump holds no system registers
//! (no TTBR1): the kernel's table is `swapper_pg_dir - kimage_voffset`
//! from VMCOREINFO, or, without it, found by a scan of RAM for the root
//! that maps every CPU's pc and stack. VMCOREINFO's `KERNELPACMASK` says
//! which bits of a code address hold a pointer-authentication code.

use crate::arch::aarch64::{Aarch64, Half};
use crate::arch::{Descriptor, PageTableFormat};
use crate::target::dump::cpu::Aarch64Cpu;
use crate::target::dump::vmcoreinfo::VmcoreInfo;
use crate::target::machine::memory::{GuestRam, GuestTables};
use crate::vmem::{self, PhysAddr};

const PAGE: u64 = 0x1000;

/// How an arm64 dump's kernel translates its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmKernel {
    /// TTBR1's format (the upper half, 39- or 48-bit).
    pub format: Aarch64,
    /// TTBR1's table.
    pub root: PhysAddr,
    /// How the root was found, in a few words.
    pub how: String,
    /// The bits of a kernel code address that hold its PAC
    /// (`KERNELPACMASK`), if the kernel signs return addresses.
    pub pac_mask: Option<u64>,
}

impl ArmKernel {
    /// The kernel of an arm64 dump with this RAM, VMCOREINFO and CPUs; why
    /// not when neither VMCOREINFO nor a scan finds its table.
    pub(crate) fn find(
        ram: &GuestRam,
        info: Option<&VmcoreInfo>,
        cpus: &[Aarch64Cpu],
    ) -> Result<ArmKernel, String> {
        let pac_mask = info
            .and_then(|i| i.number("KERNELPACMASK"))
            .map(|m| m as u64)
            .filter(|&m| m != 0);
        if let Some(info) = info {
            supported(info)?;
            if let Some((root, how)) = info.kernel_root() {
                return Ok(ArmKernel {
                    format: upper_half(info),
                    root,
                    how: format!("VMCOREINFO: {how}"),
                    pac_mask,
                });
            }
        }
        let (format, root, candidates) = scan(ram, cpus)?;
        Ok(ArmKernel {
            format,
            root,
            how: format!(
                "found in RAM: the root mapping every CPU's pc and sp ({candidates} candidate(s), the sparsest taken)"
            ),
            pac_mask,
        })
    }
}

/// Whether the walker reads this kernel's tables: a 4 KiB granule, 39- or
/// 48-bit VAs (not 16/64 KiB pages, not 52-bit LPA2).
fn supported(info: &VmcoreInfo) -> Result<(), String> {
    if let Some(size) = info.page_size().filter(|&s| s != 4096) {
        return Err(format!(
            "the kernel uses {size}-byte pages: only the 4 KiB granule is read"
        ));
    }
    match info.number("VA_BITS") {
        None | Some(39) | Some(48) => Ok(()),
        Some(bits) => Err(format!(
            "the kernel uses {bits}-bit addresses: only 39 and 48 bits are read"
        )),
    }
}

/// The arm64 kernel's half (TTBR1) for the VA size VMCOREINFO gives
/// (`NUMBER(VA_BITS)`: 39 is three levels, else four).
fn upper_half(info: &VmcoreInfo) -> Aarch64 {
    let levels = if info.number("VA_BITS") == Some(39) {
        3
    } else {
        4
    };
    Aarch64::new(levels, Half::Upper)
}

/// The page of RAM whose tables (4 levels, else 3) map every CPU's
/// upper-half pc and sp, with the fewest top-level entries of those that
/// do (the kernel uses a handful; a last-level table, full of page
/// descriptors, can pass for a root by chance); the format, the root and
/// how many pages qualified.
fn scan(ram: &GuestRam, cpus: &[Aarch64Cpu]) -> Result<(Aarch64, PhysAddr, usize), String> {
    let addresses: Vec<u64> = cpus
        .iter()
        .flat_map(|c| [c.pc, c.sp])
        .filter(|va| va >> 63 == 1)
        .collect();
    let Some(&first) = addresses.first() else {
        return Err(
            "VMCOREINFO names no kernel table, and no CPU was in the kernel to find it by".into(),
        );
    };
    for levels in [4, 3] {
        let format = Aarch64::new(levels, Half::Upper);
        let Some(linear) = format.linear(first) else {
            continue;
        };
        let index = (linear >> format.shift(0)) & (format.entries(0) - 1);
        let maps_all = |root: PhysAddr| {
            let tables = GuestTables::new(ram, root, None);
            addresses
                .iter()
                .all(|&va| vmem::translate_pa(&format, &tables, root, va).is_ok())
        };
        let mut best: Option<(usize, PhysAddr)> = None;
        let mut candidates = 0;
        for range in ram.ranges().iter() {
            let first_page = range.gpa.next_multiple_of(PAGE);
            let end = range.gpa + range.size;
            for root in (first_page..end.saturating_sub(PAGE - 1)).step_by(PAGE as usize) {
                let mut word = [0u8; 8];
                if ram.read(root + index * 8, &mut word).is_err() {
                    continue;
                }
                let raw = u64::from_le_bytes(word);
                if !matches!(format.decode(0, raw), Descriptor::Table { .. }) || !maps_all(root) {
                    continue;
                }
                candidates += 1;
                let entries = valid_entries(ram, &format, root);
                log::debug!("arm64 kernel root candidate {root:#x}: {entries} top-level entries");
                if best.is_none_or(|(fewest, _)| entries < fewest) {
                    best = Some((entries, root));
                }
            }
        }
        if let Some((_, root)) = best {
            return Ok((format, root, candidates));
        }
    }
    Err(
        "VMCOREINFO names no kernel table, and no page of RAM maps the CPUs' kernel addresses"
            .into(),
    )
}

/// How many of `root`'s top-level entries are tables or blocks.
fn valid_entries(ram: &GuestRam, format: &Aarch64, root: PhysAddr) -> usize {
    let mut page = vec![0u8; PAGE as usize];
    if ram.read(root, &mut page).is_err() {
        return 0;
    }
    let entries = format.entries(0) as usize;
    page.chunks_exact(8)
        .take(entries)
        .filter(|raw| {
            let raw = u64::from_le_bytes((*raw).try_into().unwrap_or_default());
            matches!(
                format.decode(0, raw),
                Descriptor::Table { .. } | Descriptor::Leaf { .. }
            )
        })
        .count()
}

/// What serving an arm64 dump needs beside its RAM: its CPUs and how its
/// kernel translates.
#[derive(Debug, Clone)]
pub(crate) struct ArmDump {
    /// The CPUs, in the dump's order.
    pub cpus: Vec<Aarch64Cpu>,
    /// The kernel's translation.
    pub kernel: ArmKernel,
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::target::machine::memory::TablePool;
    use crate::vmem::{BasicMapping, MapRequest, MappingKind, TableOps};

    const KERNEL_VA: u64 = 0xffff_8000_1000_0000;

    /// RAM with the kernel's tables at some root mapping KERNEL_VA (2 MiB
    /// of it) to 0x20_0000, and a decoy page full of page descriptors.
    fn ram_with_kernel() -> (GuestRam, u64) {
        let ranges = [(GuestAddress(0), 8 << 20)];
        let mem = GuestRam::new(GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap());
        let pool = TablePool::new(0x40_0000..0x50_0000);
        let root = GuestTables::new(&mem, 0, Some(&pool))
            .alloc_table()
            .unwrap();
        let tables = GuestTables::new(&mem, root, Some(&pool));
        let rw = MappingKind::Basic(BasicMapping {
            readable: true,
            writable: true,
            executable: true,
        });
        let request = MapRequest::new(KERNEL_VA, 0x20_0000, 0x20_0000, rw);
        vmem::map(&Aarch64::UPPER_48, &tables, request).unwrap();
        // A last-level table's worth of page descriptors, earlier in RAM.
        let decoy: Vec<u8> = (0..512u64)
            .flat_map(|i| ((0x10_0000 + i * 0x1000) | 0x703).to_le_bytes())
            .collect();
        mem.write(0x1000, &decoy).unwrap();
        (mem, root)
    }

    fn cpu_at(pc: u64) -> Aarch64Cpu {
        Aarch64Cpu {
            pc,
            sp: pc + 0x1000,
            ..Default::default()
        }
    }

    /// Without VMCOREINFO the root mapping the CPUs' pc and sp is found;
    /// CPUs outside the kernel, or tables that map nothing of theirs, are
    /// a one-line error.
    #[test]
    fn the_kernel_root_is_found_by_what_the_cpus_use() {
        let (mem, root) = ram_with_kernel();
        let found = ArmKernel::find(&mem, None, &[cpu_at(KERNEL_VA + 0x40)]).unwrap();
        assert_eq!((found.root, found.format), (root, Aarch64::UPPER_48));
        assert!(found.how.contains("found in RAM"), "{}", found.how);
        let user = ArmKernel::find(&mem, None, &[cpu_at(0x40_0000)]).unwrap_err();
        assert!(user.contains("no CPU was in the kernel"), "{user}");
        let elsewhere = ArmKernel::find(&mem, None, &[cpu_at(0xffff_9000_0000_0000)]).unwrap_err();
        assert!(elsewhere.contains("no page of RAM"), "{elsewhere}");
    }

    /// VMCOREINFO's table is taken as it says; granules and VA sizes the
    /// walker does not read are refused in one line.
    #[test]
    fn vmcoreinfo_names_the_table_and_its_shape() {
        let (mem, _) = ram_with_kernel();
        let info = |text: &str| VmcoreInfo::parse(text.as_bytes());
        let named = info("SYMBOL(swapper_pg_dir)=ffff800011000000\nNUMBER(kimage_voffset)=0xffff7fffd1000000\nNUMBER(VA_BITS)=39\nNUMBER(KERNELPACMASK)=0xff80000000000000\n");
        let kernel = ArmKernel::find(&mem, Some(&named), &[]).unwrap();
        assert_eq!(kernel.root, 0x4000_0000);
        assert_eq!(kernel.format, Aarch64::UPPER_39);
        assert_eq!(kernel.pac_mask, Some(0xff80_0000_0000_0000));
        for text in ["PAGESIZE=65536\n", "NUMBER(VA_BITS)=52\n"] {
            let why = ArmKernel::find(&mem, Some(&info(text)), &[]).unwrap_err();
            assert!(why.contains("only"), "{why}");
        }
    }
}
