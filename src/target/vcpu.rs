//! One vCPU: its control block (what the debugger wants it to do), its
//! run loop, and the classification of debug exits.
//!
//! A vCPU thread runs [`Vcpu::run`]. The gdb thread steers it with
//! [`Vcpu::request`] (pause, run, step, step over a breakpoint) and waits
//! with [`Vcpu::wait_parked`]; a vCPU that stops by itself (breakpoint,
//! step, watchpoint) records why and wakes the gdb thread.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use gdbstub::common::Signal;
use kvm_bindings::{kvm_debug_exit_arch, kvm_guest_debug, kvm_regs, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use log::{debug, trace, warn};

use super::breakpoints::INT3;
use super::kick::{self, ImmediateExit};
use super::paging::Paging;
use super::watchpoints::{self, Watch};
use super::{lock, ExitAction, Inner};

/// `kvm_run.internal.suberror` for an emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
const BP_VECTOR: u32 = 3;
const DB_VECTOR: u32 = 1;
const RFLAGS_IF: u64 = 1 << 9;

/// Why a vCPU stopped by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopKind {
    /// A single step finished.
    Step,
    /// It reached one of our `int3`s (rip is on it).
    SwBreak,
    /// A debug register matched (rip is on the instruction).
    HwBreak,
    /// An access hit a watchpoint (the instruction completed).
    Watch(Watch),
    /// The guest cannot go on (triple fault, undecodable instruction…).
    Crashed(Signal),
}

/// What the debugger wants a vCPU to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Pause,
    Run,
    Step,
    /// One silent step with breakpoints lifted, then pause.
    StepOver,
    Quit,
}

#[derive(Debug)]
struct Control {
    command: Command,
    running: bool,
    stop: Option<StopKind>,
    /// General and special registers read by the vCPU thread itself when
    /// it stopped (cheaper than reading them from the gdb thread).
    snapshot: Option<(kvm_regs, kvm_sregs)>,
}

/// A vCPU and its control block.
#[derive(Debug)]
pub(crate) struct Vcpu {
    pub(crate) index: usize,
    pub(crate) fd: Mutex<VcpuFd>,
    ctl: Mutex<Control>,
    cv: Condvar,
    immediate_exit: ImmediateExit,
    /// The thread inside `run`, while it is there: a kick never reaches a
    /// thread whose loop ended (and which the VMM may have joined).
    thread: Mutex<Option<libc::pthread_t>>,
}

/// Registers the calling thread as a vCPU's for as long as it lives, and
/// takes it back on every way out of `Vcpu::run`.
struct RunningThread<'a>(&'a Mutex<Option<libc::pthread_t>>);

impl<'a> RunningThread<'a> {
    fn register(slot: &'a Mutex<Option<libc::pthread_t>>) -> Self {
        *lock(slot) = Some(kick::current_thread());
        RunningThread(slot)
    }
}

impl Drop for RunningThread<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

/// What one `KVM_RUN` came to.
enum Outcome {
    Again,
    /// `hlt`: with interrupts enabled (a timer tick wakes it) or not
    /// (nothing can: it sleeps until the debugger or shutdown).
    Halted {
        interruptible: bool,
    },
    StepDone,
    Stop(StopKind),
    Quit,
}

