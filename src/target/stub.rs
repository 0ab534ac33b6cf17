//! The gdbstub `Target`: registers, memory through the guest's own page
//! tables, resume / step with all-stop, breakpoints and watchpoints.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gdbstub::common::{Pid, Signal, Tid};
use gdbstub::stub::{BaseStopReason, MultiThreadStopReason};
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::single_register_access::{
    SingleRegisterAccess, SingleRegisterAccessOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::exec_file::{ExecFile, ExecFileOps};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use log::{debug, warn};

use super::connection::GdbConnection;
use super::error::StubError;
use super::memory_packets::ReadRequest;
use super::monitor::{self, Effect, View};
use super::paging::{GuestFormat, Paging, CR4_PKE};
use super::regs::{KvmState, X86_64Kvm, X86_64RegId, X86_64Regs};
use super::vcpu::{Command, StopKind};
use super::watchpoints::Watch;
use super::x86::MSR_KERNEL_GS_BASE;
use super::{lock, Inner};
use crate::vmem::PhysAddr;

/// How long a single step may run before the vCPUs gdb lets continue
/// alongside it are started (a step normally ends in microseconds; one
/// that waits for another vCPU gets it running after this).
const STEP_GRACE: Duration = Duration::from_millis(1);

/// Reads at least this long are followed by a read-ahead of the next.
const READ_AHEAD_MIN: usize = 4096;

/// The longest run of back-to-back steps that holds the other vCPUs back.
const MAX_HOLD: Duration = Duration::from_millis(20);

/// What gdb asked one vCPU to do at the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Stay,
    Continue,
    Step,
}

/// One gdb session's view of the VM.
#[derive(Debug)]
pub(crate) struct KvmTarget<'a> {
    dbg: &'a Inner,
    actions: Vec<Option<Action>>,
    default_action: Action,
    pending: VecDeque<(usize, StopKind)>,
    /// The vCPU of the last stop (whose tables breakpoints are set in).
    current: usize,
    /// What gdb's memory accesses go through (`monitor vmem use`).
    view: View,
    /// Each parked vCPU's general and special registers, read once per stop.
    core: RefCell<Vec<Option<(kvm_regs, kvm_sregs)>>>,
    /// The rest (x87/SSE, KERNEL_GS_BASE), read only when gdb wants them.
    cache: RefCell<Vec<Option<KvmState>>>,
    /// rip, rsp and rbp of the vCPU in the next stop reply (the
    /// connection layer puts them in, so gdb need not send `g`).
    expedite: Option<[u64; 3]>,
    /// Reused for memory reads answered in our packet layer.
    read_buffer: Vec<u8>,
    /// vCPUs to continue once a step outlasts [`STEP_GRACE`].
    deferred: Vec<usize>,
    /// Since when steps have held other vCPUs back without a break.
    held_since: Option<Instant>,
}

fn tid(index: usize) -> Tid {
    NonZeroUsize::new(index + 1).unwrap_or(NonZeroUsize::MIN)
}

impl From<StubError> for TargetError<StubError> {
    fn from(e: StubError) -> Self {
        TargetError::Fatal(e)
    }
}

/// The registers beyond the general and special ones: x87/SSE and
/// IA32_KERNEL_GS_BASE.
fn read_extra(fd: &VcpuFd) -> Result<(kvm_fpu, u64), kvm_ioctls::Error> {
    let mut msrs = kernel_gs_base_msr(0)?;
    fd.get_msrs(&mut msrs)?;
    Ok((fd.get_fpu()?, msrs.as_slice()[0].data))
}

/// IA32_KERNEL_GS_BASE as an MSR list for KVM_GET/SET_MSRS.
fn kernel_gs_base_msr(data: u64) -> Result<Msrs, kvm_ioctls::Error> {
    Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_KERNEL_GS_BASE,
        data,
        ..Default::default()
    }])
    .map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))
}

