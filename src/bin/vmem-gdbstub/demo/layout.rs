//! The demo VM's guest-physical layout and its two address spaces, built
//! with the crate's own `vmem::map` and `space_aware_map`.

use std::collections::BTreeMap;

use vmem_gdbstub::arch::{Amd64, PageTableFormat, I686};
use vmem_gdbstub::target::{GuestRam, GuestTables, TablePool};
use vmem_gdbstub::vmem::{
    self, BasicMapping, MapError, MapRequest, MappingKind, PageSize, SpaceReferenceMapping,
    TableOps,
};

use super::loader::Segment;

/// The GDT (null, 64-bit code, data).
pub const GDT_ADDR: u64 = 0x1000;
/// Page tables built at boot come from here.
pub const BOOT_TABLES: std::ops::Range<u64> = 0x10_0000..0x20_0000;
/// Reserved for tables created later (`monitor vmem map`).
pub const SPARE_TABLES: std::ops::Range<u64> = 0x20_0000..0x30_0000;
/// Physical pages behind the user page of each space.
pub const USER_PA: [u64; 3] = [0x100_0000, 0x100_1000, 0x100_2000];
/// The user page of the space that shares nothing with the others.
pub const STANDALONE_USER_PA: u64 = 0x100_4000;
/// Pages that look a little like root tables, and are not (for the scan).
pub const DECOYS: u64 = 0x110_0000;
/// The higher-half kernel window: VA KERNEL_BASE + x maps PA x.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
/// The direct map of RAM (1 GiB pages where the vCPU has them, else 2 MiB).
pub const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// The user page.
pub const USER_VA: u64 = 0x40_0000;
/// The VMM's device page (MMIO, no RAM behind it; above the largest RAM).
pub const DEVICE_PA: u64 = 0x10_0000_0000;
/// Where the guest sees the device page.
pub const DEVICE_VA: u64 = 0xffff_ffff_c000_0000;
/// The 32-bit guest's kernel window: VA KERNEL_BASE_32 + x maps PA x.
pub const KERNEL_BASE_32: u64 = 0xc000_0000;

const G1: u64 = 1 << 30;

fn kind(writable: bool, executable: bool) -> MappingKind {
    MappingKind::Basic(BasicMapping {
        readable: true,
        writable,
        executable,
    })
}

/// A new empty address space (its root table) from `pool`.
fn new_space(mem: &GuestRam, pool: &TablePool) -> Result<u64, MapError> {
    GuestTables::new(mem, 0, Some(pool))
        .alloc_table()
        .map_err(|cause| MapError::Alloc { level: 0, cause })
}

/// Map `len` bytes of RAM from PA 0 at `base`, leaves up to `max`.
fn map_window(
    fmt: &dyn PageTableFormat,
    t: &GuestTables<'_>,
    base: u64,
    len: u64,
    max: PageSize,
) -> Result<(), MapError> {
    vmem::map(
        fmt,
        t,
        MapRequest::new(base, 0, len, kind(true, true)).max_page_size(max),
    )
}

/// Give a loaded image outside the windows its own 4 KiB pages.
fn map_segments(
    fmt: &dyn PageTableFormat,
    t: &GuestTables<'_>,
    segments: &[Segment],
) -> Result<(), MapError> {
    for seg in segments {
        let start = seg.vaddr & !0xfff;
        let len = (seg.vaddr + seg.memsz).next_multiple_of(4096) - start;
        let covered = vmem::translate(fmt, t, start)
            .result
            .is_ok_and(|tr| tr.pa == seg.paddr & !0xfff);
        if !covered {
            let m = MapRequest::new(
                start,
                seg.paddr & !0xfff,
                len,
                kind(seg.writable, seg.executable),
            )
            .max_page_size(PageSize::SIZE_4K);
            vmem::map(fmt, t, m)?;
        }
    }
    Ok(())
}

fn map_user_page(fmt: &dyn PageTableFormat, t: &GuestTables<'_>, pa: u64) -> Result<(), MapError> {
    vmem::map(
        fmt,
        t,
        MapRequest::new(USER_VA, pa, 4096, kind(true, false)).user(),
    )
}

/// Build the long-mode address spaces in `mode` (which says whether the
/// vCPU has 1 GiB pages) over RAM ending at `ram_end` (the direct map
/// covers it all, a gap between RAM ranges included); returns the CR3
/// values of the two the vCPUs run in and of a third none loads.
pub fn build_spaces(
    mode: &Amd64,
    mem: &GuestRam,
    ram_end: u64,
    segments: &[Segment],
) -> Result<[u64; 3], MapError> {
    let pool = TablePool::new(BOOT_TABLES);
    let first = new_space(mem, &pool)?;
    let a = GuestTables::new(mem, first, Some(&pool));
    let window = (ram_end.min(G1) & !((2 << 20) - 1)).max(2 << 20);
    // Kernel window in 2 MiB pages, RAM's direct map in the largest pages
    // the vCPU has (`map` uses only leaves the format allows).
    map_window(mode, &a, KERNEL_BASE, window, PageSize::SIZE_2M)?;
    let direct = ram_end.div_ceil(G1) * G1;
    vmem::map(
        mode,
        &a,
        MapRequest::new(DIRECT_MAP, 0, direct, kind(true, false)),
    )?;
    map_segments(mode, &a, segments)?;
    map_user_page(mode, &a, USER_PA[0])?;
    let device = MapRequest::new(DEVICE_VA, DEVICE_PA, 4096, kind(true, false));
    vmem::map(mode, &a, device.max_page_size(PageSize::SIZE_4K))?;

    // The second space, and a third no vCPU ever loads (as a process not
    // yet scheduled): each its own user page, the kernel half shared.
    let second = process_space(mode, mem, &pool, first, USER_PA[1])?;
    let hidden = process_space(mode, mem, &pool, first, USER_PA[2])?;
    standalone_space(mode, mem, &pool)?;
    Ok([first, second, hidden])
}

