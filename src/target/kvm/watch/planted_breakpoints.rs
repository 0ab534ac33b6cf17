//! Software breakpoints: an `int3` per guest-physical byte, shared by
//! every vCPU.

use std::collections::BTreeMap;

use log::debug;

use crate::target::machine::memory::GuestRam;
use crate::target::machine::x86_constants::INT3;
use crate::vmem::PhysAddr;

/// One planted `int3`.
#[derive(Debug, Clone, Copy)]
struct SwBreakpoint {
    original: u8,
}

/// All breakpoints of a debug session.
#[derive(Debug, Default)]
pub(crate) struct Breakpoints {
    sw: BTreeMap<PhysAddr, SwBreakpoint>,
}

impl Breakpoints {
    /// Plant `int3` at `gpa`; false if one is already there or the byte
    /// is not RAM.
    pub(crate) fn insert_sw(&mut self, mem: &GuestRam, gpa: PhysAddr) -> bool {
        if self.sw.contains_key(&gpa) {
            return true;
        }
        let mut original = [0u8];
        if mem.read(gpa, &mut original).is_err() || mem.write(gpa, &[INT3]).is_err() {
            return false;
        }
        debug!("sw breakpoint at gpa {gpa:#x} (was {:#04x})", original[0]);
        self.sw.insert(
            gpa,
            SwBreakpoint {
                original: original[0],
            },
        );
        true
    }

    /// Restore the byte under the breakpoint at `gpa`.
    pub(crate) fn remove_sw(&mut self, mem: &GuestRam, gpa: PhysAddr) -> bool {
        match self.sw.remove(&gpa) {
            Some(bp) => {
                restore(mem, gpa, bp.original);
                true
            }
            None => false,
        }
    }

    /// Whether an `int3` of ours is at `gpa`.
    pub(crate) fn has_sw(&self, gpa: PhysAddr) -> bool {
        self.sw.contains_key(&gpa)
    }

    /// Temporarily put the original byte back at `gpa` (to step over it).
    pub(crate) fn lift(&self, mem: &GuestRam, gpa: PhysAddr) {
        if let Some(bp) = self.sw.get(&gpa) {
            restore(mem, gpa, bp.original);
        }
    }

    /// Plant the `int3` at `gpa` again after [`Self::lift`].
    pub(crate) fn replant(&self, mem: &GuestRam, gpa: PhysAddr) {
        if self.sw.contains_key(&gpa) {
            let _ = mem.write(gpa, &[INT3]);
        }
    }

    /// Show the original bytes instead of our `int3`s in `data`, read
    /// from guest-physical `gpa`.
    pub(crate) fn mask(&self, gpa: PhysAddr, data: &mut [u8]) {
        let end = gpa.saturating_add(data.len() as u64);
        for (&at, bp) in self.sw.range(gpa..end) {
            data[(at - gpa) as usize] = bp.original;
        }
    }

    /// gdb wrote `data` at `gpa`: keep our `int3`s planted and remember
    /// the newly written bytes as their originals.
    pub(crate) fn after_write(&mut self, mem: &GuestRam, gpa: PhysAddr, data: &[u8]) {
        let end = gpa.saturating_add(data.len() as u64);
        for (&at, bp) in self.sw.range_mut(gpa..end) {
            bp.original = data[(at - gpa) as usize];
            let _ = mem.write(at, &[INT3]);
        }
    }

    /// Remove everything, restoring every byte we changed.
    pub(crate) fn clear(&mut self, mem: &GuestRam) {
        for (gpa, bp) in std::mem::take(&mut self.sw) {
            restore(mem, gpa, bp.original);
        }
    }
}

/// Put `original` back at `gpa` unless the guest replaced our `int3`.
fn restore(mem: &GuestRam, gpa: PhysAddr, original: u8) {
    let mut now = [0u8];
    if mem.read(gpa, &mut now).is_ok() && now[0] == INT3 {
        let _ = mem.write(gpa, &[original]);
    }
}
