//! One vCPU's control block: what the debugger wants it to do, whether it
//! is parked, why it stopped, and the calls the gdb thread asks it to make
//! on its fd.
//!
//! The vCPU thread belongs to the VMM and runs through [`crate::target::VcpuHooks`].
//! The gdb thread steers it with [`Vcpu::request`] (pause, run, step, step
//! over a breakpoint), waits with [`Vcpu::wait_parked`], and reaches the
//! vCPU's registers with [`Vcpu::call`]: the parked thread makes the ioctl
//! itself (KVM wants vCPU ioctls from the vCPU's thread, and the VMM keeps
//! its `VcpuFd`). A vCPU that stops by itself (breakpoint, step,
//! watchpoint) records why and wakes the gdb thread. When gdb starts one
//! vCPU alone, the gdb session itself is handed over with the command
//! ([`Vcpu::lend`]); the vCPU's thread then answers gdb
//! ([`Vcpu::answer_gdb`]) and its own calls run inline.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use log::debug;

use crate::target::error::StubError;
use crate::target::kvm::command::{Command, StopKind};
use crate::target::kvm::gdb_link::GdbLink;
use crate::target::kvm::kick::KickSlot;
use crate::target::kvm::lending::Lent;
use crate::target::sync::lock;

/// How the VMM's own kick reaches vCPU `index`.
pub(crate) type VmmKick = Box<dyn Fn(usize) + Send + Sync>;

/// An ioctl the gdb thread wants made on the parked vCPU's fd.
type Call = Box<dyn FnOnce(&VcpuFd) + Send>;

scoped_tls::scoped_thread_local!(
    /// The fd of the vCPU whose thread answers gdb (a lent session): calls
    /// on that vCPU are made inline.
    static OWN_FD: VcpuFd
);

/// General and special registers.
pub(crate) type Core = (kvm_regs, kvm_sregs);

struct Control {
    command: Command,
    /// Not parked (and not finished): the thread is the VMM's or in KVM_RUN.
    running: bool,
    /// The VMM's loop for this vCPU ended (or never began to park).
    finished: bool,
    stop: Option<StopKind>,
    /// General and special registers read by the vCPU thread itself when
    /// it stopped (cheaper than asking it again from the gdb thread).
    snapshot: Option<Core>,
    call: Option<Call>,
    /// The gdb thread waits on the condvar for this vCPU's stop (a step):
    /// no wake-up through the session's socket then.
    gdb_waiting: bool,
    /// The gdb session, lent for a step or run, on its way to the vCPU thread.
    lent: Option<Lent>,
    /// The vCPU's own thread drives the session (calls run inline).
    driving: bool,
}

impl Control {
    /// The vCPU is to run `command` (not a pause): it counts as running
    /// from now on, and its saved registers are stale.
    fn start(&mut self, command: Command) {
        self.command = command;
        self.running = true;
        self.snapshot = None;
    }
}

/// What the vCPU thread does next, as [`Vcpu::next_command`] says.
pub(crate) struct Next {
    pub(crate) command: Command,
    /// It parked first.
    pub(crate) parked: bool,
    /// The gdb session, lent for this step or run.
    pub(crate) lent: Option<Lent>,
}

/// A vCPU and its control block.
pub(crate) struct Vcpu {
    pub(crate) index: usize,
    ctl: Mutex<Control>,
    cv: Condvar,
    pub(crate) kick: KickSlot,
    /// The VMM's own kick, which replaces [`Self::kick`].
    vmm_kick: Option<Arc<VmmKick>>,
    /// A `VcpuHooks` holds this vCPU.
    claimed: AtomicBool,
    /// Registers were written since KVM was last given this vCPU's guest
    /// debug: KVM sets single-step's trap flag in RFLAGS when given it, so
    /// a register write can drop it and the guest debug must be given again.
    registers_written: AtomicBool,
    /// The host thread (Linux TID) that last ran this vCPU (0: none yet).
    host_thread: AtomicI32,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("index", &self.index).finish()
    }
}

impl Vcpu {
    pub(crate) fn new(index: usize) -> Vcpu {
        Vcpu {
            index,
            ctl: Mutex::new(Control {
                command: Command::Run,
                running: true,
                finished: false,
                stop: None,
                snapshot: None,
                call: None,
                gdb_waiting: false,
                lent: None,
                driving: false,
            }),
            cv: Condvar::new(),
            kick: KickSlot::default(),
            vmm_kick: None,
            claimed: AtomicBool::new(false),
            registers_written: AtomicBool::new(false),
            host_thread: AtomicI32::new(0),
        }
    }

