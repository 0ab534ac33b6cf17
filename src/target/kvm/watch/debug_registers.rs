//! The four debug-register slots (DR0-DR3), shared by every vCPU: hardware
//! execution breakpoints, and data watchpoints where the VMM offers no
//! page traps.

use gdbstub::target::ext::breakpoints::WatchKind;

use crate::target::kvm::command::StopKind;
use crate::target::kvm::watch::page_watchpoints::Watch;
use crate::target::machine::x86_constants::{dr7_condition, dr7_enable, DR6_HIT_MASK, DR7_FIXED_1};

/// What one slot is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Exec(u64),
    Watch(Watch),
}

/// The debug-register slots of a session.
#[derive(Debug, Default)]
pub(crate) struct DebugRegs {
    slots: [Option<Use>; 4],
}

impl DebugRegs {
    fn insert(&mut self, wanted: Use) -> bool {
        if self.slots.contains(&Some(wanted)) {
            return true;
        }
        match self.slots.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => {
                *slot = Some(wanted);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, unwanted: Use) -> bool {
        match self.slots.iter_mut().find(|slot| **slot == Some(unwanted)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }

    /// Use a free slot for an execution breakpoint at `addr`.
    pub(crate) fn insert_exec(&mut self, addr: u64) -> bool {
        self.insert(Use::Exec(addr))
    }

    /// Free the slot of the execution breakpoint at `addr`.
    pub(crate) fn remove_exec(&mut self, addr: u64) -> bool {
        self.remove(Use::Exec(addr))
    }

    /// Whether an execution breakpoint is at `addr`.
    pub(crate) fn exec_at(&self, addr: u64) -> bool {
        self.slots.contains(&Some(Use::Exec(addr)))
    }

    /// Use a free slot for a data watchpoint; only naturally aligned 1, 2,
    /// 4 or 8 bytes fit one.
    pub(crate) fn insert_watch(&mut self, watch: Watch) -> bool {
        let aligned = matches!(watch.len, 1 | 2 | 4 | 8) && watch.va.is_multiple_of(watch.len);
        aligned && self.insert(Use::Watch(watch))
    }

    /// Free the slot of the watchpoint gdb set with these arguments.
    pub(crate) fn remove_watch(&mut self, va: u64, len: u64, kind: WatchKind) -> bool {
        let found = self.slots.iter().flatten().find_map(|u| match u {
            Use::Watch(w) if w.va == va && w.len == len && w.kind == kind => Some(*w),
            _ => None,
        });
        found.is_some_and(|w| self.remove(Use::Watch(w)))
    }

    /// The stop a #DB with this DR6 means, if a slot of ours matched.
    pub(crate) fn hit(&self, dr6: u64) -> Option<StopKind> {
        let slot = (0..4).find(|slot| dr6 & DR6_HIT_MASK & (1 << slot) != 0)?;
        Some(match self.slots[slot] {
            Some(Use::Watch(w)) => StopKind::Watch(w),
            _ => StopKind::HwBreak,
        })
    }

    /// DR0-DR3 and DR7 for `KVM_SET_GUEST_DEBUG` (execution breakpoints
    /// left out while stepping over one), or `None` if no slot is used.
    pub(crate) fn encode(&self, without_exec: bool) -> Option<([u64; 4], u64)> {
        let mut addrs = [0u64; 4];
        let mut dr7 = 0u64;
        for (slot, used) in self.slots.iter().enumerate() {
            let (addr, rw, len) = match *used {
                Some(Use::Exec(addr)) if !without_exec => (addr, 0, 0),
                Some(Use::Watch(w)) => {
                    let rw = if w.kind == WatchKind::Write { 1 } else { 3 };
                    let len = match w.len {
                        1 => 0,
                        2 => 1,
                        8 => 2,
                        _ => 3,
                    };
                    (w.va, rw, len)
                }
                _ => continue,
            };
            addrs[slot] = addr;
            dr7 |= dr7_enable(slot) | dr7_condition(slot, rw, len);
        }
        (dr7 != 0).then_some((addrs, dr7 | DR7_FIXED_1))
    }

    /// Free every slot.
    pub(crate) fn clear(&mut self) {
        self.slots = [None; 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_encode_dr7_and_decode_dr6() {
        let mut regs = DebugRegs::default();
        assert!(regs.insert_exec(0x1000));
        let watch = Watch {
            va: 0x2008,
            gpa: 0x2008,
            len: 8,
            kind: WatchKind::Write,
        };
        assert!(regs.insert_watch(watch));
        assert!(!regs.insert_watch(Watch {
            va: 0x2004,
            ..watch
        }));
        let (addrs, dr7) = regs.encode(false).unwrap();
        assert_eq!(addrs, [0x1000, 0x2008, 0, 0]);
        // slot 0: L0, exec; slot 1: L1, RW=01 LEN=10 (8 bytes).
        assert_eq!(dr7, 0b1 | 0b100 | (0b1001 << 20) | DR7_FIXED_1);
        assert_eq!(regs.encode(true).unwrap().0, [0, 0x2008, 0, 0]);
        assert_eq!(regs.hit(0b10), Some(StopKind::Watch(watch)));
        assert_eq!(regs.hit(0b1), Some(StopKind::HwBreak));
        assert_eq!(regs.hit(0x4000), None);
        assert!(regs.remove_watch(0x2008, 8, WatchKind::Write));
        assert!(regs.remove_exec(0x1000));
        assert_eq!(regs.encode(false), None);
    }
}
