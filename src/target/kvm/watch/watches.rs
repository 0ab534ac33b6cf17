//! What the debugger watches for, as one component: planted breakpoints,
//! page-trap watchpoints, watched translations (`vmem watch`) and the
//! debug-register slots.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::target::kvm::watch::debug_registers::DebugRegs;
use crate::target::kvm::watch::memslots::Trap;
use crate::target::kvm::watch::page_watchpoints::Watchpoints;
use crate::target::kvm::watch::planted_breakpoints::Breakpoints;
use crate::target::kvm::watch::table_watches::{Remap, TableWatches};
use crate::target::machine::memory::GuestRam;
use crate::target::sync::{read, write};
use crate::vmem::PhysAddr;

/// Breakpoints, watchpoints, watched translations and debug registers.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    breakpoints: RwLock<Breakpoints>,
    watchpoints: RwLock<Watchpoints>,
    table_watches: RwLock<TableWatches>,
    debug_regs: RwLock<DebugRegs>,
}

impl Watches {
    pub(crate) fn breakpoints(&self) -> RwLockReadGuard<'_, Breakpoints> {
        read(&self.breakpoints)
    }

    pub(crate) fn breakpoints_mut(&self) -> RwLockWriteGuard<'_, Breakpoints> {
        write(&self.breakpoints)
    }

    pub(crate) fn watchpoints(&self) -> RwLockReadGuard<'_, Watchpoints> {
        read(&self.watchpoints)
    }

    pub(crate) fn watchpoints_mut(&self) -> RwLockWriteGuard<'_, Watchpoints> {
        write(&self.watchpoints)
    }

    pub(crate) fn debug_regs(&self) -> RwLockReadGuard<'_, DebugRegs> {
        read(&self.debug_regs)
    }

    pub(crate) fn debug_regs_mut(&self) -> RwLockWriteGuard<'_, DebugRegs> {
        write(&self.debug_regs)
    }

    pub(crate) fn table_watches(&self) -> RwLockReadGuard<'_, TableWatches> {
        read(&self.table_watches)
    }

    pub(crate) fn table_watches_mut(&self) -> RwLockWriteGuard<'_, TableWatches> {
        write(&self.table_watches)
    }

    /// Remove every breakpoint and watch (the session ended); their
    /// `int3`s are taken out of `memory`.
    pub(crate) fn clear(&self, memory: &GuestRam) {
        self.breakpoints_mut().clear(memory);
        self.watchpoints_mut().clear();
        self.table_watches_mut().clear();
        self.debug_regs_mut().clear();
    }

    /// Whether `gpa` is on a page trapped for a watchpoint or a watched
    /// translation.
    pub(crate) fn traps(&self, gpa: u64) -> bool {
        let watches = self.watchpoints();
        let tables = self.table_watches();
        (!watches.is_empty() && watches.traps(gpa)) || (!tables.is_empty() && tables.traps(gpa))
    }

    /// The pages to trap: the watchpoints' pages and, for writes, the
    /// table pages on the watched translations' paths.
    pub(crate) fn trapped_pages(&self) -> BTreeMap<PhysAddr, Trap> {
        let mut pages = self.watchpoints().pages();
        for page in self.table_watches().pages() {
            pages.entry(page).or_insert(Trap::Writes);
        }
        pages
    }

    /// The guest wrote `gpa` on a trapped page (already in RAM): the
    /// watched translation it changed, and whether the watched tables
    /// moved (their traps must follow).
    pub(crate) fn table_written(&self, memory: &GuestRam, gpa: u64) -> (Option<Remap>, bool) {
        if self.table_watches().is_empty() {
            return (None, false);
        }
        self.table_watches_mut().written(memory, gpa)
    }
}
