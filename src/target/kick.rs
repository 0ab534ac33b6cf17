//! Interrupting a vCPU thread that is inside `KVM_RUN`.
//!
//! The kicker sets `kvm_run.immediate_exit` (so a `KVM_RUN` that has not
//! started yet returns at once) and sends a signal whose handler does
//! nothing, installed without `SA_RESTART`, so a running `KVM_RUN` returns
//! `EINTR`. No polling anywhere.

use std::sync::Once;

use kvm_bindings::kvm_run;

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

/// The `immediate_exit` byte of one vCPU's `kvm_run` page.
#[derive(Debug)]
pub(crate) struct ImmediateExit(*mut u8);

// SAFETY: the pointer targets the vCPU's kvm_run mapping, shared with the
// kernel and written only with volatile single-byte stores.
unsafe impl Send for ImmediateExit {}
// SAFETY: as above.
unsafe impl Sync for ImmediateExit {}

impl ImmediateExit {
    /// The flag of `run`, which must stay mapped as long as this value is
    /// used (it lives in the same `Vcpu` as the `VcpuFd` owning it).
    pub(crate) fn new(run: &mut kvm_run) -> ImmediateExit {
        ImmediateExit(&mut run.immediate_exit)
    }

    pub(crate) fn set(&self, on: bool) {
        // SAFETY: see `new`: the byte is mapped while the vCPU exists.
        unsafe { std::ptr::write_volatile(self.0, u8::from(on)) }
    }
}

/// The id of the calling thread, to be kicked later.
pub(crate) fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Interrupt `thread`'s `KVM_RUN`, if any.
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread inside `Vcpu::run` (the caller
    // holds the lock that thread takes to leave); the handler is installed.
    unsafe {
        libc::pthread_kill(thread, kick_signal());
    }
}
