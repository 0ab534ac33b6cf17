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

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use gdbstub::common::Signal;
use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, kvm_mp_state, kvm_regs, kvm_sregs, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE, KVM_VCPUEVENT_VALID_SHADOW,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use log::{debug, trace, warn};

use crate::target::kvm::command::{Command, StopKind};
use crate::target::kvm::fds::exit_of;
use crate::target::kvm::irq_step::{Origin, MAX_HANDLER_STEPS};
use crate::target::kvm::kick::StepTimer;
use crate::target::kvm::lending::{Driver, Lent, Turn, STEP_GRACE};
use crate::target::kvm::page_watchpoints;
use crate::target::kvm::run_gate::Pass;
use crate::target::kvm::shared::Inner;
use crate::target::kvm::vcpu::{Core, Vcpu};
use crate::target::machine::paging::Paging;
use crate::target::machine::x86_constants::{
    code_address, BP_VECTOR, DB_VECTOR, HLT, INT3, RFLAGS_IF,
};
use crate::vmem::PhysAddr;

/// How many grace periods the step timer is set for at a time.
const TIMER_SPAN: u32 = 4;

/// `kvm_run.internal.suberror` for an emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// What the vCPU loop does next, as [`VcpuHooks::before_run`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Run the vCPU (`KVM_RUN`).
    Run,
    /// The VM is shutting down: leave the loop.
    Quit,
}

