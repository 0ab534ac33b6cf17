//! `monitor vmem watch VA`: stop when the translation of a virtual address
//! changes. The table pages on VA's walk path are trapped for writes (the
//! memslot traps watchpoints use); each trapped write is served, VA is
//! walked again, the trapped path follows the tables if they moved, and a
//! stop is reported only when where VA goes, or with what rights, changed.

use std::collections::BTreeSet;
use std::fmt;

use log::debug;

use crate::target::kvm::watch::memslots::PAGE;
use crate::target::machine::memory::{GuestRam, GuestTables};
use crate::target::machine::paging::GuestFormat;
use crate::vmem::{self, HumanBytes, Perms, PhysAddr, Rights};

/// Where a watched address goes: its physical address and rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub pa: PhysAddr,
    pub perms: Perms,
    pub rights: Rights,
    pub page: u64,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PA {:#x} {} ({} page)",
            self.pa,
            self.perms,
            HumanBytes(self.page)
        )
    }
}

/// What a watched translation was, is, and which table write changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remap {
    pub va: u64,
    pub root: PhysAddr,
    pub old: Option<Target>,
    pub new: Option<Target>,
    /// The guest-physical address the guest wrote.
    pub written: PhysAddr,
}

impl fmt::Display for Remap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |t: Option<Target>| t.map_or("not mapped".to_string(), |t| t.to_string());
        write!(
            f,
            "vmem watch: the translation of {:#x} in space {:#x} changed (table write at PA {:#x}): was {}, now {}",
            self.va,
            self.root,
            self.written,
            show(self.old),
            show(self.new)
        )
    }
}

/// One watched address.
#[derive(Debug, Clone)]
struct Watched {
    va: u64,
    root: PhysAddr,
    format: GuestFormat,
    /// The table pages VA's walk reads.
    path: Vec<PhysAddr>,
    now: Option<Target>,
}

impl Watched {
    /// Walk VA again: where it goes and the pages of its path.
    fn walk(&self, memory: &GuestRam) -> (Option<Target>, Vec<PhysAddr>) {
        let tables = GuestTables::new(memory, self.root, None);
        let tr = vmem::translate(self.format.as_dyn(), &tables, self.va);
        let mut path: Vec<PhysAddr> = tr
            .steps()
            .iter()
            .map(|s| s.at.table & !(PAGE - 1))
            .collect();
        path.dedup();
        let target = tr.result.ok().map(|t| Target {
            pa: t.pa,
            perms: t.perms,
            rights: t.rights,
            page: t.page_size.bytes(),
        });
        (target, path)
    }
}

/// The watched translations of a session.
#[derive(Debug, Default)]
pub(crate) struct TableWatches {
    list: Vec<Watched>,
}

impl TableWatches {
    /// Watch `va` in the space at `root`; returns where it goes now.
    pub(crate) fn add(
        &mut self,
        memory: &GuestRam,
        va: u64,
        root: PhysAddr,
        format: GuestFormat,
    ) -> (Option<Target>, usize) {
        self.list.retain(|w| (w.va, w.root) != (va, root));
        let mut watched = Watched {
            va,
            root,
            format,
            path: Vec::new(),
            now: None,
        };
        (watched.now, watched.path) = watched.walk(memory);
        let result = (watched.now, watched.path.len());
        self.list.push(watched);
        result
    }

    /// Stop watching `va` (every space), or everything; how many stopped.
    pub(crate) fn remove(&mut self, va: Option<u64>) -> usize {
        let before = self.list.len();
        self.list.retain(|w| va.is_some_and(|va| va != w.va));
        before - self.list.len()
    }

    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// (VA, root, where it goes) of every watch.
    pub(crate) fn list(&self) -> Vec<(u64, PhysAddr, Option<Target>)> {
        self.list.iter().map(|w| (w.va, w.root, w.now)).collect()
    }

    /// Every table page to trap for writes.
    pub(crate) fn pages(&self) -> BTreeSet<PhysAddr> {
        self.list
            .iter()
            .flat_map(|w| w.path.iter().copied())
            .collect()
    }

    /// Whether `gpa` is on a trapped table page.
    pub(crate) fn traps(&self, gpa: PhysAddr) -> bool {
        let page = gpa & !(PAGE - 1);
        self.list.iter().any(|w| w.path.contains(&page))
    }

    /// After the guest wrote `gpa` (already in RAM): walk the watches whose
    /// path holds it again. Returns the first translation that changed, and
    /// whether some path moved (the traps must follow).
    pub(crate) fn written(&mut self, memory: &GuestRam, gpa: PhysAddr) -> (Option<Remap>, bool) {
        let page = gpa & !(PAGE - 1);
        let (mut remap, mut moved) = (None, false);
        for w in self.list.iter_mut().filter(|w| w.path.contains(&page)) {
            let (now, path) = w.walk(memory);
            moved |= path != w.path;
            w.path = path;
            if now != w.now {
                debug!(
                    "vmem watch {:#x}: {:x?} -> {:x?} after a write at {gpa:#x}",
                    w.va, w.now, now
                );
                remap = remap.or(Some(Remap {
                    va: w.va,
                    root: w.root,
                    old: w.now,
                    new: now,
                    written: gpa,
                }));
                w.now = now;
            }
        }
        (remap, moved)
    }
}
