//! Unit tests of map / unmap / protect / virt_to_phys / translate on amd64.

mod support;

use support::*;
use vmem_gdbstub::arch::{Amd64, Descriptor, PageTableFormat};
use vmem_gdbstub::vmem::{
    self, Flags, MapError, MapRequest, Mapping, MappingKind, PageSize, Perms, TableOps,
    TableReadOps, TranslateFault,
};

const M4: Amd64 = Amd64::FOUR_LEVEL;
const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const HIGH: u64 = 0xffff_ffff_8000_0000;

fn sizes(mappings: &[Mapping]) -> Vec<(u64, u64, PageSize)> {
    mappings
        .iter()
        .map(|m| (m.virt_base, m.len, m.page_size))
        .collect()
}

#[test]
fn map_picks_the_largest_leaves_that_fit() {
    let t = memory();
    // 4K + 2M-aligned run of 2M + a 1G page + a 4K tail.
    let va = G1 - M2 - K4;
    let len = K4 + M2 + G1 + K4;
    vmem::map(&M4, &t, MapRequest::new(va, va, len, RW)).unwrap();
    assert_eq!(
        sizes(&walk_all(&M4, &t)),
        vec![
            (va, K4, PageSize::SIZE_4K),
            (G1 - M2, M2, PageSize::SIZE_2M),
            (G1, G1, PageSize::SIZE_1G),
            (2 * G1, K4, PageSize::SIZE_4K),
        ]
    );
}

#[test]
fn map_respects_a_forced_page_size_and_pa_alignment() {
    let t = memory();
    vmem::map(
        &M4,
        &t,
        MapRequest::new(0, 0, G1, RW).max_page_size(PageSize::SIZE_2M),
    )
    .unwrap();
    assert_eq!(sizes(&walk_all(&M4, &t)), vec![(0, G1, PageSize::SIZE_2M)]);

    // A 2M-aligned VA whose PA is only 4K-aligned must use 4K pages.
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(M2, K4, M2, RW)).unwrap();
    assert_eq!(sizes(&walk_all(&M4, &t)), vec![(M2, M2, PageSize::SIZE_4K)]);
}

#[test]
fn contiguous_4k_pages_coalesce_into_one_mapping() {
    let t = memory();
    vmem::map(
        &M4,
        &t,
        MapRequest::new(HIGH, 0x1000_0000, G1, RX).max_page_size(PageSize::SIZE_4K),
    )
    .unwrap();
    let all = walk_all(&M4, &t);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].len, G1);
    assert_eq!(all[0].virt_base, HIGH);
    assert_eq!(all[0].phys_base, 0x1000_0000);
    assert_eq!(all[0].kind, RX);
}

#[test]
fn remapping_part_of_a_huge_page_splits_it() {
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(0, 0, G1, RW)).unwrap();
    // Remap one 4K page in the middle of the 1G page.
    let hole = 5 * M2 + 3 * K4;
    vmem::map(&M4, &t, MapRequest::new(hole, 0x7700_0000, K4, RO)).unwrap();
    let all = walk_all(&M4, &t);
    assert_eq!(
        sizes(&all),
        vec![
            (0, 5 * M2, PageSize::SIZE_2M),
            (5 * M2, 3 * K4, PageSize::SIZE_4K),
            (hole, K4, PageSize::SIZE_4K),
            (hole + K4, M2 - 4 * K4, PageSize::SIZE_4K),
            (6 * M2, G1 - 6 * M2, PageSize::SIZE_2M),
        ]
    );
    // Every untouched address keeps its translation.
    for va in [0, 5 * M2 + 2 * K4 + 17, hole + K4, G1 - 1] {
        let tr = vmem::translate(&M4, &t, va).result.unwrap();
        assert_eq!(tr.pa, va, "va {va:#x}");
        assert!(tr.perms.contains(Perms::WRITE));
    }
    let tr = vmem::translate(&M4, &t, hole + 5).result.unwrap();
    assert_eq!(tr.pa, 0x7700_0005);
    assert_eq!(tr.perms, Perms::READ);
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(0, 0, M2, RW)).unwrap();
    let before = walk_all(&M4, &t);
    let cases = [
        (MapRequest::new(0x1001, 0, K4, RW), "misaligned va"),
        (MapRequest::new(0, 0x10, K4, RW), "misaligned pa"),
        (MapRequest::new(0, 0, 100, RW), "misaligned len"),
        (MapRequest::new(0, 0, 0, RW), "empty"),
        (
            MapRequest::new(u64::MAX - 0xfff, 0, 2 * K4, RW),
            "va overflow",
        ),
        (
            MapRequest::new(0, u64::MAX - 0xfff, 2 * K4, RW),
            "pa overflow",
        ),
        (
            MapRequest::new(0x0000_8000_0000_0000, 0, K4, RW),
            "non-canonical",
        ),
        (
            MapRequest::new(0x0000_7fff_ffff_f000, 0, 2 * K4, RW),
            "crosses the hole",
        ),
        (MapRequest::new(0, 1 << 52, K4, RW), "pa beyond 52 bits"),
        (
            MapRequest::new(0, 0, K4, RW).max_page_size(PageSize(512)),
            "page too small",
        ),
    ];
    for (mapping, what) in cases {
        let err = vmem::map(&M4, &t, mapping).unwrap_err();
        assert!(!err.to_string().is_empty(), "{what}");
    }
    assert!(matches!(
        vmem::unmap(&M4, &t, 0x0000_8000_0000_0000, K4),
        Err(MapError::NonCanonical { .. })
    ));
    assert!(matches!(
        vmem::protect(&M4, &t, 0, K4, MappingKind::Unmapped, false),
        Err(MapError::BadKind)
    ));
    assert_eq!(walk_all(&M4, &t), before);
}

