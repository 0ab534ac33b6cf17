//! The demo VM's guest-physical layout and its two address spaces, built
//! with the crate's own `vmem::map` and `space_aware_map`.

use std::collections::BTreeMap;

use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::target::{GuestMemory, GuestTables, TablePool};
use vmem_gdbstub::vmem::{
    self, BasicMapping, MapError, Mapping, MappingKind, PageSize, SpaceReferenceMapping, TableOps,
};

use crate::loader::Segment;

/// The GDT (null, 64-bit code, data).
pub const GDT_ADDR: u64 = 0x1000;
/// Page tables built at boot come from here.
pub const BOOT_TABLES: std::ops::Range<u64> = 0x10_0000..0x20_0000;
/// Reserved for tables created later (`monitor vmem map`).
pub const SPARE_TABLES: std::ops::Range<u64> = 0x20_0000..0x30_0000;
/// Physical pages behind the user page of each space.
pub const USER_PA: [u64; 2] = [0x100_0000, 0x100_1000];
/// The higher-half kernel window: VA KERNEL_BASE + x maps PA x.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
/// The direct map of RAM (1 GiB pages).
pub const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// The user page.
pub const USER_VA: u64 = 0x40_0000;

const MODE: Amd64 = Amd64::FOUR_LEVEL;
const G1: u64 = 1 << 30;

fn kind(writable: bool, executable: bool) -> MappingKind {
    MappingKind::Basic(BasicMapping {
        readable: true,
        writable,
        executable,
    })
}

/// Build both address spaces; returns their CR3 values.
pub fn build_spaces(
    mem: &GuestMemory,
    ram: u64,
    segments: &[Segment],
) -> Result<[u64; 2], MapError> {
    let pool = TablePool::new(BOOT_TABLES);
    let new_space = || -> Result<u64, MapError> {
        GuestTables::new(mem, 0, Some(&pool))
            .alloc_table()
            .map_err(|cause| MapError::Alloc { level: 0, cause })
    };
    let first = new_space()?;
    let a = GuestTables::new(mem, first, Some(&pool));
    let window = (ram.min(G1) & !((2 << 20) - 1)).max(2 << 20);
    // Kernel window in 2 MiB pages, RAM's direct map in 1 GiB pages.
    vmem::map(
        &MODE,
        &a,
        &Mapping::new(KERNEL_BASE, 0, window, kind(true, true)).max_page_size(PageSize::SIZE_2M),
    )?;
    let direct = ram.div_ceil(G1) * G1;
    vmem::map(
        &MODE,
        &a,
        &Mapping::new(DIRECT_MAP, 0, direct, kind(true, false)),
    )?;
    // A loaded image outside the kernel window gets its own 4 KiB pages.
    for seg in segments {
        let start = seg.vaddr & !0xfff;
        let len = (seg.vaddr + seg.memsz).next_multiple_of(4096) - start;
        let covered = vmem::translate(&MODE, &a, start)
            .result
            .is_ok_and(|t| t.pa == seg.paddr & !0xfff);
        if !covered {
            let m = Mapping::new(
                start,
                seg.paddr & !0xfff,
                len,
                kind(seg.writable, seg.executable),
            )
            .max_page_size(PageSize::SIZE_4K);
            vmem::map(&MODE, &a, &m)?;
        }
    }
    vmem::map(
        &MODE,
        &a,
        &Mapping::new(USER_VA, USER_PA[0], 4096, kind(true, false)).user(),
    )?;

    // The second space: its own user page, the kernel half shared.
    let second = new_space()?;
    let b = GuestTables::new(mem, second, Some(&pool));
    vmem::map(
        &MODE,
        &b,
        &Mapping::new(USER_VA, USER_PA[1], 4096, kind(true, false)).user(),
    )?;
    let owners = BTreeMap::from([(first, first)]);
    for va in [KERNEL_BASE, DIRECT_MAP] {
        let shared = SpaceReferenceMapping {
            depth: 1,
            space: first,
            our_va: va,
            their_va: va,
        };
        vmem::space_aware_map(&MODE, &b, &shared, &owners)?;
    }
    Ok([first, second])
}

/// Write a flat GDT: null, 64-bit code (0x08), data (0x10).
pub fn write_gdt(mem: &GuestMemory) -> Result<(), vmem::MemoryError> {
    let entries: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &bytes)
}
