//! [`BufferTables`]: page tables in a byte buffer that stands for physical
//! memory, with tables allocated from a pool inside it.

use core::cell::{Cell, RefCell};
use core::ops::Range;

use super::error::{AllocError, MemoryError};
use super::ops::{MayNotMoveTable, MoveInfo, TableOps, TableReadOps};
use super::{PageTableEntry, PhysAddr, PAGE_TABLE_SIZE};

/// Physical memory `base .. base + mem.len()` held in `mem` (any byte
/// buffer: a `Vec`, a slice of guest RAM), and a pool of physical addresses
/// inside it from which [`TableOps::alloc_table`] hands out zeroed tables.
///
/// Every access is bounds-checked: an entry pointing outside the buffer is
/// a [`MemoryError`]. Entries are little-endian.
#[derive(Debug)]
pub struct BufferTables<B> {
    mem: RefCell<B>,
    base: PhysAddr,
    next_free: Cell<PhysAddr>,
    pool_end: PhysAddr,
    root: Cell<PhysAddr>,
}

/// Why a [`BufferTables`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BufferError {
    /// The pool is not page-aligned or not inside the buffer.
    BadPool {
        /// Pool start.
        start: PhysAddr,
        /// Pool end.
        end: PhysAddr,
    },
    /// The first table of the pool (the root) could not be allocated.
    NoRoot,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> BufferTables<B> {
    /// Memory at `base`, tables from `pool`; a fresh zeroed root is taken
    /// from the pool.
    pub fn new(mem: B, base: PhysAddr, pool: Range<PhysAddr>) -> Result<Self, BufferError> {
        let tables = Self::with_root(mem, base, pool, 0)?;
        let root = tables.alloc_table().map_err(|_| BufferError::NoRoot)?;
        tables.root.set(root);
        Ok(tables)
    }

    /// Memory at `base`, tables from `pool`, existing root table at `root`.
    pub fn with_root(
        mem: B,
        base: PhysAddr,
        pool: Range<PhysAddr>,
        root: PhysAddr,
    ) -> Result<Self, BufferError> {
        let size = PAGE_TABLE_SIZE as u64;
        let end = base.checked_add(mem.as_ref().len() as u64);
        let bad = BufferError::BadPool {
            start: pool.start,
            end: pool.end,
        };
        if !pool.start.is_multiple_of(size)
            || !pool.end.is_multiple_of(size)
            || pool.start < base
            || end.is_none_or(|end| pool.end > end)
        {
            return Err(bad);
        }
        Ok(BufferTables {
            mem: RefCell::new(mem),
            base,
            next_free: Cell::new(pool.start),
            pool_end: pool.end.max(pool.start),
            root: Cell::new(root),
        })
    }

    /// Make the table at `root` the root of the space this accessor walks.
    pub fn set_root(&self, root: PhysAddr) {
        self.root.set(root);
    }

    /// The first address of the pool not handed out yet.
    pub fn pool_next(&self) -> PhysAddr {
        self.next_free.get()
    }

    /// Give back the buffer.
    pub fn into_inner(self) -> B {
        self.mem.into_inner()
    }

    /// Run `f` on the bytes `pa .. pa + len`, if all are inside the buffer.
    pub fn with_bytes<R>(
        &self,
        pa: PhysAddr,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, MemoryError> {
        let mut mem = self.mem.borrow_mut();
        let range = self.offset(pa, len, mem.as_ref().len())?;
        Ok(f(&mut mem.as_mut()[range]))
    }

    fn offset(&self, pa: PhysAddr, len: usize, size: usize) -> Result<Range<usize>, MemoryError> {
        let start = pa
            .checked_sub(self.base)
            .and_then(|off| usize::try_from(off).ok())
            .ok_or(MemoryError { addr: pa })?;
        match start.checked_add(len) {
            Some(end) if end <= size => Ok(start..end),
            _ => Err(MemoryError { addr: pa }),
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> TableReadOps for BufferTables<B> {
    type TableAddr = PhysAddr;

    fn entry_addr(addr: PhysAddr, entry_offset: u64) -> PhysAddr {
        addr.wrapping_add(entry_offset)
    }

    fn read_entry(&self, addr: PhysAddr) -> Result<PageTableEntry, MemoryError> {
        let mem = self.mem.borrow();
        let range = self.offset(addr, 8, mem.as_ref().len())?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&mem.as_ref()[range]);
        Ok(u64::from_le_bytes(bytes))
    }

    fn to_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn from_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn root_table(&self) -> PhysAddr {
        self.root.get()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> TableOps for BufferTables<B> {
    type TableMovability = MayNotMoveTable;

    fn alloc_table(&self) -> Result<PhysAddr, AllocError> {
        let table = self.next_free.get();
        let size = PAGE_TABLE_SIZE as u64;
        if self.pool_end.saturating_sub(table) < size {
            return Err(AllocError::PoolExhausted);
        }
        self.with_bytes(table, PAGE_TABLE_SIZE, |bytes| bytes.fill(0))
            .map_err(|_| AllocError::PoolExhausted)?;
        self.next_free.set(table + size);
        Ok(table)
    }

    fn write_entry(
        &self,
        addr: PhysAddr,
        entry: PageTableEntry,
    ) -> Result<Option<MoveInfo<Self>>, MemoryError> {
        self.with_bytes(addr, 8, |bytes| bytes.copy_from_slice(&entry.to_le_bytes()))?;
        Ok(None)
    }

    fn update_root(&self, new_root: MoveInfo<Self>) {
        match new_root {}
    }
}