#[test]
fn unmap_and_protect_split_huge_pages() {
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(HIGH, 0, 2 * M2, RWX)).unwrap();
    vmem::unmap(&M4, &t, HIGH + K4, K4).unwrap();
    vmem::protect(&M4, &t, HIGH + M2 + M2 / 2, M2 / 2, RO, true).unwrap();
    let all = walk_all(&M4, &t);
    assert_eq!(
        sizes(&all),
        vec![
            (HIGH, K4, PageSize::SIZE_4K),
            // The split halves of both 2M pages continue each other.
            (HIGH + 2 * K4, M2 - 2 * K4 + M2 / 2, PageSize::SIZE_4K),
            (HIGH + M2 + M2 / 2, M2 / 2, PageSize::SIZE_4K),
        ]
    );
    assert_eq!(all[2].kind, RO);
    assert!(all[2].user_accessible);
    assert_eq!(all[1].kind, RWX);
    assert!(matches!(
        vmem::translate(&M4, &t, HIGH + K4).result,
        Err(TranslateFault::NotPresent(at)) if at.level == 3
    ));
    // Unmapping a whole region drops it entirely.
    vmem::unmap(&M4, &t, HIGH, 2 * M2).unwrap();
    assert!(walk_all(&M4, &t).is_empty());
}

#[test]
fn cow_is_marked_and_reported() {
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(0x40_0000, 0x40_0000, 4 * K4, COW)).unwrap();
    let all = walk_all(&M4, &t);
    assert_eq!(all[0].kind, COW);
    let tr = vmem::translate(&M4, &t, 0x40_0000);
    let leaf = tr.steps().last().unwrap();
    assert_ne!(leaf.raw & (1 << 11), 0, "software bit 11 marks CoW");
    assert_eq!(leaf.raw & 2, 0, "CoW pages are read-only");
    vmem::protect(&M4, &t, 0x40_0000, K4, RW, false).unwrap();
    assert_eq!(walk_all(&M4, &t)[0].kind, RW);
}

#[test]
fn attributes_are_reported_and_split_coalescing() {
    let t = memory();
    let all_flags = Flags::GLOBAL
        | Flags::ACCESSED
        | Flags::DIRTY
        | Flags::WRITE_THROUGH
        | Flags::CACHE_DISABLE
        | Flags::PAT;
    for size in [PageSize::SIZE_4K, PageSize::SIZE_2M, PageSize::SIZE_1G] {
        let t = memory();
        vmem::map(
            &M4,
            &t,
            MapRequest::new(G1, G1, G1, RW)
                .with_flags(all_flags)
                .max_page_size(size),
        )
        .unwrap();
        let m = walk_all(&M4, &t);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].flags, m[0].page_size), (all_flags, size));
    }
    vmem::map(
        &M4,
        &t,
        MapRequest::new(0, 0, K4, RW).with_flags(Flags::GLOBAL),
    )
    .unwrap();
    vmem::map(&M4, &t, MapRequest::new(K4, K4, K4, RW)).unwrap();
    assert_eq!(walk_all(&M4, &t).len(), 2, "different flags never merge");
}

#[test]
fn effective_rights_combine_every_level() {
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(0, 0, 2 * K4, RWX).user()).unwrap();
    // Clear W and U and set NX in the PDPT entry above the two pages.
    let tr = vmem::translate(&M4, &t, 0);
    let pdpte = tr.steps()[1];
    let restricted = (pdpte.raw & !0b110) | (1 << 63);
    assert!(t
        .write_entry(pdpte.at.table + pdpte.at.index * 8, restricted)
        .unwrap()
        .is_none());
    let all = walk_all(&M4, &t);
    assert_eq!(all[0].kind, RO);
    assert!(!all[0].user_accessible);
    assert_eq!(
        vmem::translate(&M4, &t, 0).result.unwrap().perms,
        Perms::READ
    );
    assert!(matches!(
        vmem::translate(&M4, &t, 0).steps()[1].descriptor,
        Descriptor::Table { allowed, .. } if allowed == Perms::READ
    ));

    // Mapping RW+user at page 0 widens the PDPT entry but pushes its old
    // restriction down so page 1 stays read-only supervisor no-exec.
    vmem::map(&M4, &t, MapRequest::new(0, 0, K4, RW).user()).unwrap();
    let all = walk_all(&M4, &t);
    assert_eq!((all[0].kind, all[0].user_accessible), (RW, true));
    assert_eq!((all[1].kind, all[1].user_accessible), (RO, false));
}

