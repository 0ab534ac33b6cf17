//! The hooks a VMM calls around each `KVM_RUN` of one vCPU, in the vCPU's
//! own thread and loop.
//!
//! [`VcpuHooks::before_run`] parks the vCPU while gdb holds the VM (making
//! the register ioctls gdb needs meanwhile), finishes what the last exit
//! left to do, and applies the debug settings of the next run; while gdb
//! starts this vCPU alone it also answers gdb (the session is lent to this
//! thread, see `gdb/session.rs`).
//! [`VcpuHooks::after_run`] takes the exits that are the debugger's
//! (debug exits, accesses to trapped pages, kvm_pvm's emulation failures
//! at an `int3`, `hlt` without an interrupt controller, its kick) and
//! leaves every other exit to the VMM untouched. The VMM makes `KVM_RUN`
//! itself, with its own KVM crate: the hooks read the exit from their own
//! mapping of `kvm_run` and kick the run through it (or through the VMM's
//! own kick, [`crate::target::DebuggerBuilder::kick`]).

mod guest_work;
mod lent;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::kvm_guest_debug;
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use log::{debug, trace, warn};

use crate::target::kvm::command::{Command, StopKind};
use crate::target::kvm::exit_decision::{decide, Decision, ExitSeen, Pending, RunFacts};
use crate::target::kvm::fds::exit_of;
use crate::target::kvm::irq_step::Origin;
use crate::target::kvm::kick::StepTimer;
use crate::target::kvm::lending::{Lent, Turn, STEP_GRACE};
use crate::target::kvm::shared::Inner;
use crate::target::kvm::vcpu::Vcpu;
use crate::target::kvm::watch::run_gate::Pass;
use crate::target::machine::x86_constants::{DB_VECTOR, RFLAGS_IF};

/// How many grace periods the step timer is set for at a time.
const TIMER_SPAN: u32 = 4;

/// What the vCPU loop does next, as [`VcpuHooks::before_run`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Run the vCPU (`KVM_RUN`).
    Run,
    /// The VM is shutting down: leave the loop.
    Quit,
}

/// Who an exit belongs to, as [`VcpuHooks::after_run`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOwner {
    /// The debugger's (a breakpoint, a step, a trapped page, its kick):
    /// handled; the VMM goes back to [`VcpuHooks::before_run`].
    Debugger,
    /// The VMM's: handle it as without a debugger.
    Vmm,
}

/// One vCPU's side of the debugger, used from the vCPU's thread around
/// every `KVM_RUN` the VMM makes, with whatever KVM crate it uses: the
/// hooks hold their own handle on the vCPU (a duplicate of its fd and a
/// mapping of its `kvm_run`), so they need nothing of the VMM's types.
///
/// ```no_run
/// # use vmem_gdbstub::target::{Debugger, Entry, ExitOwner};
/// # fn vcpu_thread(debugger: &Debugger, mut fd: kvm_ioctls::VcpuFd) -> Result<(), vmem_gdbstub::target::StubError> {
/// let mut hooks = debugger.vcpu(0, &fd)?;
/// while hooks.before_run() == Entry::Run {
///     let exit = fd.run(); // the VMM's own KVM_RUN, any kvm-ioctls release
///     if hooks.after_run(exit.as_ref().map(|_| ()).map_err(|e| e.errno())) == ExitOwner::Vmm {
///         // the VMM's exit: port I/O, MMIO, its own kick…
///     }
/// }
/// # Ok(()) }
/// ```
///
/// Between `before_run` and `after_run` the thread may be kicked out of
/// `KVM_RUN` with a signal (`SIGRTMIN+3`, an empty handler without
/// `SA_RESTART`) unless the VMM gave the debugger its own kick
/// ([`crate::target::DebuggerBuilder::kick`]): make no other blocking system call
/// there.
pub struct VcpuHooks {
    // Dropped before `fd`: it unregisters the kick, which points into
    // `fd`'s `kvm_run`.
    hooks: Hooks,
    /// The debugger's own handle on the vCPU.
    fd: VcpuFd,
}

