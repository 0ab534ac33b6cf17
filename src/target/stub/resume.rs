//! Resuming: continue, step and scheduler locking, with all-stop and the
//! vCPUs gdb lets continue held back while a step runs.

use std::time::{Duration, Instant};

use gdbstub::common::{Signal, Tid};
use gdbstub::target::ext::base::multithread::{
    MultiThreadResume, MultiThreadSchedulerLocking, MultiThreadSchedulerLockingOps,
    MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use log::{debug, warn};

use super::target::{Action, KvmTarget};
use crate::target::error::StubError;
use crate::target::kvm::command::{Command, StopKind};
use crate::target::kvm::lending::{Driver, STEP_GRACE};
use crate::vmem::PhysAddr;

/// The longest run of back-to-back steps that holds the other vCPUs back.
const MAX_HOLD: Duration = Duration::from_millis(20);

impl KvmTarget {
    /// What gdb wants of thread `tid` at the next resume (unknown threads
    /// are ignored).
    fn set_action(&mut self, tid: Tid, action: Action) {
        if let Some(slot) = self.actions.get_mut(tid.get() - 1) {
            *slot = Some(action);
        }
    }

    /// How long the event loop may wait before the held-back vCPUs must
    /// start (`None`: nothing is held back).
    pub(crate) fn start_deadline(&self) -> Option<Duration> {
        (!self.deferred.is_empty()).then_some(STEP_GRACE)
    }

    /// The step outlasted its grace period: start the vCPUs held back.
    pub(crate) fn start_deferred(&mut self) {
        debug!("step still running: starting vcpus {:?}", self.deferred);
        self.held_since = None;
        for index in std::mem::take(&mut self.deferred) {
            match self.step_over(index) {
                Some(Some(kind)) => self.pending.push_back((index, kind)),
                _ => {
                    self.forget(index);
                    self.inner.vcpus[index].request(Command::Run);
                }
            }
        }
        if !self.pending.is_empty() {
            // Stepping over a breakpoint stopped one: stop everyone.
            self.inner.vcpus.pause_all();
            self.collect_stops();
        }
    }

    /// What gdb asked vCPU `index` to do at this resume.
    fn action(&self, index: usize) -> Action {
        self.actions[index].unwrap_or(self.default_action)
    }

    /// If vCPU `index` sits on one of our breakpoints: `Some`, with the
    /// software breakpoint's address if it is one.
    fn breakpoint_under(&self, index: usize) -> Option<Option<PhysAddr>> {
        let pc = self.linear_pc(index)?;
        let gpa = self.sw_breakpoint_at_rip(index);
        (gpa.is_some() || self.inner.watches.debug_regs().exec_at(pc)).then_some(gpa)
    }

    /// If vCPU `index` sits on one of our breakpoints, execute that one
    /// instruction with the breakpoint lifted (RF is not honoured on every
    /// host). Returns the stop the step itself produced, if any.
    pub(super) fn step_over(&self, index: usize) -> Option<Option<StopKind>> {
        let gpa = self.breakpoint_under(index)?;
        let vcpu = &self.inner.vcpus[index];
        debug!("vcpu {index}: stepping over the breakpoint at its rip");
        if let Some(gpa) = gpa {
            self.inner
                .watches
                .breakpoints()
                .lift(&self.inner.memory, gpa);
        }
        vcpu.request(Command::StepOver);
        vcpu.wait_parked();
        self.forget(index);
        self.core.borrow_mut()[index] = vcpu.take_snapshot();
        if let Some(gpa) = gpa {
            self.inner
                .watches
                .breakpoints()
                .replant(&self.inner.memory, gpa);
        }
        Some(vcpu.take_stop())
    }

    /// The one vCPU that starts at this resume, and how (a step or a
    /// run): its own thread runs it with the session (taken once).
    pub(crate) fn take_lone(&mut self) -> Option<(usize, Command)> {
        self.lone.take()
    }

    /// Make the resume a vCPU thread left to the gdb thread.
    pub(crate) fn resume_left_for_home(&mut self) {
        if std::mem::take(&mut self.resume_at_home) {
            debug!("resuming from the gdb thread");
            if let Err(e) = MultiThreadResume::resume(self) {
                warn!("resume: {e}");
            }
        }
    }

    /// Whether the driving vCPU thread must leave this resume to the gdb
    /// thread: its own vCPU moves from a breakpoint, and stepping over it
    /// means waiting for that vCPU.
    fn leave_for_home(&self) -> bool {
        let Driver::Vcpu(own) = self.driver else {
            return false;
        };
        self.action(own) != Action::Stay && self.breakpoint_under(own).is_some()
    }

    /// Start the vCPUs as `actions` say (one per vCPU).
    fn start(&mut self, actions: &[Action]) {
        // While a step runs (a few microseconds), the vCPUs gdb lets
        // continue are held back: they start (stepping over a breakpoint
        // of theirs then) only if the step has not ended within
        // STEP_GRACE, so a step costs no kick of the others. The same for
        // a continue of every vCPU: the one that stopped last starts at
        // once, the others after STEP_GRACE — a breakpoint it hits again
        // sooner (a conditional breakpoint gdb resumes from at each hit)
        // costs no kick of vCPUs that never started. After MAX_HOLD of
        // back-to-back holds they run along, so a guest stepped or
        // breakpointed through a wait for another vCPU still advances.
        let stepping = actions.contains(&Action::Step);
        let continuing = !stepping
            && actions.get(self.current) == Some(&Action::Continue)
            && actions.iter().filter(|a| **a == Action::Continue).count() > 1;
        let hold =
            (stepping || continuing) && self.held_since.is_none_or(|t| t.elapsed() < MAX_HOLD);
        self.held_since = if hold {
            Some(self.held_since.unwrap_or_else(Instant::now))
        } else {
            None
        };
        let current = self.current;
        let deferred = |index: usize, action: Action| {
            hold && action == Action::Continue && (stepping || index != current)
        };
        for (index, &action) in actions.iter().enumerate() {
            if action == Action::Stay || deferred(index, action) {
                continue;
            }
            match self.step_over(index) {
                Some(Some(kind)) => self.pending.push_back((index, kind)),
                Some(None) if action == Action::Step => {
                    self.pending.push_back((index, StopKind::Step))
                }
                _ => {}
            }
        }
        if actions.iter().all(|a| *a == Action::Stay) && !self.has_reportable(actions) {
            // Nothing would run (e.g. only unknown threads named): report
            // a stop at once instead of waiting forever.
            debug!("resume: no vCPU to run");
            self.pending.push_back((self.current, StopKind::Step));
        }
        if self.has_reportable(actions) {
            return;
        }
        debug!("resume: {actions:?}");
        self.remember_tables(stepping);
        // Only what runs changes: a vCPU held back keeps its registers
        // (reading them again costs a call to its thread and two ioctls,
        // ~100 µs per step on kvm_pvm).
        for (index, &action) in actions.iter().enumerate() {
            if action != Action::Stay && !deferred(index, action) {
                self.forget(index);
            }
        }
        // Exactly one vCPU starts (a step, or a continue with the others
        // held): its own thread runs it and reports the stop (the session
        // is lent to it), so a step or a conditional breakpoint's hit costs
        // no hand-off between threads. Where the VMM kicks its vCPUs
        // itself, a lone step is waited for here instead, woken by the
        // vCPU itself: no trip through the session's socket and poll.
        let mut starting =
            (0..actions.len()).filter(|&i| actions[i] != Action::Stay && !deferred(i, actions[i]));
        let lone = match (starting.next(), starting.next()) {
            (Some(index), None) => Some(index),
            _ => None,
        };
        let lend = lone.filter(|&i| !self.inner.vcpus[i].has_vmm_kick());
        for (index, (vcpu, &action)) in self.inner.vcpus.iter().zip(actions).enumerate() {
            let command = match action {
                Action::Stay => continue,
                _ if deferred(index, action) => {
                    self.deferred.push(index);
                    continue;
                }
                Action::Continue => Command::Run,
                Action::Step => Command::Step,
            };
            if lend == Some(index) {
                self.lone = Some((index, command));
            } else {
                vcpu.request(command);
            }
        }
        if let (Some(index), None) = (lone, lend) {
            if actions[index] == Action::Step && self.inner.vcpus[index].wait_stop(STEP_GRACE) {
                self.collect_stops();
            }
        }
    }
}

impl MultiThreadResume for KvmTarget {
    fn resume(&mut self) -> Result<(), StubError> {
        if self.leave_for_home() {
            self.resume_at_home = true;
            return Ok(());
        }
        // Stops recorded after the last report are reported first.
        self.collect_stops();
        let mut actions = std::mem::take(&mut self.resolved);
        actions.clear();
        actions.extend((0..self.actions.len()).map(|index| self.action(index)));
        self.start(&actions);
        self.resolved = actions;
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), StubError> {
        self.actions.iter_mut().for_each(|a| *a = None);
        self.default_action = Action::Continue;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), StubError> {
        self.set_action(tid, Action::Continue);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for KvmTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), StubError> {
        self.set_action(tid, Action::Step);
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for KvmTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), StubError> {
        self.default_action = Action::Stay;
        Ok(())
    }
}