#[test]
fn translate_reports_the_chain_and_where_it_stops() {
    let t = memory();
    vmem::map(&M4, &t, MapRequest::new(HIGH, 0x20_0000, M2, RX)).unwrap();
    let tr = vmem::translate(&M4, &t, HIGH + 0x1234);
    let steps = tr.steps();
    assert_eq!(steps.len(), 3, "PML4, PDPT, PD leaf");
    assert_eq!(steps[0].at.index, 511);
    assert_eq!(steps[1].at.index, 510);
    assert_eq!(steps[2].at.index, 0);
    assert_eq!(steps[0].at.table, t.root_table());
    let ok = tr.result.unwrap();
    assert_eq!(
        (ok.pa, ok.page_size, ok.level),
        (0x20_1234, PageSize::SIZE_2M, 2)
    );
    assert_eq!(M4.level_name(steps[2].at.level), "PD");

    let miss = vmem::translate(&M4, &t, 0x1000);
    assert!(matches!(miss.result, Err(TranslateFault::NotPresent(at)) if at.level == 0));
    assert_eq!(miss.steps().len(), 1);
    let miss = vmem::translate(&M4, &t, HIGH + M2);
    assert!(matches!(miss.result, Err(TranslateFault::NotPresent(at)) if at.level == 2));
    assert!(matches!(
        vmem::translate(&M4, &t, 0x0000_9000_0000_0000).result,
        Err(TranslateFault::NonCanonical {
            va: 0x0000_9000_0000_0000
        })
    ));
}

#[test]
fn five_level_paging_reaches_57_bit_addresses() {
    let m5 = Amd64::FIVE_LEVEL;
    let t = memory();
    let top = 0xff00_0000_0000_0000u64; // lowest upper-half address with LA57
    let low = 0x00ff_ffff_ffe0_0000u64; // top 2M of the lower half
    vmem::map(&m5, &t, MapRequest::new(top, G1, G1, RW)).unwrap();
    vmem::map(&m5, &t, MapRequest::new(low, 0, M2, RO)).unwrap();
    assert_eq!(
        sizes(&walk_all(&m5, &t)),
        vec![(low, M2, PageSize::SIZE_2M), (top, G1, PageSize::SIZE_1G)]
    );
    let tr = vmem::translate(&m5, &t, top + 5);
    assert_eq!(tr.steps().len(), 3);
    assert_eq!(tr.result.unwrap().pa, G1 + 5);
    assert!(vmem::map(&m5, &t, MapRequest::new(0x0100_0000_0000_0000, 0, K4, RW)).is_err());
}

#[test]
fn virt_to_phys_limits_to_the_range() {
    let t = memory();
    vmem::map(
        &M4,
        &t,
        MapRequest::new(0, 0, 4 * M2, RW).max_page_size(PageSize::SIZE_4K),
    )
    .unwrap();
    vmem::map(&M4, &t, MapRequest::new(HIGH, 0, K4, RW)).unwrap();
    let part: Vec<_> = vmem::virt_to_phys(&M4, &t, M2, M2)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sizes(&part), vec![(M2, M2, PageSize::SIZE_4K)]);
    // A range in the hole sees nothing; a range from the hole to the top
    // sees the upper half.
    assert_eq!(vmem::virt_to_phys(&M4, &t, 1 << 47, 1 << 40).count(), 0);
    let upper: Vec<_> = vmem::virt_to_phys(&M4, &t, 1 << 47, u64::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sizes(&upper), vec![(HIGH, K4, PageSize::SIZE_4K)]);
    assert_eq!(vmem::virt_to_phys(&M4, &t, 0, 0).count(), 0);
}

#[test]
fn pool_exhaustion_is_an_error_not_a_panic() {
    let t = memory_of(3 * 4096); // root + 2 tables
    let err = vmem::map(&M4, &t, MapRequest::new(0, 0, K4, RW)).unwrap_err();
    assert!(matches!(err, MapError::Alloc { level: 3, .. }), "{err:?}");
}

/// The older request, a `Mapping` whose `page_size` caps the leaves, still
/// maps exactly what the `MapRequest` does.
#[test]
#[allow(deprecated)]
fn a_mapping_given_to_map_reads_as_the_request_it_was() {
    let old = memory();
    let old_style = Mapping::new(HIGH, 0x20_0000, 2 * M2, RW)
        .user()
        .with_flags(Flags::GLOBAL)
        .max_page_size(PageSize::SIZE_4K);
    vmem::map(&M4, &old, &old_style).unwrap();
    let new = memory();
    let request = MapRequest::new(HIGH, 0x20_0000, 2 * M2, RW)
        .user()
        .with_flags(Flags::GLOBAL)
        .max_page_size(PageSize::SIZE_4K);
    vmem::map(&M4, &new, request).unwrap();
    let walked = walk_all(&M4, &new);
    assert_eq!(walk_all(&M4, &old), walked);
    assert_eq!(sizes(&walked), vec![(HIGH, 2 * M2, PageSize::SIZE_4K)]);
    assert!(walked[0].user_accessible && walked[0].flags.contains(Flags::GLOBAL));
}