impl std::fmt::Debug for VcpuHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.hooks.fmt(f)
    }
}

impl VcpuHooks {
    pub(crate) fn new(inner: Arc<Inner>, index: usize, fd: VcpuFd) -> Self {
        VcpuHooks {
            hooks: Hooks::new(inner, index),
            fd,
        }
    }

    /// Call before every `KVM_RUN` of this vCPU. Parks while gdb holds
    /// the VM (serving gdb's register accesses meanwhile), finishes the
    /// debugger's part of the last exit, and applies breakpoints and
    /// stepping for the next run; waits while the debugger changes
    /// memslots. [`Entry::Quit`]: the VM is shutting down.
    pub fn before_run(&mut self) -> Entry {
        self.hooks.before_run(&mut self.fd)
    }

    /// Call with how every `KVM_RUN` ended: `Ok(())`, or the `errno` it
    /// failed with (`EINTR` for a kick). The exit itself is read from
    /// `kvm_run`; an exit the VMM gets back is untouched there.
    pub fn after_run(&mut self, ran: Result<(), i32>) -> ExitOwner {
        let exit = match ran {
            Ok(()) => Ok(exit_of(self.fd.get_kvm_run())),
            Err(errno) => Err(kvm_ioctls::Error::new(errno)),
        };
        match self.hooks.after_exit(exit) {
            None => ExitOwner::Debugger,
            Some(_) => ExitOwner::Vmm,
        }
    }
}

/// The hooks' state and logic, on the vCPU handle [`VcpuHooks`] lends.
struct Hooks {
    inner: Arc<Inner>,
    /// This vCPU's index in `inner.vcpus`.
    index: usize,
    /// The guest-debug settings KVM has for this vCPU.
    applied: Option<kvm_guest_debug>,
    /// What the last `KVM_RUN` ran under.
    command: Command,
    /// The last run asked for registers in `kvm_run` (KVM_CAP_SYNC_REGS).
    synced: bool,
    /// The last run was interrupted (`EINTR`): the vCPU may be halted in
    /// KVM, which the next step must know.
    interrupted: bool,
    /// Where gdb's step began, while interrupt handlers it enters are
    /// skipped (`StepIrqs::SkipHandlers`).
    origin: Option<Origin>,
    /// Silent steps taken in handlers for this step of gdb's (0: not in one).
    handler_steps: u32,
    pending: Option<Pending>,
    /// The gdb session, lent to this thread while gdb starts this vCPU
    /// alone.
    session: Option<Lent>,
    /// When the lent step or run must have stopped (else the session goes
    /// home).
    lent_deadline: Instant,
    /// Kicks a lent step or run out of `KVM_RUN` at its deadline.
    timer: Option<StepTimer>,
    /// The step's instruction was a `hlt`, stepped here: the run about to
    /// be made only returns (`immediate_exit`), and ends the step.
    stepped_hlt: bool,
    /// The thread that last called `before_run` (`pthread_self`), whose
    /// TID the vCPU records for `monitor info cpus`.
    thread: Option<libc::pthread_t>,
    /// When the step timer fires, if it is set. It stays set while the
    /// thread answers gdb (only the VMM's code must never see its signal;
    /// ours retries what it interrupts) and is set again only when a step
    /// would get less than [`STEP_GRACE`]: a step lasts between one and
    /// [`TIMER_SPAN`] grace periods before the session goes home, and a
    /// run of steps costs a timer call every few milliseconds.
    timer_fires: Cell<Option<Instant>>,
    /// Inside the memslot gate, from `before_run` to `after_exit`.
    pass: Option<Pass>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuHooks")
            .field("vcpu", &self.index)
            .field("command", &self.command)
            .field("pending", &self.pending)
            .finish()
    }
}

