//! How the VM side reaches the gdb side without knowing it: the wakers of
//! the listening and the session's thread, the stop of serving, where a
//! lent session comes home, and who holds the VM stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::target::kvm::lending::HomeSlot;
use crate::target::sync::lock;
use crate::target::wait::Waker;

/// The VM side's link to the gdb side.
#[derive(Debug, Default)]
pub(crate) struct GdbLink {
    /// Wakes the thread accepting gdb connections.
    serving: Mutex<Option<Waker>>,
    /// The VMM asked to stop serving gdb.
    stopping: AtomicBool,
    /// Wakes the attached session's gdb thread.
    session: Mutex<Option<Waker>>,
    /// Where a session lent to a vCPU thread comes back to the gdb thread.
    home: HomeSlot,
    /// Held by whoever has the VM stopped to look at it: a gdb session, or
    /// a `Debugger::monitor` call.
    holder: Mutex<()>,
}

impl GdbLink {
    /// Where a lent session comes home.
    pub(crate) fn home(&self) -> &HomeSlot {
        &self.home
    }

    /// Hold the VM (waits for a holder to finish).
    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        lock(&self.holder)
    }

    /// Hold the VM unless someone holds it now.
    pub(crate) fn try_hold(&self) -> Option<MutexGuard<'_, ()>> {
        match self.holder.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The listening thread waits with `waker`.
    pub(crate) fn start_serving(&self, waker: Waker) {
        *lock(&self.serving) = Some(waker);
    }

    /// The listening thread stopped: a later `serve` starts afresh.
    pub(crate) fn stopped_serving(&self) {
        *lock(&self.serving) = None;
        self.stopping.store(false, Ordering::Release);
    }

    /// A session is attached, woken with `waker` (`None`: it ended).
    pub(crate) fn set_session(&self, waker: Option<Waker>) {
        *lock(&self.session) = waker;
    }

    /// Whether a gdb session is attached.
    pub(crate) fn attached(&self) -> bool {
        lock(&self.session).is_some()
    }

    /// Tell the session's gdb thread a vCPU stopped by itself.
    pub(crate) fn wake(&self) {
        if let Some(waker) = lock(&self.session).as_ref() {
            waker.wake();
        }
    }

    /// Whether the VMM asked to stop serving gdb.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// End the session and stop accepting gdb connections.
    pub(crate) fn stop_serving(&self) {
        self.stopping.store(true, Ordering::Release);
        for waker in [&self.serving, &self.session] {
            if let Some(waker) = lock(waker).as_ref() {
                waker.wake();
            }
        }
        self.home.end_lent_reads();
    }
}
