//! vmem core benchmarks: translation per leaf size and paging depth, large
//! walks, and a multi-space walk.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::vmem::{
    self, BasicMapping, BufferTables, MapRequest, MappingKind, PageSize, SpaceReferenceMapping,
    TableOps, TableReadOps,
};

const RW: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: false,
});
const G1: u64 = 1 << 30;
const HIGH: u64 = 0xffff_ff80_0000_0000;

fn memory(size: usize) -> BufferTables<Vec<u8>> {
    BufferTables::new(vec![0u8; size], 0, 0..size as u64).unwrap()
}

fn translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    for (name, fmt) in [
        ("4-level", Amd64::FOUR_LEVEL),
        ("5-level", Amd64::FIVE_LEVEL),
    ] {
        let t = memory(8 << 20);
        for (i, size) in [PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G]
            .into_iter()
            .enumerate()
        {
            let va = HIGH + i as u64 * G1;
            vmem::map(&fmt, &t, MapRequest::new(va, 0, G1, RW).max_page_size(size)).unwrap();
            let probe = va + 0x12_3456;
            assert_eq!(
                vmem::translate(&fmt, &t, probe).result.unwrap().page_size,
                size
            );
            let root = t.root_table();
            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    vmem::translate_addr(&fmt, &t, root, black_box(probe))
                        .unwrap()
                        .pa
                })
            });
        }
    }
    group.finish();
}

fn walks(c: &mut Criterion) {
    let fmt = Amd64::FOUR_LEVEL;
    let mut group = c.benchmark_group("walk");

    let huge = memory(1 << 20);
    vmem::map(&fmt, &huge, MapRequest::new(0, 0, 512 * G1, RW)).unwrap();
    group.bench_function("512GiB of 1GiB pages", |b| {
        b.iter(|| {
            let all: Vec<_> = vmem::virt_to_phys(&fmt, &huge, 0, u64::MAX).collect();
            assert_eq!(all.len(), 1);
            all
        })
    });

    let small = memory(8 << 20);
    vmem::map(
        &fmt,
        &small,
        MapRequest::new(HIGH, 0, G1, RW).max_page_size(PageSize::SIZE_4K),
    )
    .unwrap();
    group.bench_function("1GiB of contiguous 4KiB pages", |b| {
        b.iter(|| {
            let all: Vec<_> = vmem::virt_to_phys(&fmt, &small, 0, u64::MAX).collect();
            assert_eq!(all.len(), 1);
            all
        })
    });
    group.finish();
}

fn spaces(c: &mut Criterion) {
    let fmt = Amd64::FOUR_LEVEL;
    let t = memory(64 << 20);
    // The kernel half: 1 GiB in 2 MiB pages plus 2 MiB in 4 KiB pages.
    vmem::map(
        &fmt,
        &t,
        MapRequest::new(HIGH, 0, G1, RW).max_page_size(PageSize::SIZE_2M),
    )
    .unwrap();
    vmem::map(
        &fmt,
        &t,
        MapRequest::new(HIGH + G1, 0, 2 << 20, RW).max_page_size(PageSize::SIZE_4K),
    )
    .unwrap();
    let kernel = t.root_table();
    let mut roots = vec![kernel];
    let owners = BTreeMap::from([(kernel, kernel)]);
    for i in 1..64u64 {
        let root = t.alloc_table().unwrap();
        t.set_root(root);
        // Each process: a few user pages of its own, the shared kernel half.
        vmem::map(
            &fmt,
            &t,
            MapRequest::new(0x40_0000, i << 24, 16 << 12, RW).user(),
        )
        .unwrap();
        let link = SpaceReferenceMapping {
            depth: 1,
            space: kernel,
            our_va: HIGH,
            their_va: HIGH,
        };
        vmem::space_aware_map(&fmt, &t, &link, &owners).unwrap();
        roots.push(root);
    }
    c.bench_function("walk_va_spaces/64 spaces sharing a kernel half", |b| {
        b.iter(|| {
            let walks = vmem::walk_va_spaces(&fmt, &t, black_box(&roots)).collect::<Vec<_>>();
            assert_eq!(walks.len(), 64);
            walks
        })
    });
}

/// The coalescing walk against translating every 4 KiB page of the same
/// range one by one (the naive way a debugger would list mappings).
fn walk_vs_per_page(c: &mut Criterion) {
    let fmt = Amd64::FOUR_LEVEL;
    let mut group = c.benchmark_group("walk vs per-page");
    group.sample_size(10);
    let layouts: [(&str, PageSize, bool, u64); 5] = [
        ("1 GiB of 1G pages", PageSize::SIZE_1G, false, G1),
        ("1 GiB of 2M pages", PageSize::SIZE_2M, false, G1),
        ("4 GiB of 2M pages", PageSize::SIZE_2M, false, 4 * G1),
        ("1 GiB of 4K contiguous", PageSize::SIZE_4K, false, G1),
        ("1 GiB of 4K scattered", PageSize::SIZE_4K, true, G1),
    ];
    for (name, size, scattered, span) in layouts {
        let t = memory(8 << 20);
        if scattered {
            // Every page maps a different, non-adjacent frame.
            for i in 0..(G1 >> 12) {
                let pa = ((i * 7919) % (G1 >> 12)) << 13;
                vmem::map(&fmt, &t, MapRequest::new(HIGH + (i << 12), pa, 4096, RW)).unwrap();
            }
        } else {
            vmem::map(
                &fmt,
                &t,
                MapRequest::new(HIGH, 0, span, RW).max_page_size(size),
            )
            .unwrap();
        }
        let root = t.root_table();
        group.bench_function(format!("walk, {name}"), |b| {
            b.iter(|| {
                vmem::virt_to_phys(&fmt, &t, HIGH, span)
                    .filter(|m| black_box(m).is_ok())
                    .count()
            })
        });
        // Each page's whole translation is kept (black_box), as a listing
        // page by page would use it; the walk keeps each mapping likewise.
        group.bench_function(format!("per-page, {name}"), |b| {
            b.iter(|| {
                (0..(span >> 12))
                    .filter(|i| {
                        black_box(vmem::translate_addr(&fmt, &t, root, HIGH + (i << 12))).is_ok()
                    })
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, translate, walks, spaces, walk_vs_per_page);
criterion_main!(benches);