impl Hooks {
    /// This vCPU's control block.
    fn vcpu(&self) -> &Vcpu {
        &self.inner.vcpus[self.index]
    }

    fn new(inner: Arc<Inner>, index: usize) -> Self {
        Hooks {
            inner,
            index,
            applied: None,
            command: Command::Run,
            synced: false,
            interrupted: false,
            origin: None,
            handler_steps: 0,
            pending: None,
            session: None,
            lent_deadline: Instant::now(),
            timer: None,
            timer_fires: Cell::new(None),
            stepped_hlt: false,
            thread: None,
            pass: None,
        }
    }

    /// See [`VcpuHooks::before_run`].
    fn before_run(&mut self, fd: &mut VcpuFd) -> Entry {
        // (A pass still held: the last run's exit never came back.)
        self.leave_gate();
        self.vcpu().kick.unregister();
        let entry = self.prepare(fd);
        if entry == Entry::Run {
            self.inner.sync_traps();
            self.pass = Some(self.inner.trapping.run_gate().enter());
            self.arm_for_run(fd);
        }
        entry
    }

    /// The run is over (or never came): out of the memslot gate. Whether
    /// the gate closed during it.
    fn leave_gate(&mut self) -> bool {
        let pass = self.pass.take();
        pass.is_some_and(|pass| self.inner.trapping.run_gate().leave(pass))
    }

    /// Record which host thread runs this vCPU (a TLS read per run; the
    /// system call only when the thread changed).
    fn note_thread(&mut self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if self.thread != Some(me) {
            self.thread = Some(me);
            // SAFETY: gettid has no preconditions.
            self.vcpu().set_host_thread(unsafe { libc::gettid() });
        }
    }

    /// [`Self::before_run`] up to the gate.
    fn prepare(&mut self, fd: &mut VcpuFd) -> Entry {
        fd.set_kvm_immediate_exit(0);
        self.inner.vcpus.learn_cpuid(fd);
        self.note_thread();
        if let Some(pending) = self.pending.take() {
            self.finish(fd, pending);
        }
        // kvm_run holds the last exit's registers until the next run.
        let exit_regs = std::mem::take(&mut self.synced);
        if exit_regs {
            fd.clear_sync_valid_reg(SyncReg::Register);
            fd.clear_sync_valid_reg(SyncReg::SystemRegister);
        }
        let answered = self.answer_gdb(fd);
        let next = self.vcpu().next_command(fd);
        if let Some(session) = next.lent {
            self.take_session(session);
        }
        let (command, parked) = (next.command, next.parked || answered);
        if command == Command::Quit {
            self.send_home();
            return Entry::Quit;
        }
        if parked || !command.steps() {
            self.origin = None;
            self.handler_steps = 0;
        }
        self.command = command;
        let written = self.vcpu().take_registers_written();
        if written {
            // KVM_SET_REGS may have dropped a step's trap flag.
            self.applied = None;
        }
        let wanted = self.inner.guest_debug(command);
        apply_debug(fd, &mut self.applied, wanted, self.index);
        if command.steps() && exit_regs && !written && self.step_hlt(fd) {
            return Entry::Run;
        }
        if command.steps() && std::mem::take(&mut self.interrupted) {
            self.wake_for_step(fd);
        }
        if command.steps() && self.origin.is_none() && self.inner.skips_handlers(command) {
            self.origin = fd
                .get_regs()
                .ok()
                .zip(fd.get_sregs().ok())
                .and_then(|(regs, sregs)| Origin::of(&regs, &sregs));
        }
        // A stop's registers come back in kvm_run (no ioctls) where the
        // host offers KVM_CAP_SYNC_REGS: for steps, and for every run while
        // gdb is attached (a breakpoint hit reads them twice).
        if command.steps() || self.inner.link.attached() {
            self.sync_registers(fd);
        }
        Entry::Run
    }

