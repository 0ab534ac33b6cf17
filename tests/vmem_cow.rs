//! `MayMoveTable`: tables in a read-only snapshot move when written, every
//! ancestor up to the root is rewritten, and `update_root` is called.

mod support;

use std::cell::{Cell, RefCell};

use support::*;
use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::vmem::{
    self, AllocError, BufferTables, MapRequest, MayMoveTable, MemoryError, MoveInfo, PhysAddr,
    TableOps, TableReadOps,
};

const M4: Amd64 = Amd64::FOUR_LEVEL;
const SNAPSHOT_END: u64 = 1 << 20;

/// Tables below `SNAPSHOT_END` are a read-only snapshot: writing one copies
/// it to fresh memory first.
struct CowTables {
    inner: BufferTables<Vec<u8>>,
    copies: RefCell<Vec<(PhysAddr, PhysAddr)>>,
    root_updates: Cell<u32>,
}

impl TableReadOps for CowTables {
    type TableAddr = PhysAddr;
    fn entry_addr(addr: PhysAddr, offset: u64) -> PhysAddr {
        addr + offset
    }
    fn read_entry(&self, addr: PhysAddr) -> Result<u64, MemoryError> {
        self.inner.read_entry(addr)
    }
    fn to_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }
    fn from_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }
    fn root_table(&self) -> PhysAddr {
        self.inner.root_table()
    }
}

impl TableOps for CowTables {
    type TableMovability = MayMoveTable;
    fn alloc_table(&self) -> Result<PhysAddr, AllocError> {
        self.inner.alloc_table()
    }
    fn write_entry(&self, addr: PhysAddr, entry: u64) -> Result<Option<PhysAddr>, MemoryError> {
        if addr >= SNAPSHOT_END {
            // The inner accessor never moves tables.
            return self.inner.write_entry(addr, entry).map(|_| None);
        }
        let old = addr & !0xfff;
        let new = self.inner.alloc_table().map_err(|_| MemoryError { addr })?;
        for i in 0..512 {
            let value = self.inner.read_entry(old + i * 8)?;
            self.inner.write_entry(new + i * 8, value)?;
        }
        self.inner.write_entry(new + (addr & 0xfff), entry)?;
        self.copies.borrow_mut().push((old, new));
        Ok(Some(new))
    }
    fn update_root(&self, new_root: MoveInfo<Self>) {
        self.root_updates.set(self.root_updates.get() + 1);
        self.inner.set_root(new_root);
    }
}

#[test]
fn writing_a_snapshot_table_moves_it_and_its_ancestors() {
    // Build a space in the snapshot region with an ordinary accessor.
    let mem = vec![0u8; 64 << 20];
    let snap = BufferTables::new(mem, 0, 0..SNAPSHOT_END).unwrap();
    let high = 0xffff_ffff_8000_0000u64;
    vmem::map(&M4, &snap, MapRequest::new(high, 0x20_0000, 0x4000, RX)).unwrap();
    vmem::map(&M4, &snap, MapRequest::new(0x1000, 0x9000, 0x1000, RW)).unwrap();
    let old_root = snap.root_table();
    let before = walk_all(&M4, &snap);
    let image_before: Vec<u8> = snap
        .with_bytes(0, SNAPSHOT_END as usize, |b| b.to_vec())
        .unwrap();

    // Now write through the copy-on-write accessor, allocating above it.
    let inner =
        BufferTables::with_root(snap.into_inner(), 0, SNAPSHOT_END..64 << 20, old_root).unwrap();
    let cow = CowTables {
        inner,
        copies: RefCell::new(Vec::new()),
        root_updates: Cell::new(0),
    };
    // Remap one page inside the existing 4 KiB table of the kernel range.
    vmem::map(
        &M4,
        &cow,
        MapRequest::new(high + 0x1000, 0x77_7000, 0x1000, RW),
    )
    .unwrap();

    // PT, PD, PDPT and PML4 were each copied once, and the root moved.
    assert_eq!(cow.copies.borrow().len(), 4, "{:x?}", cow.copies.borrow());
    assert_eq!(cow.root_updates.get(), 1);
    let new_root = cow.root_table();
    assert_ne!(new_root, old_root);
    assert!(new_root >= SNAPSHOT_END);
    // Every table on the path of the changed page now lives outside the
    // snapshot; the snapshot bytes are untouched.
    let tr = vmem::translate(&M4, &cow, high + 0x1000);
    assert!(tr.steps().iter().all(|s| s.at.table >= SNAPSHOT_END));
    assert_eq!(tr.result.unwrap().pa, 0x77_7000);
    let image_after: Vec<u8> = cow
        .inner
        .with_bytes(0, SNAPSHOT_END as usize, |b| b.to_vec())
        .unwrap();
    assert!(image_before == image_after, "the snapshot was written");

    // The rest of the space still translates as before; the old root still
    // describes the old space.
    let after = walk_all(&M4, &cow);
    assert_eq!(after.len(), before.len() + 2, "{after:x?}");
    assert_eq!(after[0], before[0], "the user page is unchanged");
    cow.inner.set_root(old_root);
    assert_eq!(walk_all(&M4, &cow.inner), before);
    cow.inner.set_root(new_root);

    // A second write to the same tables moves nothing more.
    vmem::map(
        &M4,
        &cow,
        MapRequest::new(high + 0x2000, 0x77_8000, 0x1000, RW),
    )
    .unwrap();
    assert_eq!(cow.copies.borrow().len(), 4);
    assert_eq!(cow.root_updates.get(), 1);
    // A write under the untouched user half copies only its PDPT/PD/PT.
    vmem::unmap(&M4, &cow, 0x1000, 0x1000).unwrap();
    assert_eq!(cow.copies.borrow().len(), 7);
    assert_eq!(cow.root_updates.get(), 1);
    assert!(vmem::translate(&M4, &cow, 0x1000).result.is_err());
}