impl Vcpu {
    pub(crate) fn new(index: usize, mut fd: VcpuFd) -> Vcpu {
        let immediate_exit = ImmediateExit::new(fd.get_kvm_run());
        Vcpu {
            index,
            fd: Mutex::new(fd),
            ctl: Mutex::new(Control {
                command: Command::Run,
                running: true,
                stop: None,
                snapshot: None,
            }),
            cv: Condvar::new(),
            immediate_exit,
            thread: Mutex::new(None),
        }
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.ctl)
    }

    /// Ask the vCPU to do `command`; pausing interrupts a running guest
    /// (a parked one is not disturbed).
    pub(crate) fn request(&self, command: Command) {
        let mut ctl = self.control();
        let previous = std::mem::replace(&mut ctl.command, command);
        if command == Command::Pause && previous == Command::Pause {
            return; // parked or parking already: nothing to tell it
        }
        if command != Command::Pause {
            ctl.running = true;
            ctl.snapshot = None;
        }
        drop(ctl);
        self.cv.notify_all();
        if matches!(command, Command::Pause | Command::Quit) && previous != Command::Pause {
            self.immediate_exit.set(true);
            // Kicked under the lock: the thread cannot leave `run` (and
            // be joined) in between.
            if let Some(thread) = *lock(&self.thread) {
                kick::kick(thread);
            }
        }
    }

    /// Block until the vCPU is parked.
    pub(crate) fn wait_parked(&self) {
        let mut ctl = self.control();
        while ctl.running {
            ctl = self.cv.wait(ctl).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether the vCPU stopped by itself and has not been asked why.
    pub(crate) fn has_stop(&self) -> bool {
        self.control().stop.is_some()
    }

    /// Why the vCPU stopped by itself, clearing it.
    pub(crate) fn take_stop(&self) -> Option<StopKind> {
        self.control().stop.take()
    }

    /// The registers the vCPU saved when it last parked by itself, if it
    /// has not run since (taken once).
    pub(crate) fn take_snapshot(&self) -> Option<(kvm_regs, kvm_sregs)> {
        self.control().snapshot.take()
    }

    fn next_command(&self) -> Command {
        let mut ctl = self.control();
        loop {
            if ctl.command != Command::Pause {
                // A pause requested from now on sets the flag again.
                self.immediate_exit.set(false);
                return ctl.command;
            }
            if ctl.running {
                ctl.running = false;
                self.cv.notify_all();
            }
            ctl = self.cv.wait(ctl).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Park after stopping by itself, then tell the gdb thread (parked
    /// first, so the gdb thread need not wait for it again).
    fn stop_self(
        &self,
        kind: Option<StopKind>,
        snapshot: Option<(kvm_regs, kvm_sregs)>,
        inner: &Inner,
    ) {
        let mut ctl = self.control();
        ctl.stop = kind;
        ctl.snapshot = snapshot;
        ctl.command = Command::Pause;
        ctl.running = false;
        drop(ctl);
        self.cv.notify_all();
        if kind.is_some() {
            debug!("vcpu {} stopped: {kind:?}", self.index);
            inner.wake();
        }
    }

    /// The loop has ended: nobody may wait for this vCPU to park.
    fn mark_finished(&self) {
        self.control().running = false;
        self.cv.notify_all();
    }

    /// Wait out a `hlt`: `tick` stands in for the timer interrupt the VM
    /// has no controller for; without one (interrupts disabled) only the
    /// debugger or shutdown ends the wait, as on a real CPU.
    fn idle(&self, tick: Option<Duration>) {
        let ctl = self.control();
        match tick {
            Some(tick) => {
                if ctl.command == Command::Run {
                    let _ = self.cv.wait_timeout(ctl, tick);
                }
            }
            None => {
                let woken = self.cv.wait_while(ctl, |ctl| ctl.command == Command::Run);
                drop(woken.unwrap_or_else(|e| e.into_inner()));
            }
        }
    }

    /// The vCPU thread's loop; returns when the VM shuts down.
    pub(crate) fn run(
        &self,
        inner: &Inner,
        on_exit: &mut dyn FnMut(usize, VcpuExit<'_>) -> ExitAction,
    ) {
        let _running = RunningThread::register(&self.thread);
        let mut applied: Option<kvm_guest_debug> = None;
        loop {
            let command = self.next_command();
            let stepping = match command {
                Command::Quit => {
                    self.mark_finished();
                    return;
                }
                Command::Pause | Command::Run => false,
                Command::Step | Command::StepOver => true,
            };
            let mut fd = lock(&self.fd);
            let wanted = inner.guest_debug(stepping, command == Command::StepOver);
            if applied.as_ref().is_none_or(|a| !same_debug(a, &wanted)) {
                if let Err(e) = fd.set_guest_debug(&wanted) {
                    warn!("vcpu {}: KVM_SET_GUEST_DEBUG failed: {e}", self.index);
                }
                applied = Some(wanted);
            }
            // A step's registers come back in kvm_run (no ioctls) where
            // the host offers KVM_CAP_SYNC_REGS.
            let synced = stepping && inner.sync_regs;
            if synced {
                fd.set_sync_valid_reg(SyncReg::Register);
                fd.set_sync_valid_reg(SyncReg::SystemRegister);
            }
            let outcome = self.run_once(&mut fd, inner, stepping, on_exit);
            let snapshot = match outcome {
                Outcome::StepDone | Outcome::Stop(_) if synced => {
                    let sync = fd.sync_regs();
                    Some((sync.regs, sync.sregs))
                }
                Outcome::StepDone | Outcome::Stop(_) => fd.get_regs().ok().zip(fd.get_sregs().ok()),
                _ => None,
            };
            if synced {
                fd.clear_sync_valid_reg(SyncReg::Register);
                fd.clear_sync_valid_reg(SyncReg::SystemRegister);
            }
            drop(fd);
            match outcome {
                Outcome::Again => {}
                Outcome::Halted { interruptible } => {
                    self.idle(interruptible.then_some(inner.idle_sleep))
                }
                Outcome::StepDone if command == Command::StepOver => {
                    self.stop_self(None, snapshot, inner)
                }
                Outcome::StepDone => self.stop_self(Some(StopKind::Step), snapshot, inner),
                Outcome::Stop(kind) => self.stop_self(Some(kind), snapshot, inner),
                Outcome::Quit => {
                    inner.shut_down();
                    self.mark_finished();
                    return;
                }
            }
        }
    }

    fn run_once(
        &self,
        fd: &mut VcpuFd,
        inner: &Inner,
        stepping: bool,
        on_exit: &mut dyn FnMut(usize, VcpuExit<'_>) -> ExitAction,
    ) -> Outcome {
        let exit = match fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR => {
                self.immediate_exit.set(false);
                return Outcome::Again;
            }
            Err(e) => {
                warn!("vcpu {}: KVM_RUN failed: {e}", self.index);
                return Outcome::Stop(StopKind::Crashed(Signal::SIGSEGV));
            }
        };
        match exit {
            VcpuExit::Hlt if stepping => Outcome::StepDone,
            VcpuExit::Hlt => Outcome::Halted {
                interruptible: fd.get_regs().is_ok_and(|r| r.rflags & RFLAGS_IF != 0),
            },
            VcpuExit::Debug(arch) => self.on_debug_exit(fd, inner, arch, stepping),
            VcpuExit::InternalError => self.on_internal_error(fd, inner),
            VcpuExit::MmioRead(gpa, data) if inner.traps(gpa) => {
                let hit = watchpoints::serve_access(
                    &inner.memory,
                    &inner.watchpoints(),
                    gpa,
                    data,
                    false,
                );
                self.after_trap(fd, inner, hit)
            }
            VcpuExit::MmioWrite(gpa, data) if inner.traps(gpa) => {
                let mut bytes = data.to_vec();
                let hit = watchpoints::serve_access(
                    &inner.memory,
                    &inner.watchpoints(),
                    gpa,
                    &mut bytes,
                    true,
                );
                self.after_trap(fd, inner, hit)
            }
            VcpuExit::Shutdown | VcpuExit::FailEntry(..) => {
                warn!(
                    "vcpu {}: guest shut down (triple fault or bad state)",
                    self.index
                );
                Outcome::Stop(StopKind::Crashed(Signal::SIGSEGV))
            }
            other => match on_exit(self.index, other) {
                ExitAction::Continue => Outcome::Again,
                ExitAction::Shutdown => Outcome::Quit,
            },
        }
    }

    /// A trapped access was served; on a hit, finish the instruction (so
    /// rip is past it, as after a hardware watchpoint) and stop.
    fn after_trap(&self, fd: &mut VcpuFd, inner: &Inner, hit: Option<Watch>) -> Outcome {
        let Some(watch) = hit else {
            return Outcome::Again;
        };
        self.immediate_exit.set(true);
        loop {
            match fd.run() {
                Ok(VcpuExit::MmioRead(gpa, data)) if inner.traps(gpa) => {
                    watchpoints::serve_access(
                        &inner.memory,
                        &inner.watchpoints(),
                        gpa,
                        data,
                        false,
                    );
                }
                Ok(VcpuExit::MmioWrite(gpa, data)) if inner.traps(gpa) => {
                    let mut bytes = data.to_vec();
                    watchpoints::serve_access(
                        &inner.memory,
                        &inner.watchpoints(),
                        gpa,
                        &mut bytes,
                        true,
                    );
                }
                _ => break,
            }
        }
        self.immediate_exit.set(false);
        Outcome::Stop(StopKind::Watch(watch))
    }

    fn on_debug_exit(
        &self,
        fd: &mut VcpuFd,
        inner: &Inner,
        arch: kvm_debug_exit_arch,
        stepping: bool,
    ) -> Outcome {
        trace!("vcpu {}: debug exit {arch:x?}", self.index);
        match arch.exception {
            DB_VECTOR if arch.dr6 & 0xf != 0 => Outcome::Stop(StopKind::HwBreak),
            DB_VECTOR if stepping => Outcome::StepDone,
            BP_VECTOR => self.on_int3(fd, inner),
            _ => Outcome::Again,
        }
    }

    fn on_internal_error(&self, fd: &mut VcpuFd, inner: &Inner) -> Outcome {
        // SAFETY: after an internal-error exit the kernel filled the
        // `internal` member of the kvm_run union.
        let suberror = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if suberror == KVM_INTERNAL_ERROR_EMULATION {
            // On kvm_pvm an int3 (ours or the guest's) ends up here.
            return self.on_int3(fd, inner);
        }
        warn!(
            "vcpu {}: KVM internal error, suberror {suberror}",
            self.index
        );
        Outcome::Stop(StopKind::Crashed(Signal::SIGILL))
    }

    /// rip is on an `int3`: ours is a breakpoint; the guest's own is
    /// delivered to the guest as #BP; anything else is a crash.
    fn on_int3(&self, fd: &mut VcpuFd, inner: &Inner) -> Outcome {
        let (Ok(mut regs), Ok(sregs)) = (fd.get_regs(), fd.get_sregs()) else {
            return Outcome::Stop(StopKind::Crashed(Signal::SIGILL));
        };
        let Ok((gpa, _)) = Paging::of(&sregs, &inner.cpu_limits).translate(&inner.memory, regs.rip)
        else {
            return Outcome::Stop(StopKind::Crashed(Signal::SIGSEGV));
        };
        if inner.breakpoints().has_sw(gpa) {
            return Outcome::Stop(StopKind::SwBreak);
        }
        let mut byte = [0u8];
        if inner.memory.read(gpa, &mut byte).is_err() || byte[0] != INT3 {
            warn!(
                "vcpu {}: cannot emulate the instruction at {:#x}",
                self.index, regs.rip
            );
            return Outcome::Stop(StopKind::Crashed(Signal::SIGILL));
        }
        debug!(
            "vcpu {}: guest int3 at {:#x}, delivering #BP",
            self.index, regs.rip
        );
        regs.rip += 1;
        let delivered = fd.set_regs(&regs).and_then(|()| {
            let mut events = fd.get_vcpu_events()?;
            events.exception.injected = 1;
            events.exception.nr = BP_VECTOR as u8;
            events.exception.has_error_code = 0;
            events.exception.error_code = 0;
            fd.set_vcpu_events(&events)
        });
        match delivered {
            Ok(()) => Outcome::Again,
            Err(e) => {
                warn!("vcpu {}: cannot inject #BP: {e}", self.index);
                Outcome::Stop(StopKind::Crashed(Signal::SIGTRAP))
            }
        }
    }
}

fn same_debug(a: &kvm_guest_debug, b: &kvm_guest_debug) -> bool {
    a.control == b.control && a.arch.debugreg == b.arch.debugreg
}
