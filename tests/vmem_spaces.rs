//! walk_va_spaces finds shared sub-tables at every depth; rebuilding every
//! space from the walk with map + space_aware_map gives the same spaces,
//! with the aliased tables shared again.

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use support::*;
use vmem_gdbstub::arch::{Aarch64, Amd64, PageTableFormat, I686};
use vmem_gdbstub::vmem::{
    self, BufferTables, MapRequest, PageSize, SpaceAwareMapping, SpaceId, SpaceReferenceMapping,
    SpaceWalk, TableOps, TableReadOps,
};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const HIGH: u64 = 0xffff_ffff_8000_0000;

type Mem = BufferTables<Vec<u8>>;

fn new_space(t: &Mem) -> SpaceId {
    let root = t.alloc_table().unwrap();
    t.set_root(root);
    root
}

fn link(
    fmt: &dyn PageTableFormat,
    t: &Mem,
    ours: SpaceId,
    owner: SpaceId,
    depth: usize,
    our_va: u64,
    their_va: u64,
) {
    t.set_root(ours);
    let reference = SpaceReferenceMapping {
        depth,
        space: owner,
        our_va,
        their_va,
    };
    let roots = BTreeMap::from([(owner, owner)]);
    vmem::space_aware_map(fmt, t, &reference, &roots).unwrap();
}

fn references(walk: &SpaceWalk) -> Vec<SpaceReferenceMapping> {
    walk.mappings
        .iter()
        .filter_map(|m| match m {
            SpaceAwareMapping::AnotherSpace(r) => Some(*r),
            SpaceAwareMapping::ThisSpace(_) => None,
        })
        .collect()
}

/// Rebuild every walked space in fresh memory; returns it with the new
/// root of each space (by old id).
fn rebuild(fmt: &dyn PageTableFormat, walks: &[SpaceWalk]) -> (Mem, BTreeMap<SpaceId, u64>) {
    let t = memory();
    let mut built = BTreeMap::new();
    for walk in walks {
        assert!(walk.errors.is_empty(), "{:?}", walk.errors);
        let root = new_space(&t);
        built.insert(walk.space, root);
        for item in &walk.mappings {
            match item {
                SpaceAwareMapping::ThisSpace(m) => vmem::map(fmt, &t, m).unwrap(),
                SpaceAwareMapping::AnotherSpace(r) => {
                    assert!(built.contains_key(&r.space), "reference to a later space");
                    vmem::space_aware_map(fmt, &t, r, &built).unwrap();
                }
            }
        }
    }
    (t, built)
}

/// The rebuilt spaces translate exactly like the originals, and every
/// alias is the same table in the rebuilt memory.
fn check_rebuild(fmt: &dyn PageTableFormat, original: &Mem, roots: &[SpaceId]) -> Vec<SpaceWalk> {
    let walks = vmem::walk_va_spaces(fmt, original, roots).collect::<Vec<_>>();
    assert_eq!(walks.iter().map(|w| w.space).collect::<Vec<_>>(), roots);
    let (rebuilt, built) = rebuild(fmt, &walks);
    for walk in &walks {
        original.set_root(walk.space);
        rebuilt.set_root(built[&walk.space]);
        assert_eq!(
            as_runs(fmt, &walk_all(fmt, &rebuilt)),
            as_runs(fmt, &walk_all(fmt, original)),
            "space {:#x}",
            walk.space
        );
        for r in references(walk) {
            let ours = vmem::translate(fmt, &rebuilt.rooted_at(built[&walk.space]), r.our_va);
            let theirs = vmem::translate(fmt, &rebuilt.rooted_at(built[&r.space]), r.their_va);
            assert_eq!(
                ours.steps()[r.depth].at.table,
                theirs.steps()[r.depth].at.table,
                "{r:x?} is not shared after the rebuild"
            );
        }
    }
    walks
}

