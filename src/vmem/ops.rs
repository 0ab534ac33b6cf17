//! How the vmem code reaches page tables: the accessor traits.
//!
//! Tables can live anywhere: in guest RAM seen from a hypervisor, in a
//! read-only snapshot, in the running kernel's own memory. The walker only
//! ever touches them through these traits, so a hostile entry can at worst
//! make an accessor return an error.

use super::error::{AllocError, MemoryError};
use super::{PageTableEntry, PhysAddr};

/// Read access to page tables.
pub trait TableReadOps {
    /// How the accessor names a table (often just its physical address).
    type TableAddr: Copy + PartialEq + core::fmt::Debug;

    /// The address of the entry `entry_offset` **bytes** into `addr`'s table.
    fn entry_addr(addr: Self::TableAddr, entry_offset: u64) -> Self::TableAddr;

    /// Read one 64-bit entry. Fails (never panics) when `addr` is not
    /// backed by memory.
    fn read_entry(&self, addr: Self::TableAddr) -> Result<PageTableEntry, MemoryError>;

    /// The physical address of a table, as written into an entry.
    fn to_phys(addr: Self::TableAddr) -> PhysAddr;

    /// The table at a physical address read from an entry.
    fn from_phys(addr: PhysAddr) -> Self::TableAddr;

    /// The root table of the address space this accessor describes.
    fn root_table(&self) -> Self::TableAddr;

    /// The same tables seen from another root: every operation that reads
    /// an address space from the accessor's `root_table` reads `root`'s
    /// through this (`virt_to_phys(fmt, &tables.rooted_at(cr3), …)`).
    fn rooted_at(&self, root: Self::TableAddr) -> RootedAt<'_, Self>
    where
        Self: Sized,
    {
        RootedAt { tables: self, root }
    }
}

/// An accessor's tables from another root ([`TableReadOps::rooted_at`]).
#[derive(Debug, Clone, Copy)]
pub struct RootedAt<'a, O: TableReadOps> {
    tables: &'a O,
    root: O::TableAddr,
}

impl<O: TableReadOps> TableReadOps for RootedAt<'_, O> {
    type TableAddr = O::TableAddr;

    #[inline]
    fn entry_addr(addr: Self::TableAddr, entry_offset: u64) -> Self::TableAddr {
        O::entry_addr(addr, entry_offset)
    }

    #[inline]
    fn read_entry(&self, addr: Self::TableAddr) -> Result<PageTableEntry, MemoryError> {
        self.tables.read_entry(addr)
    }

    #[inline]
    fn to_phys(addr: Self::TableAddr) -> PhysAddr {
        O::to_phys(addr)
    }

    #[inline]
    fn from_phys(addr: PhysAddr) -> Self::TableAddr {
        O::from_phys(addr)
    }

    fn root_table(&self) -> Self::TableAddr {
        self.root
    }
}

/// Our own `!` until it is stable: the move information of accessors that
/// never move tables, so that code handling a move is statically dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Void {}

/// Marker for [`TableOps::TableMovability`]: writing an entry may move its
/// table (copy-on-write out of a read-only snapshot). The new address is
/// reported and every ancestor up to the root is rewritten.
#[derive(Debug)]
pub struct MayMoveTable {}

/// Marker for [`TableOps::TableMovability`]: tables are written in place.
/// The code that follows moved tables compiles away.
#[derive(Debug)]
pub struct MayNotMoveTable {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::MayMoveTable {}
    impl Sealed for super::MayNotMoveTable {}
}

/// What [`MayMoveTable`] and [`MayNotMoveTable`] mean for an accessor.
pub trait TableMovability<Op: TableReadOps + ?Sized>: sealed::Sealed {
    /// What a write that moved its table returns: the table's new address,
    /// or [`Void`] when tables never move.
    type TableMoveInfo: Copy;

    /// The new table address carried by a move.
    fn new_table(info: Self::TableMoveInfo) -> Op::TableAddr;
}

impl<Op: TableReadOps + ?Sized> TableMovability<Op> for MayMoveTable {
    type TableMoveInfo = Op::TableAddr;
    fn new_table(info: Op::TableAddr) -> Op::TableAddr {
        info
    }
}

impl<Op: TableReadOps + ?Sized> TableMovability<Op> for MayNotMoveTable {
    type TableMoveInfo = Void;
    fn new_table(info: Void) -> Op::TableAddr {
        match info {}
    }
}

/// The information a write returns when it moved its table.
pub type MoveInfo<Op> = <<Op as TableOps>::TableMovability as TableMovability<Op>>::TableMoveInfo;

/// Write access to page tables, used by `map`, `unmap`, `protect` and
/// `space_aware_map`.
pub trait TableOps: TableReadOps {
    /// [`MayMoveTable`] or [`MayNotMoveTable`].
    type TableMovability: TableMovability<Self>;

    /// Allocate a zeroed table.
    fn alloc_table(&self) -> Result<Self::TableAddr, AllocError>;

    /// Write one entry. If the write had to move the table holding it
    /// (copy-on-write), return the new table's address; the caller then
    /// rewrites the parent entry (and so on up to [`Self::update_root`]).
    fn write_entry(
        &self,
        addr: Self::TableAddr,
        entry: PageTableEntry,
    ) -> Result<Option<MoveInfo<Self>>, MemoryError>;

    /// The root table moved: make `new_root` the root of this space.
    fn update_root(&self, new_root: MoveInfo<Self>);
}