impl<'a> KvmTarget<'a> {
    pub(crate) fn new(dbg: &'a Inner) -> KvmTarget<'a> {
        KvmTarget {
            core: RefCell::new(vec![None; dbg.vcpus.len()]),
            cache: RefCell::new(vec![None; dbg.vcpus.len()]),
            expedite: None,
            read_buffer: Vec::new(),
            deferred: Vec::new(),
            held_since: None,
            dbg,
            actions: vec![None; dbg.vcpus.len()],
            default_action: Action::Continue,
            pending: VecDeque::new(),
            current: 0,
            view: View::Current,
        }
    }

    fn index(&self, tid: Tid) -> Result<usize, TargetError<StubError>> {
        let index = tid.get() - 1;
        if index < self.dbg.vcpus.len() {
            Ok(index)
        } else {
            Err(TargetError::NonFatal)
        }
    }

    /// vCPU `index`'s general and special registers (it is parked), read
    /// once per stop: the stop path needs only these.
    fn core(&self, index: usize) -> Result<(kvm_regs, kvm_sregs), TargetError<StubError>> {
        if let Some(core) = self.core.borrow()[index] {
            return Ok(core);
        }
        let core = self.on_vcpu(index, "KVM_GET_REGS/SREGS", |fd| {
            Ok((fd.get_regs()?, fd.get_sregs()?))
        })?;
        self.core.borrow_mut()[index] = Some(core);
        Ok(core)
    }

    /// All of vCPU `index`'s registers, read once per stop.
    fn state(&self, index: usize) -> Result<KvmState, TargetError<StubError>> {
        if let Some(state) = self.cache.borrow()[index].clone() {
            return Ok(state);
        }
        let (regs, sregs) = self.core(index)?;
        let (fpu, k_gs_base) = self.on_vcpu(index, "KVM_GET_FPU/MSRS", read_extra)?;
        let state = KvmState {
            regs,
            sregs,
            fpu,
            k_gs_base,
        };
        self.cache.borrow_mut()[index] = Some(state.clone());
        Ok(state)
    }

    /// `f` on parked vCPU `index`'s fd, in the vCPU's own thread; `op`
    /// names the ioctls for errors.
    fn on_vcpu<R: Send + 'static>(
        &self,
        index: usize,
        op: &'static str,
        f: impl FnOnce(&VcpuFd) -> Result<R, kvm_ioctls::Error> + Send + 'static,
    ) -> Result<R, StubError> {
        self.dbg.vcpus[index]
            .call(f)?
            .map_err(StubError::vcpu(index, op))
    }

    /// Registers may change (the vCPU ran, or was written).
    fn forget(&self, index: usize) {
        self.core.borrow_mut()[index] = None;
        self.cache.borrow_mut()[index] = None;
    }

    fn paging(&self, index: usize) -> Result<Paging, TargetError<StubError>> {
        Ok(Paging::of(&self.core(index)?.1, &self.dbg.cpu_limits()))
    }

    /// The guest-physical address of `va` in vCPU `index`'s space.
    fn gpa_of(&self, index: usize, va: u64) -> Option<u64> {
        let paging = self.paging(index).ok()?;
        paging
            .translate(&self.dbg.memory, va)
            .ok()
            .map(|(gpa, _)| gpa)
    }

    /// How long the event loop may wait before the held-back vCPUs must
    /// start (`None`: nothing is held back).
    pub(crate) fn start_deadline(&self) -> Option<Duration> {
        (!self.deferred.is_empty()).then_some(STEP_GRACE)
    }

    /// The step outlasted its grace period: start the vCPUs held back.
    pub(crate) fn start_deferred(&mut self) {
        debug!("step still running: starting vcpus {:?}", self.deferred);
        self.held_since = None;
        for index in std::mem::take(&mut self.deferred) {
            match self.step_over(index) {
                Some(Some(kind)) => self.pending.push_back((index, kind)),
                _ => self.dbg.vcpus[index].request(Command::Run, self.dbg),
            }
        }
        if !self.pending.is_empty() {
            // Stepping over a breakpoint stopped one: stop everyone.
            self.dbg.pause_all();
            self.collect_stops();
        }
    }

