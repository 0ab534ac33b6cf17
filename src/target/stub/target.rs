//! [`KvmTarget`], the gdbstub `Target`: one gdb session's view of the VM
//! (its state, the register cache every extension uses), and the
//! extensions it offers; each extension's code is in its own file.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use gdbstub::common::Tid;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::BreakpointsOps;
use gdbstub::target::ext::exec_file::ExecFileOps;
use gdbstub::target::ext::host_io::HostIoOps;
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::arch::controls::{CR0_PE, EFER_LMA};
use crate::target::dump::cpu::DumpCpu;
use crate::target::error::StubError;
use crate::target::kvm::command::{Command, StopKind};
use crate::target::kvm::lending::Driver;
use crate::target::kvm::shared::Inner;
use crate::target::machine::paging::Paging;
use crate::target::machine::regs::{KvmState, RegLayout, X86_64Kvm};
use crate::target::machine::x86_constants::code_address;
use crate::target::monitor::View;
use log::debug;

use crate::target::dump::host_file::OpenFiles;
use crate::target::kvm::msrs::read_extra;

/// What gdb asked one vCPU to do at the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Stay,
    Continue,
    Step,
}

/// One gdb session's view of the VM.
#[derive(Debug)]
pub(crate) struct KvmTarget {
    pub(super) inner: Arc<Inner>,
    pub(super) actions: Vec<Option<Action>>,
    pub(super) default_action: Action,
    /// What each vCPU does at the resume being made (reused).
    pub(super) resolved: Vec<Action>,
    pub(super) pending: VecDeque<(usize, StopKind)>,
    /// The vCPU of the last stop (whose tables breakpoints are set in).
    pub(super) current: usize,
    /// The vCPU `monitor cpu N` chose for the monitor commands, until the
    /// next stop.
    pub(super) monitor_cpu: Option<usize>,
    /// What gdb's memory accesses go through (`monitor vmem use`).
    pub(super) view: View,
    /// Each parked vCPU's general and special registers, read once per stop.
    pub(super) core: RefCell<Vec<Option<(kvm_regs, kvm_sregs)>>>,
    /// The rest (x87/SSE, KERNEL_GS_BASE), read only when gdb wants them.
    pub(super) cache: RefCell<Vec<Option<KvmState>>>,
    /// rip, rsp and rbp of the vCPU in the next stop reply (the
    /// connection layer puts them in, so gdb need not send `g`).
    pub(super) expedite: Option<[u64; 3]>,
    /// The register file gdb sees, from the mode of vCPU 0 at attach.
    pub(super) layout: RegLayout,
    /// lldb's memory map of what gdb reads through, with the root it was
    /// made from (`None`: physical); dropped at every resume, register
    /// write, memory write and monitor command.
    pub(super) regions:
        RefCell<Option<(Option<u64>, Vec<crate::target::machine::regions::Region>)>>,
    /// Why the vCPU of the next stop reply stopped, for gdb's console.
    pub(super) stop_note: Option<String>,
    /// vCPUs to continue once a step outlasts [`STEP_GRACE`].
    pub(super) deferred: Vec<usize>,
    /// Since when steps have held other vCPUs back without a break.
    pub(super) held_since: Option<Instant>,
    /// The files gdb opened with `vFile:open`.
    pub(super) open_files: OpenFiles,
    /// Page-table snapshots taken with `monitor vmem snapshot`.
    pub(super) snapshots: std::collections::BTreeMap<String, crate::target::monitor::Snapshot>,
    /// The tables when the VM last stopped (`vmem diff`), taken as it
    /// resumed, with what it is called.
    pub(super) last_stop: Option<(crate::target::monitor::Snapshot, String)>,
    /// `vmem diff` was used: the tables are taken at every continue.
    pub(super) diff_armed: bool,
    /// Which thread drives the session now.
    pub(crate) driver: Driver,
    /// The one vCPU that starts at this resume (the others stay or are
    /// held back) and its command, not yet given: its own thread runs it
    /// with the session.
    pub(super) lone: Option<(usize, Command)>,
    /// The last resume must be made by the gdb thread (it steps the
    /// driving vCPU over a breakpoint, which its own thread cannot wait for).
    pub(super) resume_at_home: bool,
    /// How gdb will most likely start the driving vCPU next, guessed from
    /// its last packet, so that vCPU's thread can set KVM up for it while
    /// gdb reads the reply (see [`KvmTarget::guess_after_breakpoint`]).
    pub(super) guess: Option<Command>,
}

/// gdb's thread id of vCPU `index`.
pub(crate) fn tid(index: usize) -> Tid {
    NonZeroUsize::new(index + 1).unwrap_or(NonZeroUsize::MIN)
}

impl From<StubError> for TargetError<StubError> {
    fn from(e: StubError) -> Self {
        TargetError::Fatal(e)
    }
}

impl KvmTarget {
    pub(crate) fn new(inner: Arc<Inner>) -> KvmTarget {
        KvmTarget {
            core: RefCell::new(vec![None; inner.vcpus.len()]),
            cache: RefCell::new(vec![None; inner.vcpus.len()]),
            expedite: None,
            stop_note: None,
            regions: RefCell::new(None),
            layout: RegLayout::X86_64,
            deferred: Vec::new(),
            held_since: None,
            open_files: Default::default(),
            snapshots: Default::default(),
            last_stop: None,
            diff_armed: false,
            driver: Driver::Home,
            lone: None,
            resume_at_home: false,
            guess: None,
            actions: vec![None; inner.vcpus.len()],
            resolved: Vec::new(),
            default_action: Action::Continue,
            pending: VecDeque::new(),
            current: 0,
            monitor_cpu: None,
            view: View::Current,
            inner,
        }
    }

