//! [`Recorder`]: guest tables that note their own pages as a walk reads
//! them (the audit's "page tables mapped writable", the scan's confirming
//! walks).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use crate::target::machine::memory::GuestTables;
use crate::vmem::{MemoryError, PageTableEntry, PhysAddr, TableReadOps};

/// The page tables' own pages, noted as the walk reads their entries.
pub(crate) struct Recorder<'a> {
    tables: GuestTables<'a>,
    pages: RefCell<BTreeSet<PhysAddr>>,
    /// The page of the last entry read (a walk reads a table's entries in
    /// a row: one set insertion per table, not per entry).
    last: Cell<PhysAddr>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(tables: GuestTables<'a>) -> Self {
        Recorder {
            tables,
            pages: RefCell::default(),
            last: Cell::new(PhysAddr::MAX),
        }
    }

    /// The table pages read so far.
    pub(crate) fn into_pages(self) -> BTreeSet<PhysAddr> {
        self.pages.into_inner()
    }
}

impl TableReadOps for Recorder<'_> {
    type TableAddr = PhysAddr;

    fn entry_addr(addr: PhysAddr, entry_offset: u64) -> PhysAddr {
        addr.wrapping_add(entry_offset)
    }

    fn read_entry(&self, addr: PhysAddr) -> Result<PageTableEntry, MemoryError> {
        let page = addr & !0xfff;
        if self.last.replace(page) != page {
            self.pages.borrow_mut().insert(page);
        }
        self.tables.read_entry(addr)
    }

    fn to_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn from_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn root_table(&self) -> PhysAddr {
        self.tables.root_table()
    }
}