    /// Take the stops vCPUs recorded; if any, stop everyone.
    pub(crate) fn collect_stops(&mut self) {
        if !self.dbg.vcpus.iter().any(|v| v.has_stop()) {
            return;
        }
        self.deferred.clear();
        self.dbg.pause_all();
        for (i, v) in self.dbg.vcpus.iter().enumerate() {
            if let Some(kind) = v.take_stop() {
                self.pending.push_back((i, kind));
            }
            if let Some(core) = v.take_snapshot() {
                self.core.borrow_mut()[i] = Some(core);
            }
        }
    }

    /// The next stop to report; breakpoint stops whose breakpoint gdb has
    /// removed since are dropped (the vCPU simply resumes on that byte).
    pub(crate) fn next_pending(&mut self) -> Option<MultiThreadStopReason<u64>> {
        while let Some((index, kind)) = self.pending.pop_front() {
            if kind == StopKind::SwBreak && !self.still_at_sw_breakpoint(index) {
                continue;
            }
            self.current = index;
            self.remember_space(index);
            if let Ok((r, _)) = self.core(index) {
                self.expedite = Some([r.rip, r.rsp, r.rbp]);
            }
            return Some(self.reason(index, kind));
        }
        None
    }

    /// rip, rsp and rbp for the stop reply about to be sent, if the stop
    /// came from a vCPU (taken once).
    pub(crate) fn take_stop_registers(&mut self) -> Option<[u64; 3]> {
        self.expedite.take()
    }

    fn still_at_sw_breakpoint(&self, index: usize) -> bool {
        self.sw_breakpoint_at_rip(index).is_some()
    }

    /// Where our `int3` under vCPU `index`'s rip is, if one is.
    fn sw_breakpoint_at_rip(&self, index: usize) -> Option<PhysAddr> {
        let rip = self.core(index).ok()?.0.rip;
        self.gpa_of(index, rip)
            .filter(|&gpa| self.dbg.breakpoints().has_sw(gpa))
    }

