//! The insight commands at scale, as a VMM runs them (`Debugger::monitor`)
//! on a raw 1 GiB RAM image: a kernel space (direct map of all RAM, kernel
//! image) and 64 process spaces sharing its kernel half, each with its own
//! user pages and one page all of them share.
//!
//! - `scan/shared`, `scan/any`: `vmem spaces --scan` over the 1 GiB (the
//!   issue's goal: under 1 s), finding the 64 roots;
//! - `find/65 spaces`: `vmem find PA` of the shared page in every space;
//! - `diff/...` (vmem core): a walk of an unchanged 1 GiB mapping and its
//!   diff with the previous walk, against the walk alone.

use std::fs::File;
use std::hint::black_box;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::target::{Debugger, Dump, DumpCpu};
use vmem_gdbstub::vmem::{
    self, BasicMapping, BufferTables, Flags, MapRequest, Mapping, MappingKind, PageSize, TableOps,
    TableReadOps,
};

const RW: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: false,
});
const RX: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: false,
    executable: true,
});
const G1: u64 = 1 << 30;
const RAM: usize = 1 << 30;
const SPACES: u64 = 64;
/// The page every process maps at SHARED_VA.
const SHARED_PA: u64 = 0x3000_0000;
const SHARED_VA: u64 = 0x7f00_0000_0000;
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
const KERNEL: u64 = 0xffff_ffff_8000_0000;

/// Build the image; returns its file and the kernel root.
fn image() -> (PathBuf, u64) {
    let fmt = Amd64::FOUR_LEVEL;
    let t = BufferTables::new(vec![0u8; RAM], 0, 0..(64 << 20)).unwrap();
    let kernel = t.root_table();
    let map = |m: MapRequest| vmem::map(&fmt, &t, m).unwrap();
    map(MapRequest::new(DIRECT_MAP, 0, G1, RW).max_page_size(PageSize::SIZE_2M));
    map(MapRequest::new(KERNEL, 0x100_0000, 16 << 20, RX).max_page_size(PageSize::SIZE_2M));
    for i in 0..SPACES {
        let root = t.alloc_table().unwrap();
        for index in 256..512 {
            let raw = t.read_entry(kernel + index * 8).unwrap();
            t.write_entry(root + index * 8, raw).unwrap();
        }
        t.set_root(root);
        let user = MapRequest::new(0x40_0000, 0x1000_0000 + i * 0x10_0000, 0x4_0000, RW).user();
        map(user.max_page_size(PageSize::SIZE_4K));
        map(MapRequest::new(SHARED_VA, SHARED_PA, 0x1000, RW).user());
    }
    t.set_root(kernel);
    let ram = t.into_inner();
    let path = std::env::temp_dir().join(format!("vmem-bench-{}.ram", std::process::id()));
    let mut file = File::create(&path).unwrap();
    file.set_len(RAM as u64).unwrap();
    for (i, page) in ram.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            file.seek(SeekFrom::Start(i as u64 * 4096)).unwrap();
            file.write_all(page).unwrap();
        }
    }
    (path, kernel)
}

fn debugger(path: &Path, kernel: u64) -> Debugger {
    // CR0 PG|WP|PE…, CR4 PAE, EFER LME|LMA|NXE.
    let cpu = DumpCpu::long_mode(KERNEL, 0, [0x8005_0033, kernel, 0x20, 0xd00]);
    Debugger::from_dump(Dump::raw(path, 0, cpu).unwrap()).build()
}

fn commands(c: &mut Criterion) {
    let (path, kernel) = image();
    let mut group = c.benchmark_group("insight");
    group.sample_size(10);
    for mode in ["shared", "any"] {
        let line = format!("vmem spaces --scan {mode}");
        let out = debugger(&path, kernel).monitor(&line).unwrap();
        assert!(
            out.contains(&format!("{SPACES} new address spaces")),
            "{out}"
        );
        group.bench_function(format!("scan/{mode} 1 GiB"), |b| {
            b.iter_batched(
                || debugger(&path, kernel),
                |dbg| black_box(dbg.monitor(&line).unwrap()),
                BatchSize::PerIteration,
            )
        });
    }
    let dbg = debugger(&path, kernel);
    dbg.monitor("vmem spaces --scan shared").unwrap();
    let line = format!("vmem find {SHARED_PA:#x}");
    let out = dbg.monitor(&line).unwrap();
    // The user page in each process, the direct map in all 65 spaces.
    let expected = format!("{} mappings in {} spaces", 2 * SPACES + 1, SPACES + 1);
    assert!(out.contains(&expected), "{out}");
    group.bench_function("find/65 spaces", |b| {
        b.iter(|| black_box(dbg.monitor(&line).unwrap()))
    });
    group.finish();
    let _ = std::fs::remove_file(&path);
}

fn diff(c: &mut Criterion) {
    let fmt = Amd64::FOUR_LEVEL;
    let mut group = c.benchmark_group("diff");
    for (name, stride) in [("1 GiB contiguous", 1), ("1 GiB scattered", 2)] {
        let t = BufferTables::new(vec![0u8; 8 << 20], 0, 0..(8 << 20)).unwrap();
        // `stride` 2: every other physical page, so no two leaves coalesce.
        for page in (0..G1 / 4096).step_by(if stride == 1 { G1 as usize } else { 1 }) {
            let len = if stride == 1 { G1 } else { 4096 };
            let m = MapRequest::new(0x1_0000_0000 + page * 4096, page * 4096 * stride, len, RW);
            vmem::map(&fmt, &t, m.max_page_size(PageSize::SIZE_4K)).unwrap();
        }
        let walk = || -> Vec<Mapping> {
            vmem::virt_to_phys(&fmt, &t, 0, u64::MAX)
                .map(|m| {
                    let mut m = m.unwrap();
                    m.flags.remove(Flags::ACCESSED | Flags::DIRTY);
                    m
                })
                .collect()
        };
        let before = walk();
        assert!(vmem::diff_mappings(&before, &walk()).is_empty());
        group.bench_function(format!("{name}/walk"), |b| b.iter(|| black_box(walk())));
        group.bench_function(format!("{name}/walk+diff"), |b| {
            b.iter(|| black_box(vmem::diff_mappings(&before, &walk())))
        });
    }
    group.finish();
}

criterion_group!(benches, commands, diff);
criterion_main!(benches);
