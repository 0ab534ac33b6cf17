//! Watchpoints by trapping the watched guest pages through memslots.
//!
//! Debug-register data watchpoints do not fire on every KVM host (they
//! never do on kvm_pvm), so every watchpoint traps its page instead: a
//! write-only watch puts the page in a read-only memslot (writes exit as
//! MMIO, reads run normally); a read or access watch leaves the page out
//! of every memslot (all accesses exit). The vCPU loop services those
//! exits from host memory and reports a hit when the access overlaps the
//! watched bytes. This works the same on ordinary KVM.

use std::collections::BTreeMap;

use gdbstub::target::ext::breakpoints::WatchKind;
use log::debug;

use crate::target::kvm::watch::memslots::{Trap, PAGE};
use crate::target::machine::memory::GuestRam;
use crate::vmem::PhysAddr;

/// One watchpoint: gdb's address and the guest-physical bytes it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watch {
    pub va: u64,
    pub gpa: PhysAddr,
    pub len: u64,
    pub kind: WatchKind,
}

fn traps_reads(kind: WatchKind) -> bool {
    matches!(kind, WatchKind::Read | WatchKind::ReadWrite)
}

fn traps_writes(kind: WatchKind) -> bool {
    matches!(kind, WatchKind::Write | WatchKind::ReadWrite)
}

/// The watchpoints of a session.
#[derive(Debug, Default)]
pub(crate) struct Watchpoints {
    list: Vec<Watch>,
}

impl Watchpoints {
    pub(crate) fn insert(&mut self, watch: Watch) {
        self.list.push(watch);
    }

    pub(crate) fn remove(&mut self, va: u64, len: u64, kind: WatchKind) -> bool {
        let before = self.list.len();
        self.list
            .retain(|w| !(w.va == va && w.len == len && w.kind == kind));
        self.list.len() != before
    }

    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The pages to trap, and how.
    pub(crate) fn pages(&self) -> BTreeMap<PhysAddr, Trap> {
        let mut pages = BTreeMap::new();
        for w in &self.list {
            let trap = if traps_reads(w.kind) {
                Trap::All
            } else {
                Trap::Writes
            };
            let last = w.gpa.saturating_add(w.len.max(1) - 1);
            let mut page = w.gpa & !(PAGE - 1);
            while page <= last {
                let entry = pages.entry(page).or_insert(trap);
                *entry = (*entry).max(trap);
                match page.checked_add(PAGE) {
                    Some(next) => page = next,
                    None => break,
                }
            }
        }
        pages
    }

    /// Whether `gpa` lies on a trapped page.
    pub(crate) fn traps(&self, gpa: PhysAddr) -> bool {
        let page = gpa & !(PAGE - 1);
        self.list.iter().any(|w| {
            let first = w.gpa & !(PAGE - 1);
            let last = w.gpa.saturating_add(w.len.max(1) - 1) & !(PAGE - 1);
            (first..=last).contains(&page)
        })
    }

    /// The watchpoint an access of `len` bytes at `gpa` triggers.
    pub(crate) fn hit(&self, gpa: PhysAddr, len: u64, write: bool) -> Option<Watch> {
        self.list.iter().copied().find(|w| {
            let kind_matches = if write {
                traps_writes(w.kind)
            } else {
                traps_reads(w.kind)
            };
            kind_matches && gpa < w.gpa.saturating_add(w.len) && w.gpa < gpa.saturating_add(len)
        })
    }
}

/// Serve one trapped access from host memory. Returns the watchpoint it
/// triggers, if any.
pub(crate) fn serve_access(
    mem: &GuestRam,
    watches: &Watchpoints,
    gpa: PhysAddr,
    data: &mut [u8],
    write: bool,
) -> Option<Watch> {
    let result = if write {
        mem.write(gpa, data)
    } else {
        mem.read(gpa, data)
    };
    if result.is_err() {
        debug!("trapped access at {gpa:#x} outside RAM");
    }
    watches.hit(gpa, data.len() as u64, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_need_overlap_and_the_right_kind() {
        let mut w = Watchpoints::default();
        w.insert(Watch {
            va: 0xffff_0010,
            gpa: 0x5010,
            len: 8,
            kind: WatchKind::Write,
        });
        assert!(w.hit(0x5014, 4, true).is_some());
        assert!(w.hit(0x5018, 4, true).is_none());
        assert!(w.hit(0x5010, 8, false).is_none());
        assert!(w.traps(0x5ff8));
        assert!(!w.traps(0x6000));
        assert_eq!(w.pages(), BTreeMap::from([(0x5000, Trap::Writes)]));
        w.insert(Watch {
            va: 0,
            gpa: 0x5ffc,
            len: 8,
            kind: WatchKind::Read,
        });
        assert_eq!(
            w.pages(),
            BTreeMap::from([(0x5000, Trap::All), (0x6000, Trap::All)])
        );
    }
}
