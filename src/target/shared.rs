//! State shared by the vCPU threads and the gdb thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use log::{debug, warn};

use crate::target::dump::elf_dump::DumpCpu;
use crate::target::dump::host_file::ExecFile;
use crate::target::error::StubError;
use crate::target::gdb::qemu_packets::QemuFlags;
use crate::target::gdb::session::HomeSlot;
use crate::target::gdb::wait;
use crate::target::kvm::debug_registers::DebugRegs;
use crate::target::kvm::irq_step::StepIrqs;
use crate::target::kvm::page_watchpoints::Watchpoints;
use crate::target::kvm::planted_breakpoints::Breakpoints;
use crate::target::kvm::run_gate::RunGate;
use crate::target::kvm::traps::{PageTraps, Trap};
use crate::target::kvm::vcpu::{Command, Vcpu};
use crate::target::machine::memory::{GuestRam, TablePool};
use crate::target::machine::paging::CpuLimits;
use crate::target::progress::{self, ProgressFn};
use crate::target::table_watch::{Remap, TableWatches};
use crate::vmem::PhysAddr;

/// How the VMM's own kick reaches vCPU `index`.
pub(crate) type VmmKick = Box<dyn Fn(usize) + Send + Sync>;

/// State shared by the vCPU threads and the gdb thread.
pub(crate) struct Inner {
    /// The debugger's own handle on the VM (`None`: a memory dump).
    pub(crate) vm: Option<kvm_ioctls::VmFd>,
    pub(crate) memory: GuestRam,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) breakpoints: RwLock<Breakpoints>,
    pub(crate) watchpoints: RwLock<Watchpoints>,
    /// Translations watched with `monitor vmem watch`.
    pub(crate) table_watches: RwLock<TableWatches>,
    pub(crate) debug_regs: RwLock<DebugRegs>,
    pub(crate) page_traps: Option<Box<dyn PageTraps>>,
    pub(crate) vmm_kick: Option<VmmKick>,
    /// Memslot changes wait for every vCPU to be out of `KVM_RUN`.
    pub(crate) run_gate: RunGate,
    /// The pages `page_traps` traps now.
    pub(crate) applied_traps: Mutex<BTreeMap<PhysAddr, Trap>>,
    /// A watch was removed: the traps change before any vCPU runs next.
    pub(crate) traps_stale: AtomicBool,
    /// Wakes the thread accepting gdb connections.
    pub(crate) serving: Mutex<Option<wait::Waker>>,
    /// The VMM asked to stop serving gdb.
    pub(crate) stopping: AtomicBool,
    /// Wakes the attached session's gdb thread.
    pub(crate) session: Mutex<Option<wait::Waker>>,
    /// Where a session lent to a vCPU thread comes back to the gdb thread.
    pub(crate) home: HomeSlot,
    /// Held by whoever has the VM stopped to look at it: a gdb session, or
    /// a `Debugger::monitor` call.
    pub(crate) holder: Mutex<()>,
    pub(crate) halt_tick: Duration,
    /// The host copies registers into `kvm_run` on exit (KVM_CAP_SYNC_REGS).
    pub(crate) sync_regs: bool,
    /// How steps keep interrupts out.
    pub(crate) step_irqs: StepIrqs,
    /// What QEMU's packets set (`Qqemu.sstep`, `Qqemu.PhyMemMode`).
    pub(crate) qemu: Arc<QemuFlags>,
    /// The file gdb is told to load (`qXfer:exec-file`), served over
    /// `vFile`.
    pub(crate) exec_file: Option<ExecFile>,
    /// Whether monitor commands may open host files the client names.
    pub(crate) host_files: bool,
    pub(crate) table_pool: Option<TablePool>,
    /// Files opened by `monitor chardev-add`, by id (kept across sessions,
    /// as QEMU keeps chardevs).
    pub(crate) chardevs: Mutex<BTreeMap<String, std::fs::File>>,
    /// Address spaces known to `monitor vmem spaces` (CR3 values, or roots),
    /// with how they are known.
    pub(crate) spaces: Mutex<BTreeMap<u64, &'static str>>,
    /// A memory dump's vCPUs, which never run (`None`: live vCPUs).
    pub(crate) frozen: Option<Vec<DumpCpu>>,
    /// The MMU limits of the vCPUs' CPUID (read by the first vCPU to run).
    pub(crate) cpu_limits: OnceLock<CpuLimits>,
    /// Told how long monitor commands are getting on.
    pub(crate) progress: Option<Box<ProgressFn>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus.len())
            .field("page_traps", &self.page_traps.is_some())
            .field("sync_regs", &self.sync_regs)
            .field("step_irqs", &self.step_irqs)
            .finish_non_exhaustive()
    }
}

