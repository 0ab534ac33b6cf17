//! Interrupting a vCPU thread that is inside `KVM_RUN`.
//!
//! A thread is kickable only while it is registered, from just before its
//! `KVM_RUN` to just after: it registers itself and its
//! `kvm_run.immediate_exit` byte, runs `KVM_RUN`, and unregisters before
//! the exit is handed on. The kicker sets
//! `immediate_exit` (so a `KVM_RUN` that has not started yet returns at
//! once) and sends a signal whose handler does nothing, installed without
//! `SA_RESTART`, so a running `KVM_RUN` returns `EINTR`. Both happen under
//! the slot's lock, so neither can reach a thread that has left (and that
//! the VMM may have joined) or a `kvm_run` page that may be gone. No
//! polling anywhere.

use std::sync::{Mutex, Once};

use crate::target::sync::lock;

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Install the (empty) kick handler once per process.
pub(crate) fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler is async-signal-safe (it does nothing).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// The thread inside `KVM_RUN` and its `immediate_exit` byte.
#[derive(Debug)]
struct Registered {
    thread: libc::pthread_t,
    immediate_exit: *mut u8,
}

// SAFETY: the pointer targets a vCPU's kvm_run mapping, which stays mapped
// while it is registered (the hooks that register it own the mapping and
// unregister before they drop it); it is written only with volatile
// single-byte stores.
unsafe impl Send for Registered {}

/// Where a vCPU thread is registered while it may be kicked.
#[derive(Debug, Default)]
pub(crate) struct KickSlot(Mutex<Option<Registered>>);

impl KickSlot {
    /// Make this thread kickable: its next `KVM_RUN` (through any mapping
    /// of the same `kvm_run`) until [`KickSlot::unregister`].
    /// `immediate_exit` must stay mapped until then.
    pub(crate) fn register(&self, immediate_exit: *mut u8) {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *lock(&self.0) = Some(Registered {
            thread,
            immediate_exit,
        });
    }

    /// The thread is out of `KVM_RUN`: no kick may reach it any more.
    pub(crate) fn unregister(&self) {
        *lock(&self.0) = None;
    }

    /// Interrupt the registered thread's `KVM_RUN`, if a thread is there.
    pub(crate) fn kick(&self) {
        let slot = lock(&self.0);
        if let Some(reg) = slot.as_ref() {
            // SAFETY: registered pointers are valid until unregistered,
            // which needs this lock (see `Registered`); the thread is alive
            // for the same reason, and the handler is installed.
            unsafe {
                std::ptr::write_volatile(reg.immediate_exit, 1);
                libc::pthread_kill(reg.thread, kick_signal());
            }
        }
    }
}

/// A one-shot timer that kicks the thread that made it out of `KVM_RUN`
/// (the kick signal, sent to that thread only): the deadline of a step
/// run with the gdb session lent to the vCPU thread. Armed only around
/// `KVM_RUN` itself, so the signal never reaches the VMM's own code.
#[derive(Debug)]
pub(crate) struct StepTimer {
    timer: libc::timer_t,
    thread: libc::pid_t,
}

// SAFETY: a timer_t is a process-wide handle; any thread may arm or delete it.
unsafe impl Send for StepTimer {}

impl StepTimer {
    /// A timer signalling the calling thread.
    pub(crate) fn for_this_thread() -> std::io::Result<StepTimer> {
        // SAFETY: gettid has no preconditions.
        let thread = unsafe { libc::gettid() };
        // SAFETY: a zeroed sigevent is valid; the fields that matter are set
        // below, and timer_create writes the handle into `timer`.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = kick_signal();
            event.sigev_notify_thread_id = thread;
            let mut timer: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(StepTimer { timer, thread })
        }
    }

    /// Whether the timer signals the calling thread.
    pub(crate) fn is_this_threads(&self) -> bool {
        // SAFETY: gettid has no preconditions.
        self.thread == unsafe { libc::gettid() }
    }

    /// Fire once after `after` (at least a microsecond).
    pub(crate) fn arm(&self, after: std::time::Duration) {
        let after = after.max(std::time::Duration::from_micros(1));
        self.set(libc::timespec {
            tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: after.subsec_nanos().into(),
        });
    }

    /// Not fire.
    pub(crate) fn disarm(&self) {
        self.set(libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
    }

    fn set(&self, value: libc::timespec) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `timer` is a live timer of this process (deleted only on
        // drop) and `spec` a valid itimerspec.
        unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for StepTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by timer_create and is deleted once.
        unsafe { libc::timer_delete(self.timer) };
    }
}