    /// Have the next exit put the registers in `kvm_run`, where the host
    /// offers KVM_CAP_SYNC_REGS.
    fn sync_registers(&mut self, fd: &mut VcpuFd) {
        if self.inner.vcpus.sync_regs() {
            fd.set_sync_valid_reg(SyncReg::Register);
            fd.set_sync_valid_reg(SyncReg::SystemRegister);
            self.synced = true;
        }
    }

    /// Make the coming `KVM_RUN` interruptible by the debugger: its kick
    /// (a signal, and `immediate_exit` for a run about to start) unless
    /// the VMM gave it one of its own, and the deadline of a step or run
    /// made with the session lent to this thread.
    fn arm_for_run(&self, fd: &mut VcpuFd) {
        if let Some(timer) = self.timer.as_ref().filter(|_| self.session.is_some()) {
            let fires = self.timer_fires.get();
            if fires.is_none_or(|at| at < self.lent_deadline) {
                let span = STEP_GRACE * TIMER_SPAN;
                timer.arm(span);
                self.timer_fires.set(Some(Instant::now() + span));
            }
        }
        if !self.vcpu().has_vmm_kick() {
            self.vcpu()
                .kick
                .register(&mut fd.get_kvm_run().immediate_exit);
        }
        if self.vcpu().stop_wanted() || self.inner.trapping.run_gate().closing() {
            // Asked for before the kick could reach this run.
            fd.set_kvm_immediate_exit(1);
        }
    }