/// Lock a mutex, ignoring poisoning (a panicked holder leaves plain data).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Where long monitor commands report their progress.
    pub(crate) fn progress(&self) -> &ProgressFn {
        self.progress.as_deref().unwrap_or(&progress::ignore)
    }

    pub(crate) fn breakpoints(&self) -> RwLockReadGuard<'_, Breakpoints> {
        self.breakpoints.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn breakpoints_mut(&self) -> RwLockWriteGuard<'_, Breakpoints> {
        self.breakpoints.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn watchpoints(&self) -> RwLockReadGuard<'_, Watchpoints> {
        self.watchpoints.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn watchpoints_mut(&self) -> RwLockWriteGuard<'_, Watchpoints> {
        self.watchpoints.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn debug_regs(&self) -> RwLockReadGuard<'_, DebugRegs> {
        self.debug_regs.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn debug_regs_mut(&self) -> RwLockWriteGuard<'_, DebugRegs> {
        self.debug_regs.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The vCPUs' MMU limits (from the first vCPU to run; until then the
    /// documented assumption).
    pub(crate) fn cpu_limits(&self) -> CpuLimits {
        self.cpu_limits.get().copied().unwrap_or_default()
    }

    /// Learn the MMU limits from a vCPU's CPUID, once.
    pub(crate) fn learn_cpuid(&self, fd: &VcpuFd) {
        self.cpu_limits.get_or_init(|| {
            let limits = match fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES) {
                Ok(cpuid) => CpuLimits::from_cpuid(cpuid.as_slice()),
                Err(e) => {
                    warn!("KVM_GET_CPUID2 failed ({e}): assuming the default MMU");
                    CpuLimits::default()
                }
            };
            debug!("vCPU MMU from KVM_GET_CPUID2: {limits}");
            limits
        });
    }

    pub(crate) fn table_watches(&self) -> RwLockReadGuard<'_, TableWatches> {
        self.table_watches.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn table_watches_mut(&self) -> RwLockWriteGuard<'_, TableWatches> {
        self.table_watches
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `gpa` is on a page trapped for a watchpoint or a watched
    /// translation.
    pub(crate) fn traps(&self, gpa: u64) -> bool {
        let watches = self.watchpoints();
        let tables = self.table_watches();
        (!watches.is_empty() && watches.traps(gpa)) || (!tables.is_empty() && tables.traps(gpa))
    }

    /// The guest wrote `gpa` on a trapped page (already in RAM): a watched
    /// translation it changed. The traps follow tables that moved.
    pub(crate) fn table_written(&self, gpa: u64) -> Option<Remap> {
        if self.table_watches().is_empty() {
            return None;
        }
        let (remap, moved) = self.table_watches_mut().written(&self.memory, gpa);
        if moved {
            if let Err(e) = self.apply_traps() {
                warn!("vmem watch: cannot trap the moved tables: {e}");
            }
        }
        remap
    }

    /// Whether watchpoints trap pages (else they use debug registers).
    pub(crate) fn has_page_traps(&self) -> bool {
        self.page_traps.is_some()
    }

    /// Ask the VMM to trap the pages of the current watchpoints and
    /// watched translations (the table pages on their paths, for writes),
    /// unless it traps exactly those already.
    pub(crate) fn apply_traps(&self) -> Result<(), StubError> {
        let Some(traps) = &self.page_traps else {
            return Ok(());
        };
        let mut pages = self.watchpoints().pages();
        for page in self.table_watches().pages() {
            pages.entry(page).or_insert(Trap::Writes);
        }
        let mut applied = lock(&self.applied_traps);
        self.traps_stale.store(false, Ordering::Release);
        if *applied == pages {
            return Ok(());
        }
        let kick_all = || self.vcpus.iter().for_each(|v| v.kick_out(self));
        self.run_gate
            .closed(kick_all, || traps.set_traps(&pages))
            .map_err(StubError::PageTraps)?;
        *applied = pages;
        Ok(())
    }

    /// A watch was removed: its pages stop trapping before any vCPU runs
    /// next ([`Self::sync_traps`]). gdb lifts its watchpoints at every
    /// stop and puts them back when it resumes, which then changes
    /// nothing.
    pub(crate) fn untrap_later(&self) {
        self.traps_stale.store(true, Ordering::Release);
    }

    /// Before a vCPU runs: make the traps of watches removed since.
    pub(crate) fn sync_traps(&self) {
        if self.traps_stale.load(Ordering::Acquire) {
            if let Err(e) = self.apply_traps() {
                warn!("{e}");
            }
        }
    }

    pub(crate) fn attached(&self) -> bool {
        lock(&self.session).is_some()
    }

    /// Tell the gdb thread a vCPU stopped by itself.
    pub(crate) fn wake(&self) {
        if let Some(waker) = lock(&self.session).as_ref() {
            waker.wake();
        }
    }

    /// The guest-debug settings for the next `KVM_RUN` under `command`.
    pub(crate) fn guest_debug(&self, command: Command) -> kvm_guest_debug {
        let mut dbg = kvm_guest_debug::default();
        let stepping = command.steps();
        if !self.attached() && !stepping {
            return dbg;
        }
        dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        if stepping {
            dbg.control |= KVM_GUESTDBG_SINGLESTEP;
            // QEMU's default: a step does not enter an interrupt handler.
            if self.step_irqs == StepIrqs::Block && self.steps_without_irqs(command) {
                dbg.control |= KVM_GUESTDBG_BLOCKIRQ;
            }
        }
        if let Some((addrs, dr7)) = self.debug_regs().encode(command == Command::StepOver) {
            dbg.control |= KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[..4].copy_from_slice(&addrs);
            dbg.arch.debugreg[7] = dr7;
        }
        dbg
    }

    /// End the session and stop accepting gdb connections.
    pub(crate) fn stop_serving(&self) {
        self.stopping.store(true, Ordering::Release);
        for waker in [&self.serving, &self.session] {
            if let Some(waker) = lock(waker).as_ref() {
                waker.wake();
            }
        }
        self.home.end_lent_reads();
    }

    /// Whether a step under `command` keeps interrupts out (NOIRQ; a step
    /// over a breakpoint always does).
    fn steps_without_irqs(&self, command: Command) -> bool {
        command == Command::StepOver || self.qemu.step_blocks_irqs()
    }

    /// Whether a step under `command` runs interrupt handlers it enters
    /// without stopping.
    pub(crate) fn skips_handlers(&self, command: Command) -> bool {
        self.step_irqs == StepIrqs::SkipHandlers && self.steps_without_irqs(command)
    }

    pub(crate) fn pause_all(&self) {
        for v in &self.vcpus {
            v.request(Command::Pause, self);
        }
        for v in &self.vcpus {
            v.wait_parked();
        }
    }

    pub(crate) fn shut_down(&self) {
        for v in &self.vcpus {
            v.request(Command::Quit, self);
        }
        // A vCPU thread answering gdb reads gdb's socket alone: end it.
        self.home.end_lent_reads();
    }
}
