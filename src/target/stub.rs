//! The gdbstub `Target`: registers, memory through the guest's own page
//! tables, resume / step with all-stop, breakpoints and watchpoints.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

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
use gdbstub::target::{Target, TargetError, TargetResult};
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;
use log::{debug, warn};

use super::paging::Paging;
use super::regs::{KvmState, X86_64Kvm, X86_64RegId, X86_64Regs};
use super::vcpu::{Command, StopKind};
use super::watchpoints::Watch;
use super::{lock, Inner};

const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

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
}

fn tid(index: usize) -> Tid {
    NonZeroUsize::new(index + 1).unwrap_or(NonZeroUsize::MIN)
}

fn fatal(e: impl std::fmt::Display) -> TargetError<String> {
    TargetError::Fatal(e.to_string())
}

pub(crate) fn read_state(fd: &VcpuFd) -> Result<KvmState, kvm_ioctls::Error> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_KERNEL_GS_BASE,
        ..Default::default()
    }])
    .map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))?;
    fd.get_msrs(&mut msrs)?;
    Ok(KvmState {
        regs: fd.get_regs()?,
        sregs: fd.get_sregs()?,
        fpu: fd.get_fpu()?,
        k_gs_base: msrs.as_slice()[0].data,
    })
}

impl<'a> KvmTarget<'a> {
    pub(crate) fn new(dbg: &'a Inner) -> KvmTarget<'a> {
        KvmTarget {
            dbg,
            actions: vec![None; dbg.vcpus.len()],
            default_action: Action::Continue,
            pending: VecDeque::new(),
            current: 0,
        }
    }

    fn index(&self, tid: Tid) -> Result<usize, TargetError<String>> {
        let index = tid.get() - 1;
        if index < self.dbg.vcpus.len() {
            Ok(index)
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn paging(&self, index: usize) -> Result<Paging, TargetError<String>> {
        let fd = lock(&self.dbg.vcpus[index].fd);
        Ok(Paging::of(&fd.get_sregs().map_err(fatal)?))
    }

    /// The guest-physical address of `va` in vCPU `index`'s space.
    fn gpa_of(&self, index: usize, va: u64) -> Option<u64> {
        let paging = self.paging(index).ok()?;
        paging
            .translate(&self.dbg.memory, va)
            .ok()
            .map(|(gpa, _)| gpa)
    }

    /// Take the stops vCPUs recorded; if any, stop everyone.
    pub(crate) fn collect_stops(&mut self) {
        if !self.dbg.vcpus.iter().any(|v| v.has_stop()) {
            return;
        }
        self.dbg.pause_all();
        for (i, v) in self.dbg.vcpus.iter().enumerate() {
            if let Some(kind) = v.take_stop() {
                self.pending.push_back((i, kind));
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
            return Some(self.reason(index, kind));
        }
        None
    }

    fn still_at_sw_breakpoint(&self, index: usize) -> bool {
        let rip = lock(&self.dbg.vcpus[index].fd).get_regs().map(|r| r.rip);
        rip.ok()
            .and_then(|rip| self.gpa_of(index, rip))
            .is_some_and(|gpa| self.dbg.breakpoints().has_sw(gpa))
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
        let rip = lock(&vcpu.fd).get_regs().ok()?.rip;
        let gpa = self.gpa_of(index, rip);
        let on_sw = gpa.is_some_and(|gpa| self.dbg.breakpoints().has_sw(gpa));
        let on_hw = self.dbg.breakpoints().hw().contains(&Some(rip));
        if !on_sw && !on_hw {
            return None;
        }
        debug!("vcpu {index}: stepping over the breakpoint at {rip:#x}");
        let gpa = gpa.filter(|_| on_sw);
        if let Some(gpa) = gpa {
            self.dbg.breakpoints().lift(&self.dbg.memory, gpa);
        }
        vcpu.request(Command::StepOver);
        vcpu.wait_parked();
        if let Some(gpa) = gpa {
            self.dbg.breakpoints().replant(&self.dbg.memory, gpa);
        }
        Some(vcpu.take_stop())
    }

    /// Remove every breakpoint and watchpoint (detach, kill, disconnect).
    pub(crate) fn clear_debug_state(&mut self) {
        self.dbg.breakpoints_mut().clear(&self.dbg.memory);
        self.dbg.watchpoints_mut().clear();
        if let Err(e) = self.dbg.apply_memslots() {
            warn!("cannot restore memslots: {e}");
        }
    }

    fn translate_for_gdb(&self, tid: Tid, va: u64) -> Result<(Paging, usize), TargetError<String>> {
        let index = self.index(tid)?;
        let paging = self.paging(index)?;
        if paging == Paging::Legacy {
            debug!("vcpu {index}: 32-bit paging is not supported yet ({va:#x})");
            return Err(TargetError::NonFatal);
        }
        Ok((paging, index))
    }
}

impl Target for KvmTarget<'_> {
    type Arch = X86_64Kvm;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, X86_64Kvm, String> {
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
        let index = self.index(tid)?;
        let fd = lock(&self.dbg.vcpus[index].fd);
        *regs = read_state(&fd).map_err(fatal)?.to_gdb();
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64Regs, tid: Tid) -> TargetResult<(), Self> {
        let index = self.index(tid)?;
        let fd = lock(&self.dbg.vcpus[index].fd);
        let mut state = read_state(&fd).map_err(fatal)?;
        let changed = state.apply(regs);
        debug!("vcpu {index}: writing registers {changed:?}");
        if changed.regs {
            fd.set_regs(&state.regs).map_err(fatal)?;
        }
        if changed.sregs {
            fd.set_sregs(&state.sregs)
                .map_err(|_| TargetError::NonFatal)?;
        }
        if changed.fpu {
            fd.set_fpu(&state.fpu).map_err(fatal)?;
        }
        if changed.k_gs_base {
            let msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: MSR_KERNEL_GS_BASE,
                data: state.k_gs_base,
                ..Default::default()
            }])
            .map_err(fatal)?;
            fd.set_msrs(&msrs).map_err(fatal)?;
        }
        Ok(())
    }

    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let (paging, _) = self.translate_for_gdb(tid, start)?;
        let mut done = 0usize;
        while done < data.len() {
            let va = start.wrapping_add(done as u64);
            let Ok((gpa, in_page)) = paging.translate(&self.dbg.memory, va) else {
                break;
            };
            let n = (data.len() - done).min(usize::try_from(in_page).unwrap_or(usize::MAX));
            let chunk = &mut data[done..done + n];
            if self.dbg.memory.read(gpa, chunk).is_err() {
                break;
            }
            self.dbg.breakpoints().mask(gpa, chunk);
            done += n;
        }
        if done == 0 && !data.is_empty() {
            debug!("read at {start:#x}: not mapped or not RAM");
            return Err(TargetError::Errno(14));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let (paging, _) = self.translate_for_gdb(tid, start)?;
        // Translate every page first: nothing is written unless all is.
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let va = start.wrapping_add(done as u64);
            let (gpa, in_page) = paging
                .translate(&self.dbg.memory, va)
                .map_err(|_| TargetError::Errno(14))?;
            let n = (data.len() - done).min(usize::try_from(in_page).unwrap_or(usize::MAX));
            pieces.push((gpa, done, n));
            done += n;
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

    fn list_active_threads(&mut self, register: &mut dyn FnMut(Tid)) -> Result<(), String> {
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
    fn resume(&mut self) -> Result<(), String> {
        // Stops recorded after the last report are reported first.
        self.collect_stops();
        let actions: Vec<Action> = self
            .actions
            .iter()
            .map(|a| a.unwrap_or(self.default_action))
            .collect();
        for (index, &action) in actions.iter().enumerate() {
            if action == Action::Stay {
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
        if !self.pending.is_empty() {
            return Ok(());
        }
        debug!("resume: {actions:?}");
        for (vcpu, action) in self.dbg.vcpus.iter().zip(&actions) {
            match action {
                Action::Stay => {}
                Action::Continue => vcpu.request(Command::Run),
                Action::Step => vcpu.request(Command::Step),
            }
        }
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), String> {
        self.actions.iter_mut().for_each(|a| *a = None);
        self.default_action = Action::Continue;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), String> {
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
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), String> {
        if let Some(slot) = self.actions.get_mut(tid.get() - 1) {
            *slot = Some(Action::Step);
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for KvmTarget<'_> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), String> {
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
        Ok(self.dbg.breakpoints_mut().insert_hw(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.dbg.breakpoints_mut().remove_hw(addr))
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
        self.dbg.watchpoints_mut().insert(Watch {
            va: addr,
            gpa,
            len,
            kind,
        });
        self.dbg.apply_memslots().map_err(fatal)?;
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let removed = self.dbg.watchpoints_mut().remove(addr, len, kind);
        self.dbg.apply_memslots().map_err(fatal)?;
        Ok(removed)
    }
}