    /// The VMM's own kick replaces the debugger's.
    pub(crate) fn set_vmm_kick(&mut self, kick: Arc<VmmKick>) {
        self.vmm_kick = Some(kick);
    }

    /// Whether the VMM kicks this vCPU itself.
    pub(crate) fn has_vmm_kick(&self) -> bool {
        self.vmm_kick.is_some()
    }

    /// The host thread (Linux TID) that runs this vCPU, once it has run.
    pub(crate) fn host_thread(&self) -> Option<i32> {
        Some(self.host_thread.load(Ordering::Relaxed)).filter(|&tid| tid != 0)
    }

    /// Host thread `tid` runs this vCPU now.
    pub(crate) fn set_host_thread(&self, tid: i32) {
        self.host_thread.store(tid, Ordering::Relaxed);
    }

    /// The debugger wrote this vCPU's general or special registers.
    pub(crate) fn mark_registers_written(&self) {
        self.registers_written.store(true, Ordering::Release);
    }

    /// Whether registers were written since the last call.
    pub(crate) fn take_registers_written(&self) -> bool {
        self.registers_written.swap(false, Ordering::AcqRel)
    }

    /// Take this vCPU for a `VcpuHooks` (false: another holds it). A
    /// vCPU whose loop ended may be taken again.
    pub(crate) fn claim(&self) -> bool {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut ctl = self.control();
        if ctl.finished {
            ctl.finished = false;
            ctl.running = true;
            ctl.command = Command::Run;
        }
        true
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.ctl)
    }

    /// Whether the debugger wants this vCPU out of `KVM_RUN`.
    pub(crate) fn stop_wanted(&self) -> bool {
        matches!(self.control().command, Command::Pause | Command::Quit)
    }

    /// Whether the vCPU is told to stay parked (it stopped, or was paused).
    pub(crate) fn paused(&self) -> bool {
        self.control().command == Command::Pause
    }

    /// Give the parked vCPU the gdb session and `command` (a step or a
    /// run) to run with it; the session comes back if the vCPU cannot take
    /// it (its loop has ended, or it is not parked).
    pub(crate) fn lend(&self, command: Command, session: Lent) -> Result<(), Lent> {
        let mut ctl = self.control();
        if ctl.finished || ctl.running || ctl.command == Command::Quit {
            return Err(session);
        }
        debug!("vcpu {}: {command:?} with the gdb session", self.index);
        ctl.lent = Some(session);
        ctl.start(command);
        drop(ctl);
        self.cv.notify_all();
        Ok(())
    }

    /// Run `command` (a step or a run), asked by this vCPU's own thread
    /// answering gdb (nobody waits on the vCPU then: no wake-up).
    pub(crate) fn start_again(&self, command: Command) {
        let mut ctl = self.control();
        if ctl.command != Command::Quit {
            ctl.start(command);
        }
    }

    /// Run `f` (which drives the gdb session) on this vCPU's own thread,
    /// with calls on this vCPU made inline on `fd`.
    pub(crate) fn answer_gdb<R>(&self, fd: &VcpuFd, f: impl FnOnce() -> R) -> R {
        self.control().driving = true;
        let result = OWN_FD.set(fd, f);
        self.control().driving = false;
        result
    }

    /// Ask the vCPU to do `command`; pausing interrupts a running guest
    /// (a parked one is not disturbed). Quitting is final: nothing
    /// replaces it until a new loop claims the vCPU (a session ending as
    /// the VM shuts down must not start its vCPUs again).
    pub(crate) fn request(&self, command: Command) {
        let mut ctl = self.control();
        if ctl.command == Command::Quit {
            return;
        }
        let previous = std::mem::replace(&mut ctl.command, command);
        if command == Command::Pause && previous == Command::Pause {
            return; // parked or parking already: nothing to tell it
        }
        if command != Command::Pause && !ctl.finished {
            ctl.start(command);
        }
        drop(ctl);
        self.cv.notify_all();
        if matches!(command, Command::Pause | Command::Quit) && previous != Command::Pause {
            self.kick_out();
        }
    }

    /// Make the vCPU leave `KVM_RUN` if it is inside (our kick, or the
    /// VMM's where it runs `KVM_RUN` itself).
    pub(crate) fn kick_out(&self) {
        self.kick.kick();
        if let Some(kick) = &self.vmm_kick {
            kick(self.index);
        }
    }

    /// Block until the vCPU is parked (or its loop has ended).
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
    pub(crate) fn take_snapshot(&self) -> Option<Core> {
        self.control().snapshot.take()
    }

    /// Run `f` on the parked vCPU's fd, in the vCPU's thread, and return
    /// its result.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&VcpuFd) -> R + Send + 'static,
    ) -> Result<R, StubError> {
        let mut ctl = self.control();
        if ctl.driving && OWN_FD.is_set() {
            // This thread is the vCPU's own, answering gdb.
            drop(ctl);
            return Ok(OWN_FD.with(|fd| f(fd)));
        }
        let (done, result) = mpsc::sync_channel(1);
        if ctl.running || ctl.finished {
            return Err(StubError::NotParked(self.index));
        }
        ctl.call = Some(Box::new(move |fd| {
            let _ = done.send(f(fd));
        }));
        drop(ctl);
        self.cv.notify_all();
        // A vCPU that quits instead drops the call, and with it `done`.
        result.recv().map_err(|_| StubError::NotParked(self.index))
    }

    /// The vCPU thread, between two `KVM_RUN`s: park while the debugger
    /// says so (making the calls it sends meanwhile), then return what to
    /// do next.
    pub(crate) fn next_command(&self, fd: &VcpuFd) -> Next {
        let mut ctl = self.control();
        let mut parked = false;
        loop {
            if let Some(call) = ctl.call.take() {
                drop(ctl);
                call(fd);
                ctl = self.control();
                continue;
            }
            let command = ctl.command;
            if command != Command::Pause {
                if command == Command::Quit {
                    ctl.finished = true;
                    ctl.running = false;
                    drop(ctl);
                    self.cv.notify_all();
                    ctl = self.control();
                }
                return Next {
                    command,
                    parked,
                    lent: ctl.lent.take(),
                };
            }
            parked = true;
            if ctl.running {
                ctl.running = false;
                self.cv.notify_all();
            }
            ctl = self.cv.wait(ctl).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Park after stopping by itself, then tell the gdb thread (parked
    /// first, so the gdb thread need not wait for it again) unless this
    /// thread holds the session (`answering`) and reports the stop itself.
    pub(crate) fn stop_self(
        &self,
        kind: Option<StopKind>,
        snapshot: Option<Core>,
        answering: bool,
        link: &GdbLink,
    ) {
        let mut ctl = self.control();
        ctl.stop = kind;
        ctl.snapshot = snapshot;
        if ctl.command != Command::Quit {
            ctl.command = Command::Pause;
        }
        ctl.running = false;
        let watched = ctl.gdb_waiting;
        drop(ctl);
        if !answering {
            // (Nobody waits on a vCPU whose own thread answers gdb.)
            self.cv.notify_all();
        }
        if kind.is_some() {
            debug!("vcpu {} stopped: {kind:?}", self.index);
            if !watched && !answering {
                link.wake();
            }
        }
    }

    /// Wait up to `limit` for this vCPU to stop by itself (the end of a
    /// step); whether it did. Meanwhile its stop wakes this thread through
    /// the condvar only, not the session's socket.
    pub(crate) fn wait_stop(&self, limit: Duration) -> bool {
        let mut ctl = self.control();
        ctl.gdb_waiting = true;
        let (mut ctl, _) = self
            .cv
            .wait_timeout_while(ctl, limit, |c| c.stop.is_none() && c.running)
            .unwrap_or_else(|e| e.into_inner());
        ctl.gdb_waiting = false;
        ctl.stop.is_some()
    }

    /// The hooks that held this vCPU are gone: its loop has ended, and
    /// another `VcpuHooks` may take it. Returns a gdb session lent to it
    /// that it never took.
    pub(crate) fn release(&self) -> Option<Lent> {
        let lent = self.mark_finished();
        self.claimed.store(false, Ordering::Release);
        lent
    }

    /// The VMM's loop for this vCPU has ended (or will not run again):
    /// nobody may wait for it to park, send it calls or lend it the
    /// session. Returns a session lent to it that it never took.
    pub(crate) fn mark_finished(&self) -> Option<Lent> {
        let mut ctl = self.control();
        ctl.running = false;
        ctl.finished = true;
        ctl.call = None;
        let lent = ctl.lent.take();
        drop(ctl);
        self.cv.notify_all();
        lent
    }

    /// Wait out a `hlt`: `tick` stands in for the timer interrupt the VM
    /// has no controller for; without one (interrupts disabled) only the
    /// debugger or shutdown ends the wait, as on a real CPU.
    pub(crate) fn idle(&self, tick: Option<Duration>) {
        let ctl = self.control();
        let running = |ctl: &mut Control| ctl.command == Command::Run && ctl.call.is_none();
        match tick {
            Some(tick) => drop(self.cv.wait_timeout_while(ctl, tick, running)),
            None => drop(self.cv.wait_while(ctl, running)),
        }
    }
}