    fn reason(&self, index: usize, kind: StopKind) -> MultiThreadStopReason<u64> {
        let tid = tid(index);
        match kind {
            StopKind::Step => BaseStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            },
            StopKind::SwBreak => BaseStopReason::SwBreak(tid),
            StopKind::HwBreak => BaseStopReason::HwBreak(tid),
            StopKind::Watch(w) => BaseStopReason::Watch {
                tid,
                kind: w.kind,
                addr: w.va,
            },
            StopKind::Crashed(signal) => BaseStopReason::SignalWithThread { tid, signal },
        }
    }

    /// Ctrl-C: stop everything, preferring a real stop if one raced in.
    pub(crate) fn interrupt(&mut self) -> MultiThreadStopReason<u64> {
        debug!("interrupt: stopping all vCPUs");
        self.deferred.clear();
        self.dbg.pause_all();
        self.collect_stops();
        self.next_pending()
            .unwrap_or(BaseStopReason::SignalWithThread {
                tid: tid(self.current),
                signal: Signal::SIGINT,
            })
    }

    /// If vCPU `index` sits on one of our breakpoints, execute that one
    /// instruction with the breakpoint lifted (RF is not honoured on every
    /// host). Returns the stop the step itself produced, if any.
    fn step_over(&self, index: usize) -> Option<Option<StopKind>> {
        let vcpu = &self.dbg.vcpus[index];
        let rip = self.core(index).ok()?.0.rip;
        let gpa = self.sw_breakpoint_at_rip(index);
        let on_hw = self.dbg.debug_regs().exec_at(rip);
        if gpa.is_none() && !on_hw {
            return None;
        }
        debug!("vcpu {index}: stepping over the breakpoint at {rip:#x}");
        if let Some(gpa) = gpa {
            self.dbg.breakpoints().lift(&self.dbg.memory, gpa);
        }
        vcpu.request(Command::StepOver, self.dbg);
        vcpu.wait_parked();
        self.forget(index);
        self.core.borrow_mut()[index] = vcpu.take_snapshot();
        if let Some(gpa) = gpa {
            self.dbg.breakpoints().replant(&self.dbg.memory, gpa);
        }
        Some(vcpu.take_stop())
    }

    /// Remove every breakpoint and watchpoint (detach, kill, disconnect).
    pub(crate) fn clear_debug_state(&mut self) {
        self.dbg.breakpoints_mut().clear(&self.dbg.memory);
        self.dbg.watchpoints_mut().clear();
        self.dbg.debug_regs_mut().clear();
        if let Err(e) = self.dbg.apply_traps() {
            warn!("{e}");
        }
    }

    /// How gdb's addresses are translated for thread `tid`: its own space,
    /// the space chosen with `monitor vmem use`, or physical.
    fn paging_for_gdb(&self, tid: Tid) -> Result<Paging, TargetError<StubError>> {
        let index = self.index(tid)?;
        if self.dbg.qemu.phys_mode.load(Ordering::Relaxed) || self.view == View::Physical {
            return Ok(Paging::Off);
        }
        match (self.paging(index)?, self.view) {
            (Paging::Paged { format, .. }, View::Space(cr3)) => Ok(Paging::Paged {
                format,
                root: format.root(cr3),
            }),
            (paging, _) => Ok(paging),
        }
    }

    /// Answer a memory read our packet layer took from gdb, for the thread
    /// gdb's memory accesses refer to (what gdbstub would have used). A
    /// large read is followed by the next one in line, encoded while gdb
    /// decodes this reply (gdb reads big ranges in order).
    pub(crate) fn answer_read(
        &mut self,
        conn: &mut GdbConnection,
        read: &ReadRequest,
    ) -> std::io::Result<()> {
        let mut data = std::mem::take(&mut self.read_buffer);
        let thread = NonZeroUsize::new(conn.mem_thread()).unwrap_or(NonZeroUsize::MIN);
        let whole = if conn.send_prepared(read)? {
            true
        } else {
            let result = self.read_into(&mut data, read, thread);
            let whole = result.is_ok_and(|d| d.len() == read.len);
            conn.answer_read(read, result)?;
            whole
        };
        if whole && read.len >= READ_AHEAD_MIN {
            let next = ReadRequest {
                addr: read.addr.wrapping_add(read.len as u64),
                ..*read
            };
            let result = self.read_into(&mut data, &next, thread);
            conn.prepare_read(next, result);
        }
        self.read_buffer = data;
        Ok(())
    }

    /// Read `read` into `data` as gdb would see it: the bytes read, or
    /// the errno of nothing readable.
    fn read_into<'d>(
        &mut self,
        data: &'d mut Vec<u8>,
        read: &ReadRequest,
        thread: Tid,
    ) -> Result<&'d [u8], u8> {
        data.resize(read.len, 0);
        match self.read_addrs(read.addr, data, thread) {
            Ok(n) => Ok(&data[..n]),
            Err(TargetError::Errno(errno)) => Err(errno),
            Err(_) => Err(1),
        }
    }

    /// Whether the VMM asked to stop serving gdb.
    pub(crate) fn stopping(&self) -> bool {
        self.dbg.stopping.load(Ordering::Acquire)
    }

    /// Record vCPU `index`'s current CR3 as a known address space.
    pub(crate) fn remember_space(&self, index: usize) {
        if let Ok(Paging::Paged { root, .. }) = self.paging(index) {
            lock(&self.dbg.spaces)
                .entry(root)
                .or_insert("seen at a stop");
        }
    }

    /// Everything a monitor command may need about the current vCPU.
    fn monitor_context<'m>(&'m self, mode: &'m mut Option<GuestFormat>) -> monitor::Context<'m> {
        let state = self.state(self.current).ok();
        let debug_regs = self
            .on_vcpu(self.current, "KVM_GET_DEBUGREGS", |fd| fd.get_debug_regs())
            .map(|d| [d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7])
            .unwrap_or_default();
        let limits = self.dbg.cpu_limits();
        let paging = state.as_ref().map(|s| {
            let paging = Paging::of(&s.sregs, &limits);
            if s.sregs.cr4 & CR4_PKE == 0 {
                return paging;
            }
            // Protection keys: the rights of user pages depend on PKRU.
            let xsave = self.on_vcpu(self.current, "KVM_GET_XSAVE", |fd| fd.get_xsave());
            match xsave.ok().and_then(|x| limits.pkru(&x)) {
                Some(pkru) => paging.with_pkru(pkru),
                None => paging,
            }
        });
        let root = match paging {
            Some(Paging::Paged { format, root }) => {
                *mode = Some(format);
                Some(root)
            }
            _ => None,
        };
        // Known spaces in walk order, each labelled with every way it is
        // known: `first` starts a label, `more` extends one.
        let mut spaces: Vec<(u64, String)> = Vec::new();
        let mut know = |root: u64, first: String, more: String| match spaces
            .iter_mut()
            .find(|(r, _)| *r == root)
        {
            Some((_, label)) => {
                label.push_str(", ");
                label.push_str(&more);
            }
            None => spaces.push((root, first)),
        };
        for i in 0..self.dbg.vcpus.len() {
            if let Ok(Paging::Paged { root, .. }) = self.paging(i) {
                know(root, format!("current on vcpu {i}"), format!("vcpu {i}"));
            }
        }
        for (&root, &how) in lock(&self.dbg.spaces).iter() {
            know(root, how.to_string(), how.to_string());
        }
        monitor::Context {
            memory: &self.dbg.memory,
            pool: self.dbg.table_pool.as_ref(),
            format: mode.as_ref().map(GuestFormat::as_dyn),
            root,
            root_mask: mode.map_or(u64::MAX, |m| m.root(u64::MAX)),
            spaces,
            state,
            debug_regs,
        }
    }

    /// Make every vCPU drop cached translations: reloading CR3 through
    /// KVM_SET_SREGS flushes KVM's (and a shadow-paging host's) TLB.
    fn reload_cr3(&self) {
        for i in 0..self.dbg.vcpus.len() {
            let reloaded = self.on_vcpu(i, "KVM_GET/SET_SREGS", |fd| {
                fd.get_sregs().and_then(|s| fd.set_sregs(&s))
            });
            if let Err(e) = reloaded {
                warn!("cannot reload CR3: {e}");
            }
        }
    }
}

