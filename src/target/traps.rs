//! Trapping guest pages: the memslot change watchpoints need, asked of the
//! VMM (memslots are its own), and a ready implementation for a VMM that
//! lets the debugger lay out the slots of its RAM.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use log::debug;

use super::lock;
use super::memory::{GuestRam, RamRange};
use crate::vmem::PhysAddr;

/// The granule of a trap.
pub(crate) const PAGE: u64 = 4096;

/// How a guest page is trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trap {
    /// Writes exit (`KVM_EXIT_MMIO`, the page in a read-only slot); reads
    /// run normally.
    Writes,
    /// Reads and writes exit (the page in no slot). For data pages only:
    /// code fetched from such a page cannot run.
    All,
}

/// Makes guest pages trap, for watchpoints. Memslots belong to the VMM:
/// it implements this over its own slot allocator (or uses
/// [`KvmMemslots`]). Without one, watchpoints use debug registers.
///
/// Trapped accesses reach the debugger's exit hook as MMIO exits to
/// addresses inside RAM; it serves them from guest RAM itself.
pub trait PageTraps: Send + Sync {
    /// Make exactly `pages` (4 KiB-aligned guest-physical addresses) trap
    /// as given, and every other page plain RAM again. Called only while
    /// no vCPU is inside `KVM_RUN` (the others wait before their next run),
    /// from the gdb thread or a vCPU thread handling a trapped write that
    /// moved watched tables; a slot may be deleted before its replacement
    /// is added. An error leaves the watchpoint unset.
    fn set_traps(&self, pages: &BTreeMap<PhysAddr, Trap>) -> io::Result<()>;
}

/// [`PageTraps`] by re-laying out the memslots of all guest RAM: for a
/// VMM whose RAM slots are the debugger's to manage (slot numbers from
/// `first_slot` up; the VMM uses none of them).
pub struct KvmMemslots {
    vm: Arc<VmFd>,
    ranges: Vec<RamRange>,
    first_slot: u32,
    /// Slots registered now.
    registered: Mutex<u32>,
}

impl fmt::Debug for KvmMemslots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmMemslots")
            .field("ranges", &self.ranges)
            .field("first_slot", &self.first_slot)
            .finish()
    }
}

impl KvmMemslots {
    /// Register every range of `ram` as one writable slot, numbered from
    /// `first_slot`.
    pub fn new(vm: Arc<VmFd>, ram: &GuestRam, first_slot: u32) -> io::Result<KvmMemslots> {
        let slots = KvmMemslots {
            vm,
            ranges: ram.ranges().to_vec(),
            first_slot,
            registered: Mutex::new(0),
        };
        slots.set_traps(&BTreeMap::new())?;
        Ok(slots)
    }

    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64, flags: u32) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: self.first_slot + slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host .. host + size` lies inside a RAM range of the
        // guest memory the VMM registered with the same VM (size 0 deletes
        // the slot and maps nothing).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(io::Error::from)
    }
}

impl PageTraps for KvmMemslots {
    fn set_traps(&self, pages: &BTreeMap<PhysAddr, Trap>) -> io::Result<()> {
        let mut registered = lock(&self.registered);
        for slot in 0..*registered {
            self.set_slot(slot, 0, 0, 0, 0)?;
        }
        *registered = 0;
        for range in &self.ranges {
            for (gpa, size, flags) in pieces(range, pages) {
                let host = range.host + (gpa - range.gpa);
                self.set_slot(*registered, gpa, size, host, flags)?;
                *registered += 1;
            }
        }
        debug!(
            "memslots: {} slots, {} trapped pages",
            *registered,
            pages.len()
        );
        Ok(())
    }
}

/// The slots covering `range`: (gpa, size, flags), holes left out.
fn pieces(range: &RamRange, pages: &BTreeMap<PhysAddr, Trap>) -> Vec<(PhysAddr, u64, u32)> {
    let end = range.gpa + range.size;
    let mut out = Vec::new();
    let mut at = range.gpa;
    for (&page, &trap) in pages.range(range.gpa..end) {
        if page > at {
            out.push((at, page - at, 0));
        }
        if trap == Trap::Writes {
            out.push((page, PAGE.min(end - page), KVM_MEM_READONLY));
        }
        at = page + PAGE;
    }
    if at < end {
        out.push((at, end - at, 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trapped_pages_split_a_range_into_slots_and_holes() {
        let range = RamRange {
            gpa: 0x1000,
            size: 0x5000,
            host: 0,
        };
        let pages = BTreeMap::from([(0x2000, Trap::Writes), (0x4000, Trap::All)]);
        assert_eq!(
            pieces(&range, &pages),
            [
                (0x1000, 0x1000, 0),
                (0x2000, 0x1000, KVM_MEM_READONLY),
                (0x3000, 0x1000, 0),
                (0x5000, 0x1000, 0)
            ]
        );
        assert_eq!(pieces(&range, &BTreeMap::new()), [(0x1000, 0x5000, 0)]);
    }
}