    /// The result of a `KVM_RUN`. `None`: the exit was the debugger's
    /// (handled, or finished in the next `before_run`); otherwise the
    /// exit, untouched, for the VMM to handle as without a debugger.
    fn after_exit<'a>(
        &mut self,
        exit: Result<VcpuExit<'a>, kvm_ioctls::Error>,
    ) -> Option<Result<VcpuExit<'a>, kvm_ioctls::Error>> {
        self.vcpu().kick.unregister();
        let gate_closed = self.leave_gate();
        let stepping = self.command.steps();
        let stepped_hlt = std::mem::take(&mut self.stepped_hlt);
        self.interrupted = !stepped_hlt && matches!(&exit, Err(e) if e.errno() == libc::EINTR);
        let facts = RunFacts {
            stepping,
            stepped_hlt,
            stop_wanted: self.vcpu().stop_wanted(),
            lent: self.session.is_some(),
            gate_closed,
            attached: self.inner.link.attached(),
        };
        let pending = match decide(self.seen(&exit), facts) {
            Decision::RunOn => {
                if gate_closed && !facts.stop_wanted && exit.is_err() {
                    debug!(
                        "vcpu {}: out of KVM_RUN for a memslot change; runs on",
                        self.index
                    );
                }
                return None;
            }
            Decision::SendHome => {
                debug!(
                    "vcpu {}: ran past its deadline ({STEP_GRACE:?} or more) with the session: the gdb thread takes over",
                    self.index
                );
                self.send_home();
                return None;
            }
            Decision::Finish(pending) => {
                self.log_crash(&exit, pending);
                pending
            }
            Decision::ServeTrap => {
                let hit = match exit {
                    Ok(VcpuExit::MmioRead(gpa, data)) => self.serve_trapped(gpa, data, false),
                    Ok(VcpuExit::MmioWrite(gpa, data)) => {
                        self.serve_trapped(gpa, &mut data.to_vec(), true)
                    }
                    _ => None,
                };
                Pending::FinishTrap(hit?)
            }
            Decision::Vmm => {
                self.disarm();
                return Some(exit);
            }
        };
        self.pending = Some(pending);
        None
    }

    /// `exit` as [`decide`] sees it.
    fn seen(&self, exit: &Result<VcpuExit<'_>, kvm_ioctls::Error>) -> ExitSeen {
        match exit {
            Err(e) => ExitSeen::Failed(e.errno()),
            Ok(VcpuExit::Hlt) => ExitSeen::Hlt,
            Ok(VcpuExit::Debug(arch)) => {
                trace!("vcpu {}: debug exit {arch:x?}", self.index);
                let hit = (arch.exception == DB_VECTOR)
                    .then(|| self.inner.watches.debug_regs().hit(arch.dr6))
                    .flatten();
                ExitSeen::Debug {
                    vector: arch.exception,
                    hit,
                }
            }
            Ok(VcpuExit::InternalError) => ExitSeen::InternalError,
            Ok(VcpuExit::MmioRead(gpa, _) | VcpuExit::MmioWrite(gpa, _)) => ExitSeen::Mmio {
                trapped: self.inner.watches.traps(*gpa),
            },
            Ok(VcpuExit::Shutdown | VcpuExit::FailEntry(..)) => ExitSeen::Shutdown,
            Ok(_) => ExitSeen::Other,
        }
    }

    /// Say why a guest the debugger stopped as crashed cannot go on.
    fn log_crash(&self, exit: &Result<VcpuExit<'_>, kvm_ioctls::Error>, pending: Pending) {
        if !matches!(pending, Pending::Stopped(StopKind::Crashed(_))) {
            return;
        }
        match exit {
            Err(e) => warn!("vcpu {}: KVM_RUN failed: {e}", self.index),
            Ok(_) => warn!(
                "vcpu {}: guest shut down (triple fault or bad state)",
                self.index
            ),
        }
    }

    /// The debugger's part of the last exit, now that the fd is free.
    fn finish(&mut self, fd: &mut VcpuFd, pending: Pending) {
        let stop = match pending {
            Pending::Halted => {
                // Idle without the session: gdb's Ctrl-C must be heard.
                self.send_home();
                let interruptible = fd.get_regs().is_ok_and(|r| r.rflags & RFLAGS_IF != 0);
                let tick = self.inner.vcpus.halt_tick();
                self.vcpu().idle(interruptible.then_some(tick));
                return;
            }
            Pending::StepDone if self.in_interrupt_handler(fd) => return,
            Pending::StepDone if self.command == Command::StepOver => None,
            Pending::StepDone => Some(StopKind::Step),
            Pending::Stopped(kind) => Some(kind),
            Pending::Int3 => match self.on_int3(fd) {
                Some(kind) => Some(kind),
                None => return,
            },
            Pending::InternalError => match self.on_internal_error(fd) {
                Some(kind) => Some(kind),
                None => return,
            },
            Pending::FinishTrap(kind) => {
                self.complete_trapped_instruction(fd);
                Some(kind)
            }
        };
        let snapshot = self.snapshot(fd);
        self.origin = None;
        self.handler_steps = 0;
        self.vcpu()
            .stop_self(stop, snapshot, self.session.is_some(), &self.inner.link);
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.vcpu().kick.unregister();
        // The VMM's loop ended: nobody may wait for this vCPU any more.
        self.leave_gate();
        self.send_home();
        if let Some(session) = self.vcpu().release() {
            self.inner.link.home().send(session, Turn::Home);
        }
    }
}

/// Give KVM `wanted` for vCPU `index` unless `applied` says it has it.
fn apply_debug(
    fd: &VcpuFd,
    applied: &mut Option<kvm_guest_debug>,
    wanted: kvm_guest_debug,
    index: usize,
) {
    if applied.as_ref().is_some_and(|a| same_debug(a, &wanted)) {
        return;
    }
    if let Err(e) = fd.set_guest_debug(&wanted) {
        warn!("vcpu {index}: KVM_SET_GUEST_DEBUG failed: {e}");
    }
    *applied = Some(wanted);
}

fn same_debug(a: &kvm_guest_debug, b: &kvm_guest_debug) -> bool {
    a.control == b.control && a.arch.debugreg == b.arch.debugreg
}
