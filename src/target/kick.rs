//! Interrupting a vCPU thread that is inside `KVM_RUN`.
//!
//! A thread is kickable only while it is inside [`KickSlot::run`]: it
//! registers itself and its `kvm_run.immediate_exit` byte there, runs
//! `KVM_RUN`, and unregisters before the exit is handed on. The kicker sets
//! `immediate_exit` (so a `KVM_RUN` that has not started yet returns at
//! once) and sends a signal whose handler does nothing, installed without
//! `SA_RESTART`, so a running `KVM_RUN` returns `EINTR`. Both happen under
//! the slot's lock, so neither can reach a thread that has left (and that
//! the VMM may have joined) or a `kvm_run` page that may be gone. No
//! polling anywhere.

use std::sync::{Mutex, Once};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::lock;

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
// while it is registered (the registering thread holds `&mut VcpuFd` until
// it unregisters); it is written only with volatile single-byte stores.
unsafe impl Send for Registered {}

/// Where a vCPU thread is registered while it may be kicked.
#[derive(Debug, Default)]
pub(crate) struct KickSlot(Mutex<Option<Registered>>);

impl KickSlot {
    /// `KVM_RUN` on `fd`, kickable throughout. `stop_wanted` is asked once
    /// registered: a request that came too late to kick is seen here, and
    /// the run returns at once.
    pub(crate) fn run<'f>(
        &self,
        fd: &'f mut VcpuFd,
        stop_wanted: impl FnOnce() -> bool,
    ) -> Result<VcpuExit<'f>, kvm_ioctls::Error> {
        let immediate_exit: *mut u8 = &mut fd.get_kvm_run().immediate_exit;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *lock(&self.0) = Some(Registered {
            thread,
            immediate_exit,
        });
        if stop_wanted() {
            // SAFETY: `immediate_exit` points into fd's kvm_run page, mapped
            // while `fd` is borrowed here.
            unsafe { std::ptr::write_volatile(immediate_exit, 1) };
        }
        let result = fd.run();
        *lock(&self.0) = None;
        result
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