    /// Pick the register file gdb will see from vCPU 0's mode now (gdb
    /// asks for the target description once, at attach): i386 in 32-bit
    /// protected mode, x86-64 otherwise.
    pub(crate) fn choose_layout(&mut self) {
        if let Ok((_, sregs)) = self.core(0) {
            let protected = sregs.cr0 & CR0_PE != 0 && sregs.efer & EFER_LMA == 0;
            self.layout = if protected {
                RegLayout::I386
            } else {
                RegLayout::X86_64
            };
            debug!("gdb sees the {:?} register file", self.layout);
        }
    }

    pub(crate) fn index(&self, tid: Tid) -> Result<usize, TargetError<StubError>> {
        let index = tid.get() - 1;
        if index < self.inner.vcpus.len() {
            Ok(index)
        } else {
            Err(TargetError::NonFatal)
        }
    }

    /// vCPU `index`'s general and special registers (it is parked), read
    /// once per stop: the stop path needs only these.
    pub(crate) fn core(
        &self,
        index: usize,
    ) -> Result<(kvm_regs, kvm_sregs), TargetError<StubError>> {
        if let Some(cpu) = self.frozen_cpu(index) {
            return Ok((cpu.regs, cpu.sregs));
        }
        if let Some(core) = self.core.borrow()[index] {
            return Ok(core);
        }
        let core = self.on_vcpu(index, "KVM_GET_REGS/SREGS", |fd| {
            Ok((fd.get_regs()?, fd.get_sregs()?))
        })?;
        self.core.borrow_mut()[index] = Some(core);
        Ok(core)
    }

    /// The linear address of vCPU `index`'s next instruction (rip is an
    /// offset in CS outside long mode; gdb's addresses are linear).
    pub(crate) fn linear_pc(&self, index: usize) -> Option<u64> {
        let (regs, sregs) = self.core(index).ok()?;
        Some(code_address(regs.rip, &sregs.cs))
    }

    /// All of vCPU `index`'s registers, read once per stop.
    pub(crate) fn state(&self, index: usize) -> Result<KvmState, TargetError<StubError>> {
        if let Some(state) = self.cache.borrow()[index].clone() {
            return Ok(state);
        }
        let (regs, sregs) = self.core(index)?;
        let (fpu, k_gs_base) = match self.frozen_cpu(index) {
            // A dump has no x87/SSE state.
            Some(cpu) => (Default::default(), cpu.kernel_gs_base),
            None => self.on_vcpu(index, "KVM_GET_FPU/MSRS", read_extra)?,
        };
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
    pub(crate) fn on_vcpu<R: Send + 'static>(
        &self,
        index: usize,
        op: &'static str,
        f: impl FnOnce(&VcpuFd) -> Result<R, kvm_ioctls::Error> + Send + 'static,
    ) -> Result<R, StubError> {
        self.inner.vcpus[index]
            .call(f)?
            .map_err(StubError::vcpu(index, op))
    }

    /// vCPU `index` of a memory dump, if this is one.
    pub(super) fn frozen_cpu(&self, index: usize) -> Option<&DumpCpu> {
        self.inner.frozen.as_ref()?.get(index)
    }

    /// Registers may change (the vCPU ran, or was written).
    pub(crate) fn forget(&self, index: usize) {
        self.core.borrow_mut()[index] = None;
        self.cache.borrow_mut()[index] = None;
        *self.regions.borrow_mut() = None;
    }

    pub(crate) fn paging(&self, index: usize) -> Result<Paging, TargetError<StubError>> {
        Ok(Paging::of(
            &self.core(index)?.1,
            &self.inner.vcpus.cpu_limits(),
        ))
    }

    /// The guest-physical address of `va` in vCPU `index`'s space.
    pub(crate) fn gpa_of(&self, index: usize, va: u64) -> Option<u64> {
        let paging = self.paging(index).ok()?;
        paging
            .translate(&self.inner.memory, va)
            .ok()
            .map(|(gpa, _)| gpa)
    }

    /// Whether the VMM asked to stop serving gdb.
    pub(crate) fn stopping(&self) -> bool {
        self.inner.link.stopping()
    }

    /// Record vCPU `index`'s current CR3 as a known address space.
    pub(crate) fn remember_space(&self, index: usize) {
        if let Ok(Paging::Paged { root, .. }) = self.paging(index) {
            self.inner.monitor.note_space(root, "seen at a stop");
        }
    }
}

impl Target for KvmTarget {
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
        self.inner.exec_file.is_some().then_some(self)
    }

    fn support_host_io(&mut self) -> Option<HostIoOps<'_, Self>> {
        self.inner.exec_file.is_some().then_some(self)
    }

    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }
}

impl TargetDescriptionXmlOverride for KvmTarget {
    fn target_description_xml(
        &self,
        _annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        Ok(copy_at(
            self.layout.target_xml().as_bytes(),
            offset,
            length,
            buf,
        ))
    }
}

/// Copy up to `length` bytes of `source` from `offset` into `buf` (as the
/// `qXfer` reads and `vFile:pread` ask); how many were copied.
pub(crate) fn copy_at(source: &[u8], offset: u64, length: usize, buf: &mut [u8]) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(source.len());
    let n = length.min(buf.len()).min(source.len() - start);
    buf[..n].copy_from_slice(&source[start..start + n]);
    n
}