impl Target for KvmTarget<'_> {
    type Arch = X86_64Kvm;
    type Error = StubError;

    fn base_ops(&mut self) -> BaseOps<'_, X86_64Kvm, StubError> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }

    fn support_exec_file(&mut self) -> Option<ExecFileOps<'_, Self>> {
        self.dbg.exec_file.is_some().then_some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MonitorCmd for KvmTarget<'_> {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), StubError> {
        let line = String::from_utf8_lossy(cmd).into_owned();
        debug!("monitor: {line}");
        let mut mode = None;
        let (text, effect) = monitor::run(&self.monitor_context(&mut mode), &line);
        out.write_raw(text.as_bytes());
        match effect {
            Effect::None => {}
            Effect::TablesChanged => self.reload_cr3(),
            Effect::Use(view) => self.view = view,
            Effect::AddSpace(root) => {
                lock(&self.dbg.spaces).insert(root, "added");
            }
        }
        Ok(())
    }
}

impl ExecFile for KvmTarget<'_> {
    fn get_exec_file(
        &self,
        _pid: Option<Pid>,
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let path = self.dbg.exec_file.as_deref().unwrap_or_default().as_bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(path.len());
        let n = length.min(buf.len()).min(path.len() - start);
        buf[..n].copy_from_slice(&path[start..start + n]);
        Ok(n)
    }
}