/// What an exit left for the next [`VcpuHooks::before_run`], which has
/// the fd (the exit itself borrows it).
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// `hlt` outside a step: idle until a tick, the debugger or shutdown.
    Halted,
    /// A single step finished.
    StepDone,
    /// The vCPU stopped for the debugger.
    Stopped(StopKind),
    /// rip is on an `int3` (a #BP exit).
    Int3,
    /// KVM could not go on; on kvm_pvm this is how an `int3` arrives.
    InternalError,
    /// A trapped access hit a watchpoint: complete the instruction, stop.
    FinishTrap(StopKind),
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

    /// The guest-physical address of the instruction at rip, through the
    /// vCPU's own tables.
    fn code_gpa(&self, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<PhysAddr> {
        let limits = self.inner.vcpus.cpu_limits();
        let linear = code_address(regs.rip, &sregs.cs);
        let translated = Paging::of(sregs, &limits).translate(&self.inner.memory, linear);
        translated.ok().map(|(gpa, _)| gpa)
    }

    /// A step whose instruction is `hlt` is made here, not by KVM: rip
    /// moves past it and the run about to be made only returns
    /// (`immediate_exit`), ending the step. A step takes no interrupt, so
    /// its `hlt` ends at once, as it does where KVM gives `hlt` to the VMM;
    /// with the in-kernel irqchip, kvm_pvm halted a vCPU that had stepped a
    /// `hlt` again later, past it with interrupts off, for good. Uses the
    /// last exit's registers in `kvm_run` (unchanged since: no register
    /// write); false if the instruction is anything else.
    fn step_hlt(&mut self, fd: &mut VcpuFd) -> bool {
        let sync = fd.sync_regs();
        let (mut regs, sregs) = (sync.regs, sync.sregs);
        let Some(gpa) = self.code_gpa(&regs, &sregs) else {
            return false;
        };
        let mut byte = [0u8];
        if self.inner.memory.read(gpa, &mut byte).is_err() || byte[0] != HLT {
            return false;
        }
        debug!(
            "vcpu {}: steps the hlt at {:#x} itself",
            self.index, regs.rip
        );
        regs.rip += 1;
        if let Err(e) = fd.set_regs(&regs) {
            warn!("vcpu {}: KVM_SET_REGS failed: {e}", self.index);
            return false;
        }
        self.vcpu().mark_registers_written();
        self.end_interrupt_shadow(fd);
        self.sync_registers(fd);
        fd.set_kvm_immediate_exit(1);
        self.stepped_hlt = true;
        true
    }

    /// The `sti` before a `hlt` stepped by [`Self::step_hlt`] blocks
    /// interrupts for one instruction, which KVM still counts as to come:
    /// end it, so that a step allowed to take interrupts takes the one
    /// pending before the next instruction (a `cli`, in an idle loop).
    fn end_interrupt_shadow(&self, fd: &VcpuFd) {
        let Ok(mut events) = fd.get_vcpu_events() else {
            return;
        };
        if events.interrupt.shadow == 0 {
            return;
        }
        events.interrupt.shadow = 0;
        events.flags |= KVM_VCPUEVENT_VALID_SHADOW;
        if let Err(e) = fd.set_vcpu_events(&events) {
            warn!("vcpu {}: KVM_SET_VCPU_EVENTS failed: {e}", self.index);
        }
    }

    /// A vCPU halted in KVM (in-kernel irqchip) when the debugger stopped
    /// it would wait in its `hlt` for an interrupt the step may not take
    /// (interrupts held back), so possibly forever: make it runnable, so
    /// the step executes the next instruction, as gdb expects; the
    /// interrupt stays pending for after the step. Asked only after an
    /// interrupted run (a vCPU ioctl costs ~80 µs on kvm_pvm).
    fn wake_for_step(&self, fd: &VcpuFd) {
        let Ok(state) = fd.get_mp_state() else {
            return;
        };
        if state.mp_state != KVM_MP_STATE_HALTED {
            return;
        }
        debug!("vcpu {}: halted; runnable for the step", self.index);
        let runnable = kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        };
        if let Err(e) = fd.set_mp_state(runnable) {
            warn!("vcpu {}: KVM_SET_MP_STATE failed: {e}", self.index);
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

    /// The step timer must not fire any more (the session leaves, or an
    /// exit goes to the VMM's code).
    fn disarm(&self) {
        let timer = self.timer.as_ref();
        if let Some(timer) = timer.filter(|_| self.timer_fires.take().is_some()) {
            timer.disarm();
        }
    }

    /// A step or run of gdb's starts on this thread, with its deadline.
    fn lent_start(&mut self) {
        self.lent_deadline = Instant::now() + STEP_GRACE;
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
        let pending = match exit {
            Err(e) if stepped_hlt && e.errno() == libc::EINTR => Pending::StepDone,
            Err(e) if e.errno() == libc::EINTR && self.vcpu().stop_wanted() => return None,
            Err(e) if e.errno() == libc::EINTR && self.session.is_some() => {
                // The lent step's or run's deadline: it goes on without
                // the session.
                debug!(
                    "vcpu {}: ran past its deadline ({STEP_GRACE:?} or more) with the session: the gdb thread takes over",
                    self.index
                );
                self.send_home();
                return None;
            }
            Err(e) if e.errno() == libc::EINTR && gate_closed => {
                debug!(
                    "vcpu {}: out of KVM_RUN for a memslot change; runs on",
                    self.index
                );
                return None;
            }
            Err(e) if e.errno() != libc::EINTR && self.inner.link.attached() => {
                warn!("vcpu {}: KVM_RUN failed: {e}", self.index);
                Pending::Stopped(StopKind::Crashed(Signal::SIGSEGV))
            }
            Ok(VcpuExit::Hlt) if stepping => Pending::StepDone,
            Ok(VcpuExit::Hlt) => Pending::Halted,
            Ok(VcpuExit::Debug(arch)) => self.on_debug_exit(arch, stepping)?,
            Ok(VcpuExit::InternalError) => Pending::InternalError,
            Ok(VcpuExit::MmioRead(gpa, data)) if self.inner.watches.traps(gpa) => {
                let hit = self.serve_trapped(gpa, data, false);
                Pending::FinishTrap(hit?)
            }
            Ok(VcpuExit::MmioWrite(gpa, data)) if self.inner.watches.traps(gpa) => {
                let hit = self.serve_trapped(gpa, &mut data.to_vec(), true);
                Pending::FinishTrap(hit?)
            }
            Ok(VcpuExit::Shutdown | VcpuExit::FailEntry(..)) if self.inner.link.attached() => {
                warn!(
                    "vcpu {}: guest shut down (triple fault or bad state)",
                    self.index
                );
                Pending::Stopped(StopKind::Crashed(Signal::SIGSEGV))
            }
            other => {
                self.disarm();
                return Some(other);
            }
        };
        self.pending = Some(pending);
        None
    }

    /// A trapped access, served from guest RAM; the watchpoint it hit, or
    /// the watched translation a table write changed.
    fn serve_trapped(&self, gpa: u64, data: &mut [u8], write: bool) -> Option<StopKind> {
        let hit = {
            let watches = self.inner.watches.watchpoints();
            page_watchpoints::serve_access(&self.inner.memory, &watches, gpa, data, write)
        };
        let remap = if write {
            self.inner.table_written(gpa)
        } else {
            None
        };
        hit.map(StopKind::Watch).or(remap.map(StopKind::Remapped))
    }

    fn on_debug_exit(&self, arch: kvm_debug_exit_arch, stepping: bool) -> Option<Pending> {
        trace!("vcpu {}: debug exit {arch:x?}", self.index);
        match arch.exception {
            DB_VECTOR => match self.inner.watches.debug_regs().hit(arch.dr6) {
                Some(kind) => Some(Pending::Stopped(kind)),
                None if stepping => Some(Pending::StepDone),
                None => None,
            },
            BP_VECTOR => Some(Pending::Int3),
            _ => None,
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

    /// A gdb session lent for a step or run of this vCPU arrived.
    fn take_session(&mut self, session: Lent) {
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
    fn answer_gdb(&mut self, fd: &VcpuFd) -> bool {
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
    fn send_home(&mut self) {
        self.disarm();
        if let Some(session) = self.session.take() {
            self.inner.link.home().send(session, Turn::Home);
        }
    }

    /// After a step, with interrupt handlers skipped: whether the vCPU is
    /// (still) in a handler the step entered, so the step goes on silently.
    /// Back at the step's origin, the instruction itself is stepped next.
    fn in_interrupt_handler(&mut self, fd: &VcpuFd) -> bool {
        let Some(origin) = self.origin else {
            return false;
        };
        let Some((regs, sregs)) = self.snapshot(fd) else {
            return false;
        };
        if self.handler_steps >= MAX_HANDLER_STEPS {
            warn!(
                "vcpu {}: still in an interrupt handler after {MAX_HANDLER_STEPS} steps: stopping there",
                self.index
            );
            return false;
        }
        if self.handler_steps > 0 {
            self.handler_steps += 1;
            if origin.returned_to(&regs) {
                trace!("vcpu {}: interrupt handler returned", self.index);
                self.handler_steps = 0;
            }
            return true;
        }
        let limits = self.inner.vcpus.cpu_limits();
        if origin.entered_interrupt((&regs, &sregs), &self.inner.memory, &limits) {
            debug!(
                "vcpu {}: the step entered an interrupt handler at {:#x}: running it",
                self.index, regs.rip
            );
            self.handler_steps = 1;
            return true;
        }
        false
    }

    /// The registers at a stop: from `kvm_run` after a synced step, else
    /// read (gdb's stop reply needs them; this thread is the cheapest
    /// place to read them).
    fn snapshot(&self, fd: &VcpuFd) -> Option<Core> {
        if self.synced {
            let sync = fd.sync_regs();
            return Some((sync.regs, sync.sregs));
        }
        fd.get_regs().ok().zip(fd.get_sregs().ok())
    }

    /// Run the trapped instruction to its end (so rip is past it, as
    /// after a hardware watchpoint), serving its further trapped accesses
    /// (each run inside the memslot gate, each access served outside: it
    /// may move the traps).
    fn complete_trapped_instruction(&self, fd: &mut VcpuFd) {
        fd.set_kvm_immediate_exit(1);
        loop {
            let pass = self.inner.trapping.run_gate().enter();
            let exit = fd.run();
            self.inner.trapping.run_gate().leave(pass);
            match exit {
                Ok(VcpuExit::MmioRead(gpa, data)) if self.inner.watches.traps(gpa) => {
                    self.serve_trapped(gpa, data, false);
                }
                Ok(VcpuExit::MmioWrite(gpa, data)) if self.inner.watches.traps(gpa) => {
                    self.serve_trapped(gpa, &mut data.to_vec(), true);
                }
                _ => break,
            }
        }
        fd.set_kvm_immediate_exit(0);
    }

    fn on_internal_error(&self, fd: &mut VcpuFd) -> Option<StopKind> {
        // SAFETY: after an internal-error exit the kernel filled the
        // `internal` member of the kvm_run union (nothing ran since).
        let suberror = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        if suberror == KVM_INTERNAL_ERROR_EMULATION {
            // On kvm_pvm an int3 (ours or the guest's) ends up here.
            return self.on_int3(fd);
        }
        warn!(
            "vcpu {}: KVM internal error, suberror {suberror}",
            self.index
        );
        Some(StopKind::Crashed(Signal::SIGILL))
    }

    /// rip is on an `int3`: ours is a breakpoint; the guest's own is
    /// delivered to the guest as #BP (`None`: it runs on); anything else
    /// is a crash.
    fn on_int3(&self, fd: &VcpuFd) -> Option<StopKind> {
        let index = self.index;
        let Some((mut regs, sregs)) = self.snapshot(fd) else {
            return Some(StopKind::Crashed(Signal::SIGILL));
        };
        let Some(gpa) = self.code_gpa(&regs, &sregs) else {
            return Some(StopKind::Crashed(Signal::SIGSEGV));
        };
        if self.inner.watches.breakpoints().has_sw(gpa) {
            return Some(StopKind::SwBreak);
        }
        let mut byte = [0u8];
        if self.inner.memory.read(gpa, &mut byte).is_err() || byte[0] != INT3 {
            warn!(
                "vcpu {index}: cannot emulate the instruction at {:#x}",
                regs.rip
            );
            return Some(StopKind::Crashed(Signal::SIGILL));
        }
        debug!(
            "vcpu {index}: guest int3 at {:#x}, delivering #BP",
            regs.rip
        );
        regs.rip += 1;
        self.vcpu().mark_registers_written();
        let delivered = fd.set_regs(&regs).and_then(|()| {
            let mut events = fd.get_vcpu_events()?;
            events.exception.injected = 1;
            events.exception.nr = BP_VECTOR as u8;
            events.exception.has_error_code = 0;
            events.exception.error_code = 0;
            fd.set_vcpu_events(&events)
        });
        match delivered {
            Ok(()) => None,
            Err(e) => {
                warn!("vcpu {index}: cannot inject #BP: {e}");
                Some(StopKind::Crashed(Signal::SIGTRAP))
            }
        }
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
