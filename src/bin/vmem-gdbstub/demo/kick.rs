//! `--own-kick`: this VMM runs `KVM_RUN` itself and gives the debugger
//! its own way to get a vCPU out of it, as VMMs like Firecracker do: a
//! signal sent to the vCPU's thread, whose handler sets `immediate_exit`
//! in that thread's `kvm_run` (so a kick that lands just before `KVM_RUN`
//! still makes it return at once), installed without `SA_RESTART` (so a
//! `KVM_RUN` under way returns `EINTR`).

use std::cell::Cell;
use std::sync::{Mutex, Once};

use kvm_ioctls::VcpuFd;
use log::error;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

thread_local! {
    /// This thread's vCPU's `kvm_run.immediate_exit`, while it runs one.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let byte = IMMEDIATE_EXIT.get();
    if !byte.is_null() {
        // SAFETY: set only while this thread's vCPU fd (and so its
        // kvm_run mapping) is borrowed by `VcpuKicker::serve`; a volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(byte, 1) };
    }
}

/// The vCPU threads this VMM can kick, by vCPU index.
#[derive(Debug)]
pub struct VcpuKicker {
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
}

impl VcpuKicker {
    /// A kicker for `vcpus` vCPUs (the signal handler installed once).
    pub fn new(vcpus: usize) -> VcpuKicker {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
                error!("--own-kick: cannot install the kick signal's handler: {e}");
            }
        });
        VcpuKicker {
            threads: Mutex::new(vec![None; vcpus]),
        }
    }

    /// Get vCPU `index` out of `KVM_RUN` (the kick given to the debugger).
    pub fn kick(&self, index: usize) {
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&Some(thread)) = threads.get(index) {
            // SAFETY: a registered thread is inside `serve`, so alive
            // (it unregisters under this lock before it returns), and the
            // handler is installed.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// Run vCPU `index`'s loop on this thread, kickable throughout.
    pub fn serve<T>(
        &self,
        index: usize,
        fd: &mut VcpuFd,
        vcpu_loop: impl FnOnce(&mut VcpuFd) -> T,
    ) -> T {
        IMMEDIATE_EXIT.set(&mut fd.get_kvm_run().immediate_exit);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.set_thread(index, Some(me));
        let ended = vcpu_loop(fd);
        self.set_thread(index, None);
        IMMEDIATE_EXIT.set(std::ptr::null_mut());
        ended
    }

    fn set_thread(&self, index: usize, thread: Option<libc::pthread_t>) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = threads.get_mut(index) {
            *slot = thread;
        }
    }
}