#[test]
fn aliases_are_found_at_every_depth() {
    let fmt = Amd64::FOUR_LEVEL;
    let t = memory();
    let a = new_space(&t);
    vmem::map(
        &fmt,
        &t,
        MapRequest::new(HIGH, 0, 4 * M2, RX).max_page_size(PageSize::SIZE_2M),
    )
    .unwrap();
    vmem::map(&fmt, &t, MapRequest::new(HIGH + G1, 0x100_0000, 8 * K4, RW)).unwrap();
    vmem::map(
        &fmt,
        &t,
        MapRequest::new(0x40_0000, 0x50_0000, K4, RW).user(),
    )
    .unwrap();

    // B shares A's whole top PDPT (depth 1).
    let b = new_space(&t);
    vmem::map(
        &fmt,
        &t,
        MapRequest::new(0x40_0000, 0x60_0000, K4, RO).user(),
    )
    .unwrap();
    link(&fmt, &t, b, a, 1, HIGH, HIGH);

    // C shares A's PD (depth 2) and, at another VA, A's PT (depth 3).
    let c = new_space(&t);
    link(&fmt, &t, c, a, 2, HIGH, HIGH);
    link(&fmt, &t, c, a, 3, 0x7000_0000_0000, HIGH + G1);

    let walks = check_rebuild(&fmt, &t, &[a, b, c]);
    assert!(references(&walks[0]).is_empty());
    assert_eq!(
        references(&walks[1]),
        vec![SpaceReferenceMapping {
            depth: 1,
            space: a,
            our_va: 0xffff_ff80_0000_0000,
            their_va: 0xffff_ff80_0000_0000
        }]
    );
    assert_eq!(
        references(&walks[2]),
        vec![
            SpaceReferenceMapping {
                depth: 3,
                space: a,
                our_va: 0x7000_0000_0000,
                their_va: HIGH + G1
            },
            SpaceReferenceMapping {
                depth: 2,
                space: a,
                our_va: HIGH,
                their_va: HIGH
            },
        ]
    );
    // B's own user page is walked as its own.
    assert!(matches!(
        walks[1].mappings[0],
        SpaceAwareMapping::ThisSpace(m) if m.phys_base == 0x60_0000
    ));
}

#[test]
fn five_level_aliases_at_the_top_level() {
    let fmt = Amd64::FIVE_LEVEL;
    let t = memory();
    let kernel = 0xff80_0000_0000_0000u64;
    let a = new_space(&t);
    vmem::map(&fmt, &t, MapRequest::new(kernel, 0, G1, RW)).unwrap();
    let b = new_space(&t);
    link(&fmt, &t, b, a, 1, kernel, kernel);
    let walks = check_rebuild(&fmt, &t, &[a, b]);
    assert_eq!(references(&walks[1]).len(), 1);
    assert_eq!(references(&walks[1])[0].depth, 1);
}

#[derive(Debug, Clone)]
enum Build {
    Map {
        space: usize,
        off: u64,
        len: u64,
        pa: u64,
        user_half: bool,
    },
    Link {
        space: usize,
        owner: usize,
        depth: usize,
        off: u64,
        their_off: u64,
    },
}

