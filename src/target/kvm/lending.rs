//! Lending the gdb session to a vCPU thread, as the KVM side sees it.
//!
//! When gdb starts one vCPU alone, the gdb session (`gdb/session.rs`) is
//! handed to that vCPU's thread, which runs the vCPU and answers gdb
//! itself, then sends the session home. The KVM side knows the session
//! only through [`LentSession`], so it does not depend on the gdb side:
//! the dependency points from `gdb` down to `kvm`.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use log::debug;

use crate::target::kvm::command::Command;
use crate::target::sync::lock;

/// How long a lent step may run before the session goes home.
pub(crate) const STEP_GRACE: Duration = Duration::from_millis(1);

/// Which thread drives the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// The gdb thread.
    Home,
    /// The thread of the vCPU with this index (the session is lent).
    Vcpu(usize),
}

/// Why [`LentSession::drive_with`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// This vCPU alone starts (a step, or a run with the others held
    /// back): its thread runs it with the session.
    Start(usize, Command),
    /// gdb resumed more than the lent vCPU's step (or the step outlasted
    /// its grace): the gdb thread drives on.
    Home,
    /// The session is over (it knows why).
    Over,
}

/// A gdb session as a vCPU thread drives it.
pub(crate) trait LentSession: Send {
    /// Answer gdb from `at` until gdb resumes in a way that belongs
    /// elsewhere; `ahead` is given the command gdb will likely start the
    /// driving vCPU with next, while gdb reads the reply that led to it.
    fn drive_with(&mut self, at: Driver, ahead: &mut dyn FnMut(Command)) -> Turn;

    /// The session itself, for the gdb thread that lent it.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// A session on loan.
pub(crate) type Lent = Box<dyn LentSession>;

/// How to end the reads of a vCPU thread blocked on gdb's socket.
type EndReads = Box<dyn Fn() + Send + Sync>;

/// Where a lent session comes back to the gdb thread.
#[derive(Default)]
pub(crate) struct HomeSlot {
    slot: Mutex<Option<(Lent, Turn)>>,
    cv: Condvar,
    /// Ends the socket reads of a vCPU thread answering gdb (it waits for
    /// gdb's bytes alone).
    end_reads: Mutex<Option<EndReads>>,
    /// The session is lent.
    away: AtomicBool,
}

impl std::fmt::Debug for HomeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeSlot")
            .field("away", &self.away.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl HomeSlot {
    /// A session begins: `end_reads` ends its socket's reads (`None`: the
    /// session is over).
    pub(crate) fn set_end_reads(&self, end_reads: Option<EndReads>) {
        *lock(&self.end_reads) = end_reads;
    }

    /// The VMM stops serving gdb or shuts the VM down: a vCPU thread
    /// blocked reading gdb's socket gets end-of-file and sends the
    /// session home, where it ends.
    pub(crate) fn end_lent_reads(&self) {
        if self.away.load(Ordering::Acquire) {
            if let Some(end_reads) = lock(&self.end_reads).as_ref() {
                debug!("ending the gdb socket's reads of the vCPU thread answering gdb");
                end_reads();
            }
        }
    }

    /// Whether the session is out on loan.
    pub(crate) fn set_away(&self, away: bool) {
        self.away.store(away, Ordering::Release);
    }

    /// Send the session home (from a vCPU thread).
    pub(crate) fn send(&self, session: Lent, turn: Turn) {
        debug!("session back to the gdb thread: {turn:?}");
        *lock(&self.slot) = Some((session, turn));
        self.cv.notify_all();
    }

    /// Wait for the lent session (the gdb thread).
    pub(crate) fn wait(&self) -> (Lent, Turn) {
        let mut slot = lock(&self.slot);
        loop {
            if let Some(back) = slot.take() {
                self.set_away(false);
                return back;
            }
            slot = self.cv.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}
