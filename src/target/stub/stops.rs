//! The stops reported to gdb: collected from the vCPUs, one at a time,
//! with the registers gdb needs expedited.

use gdbstub::common::Signal;
use gdbstub::stub::{BaseStopReason, MultiThreadStopReason};
use log::debug;

use super::target::{tid, Action, KvmTarget};
use crate::target::kvm::command::StopKind;
use crate::vmem::PhysAddr;

/// Whether a stop of vCPU `index` may be reported after a resume with
/// `actions`: gdb resumed that vCPU, or none (gdb stepping one thread over
/// a breakpoint takes no other thread's event; a stop of a vCPU gdb left
/// stopped waits, recorded, until gdb resumes it, as gdbserver keeps it).
/// Before any resume (`actions` empty) every stop is.
fn reportable(actions: &[Action], index: usize) -> bool {
    actions.get(index).is_none_or(|a| *a != Action::Stay)
        || actions.iter().all(|a| *a == Action::Stay)
}

impl KvmTarget {
    /// Take the stops vCPUs recorded; if any, stop everyone.
    pub(crate) fn collect_stops(&mut self) {
        if !self.inner.vcpus.iter().any(|v| v.has_stop()) {
            return;
        }
        self.deferred.clear();
        self.inner.vcpus.pause_all();
        for (i, v) in self.inner.vcpus.iter().enumerate() {
            if let Some(kind) = v.take_stop() {
                self.pending.push_back((i, kind));
            }
            if let Some(core) = v.take_snapshot() {
                self.core.borrow_mut()[i] = Some(core);
            }
        }
    }

    /// The next stop to report; breakpoint stops whose breakpoint gdb has
    /// removed since are dropped (the vCPU simply resumes on that byte).
    pub(crate) fn next_pending(&mut self) -> Option<MultiThreadStopReason<u64>> {
        loop {
            let at = self
                .pending
                .iter()
                .position(|&(index, _)| reportable(&self.resolved, index))?;
            let (index, kind) = self.pending.remove(at)?;
            if kind == StopKind::SwBreak && !self.still_at_sw_breakpoint(index) {
                continue;
            }
            self.current = index;
            self.monitor_cpu = None;
            self.remember_space(index);
            if let Ok((r, _)) = self.core(index) {
                self.expedite = Some([r.rip, r.rsp, r.rbp]);
            }
            if let StopKind::Remapped(remap) = kind {
                self.stop_note = Some(remap.to_string());
            }
            return Some(self.reason(index, kind));
        }
    }

    /// Whether a stop recorded for a vCPU gdb may hear of at this resume.
    pub(super) fn has_reportable(&self, actions: &[Action]) -> bool {
        self.pending
            .iter()
            .any(|&(index, _)| reportable(actions, index))
    }

    /// rip, rsp and rbp for the stop reply about to be sent, if the stop
    /// came from a vCPU, and a console line saying why it stopped where
    /// gdb has no words for it (taken once).
    pub(crate) fn take_stop_registers(&mut self) -> (Option<[u64; 3]>, Option<String>) {
        (self.expedite.take(), self.stop_note.take())
    }

    pub(super) fn still_at_sw_breakpoint(&self, index: usize) -> bool {
        self.sw_breakpoint_at_rip(index).is_some()
    }

    /// Where our `int3` under vCPU `index`'s rip is, if one is.
    pub(super) fn sw_breakpoint_at_rip(&self, index: usize) -> Option<PhysAddr> {
        self.gpa_of(index, self.linear_pc(index)?)
            .filter(|&gpa| self.inner.watches.breakpoints().has_sw(gpa))
    }

    pub(super) fn reason(&self, index: usize, kind: StopKind) -> MultiThreadStopReason<u64> {
        let tid = tid(index);
        match kind {
            StopKind::Step => BaseStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            },
            StopKind::SwBreak => BaseStopReason::SwBreak(tid),
            StopKind::HwBreak => BaseStopReason::HwBreak(tid),
            StopKind::Watch(w) => BaseStopReason::Watch {
                tid,
                kind: w.kind,
                addr: w.va,
            },
            StopKind::Crashed(signal) => BaseStopReason::SignalWithThread { tid, signal },
            StopKind::Remapped(_) => BaseStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            },
        }
    }

    /// Ctrl-C: stop everything, preferring a real stop if one raced in.
    pub(crate) fn interrupt(&mut self) -> MultiThreadStopReason<u64> {
        debug!("interrupt: stopping all vCPUs");
        self.deferred.clear();
        self.inner.vcpus.pause_all();
        self.collect_stops();
        self.next_pending()
            .unwrap_or(BaseStopReason::SignalWithThread {
                tid: tid(self.current),
                signal: Signal::SIGINT,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_of_a_vcpu_gdb_left_stopped_waits_until_gdb_resumes_it() {
        use Action::{Continue, Stay, Step};
        // gdb steps thread 1 over a breakpoint: thread 2's stop waits.
        assert!(reportable(&[Step, Stay], 0));
        assert!(!reportable(&[Step, Stay], 1));
        // gdb continues both: it is reported.
        assert!(reportable(&[Continue, Continue], 1));
        // Nothing resumed (only unknown threads named), or no resume yet.
        assert!(reportable(&[Stay, Stay], 1));
        assert!(reportable(&[], 1));
    }
}