fn build_op(spaces: usize) -> impl Strategy<Value = Build> {
    let map = (
        0..spaces,
        0u64..64,
        1u64..600,
        0u64..1 << 16,
        prop::bool::weighted(0.25),
        prop_oneof![Just(K4), Just(M2)],
    )
        .prop_map(|(space, slot, pages, pa, user_half, g)| Build::Map {
            space,
            off: slot * M2 + if g == K4 { (slot % 7) * K4 } else { 0 },
            len: if g == K4 {
                pages * K4
            } else {
                (pages % 8 + 1) * M2
            },
            pa: pa * g,
            user_half,
        });
    let link = (1..spaces, 0..spaces, 1usize..4, 0u64..8, 0u64..2).prop_map(
        |(space, owner, depth, off, their)| Build::Link {
            space,
            owner,
            depth,
            off: off * G1,
            their_off: their * G1,
        },
    );
    prop_oneof![3 => map, 2 => link]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rebuilding_from_the_walk_gives_the_same_spaces(
        count in 2usize..5,
        ops in prop::collection::vec(build_op(4), 5..40),
    ) {
        let fmt = Amd64::FOUR_LEVEL;
        let t = memory();
        let roots: Vec<SpaceId> = (0..count).map(|_| new_space(&t)).collect();
        let kernel_base = 0xffff_8000_0000_0000u64;
        for op in ops {
            match op {
                Build::Map { space, off, len, pa, user_half } => {
                    let Some(&root) = roots.get(space) else { continue };
                    t.set_root(root);
                    let va = if user_half { off } else { kernel_base + off };
                    vmem::map(&fmt, &t, MapRequest::new(va, pa, len, RW)).unwrap();
                }
                Build::Link { space, owner, depth, off, their_off } => {
                    let (Some(&ours), Some(&theirs)) = (roots.get(space), roots.get(owner.min(space - 1))) else { continue };
                    // Align to the region one table at this depth covers.
                    let span = fmt.entry_span(depth - 1);
                    let our_va = (kernel_base + off) & !(span - 1);
                    let their_va = (kernel_base + their_off) & !(span - 1);
                    let exists = vmem::translate(&fmt, &t.rooted_at(theirs), their_va).steps().len() > depth;
                    let leaf_there = matches!(
                        vmem::translate(&fmt, &t.rooted_at(theirs), their_va).steps().get(depth - 1).map(|s| s.descriptor),
                        Some(vmem_gdbstub::arch::Descriptor::Leaf { .. })
                    );
                    if exists && !leaf_there {
                        link(&fmt, &t, ours, theirs, depth, our_va, their_va);
                    }
                }
            }
        }
        check_rebuild(&fmt, &t, &roots);
    }
}

#[test]
fn aliases_are_found_and_rebuilt_in_every_mode() {
    let modes: [(&str, &dyn PageTableFormat); 6] = [
        ("i686", &I686::LEGACY),
        ("i686 PSE", &I686::PSE),
        ("i686 PAE", &I686::PAE),
        ("aarch64 48 TTBR1", &Aarch64::UPPER_48),
        ("aarch64 39 TTBR0", &Aarch64::LOWER_39),
        ("amd64 5-level", &Amd64::FIVE_LEVEL),
    ];
    for (name, fmt) in modes {
        let t = memory();
        // A "kernel" in the top quarter of the space, 4 KiB and huge pages.
        let top = fmt.linear_mask() - (fmt.linear_mask() >> 2);
        let kernel = fmt.canonical(top & !(fmt.entry_span(0) - 1));
        let huge = fmt.entry_span(fmt.levels() - 2);
        let a = new_space(&t);
        vmem::map(fmt, &t, MapRequest::new(kernel, 0x40_0000, 2 * huge, RX)).unwrap();
        vmem::map(
            fmt,
            &t,
            MapRequest::new(kernel + 2 * huge, 0x100_0000, 8 * K4, RW),
        )
        .unwrap();
        vmem::map(
            fmt,
            &t,
            MapRequest::new(fmt.canonical(0x40_0000), 0x50_0000, K4, RW).user(),
        )
        .unwrap();
        let b = new_space(&t);
        vmem::map(
            fmt,
            &t,
            MapRequest::new(fmt.canonical(0x40_0000), 0x60_0000, K4, RO).user(),
        )
        .unwrap();
        // Share the root entry above the 4 KiB pages (in 2-level PSE mode
        // the first 4 MiB are a leaf, with no table below to share).
        let shared = (kernel + 2 * huge) & !(fmt.entry_span(0) - 1);
        link(fmt, &t, b, a, 1, shared, shared);
        let walks = check_rebuild(fmt, &t, &[a, b]);
        assert_eq!(references(&walks[1]).len(), 1, "{name}: {walks:x?}");
        assert_eq!(references(&walks[1])[0].depth, 1, "{name}");
    }
}