/// A space no vCPU loads that shares no table with the others (as a
/// nested guest's or another kernel's): a user page, and 2 MiB of RAM at
/// 1 GiB. Only a scan by structure finds it.
fn standalone_space(mode: &Amd64, mem: &GuestRam, pool: &TablePool) -> Result<u64, MapError> {
    let root = new_space(mem, pool)?;
    let t = GuestTables::new(mem, root, Some(pool));
    map_user_page(mode, &t, STANDALONE_USER_PA)?;
    let data = MapRequest::new(G1, 0x120_0000, 2 << 20, kind(false, false));
    vmem::map(mode, &t, data.max_page_size(PageSize::SIZE_2M))?;
    Ok(root)
}

/// Pages a root scan must reject: random data; copies of `kernel`'s
/// kernel half whose user half points outside RAM, sets a reserved bit,
/// or leads to a table of garbage; one entry to an empty table.
pub fn write_decoys(mem: &GuestRam, kernel: u64) -> Result<(), vmem::MemoryError> {
    let page = |i: u64| DECOYS + i * 0x1000;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kernel_half = [0u8; 2048];
    mem.read(kernel + 2048, &mut kernel_half)?;
    let words = |entries: &[(u64, u64)]| {
        let mut bytes = [0u8; 4096];
        for &(i, raw) in entries {
            bytes[i as usize * 8..][..8].copy_from_slice(&raw.to_le_bytes());
        }
        bytes
    };
    let random_page: Vec<u8> = (0..512).flat_map(|_| random().to_le_bytes()).collect();
    mem.write(page(0), &random_page)?;
    let garbage_table: Vec<u8> = (0..512)
        .flat_map(|_| (random() | 1 | 1 << 51).to_le_bytes())
        .collect();
    mem.write(page(1), &garbage_table)?;
    let user_halves = [
        (0, 0x7f_0000_0000 | 0x7), // outside RAM
        (1, USER_PA[0] | 0x87),    // PS at the root: reserved
        (2, page(1) | 0x7),        // a table of garbage
    ];
    for (n, &entry) in user_halves.iter().enumerate() {
        let at = page(2 + n as u64);
        mem.write(at, &words(&[entry]))?;
        mem.write(at + 2048, &kernel_half)?;
    }
    // One entry to an empty table: well-formed, maps nothing.
    mem.write(page(5), &words(&[(3, page(6) | 0x7)]))?;
    mem.write(page(6), &[0u8; 4096])
}

/// A space with its own user page at `user_pa` and the kernel half of
/// space `kernel` shared.
fn process_space(
    mode: &Amd64,
    mem: &GuestRam,
    pool: &TablePool,
    kernel: u64,
    user_pa: u64,
) -> Result<u64, MapError> {
    let root = new_space(mem, pool)?;
    let t = GuestTables::new(mem, root, Some(pool));
    map_user_page(mode, &t, user_pa)?;
    let owners = BTreeMap::from([(kernel, kernel)]);
    for va in [KERNEL_BASE, DIRECT_MAP] {
        let shared = SpaceReferenceMapping {
            depth: 1,
            space: kernel,
            our_va: va,
            their_va: va,
        };
        vmem::space_aware_map(mode, &t, &shared, &owners)?;
    }
    Ok(root)
}

/// Build the 32-bit guest's space (kernel window in the largest pages the
/// mode has, a user page); returns its CR3.
pub fn build_space_32(
    mem: &GuestRam,
    ram: u64,
    segments: &[Segment],
    mode: I686,
) -> Result<u64, MapError> {
    let pool = TablePool::new(BOOT_TABLES);
    let root = new_space(mem, &pool)?;
    let t = GuestTables::new(mem, root, Some(&pool));
    let window = ram.min(256 << 20) & !((4 << 20) - 1);
    map_window(&mode, &t, KERNEL_BASE_32, window, PageSize::LARGEST)?;
    map_segments(&mode, &t, segments)?;
    map_user_page(&mode, &t, USER_PA[0])?;
    Ok(root)
}

/// Write a flat GDT: null, code (0x08; 64-bit unless `code32`), data (0x10).
pub fn write_gdt(mem: &GuestRam, code32: bool) -> Result<(), vmem::MemoryError> {
    let code = if code32 {
        0x00cf_9b00_0000_ffff
    } else {
        0x00af_9b00_0000_ffff
    };
    let entries: [u64; 3] = [0, code, 0x00cf_9300_0000_ffff];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &bytes)
}
