//! Hostile tables: entries outside memory, loops, and exponential fan-out
//! give errors and end; nothing panics.

mod support;

use support::*;
use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::vmem::{
    self, EntryLocation, MapError, Mapping, TableOps, TableReadOps, TranslateFault, WalkError,
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
    vmem::map(&M4, &t, &Mapping::new(0xffff_ff80_0000_0000, 0, 0x1000, RW)).unwrap();
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
        vmem::map(&M4, &t, &Mapping::new(3 << 39, 0, 0x1000, RW)),
        Err(MapError::Walk(WalkError::Unreadable(_)))
    ));
}

#[test]
fn a_table_pointing_to_itself_or_an_ancestor_is_a_loop() {
    let t = memory_of(1 << 20);
    let root = t.root_table();
    vmem::map(&M4, &t, &Mapping::new(0x1000, 0x1000, 0x1000, RW)).unwrap();
    let pdpt = vmem::translate(&M4, &t, 0x1000).steps()[1].at.table;
    // Recursive self-map in the root, and a PDPT entry back to the root.
    poke(&t, root, 510, root | PRESENT_RW);
    poke(&t, pdpt, 7, root | PRESENT_RW);
    let items: Vec<_> = vmem::virt_to_phys(&M4, &t, 0, u64::MAX).collect();
    let loops: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            Err(WalkError::Loop { at, target }) => Some((at.level, at.index, *target)),
            _ => None,
        })
        .collect();
    assert_eq!(loops, vec![(1, 7, root), (0, 510, root)]);
    assert_eq!(items.iter().filter(|i| i.is_ok()).count(), 1);
    // Translation through a self-map is bounded by the number of levels.
    let through_self = 0xffff_ff00_0000_0000u64; // root index 510
    let tr = vmem::translate(&M4, &t, through_self);
    assert_eq!(tr.steps().len(), 4);
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
    let spaces = vmem::walk_va_spaces_bounded(&M4, &t, &[root], 10_000);
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
            raw: 0x1083
        })]
    );
    assert!(matches!(
        vmem::translate(&M4, &t, 0).result,
        Err(TranslateFault::Reserved(at)) if at.level == 0
    ));
    assert!(vmem::map(&M4, &t, &Mapping::new(0, 0, 0x1000, RW)).is_err());
}
