//! Trapping guest pages: the memslot change watchpoints need, asked of the
//! VMM (memslots are its own), and a ready implementation for a VMM that
//! lets the debugger lay out the slots of its RAM.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use log::debug;

use crate::target::kvm::fds;
use crate::target::machine::memory::{GuestRam, RamRange};
use crate::target::sync::lock;
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

/// [`PageTraps`] by laying out the memslots of all guest RAM: for a VMM
/// whose RAM slots are the debugger's to manage (slot numbers from
/// `first_slot` up; the VMM uses none of them). A change deletes and adds
/// only the slots that differ: a slot deleted makes KVM drop every guest
/// mapping it held, which the guest then faults back in.
pub struct KvmMemslots {
    /// The debugger's own handle on the VM.
    vm: VmFd,
    /// The RAM whose mappings the slots hand to KVM (its host ranges):
    /// held, so they stay mapped as long as a slot may name them.
    ram: GuestRam,
    first_slot: u32,
    /// The slots registered now, by number (counted from `first_slot`).
    registered: Mutex<BTreeMap<u32, Slot>>,
}

/// What one memslot maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    gpa: PhysAddr,
    size: u64,
    /// Its host address in this process.
    host: u64,
    /// `KVM_MEM_*` flags.
    flags: u32,
}

impl Slot {
    /// What deletes a slot.
    const DELETED: Slot = Slot {
        gpa: 0,
        size: 0,
        host: 0,
        flags: 0,
    };
}

impl fmt::Debug for KvmMemslots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmMemslots")
            .field("ranges", &self.ram.host_ranges())
            .field("first_slot", &self.first_slot)
            .finish()
    }
}

impl KvmMemslots {
    /// Register every range of `ram` as one writable slot, numbered from
    /// `first_slot` (a slot the VMM registered already with the same range
    /// stays as it is). `vm` is the VM's fd as the VMM holds it, through
    /// any KVM crate.
    ///
    /// `ram` must come from [`GuestRam::new`] (a `GuestMemoryMmap`, whose
    /// mappings it owns): an error otherwise, or if a range has no mapping.
    pub fn new(vm: &impl AsRawFd, ram: &GuestRam, first_slot: u32) -> io::Result<KvmMemslots> {
        if ram.host_ranges().len() != ram.ranges().len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "memslots need guest RAM whose host mappings the debugger holds (GuestRam::new over a GuestMemoryMmap)",
            ));
        }
        let slots = KvmMemslots {
            vm: fds::vm_of(vm)?,
            ram: ram.clone(),
            first_slot,
            registered: Mutex::new(BTreeMap::new()),
        };
        slots.set_traps(&BTreeMap::new())?;
        Ok(slots)
    }

    /// Register `slot` as number `number` (a size of 0 deletes it).
    fn set_slot(&self, number: u32, slot: Slot) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot: self.first_slot + number,
            flags: slot.flags,
            guest_phys_addr: slot.gpa,
            memory_size: slot.size,
            userspace_addr: slot.host,
        };
        // SAFETY: `host .. host + size` lies inside one of `self.ram`'s
        // host ranges: a mapping its memory owns and that `self.ram` keeps
        // alive as long as this struct, which deletes no slot of the VMM's
        // own (size 0 deletes one of ours and maps nothing).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(io::Error::from)
    }
}

impl PageTraps for KvmMemslots {
    fn set_traps(&self, pages: &BTreeMap<PhysAddr, Trap>) -> io::Result<()> {
        let wanted: BTreeSet<Slot> = self
            .ram
            .host_ranges()
            .iter()
            .flat_map(|range| slots(range, pages))
            .collect();
        let mut registered = lock(&self.registered);
        // Deleted first: KVM refuses a slot overlapping another.
        let stale: Vec<u32> = registered
            .iter()
            .filter(|(_, slot)| !wanted.contains(slot))
            .map(|(&number, _)| number)
            .collect();
        for number in &stale {
            self.set_slot(*number, Slot::DELETED)?;
            registered.remove(number);
        }
        let kept = registered.len();
        let current: BTreeSet<Slot> = registered.values().copied().collect();
        for &slot in wanted.difference(&current) {
            let number = lowest_free(&registered);
            self.set_slot(number, slot)?;
            registered.insert(number, slot);
        }
        debug!(
            "memslots: {} slots, {} trapped pages ({kept} kept, {} deleted, {} added)",
            registered.len(),
            pages.len(),
            stale.len(),
            registered.len() - kept
        );
        Ok(())
    }
}

/// The lowest slot number not in `registered`.
fn lowest_free(registered: &BTreeMap<u32, Slot>) -> u32 {
    let mut number = 0;
    for &used in registered.keys() {
        if used != number {
            break;
        }
        number += 1;
    }
    number
}

/// The slots covering `range`, holes left out.
fn slots(range: &RamRange, pages: &BTreeMap<PhysAddr, Trap>) -> Vec<Slot> {
    let end = range.gpa + range.size;
    let slot = |gpa: PhysAddr, size: u64, flags: u32| Slot {
        gpa,
        size,
        host: range.host + (gpa - range.gpa),
        flags,
    };
    let mut out = Vec::new();
    let mut at = range.gpa;
    for (&page, &trap) in pages.range(range.gpa..end) {
        if page > at {
            out.push(slot(at, page - at, 0));
        }
        if trap == Trap::Writes {
            out.push(slot(page, PAGE.min(end - page), KVM_MEM_READONLY));
        }
        at = page + PAGE;
    }
    if at < end {
        out.push(slot(at, end - at, 0));
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
            host: 0x7000_0000,
        };
        let pages = BTreeMap::from([(0x2000, Trap::Writes), (0x4000, Trap::All)]);
        let found: Vec<(u64, u64, u64, u32)> = slots(&range, &pages)
            .iter()
            .map(|s| (s.gpa, s.size, s.host, s.flags))
            .collect();
        assert_eq!(
            found,
            [
                (0x1000, 0x1000, 0x7000_0000, 0),
                (0x2000, 0x1000, 0x7000_1000, KVM_MEM_READONLY),
                (0x3000, 0x1000, 0x7000_2000, 0),
                (0x5000, 0x1000, 0x7000_4000, 0)
            ]
        );
        let whole = slots(&range, &BTreeMap::new());
        assert_eq!(whole.len(), 1);
        assert_eq!((whole[0].gpa, whole[0].size), (0x1000, 0x5000));
    }

    #[test]
    fn a_new_slot_takes_the_lowest_free_number() {
        let slot = |gpa| Slot {
            gpa,
            ..Slot::DELETED
        };
        let registered = BTreeMap::from([(0, slot(0)), (1, slot(1)), (3, slot(3))]);
        assert_eq!(lowest_free(&registered), 2);
        assert_eq!(lowest_free(&BTreeMap::from([(1, slot(1))])), 0);
        assert_eq!(lowest_free(&BTreeMap::new()), 0);
    }
}
