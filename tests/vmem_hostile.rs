//! Hostile tables: entries outside memory, loops, and exponential fan-out
//! give errors and end; nothing panics.

mod support;

use support::*;
use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::vmem::{
    self, EntryLocation, Flags, MapError, MapRequest, TableOps, TableReadOps, TranslateFault,
    WalkError,
};

const M4: Amd64 = Amd64::FOUR_LEVEL;
const PRESENT_RW: u64 = 0b11;

fn poke(t: &impl TableOps<TableAddr = u64>, table: u64, index: u64, value: u64) {
    assert!(t.write_entry(table + index * 8, value).unwrap().is_none());
}

#[test]
fn entries_outside_memory_are_errors_and_the_walk_goes_on() {
    let t = memory_of(1 << 20);
    let root = t.root_table();
    vmem::map(
        &M4,
        &t,
        MapRequest::new(0xffff_ff80_0000_0000, 0, 0x1000, RW),
    )
    .unwrap();
    poke(&t, root, 3, 0x000f_ffff_ffff_f000 | PRESENT_RW);
    poke(&t, root, 4, (1 << 20) | PRESENT_RW); // just past the end
    let items: Vec<_> = vmem::virt_to_phys(&M4, &t, 0, u64::MAX).collect();
    assert_eq!(items.len(), 3, "{items:x?}");
    assert_eq!(
        items[0],
        Err(WalkError::Unreadable(EntryLocation {
            level: 1,
            table: 0x000f_ffff_ffff_f000,
            index: 0
        }))
    );
    assert!(matches!(items[1], Err(WalkError::Unreadable(at)) if at.table == 1 << 20));
    assert!(
        items[2].is_ok(),
        "the valid mapping after the bad entries is still found"
    );
    assert!(matches!(
        vmem::translate(&M4, &t, 3 << 39).result,
        Err(TranslateFault::Unreadable(at)) if at.level == 1
    ));
    // Writing below a bad entry fails cleanly too.
    assert!(matches!(
        vmem::map(&M4, &t, MapRequest::new(3 << 39, 0, 0x1000, RW)),
        Err(MapError::Walk(WalkError::Unreadable(_)))
    ));
}

#[test]
fn tables_reused_on_their_own_path_translate_as_the_mmu_does() {
    let t = memory_of(1 << 20);
    let root = t.root_table();
    vmem::map(&M4, &t, MapRequest::new(0x1000, 0x1000, 0x1000, RW)).unwrap();
    let pdpt = vmem::translate(&M4, &t, 0x1000).steps()[1].at.table;
    // Recursive self-map in the root, and a PDPT entry back to the root.
    poke(&t, root, 510, root | PRESENT_RW);
    poke(&t, pdpt, 7, root | PRESENT_RW);
    let items: Vec<_> = vmem::virt_to_phys(&M4, &t, 0, u64::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    // The ordinary page, unmarked; then pages that are tables, marked.
    let plain: Vec<_> = items
        .iter()
        .filter(|m| !m.flags.contains(Flags::SELF_MAP))
        .collect();
    assert_eq!(plain.len(), 1);
    assert_eq!((plain[0].virt_base, plain[0].phys_base), (0x1000, 0x1000));
    // Through root[510] four times: the root's own page.
    let self_va = 0xffff_ff7f_bfdf_e000u64;
    let tr = vmem::translate(&M4, &t, self_va).result.unwrap();
    assert_eq!(tr.pa, root);
    assert!(tr.flags.contains(Flags::SELF_MAP));
    let seen = items
        .iter()
        .find(|m| m.virt_base <= self_va && self_va <= m.virt_last())
        .expect("the walk shows the self-mapped root");
    assert_eq!(seen.phys_base + (self_va - seen.virt_base), root);
    // PDPT[7] -> root used as a PD: root[0] (the PDPT) read as a PT maps
    // the PD's page at 7 GiB.
    let pd = vmem::translate(&M4, &t, 0x1000).steps()[2].at.table;
    assert_eq!(vmem::translate(&M4, &t, 7 << 30).result.unwrap().pa, pd);
    assert!(items
        .iter()
        .all(|m| m.virt_base == 0x1000 || m.flags.contains(Flags::SELF_MAP)));
}

#[test]
fn exponential_fan_out_is_cut_by_the_budget() {
    // Four tables; every entry of each points to the next: 512^3 paths.
    let t = memory_of(1 << 20);
    let tables: Vec<u64> = (0..3).map(|_| t.alloc_table().unwrap()).collect();
    let root = t.root_table();
    for i in 0..512 {
        poke(&t, root, i, tables[0] | PRESENT_RW);
        poke(&t, tables[0], i, tables[1] | PRESENT_RW);
        poke(&t, tables[1], i, tables[2] | PRESENT_RW);
        poke(&t, tables[2], i, (i << 12) | PRESENT_RW);
    }
    let mut walk = vmem::virt_to_phys(&M4, &t, 0, u64::MAX).with_budget(100_000);
    let last = walk.by_ref().last().unwrap();
    assert_eq!(last, Err(WalkError::BudgetExhausted { visited: 100_000 }));
    assert_eq!(walk.entries_visited(), 100_000);
    // A small range only reads the entries covering it.
    let mut small = vmem::virt_to_phys(&M4, &t, 0x20_0000, 0x1000);
    assert_eq!(small.by_ref().count(), 1);
    assert_eq!(small.entries_visited(), 4);
    let spaces = vmem::walk_va_spaces(&M4, &t, &[root])
        .with_budget(10_000)
        .collect::<Vec<_>>();
    assert_eq!(
        spaces[0].errors,
        vec![WalkError::BudgetExhausted { visited: 10_000 }]
    );
}

#[test]
fn reserved_bits_are_reported_with_their_entry() {
    let t = memory_of(1 << 20);
    let root = t.root_table();
    poke(&t, root, 0, 0x1000 | 0x80 | PRESENT_RW); // PS in a PML4E
    let items: Vec<_> = vmem::virt_to_phys(&M4, &t, 0, u64::MAX).collect();
    assert_eq!(
        items,
        vec![Err(WalkError::Reserved {
            at: EntryLocation {
                level: 0,
                table: root,
                index: 0
            },
            raw: 0x1083,
            bits: 0x80
        })]
    );
    assert!(matches!(
        vmem::translate(&M4, &t, 0).result,
        Err(TranslateFault::Reserved { at, bits: 0x80, .. }) if at.level == 0
    ));
    assert!(vmem::map(&M4, &t, MapRequest::new(0, 0, 0x1000, RW)).is_err());
}
