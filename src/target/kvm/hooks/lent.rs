//! The gdb session lent to this vCPU's thread: taking it, answering gdb
//! once the vCPU stopped, and sending it home (when gdb starts more than
//! this vCPU, at the run's deadline, at `hlt`, at quit).

use std::time::Instant;

use kvm_ioctls::VcpuFd;
use log::{debug, warn};

use crate::target::kvm::command::Command;
use crate::target::kvm::kick::StepTimer;
use crate::target::kvm::lending::{Driver, Lent, Turn, STEP_GRACE};

use super::{apply_debug, Hooks};

impl Hooks {
    /// The step timer must not fire any more (the session leaves, or an
    /// exit goes to the VMM's code).
    pub(super) fn disarm(&self) {
        let timer = self.timer.as_ref();
        if let Some(timer) = timer.filter(|_| self.timer_fires.take().is_some()) {
            timer.disarm();
        }
    }

    /// A step or run of gdb's starts on this thread, with its deadline.
    pub(super) fn lent_start(&mut self) {
        self.lent_deadline = Instant::now() + STEP_GRACE;
    }

    /// A gdb session lent for a step or run of this vCPU arrived.
    pub(super) fn take_session(&mut self, session: Lent) {
        if self.timer.as_ref().is_none_or(|t| !t.is_this_threads()) {
            self.timer = match StepTimer::for_this_thread() {
                Ok(timer) => Some(timer),
                Err(e) => {
                    // Without a deadline a stuck step would keep gdb's
                    // Ctrl-C unheard: the gdb thread keeps the session.
                    warn!("vcpu {}: no step timer ({e})", self.index);
                    self.inner.link.home().send(session, Turn::Home);
                    return;
                }
            };
        }
        self.session = Some(session);
        self.lent_start();
    }

    /// With the gdb session lent: once this vCPU has stopped, answer gdb
    /// from this thread until gdb starts more than this vCPU; a step or
    /// run still going on past its deadline (the VMM's exits) sends the
    /// session home. Whether gdb was answered.
    pub(super) fn answer_gdb(&mut self, fd: &VcpuFd) -> bool {
        if self.session.is_none() {
            return false;
        }
        if !self.vcpu().paused() {
            if Instant::now() >= self.lent_deadline {
                self.send_home();
            }
            return false;
        }
        let Some(mut session) = self.session.take() else {
            return false;
        };
        let index = self.index;
        let (inner, applied) = (&*self.inner, &mut self.applied);
        // What gdb will likely ask next is set up while it reads our reply
        // (a wrong guess costs one KVM_SET_GUEST_DEBUG in before_run).
        let mut ahead = |command: Command| {
            debug!("vcpu {index}: set up for a {command:?} gdb will likely ask for");
            apply_debug(fd, applied, inner.guest_debug(command), index);
        };
        let turn = inner.vcpus[index]
            .answer_gdb(fd, || session.drive_with(Driver::Vcpu(index), &mut ahead));
        match turn {
            Turn::Start(i, command) if i == index => {
                self.vcpu().start_again(command);
                self.session = Some(session);
                self.lent_start();
                return true;
            }
            Turn::Start(other, command) => {
                self.disarm();
                if let Some(session) = self.inner.lend(other, command, session) {
                    self.inner.link.home().send(session, Turn::Home);
                }
            }
            turn => {
                self.disarm();
                self.inner.link.home().send(session, turn);
            }
        }
        true
    }

    /// Give a lent session back to the gdb thread.
    pub(super) fn send_home(&mut self) {
        self.disarm();
        if let Some(session) = self.session.take() {
            self.inner.link.home().send(session, Turn::Home);
        }
    }
}
