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

/// The arm64 kernel's half (TTBR1) for the VA size VMCOREINFO gives
/// (`NUMBER(VA_BITS)`: 39 is three levels, else four).
pub(crate) fn upper_half(info: &VmcoreInfo) -> Aarch64 {
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
            "no VMCOREINFO, and no CPU was in the kernel: the kernel's table cannot be found"
                .into(),
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
    Err("no VMCOREINFO, and no page of RAM maps the CPUs' kernel addresses".into())
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