impl MultiThreadBase for KvmTarget<'_> {
    fn read_registers(&mut self, regs: &mut X86_64Regs, tid: Tid) -> TargetResult<(), Self> {
        *regs = self.state(self.index(tid)?)?.to_gdb();
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64Regs, tid: Tid) -> TargetResult<(), Self> {
        let index = self.index(tid)?;
        let mut state = self.state(index)?;
        self.forget(index);
        let changed = state.apply(regs);
        debug!("vcpu {index}: writing registers {changed:?}");
        if changed.sregs {
            // KVM refuses some special-register values: gdb gets an error.
            let sregs = state.sregs;
            self.on_vcpu(index, "KVM_SET_SREGS", move |fd| fd.set_sregs(&sregs))
                .map_err(|_| TargetError::NonFatal)?;
        }
        self.on_vcpu(index, "KVM_SET_REGS/FPU/MSRS", move |fd| {
            if changed.regs {
                fd.set_regs(&state.regs)?;
            }
            if changed.fpu {
                fd.set_fpu(&state.fpu)?;
            }
            if changed.k_gs_base {
                fd.set_msrs(&kernel_gs_base_msr(state.k_gs_base)?)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let paging = self.paging_for_gdb(tid)?;
        let mut done = 0usize;
        for (gpa, offset, n) in paging.pieces(&self.dbg.memory, start, data.len()) {
            let chunk = &mut data[offset..offset + n];
            let read = self.dbg.memory.read_prefix(gpa, chunk);
            self.dbg.breakpoints().mask(gpa, &mut chunk[..read]);
            done += read;
            if read < n {
                break;
            }
        }
        if done == 0 && !data.is_empty() {
            debug!("read at {start:#x}: not mapped or not RAM");
            return Err(TargetError::Errno(14));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let paging = self.paging_for_gdb(tid)?;
        // Translate every page first: nothing is written unless all is.
        let pieces: Vec<_> = paging.pieces(&self.dbg.memory, start, data.len()).collect();
        if pieces.iter().map(|&(_, _, n)| n).sum::<usize>() < data.len() {
            return Err(TargetError::Errno(14));
        }
        for (gpa, offset, n) in pieces {
            let chunk = &data[offset..offset + n];
            self.dbg
                .memory
                .write(gpa, chunk)
                .map_err(|_| TargetError::Errno(14))?;
            self.dbg
                .breakpoints_mut()
                .after_write(&self.dbg.memory, gpa, chunk);
        }
        Ok(())
    }

    fn list_active_threads(&mut self, register: &mut dyn FnMut(Tid)) -> Result<(), StubError> {
        for i in 0..self.dbg.vcpus.len() {
            register(tid(i));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleRegisterAccess<Tid> for KvmTarget<'_> {
    fn read_register(
        &mut self,
        tid: Tid,
        reg_id: X86_64RegId,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let mut regs = X86_64Regs::default();
        self.read_registers(&mut regs, tid)?;
        let bytes = regs.to_bytes();
        let range = reg_id.byte_range();
        let n = range.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[range.start..range.start + n]);
        Ok(n)
    }

    fn write_register(
        &mut self,
        tid: Tid,
        reg_id: X86_64RegId,
        val: &[u8],
    ) -> TargetResult<(), Self> {
        let mut regs = X86_64Regs::default();
        self.read_registers(&mut regs, tid)?;
        let mut bytes = regs.to_bytes();
        let range = reg_id.byte_range();
        if val.len() != range.len() {
            return Err(TargetError::NonFatal);
        }
        bytes[range].copy_from_slice(val);
        let regs = X86_64Regs::from_bytes(&bytes).ok_or(TargetError::NonFatal)?;
        self.write_registers(&regs, tid)
    }
}

impl MultiThreadResume for KvmTarget<'_> {
    fn resume(&mut self) -> Result<(), StubError> {
        // Stops recorded after the last report are reported first.
        self.collect_stops();
        let actions: Vec<Action> = self
            .actions
            .iter()
            .map(|a| a.unwrap_or(self.default_action))
            .collect();
        // While a step runs (a few microseconds), the vCPUs gdb lets
        // continue are held back: they start (stepping over a breakpoint
        // of theirs then) only if the step has not ended within
        // STEP_GRACE, so a step costs no kick of the others. After
        // MAX_HOLD of back-to-back steps they run along with one step, so
        // a guest stepped through a wait for another vCPU still advances.
        let stepping = actions.contains(&Action::Step);
        let hold = stepping && self.held_since.is_none_or(|t| t.elapsed() < MAX_HOLD);
        self.held_since = if hold {
            Some(self.held_since.unwrap_or_else(Instant::now))
        } else {
            None
        };
        for (index, &action) in actions.iter().enumerate() {
            if action == Action::Stay || (hold && action == Action::Continue) {
                continue;
            }
            match self.step_over(index) {
                Some(Some(kind)) => self.pending.push_back((index, kind)),
                Some(None) if action == Action::Step => {
                    self.pending.push_back((index, StopKind::Step))
                }
                _ => {}
            }
        }
        if actions.iter().all(|a| *a == Action::Stay) && self.pending.is_empty() {
            // Nothing would run (e.g. only unknown threads named): report
            // a stop at once instead of waiting forever.
            debug!("resume: no vCPU to run");
            self.pending.push_back((self.current, StopKind::Step));
        }
        if !self.pending.is_empty() {
            return Ok(());
        }
        debug!("resume: {actions:?}");
        (0..self.dbg.vcpus.len()).for_each(|i| self.forget(i));
        for (index, (vcpu, action)) in self.dbg.vcpus.iter().zip(&actions).enumerate() {
            match action {
                Action::Stay => {}
                Action::Continue if hold => self.deferred.push(index),
                Action::Continue => vcpu.request(Command::Run, self.dbg),
                Action::Step => vcpu.request(Command::Step, self.dbg),
            }
        }
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), StubError> {
        self.actions.iter_mut().for_each(|a| *a = None);
        self.default_action = Action::Continue;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), StubError> {
        if let Some(slot) = self.actions.get_mut(tid.get() - 1) {
            *slot = Some(Action::Continue);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for KvmTarget<'_> {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), StubError> {
        if let Some(slot) = self.actions.get_mut(tid.get() - 1) {
            *slot = Some(Action::Step);
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for KvmTarget<'_> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), StubError> {
        self.default_action = Action::Stay;
        Ok(())
    }
}

impl Breakpoints for KvmTarget<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for KvmTarget<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(gpa) = self.gpa_of(self.current, addr) else {
            return Ok(false);
        };
        Ok(self.dbg.breakpoints_mut().insert_sw(&self.dbg.memory, gpa))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(gpa) = self.gpa_of(self.current, addr) else {
            return Ok(false);
        };
        Ok(self.dbg.breakpoints_mut().remove_sw(&self.dbg.memory, gpa))
    }
}

impl HwBreakpoint for KvmTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.dbg.debug_regs_mut().insert_exec(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.dbg.debug_regs_mut().remove_exec(addr))
    }
}

impl HwWatchpoint for KvmTarget<'_> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Some(gpa) = self.gpa_of(self.current, addr) else {
            return Ok(false);
        };
        if len == 0 || len > 4096 {
            return Ok(false);
        }
        debug!("watch {kind:?} {len} bytes at {addr:#x} (gpa {gpa:#x})");
        let watch = Watch {
            va: addr,
            gpa,
            len,
            kind,
        };
        if !self.dbg.has_page_traps() {
            // No memslot traps from the VMM: a debug register, if free.
            let set = self.dbg.debug_regs_mut().insert_watch(watch);
            if !set {
                warn!("watchpoint at {addr:#x} ({len} bytes) refused: the VMM offers no page traps and no debug register fits (4 at most, 1/2/4/8 aligned bytes)");
            }
            return Ok(set);
        }
        self.dbg.watchpoints_mut().insert(watch);
        if let Err(e) = self.dbg.apply_traps() {
            warn!("{e}");
            self.dbg.watchpoints_mut().remove(addr, len, kind);
            return Ok(false);
        }
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if !self.dbg.has_page_traps() {
            return Ok(self.dbg.debug_regs_mut().remove_watch(addr, len, kind));
        }
        let removed = self.dbg.watchpoints_mut().remove(addr, len, kind);
        self.dbg.apply_traps()?;
        Ok(removed)
    }
}
