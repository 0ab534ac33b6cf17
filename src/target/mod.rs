//! A gdbstub target over live KVM vCPUs.
//!
//! A VMM hands its VM, vCPUs and guest RAM to a [`Debugger`], runs each
//! vCPU with [`Debugger::run_vcpu`] in its own thread, and serves gdb from
//! another thread with [`Debugger::serve`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use kvm_ioctls::Kvm;
//! use vmem_gdbstub::target::{Debugger, ExitAction, GdbListener, GuestMemory, GuestRam, RamRegion};
//!
//! let kvm = Kvm::new()?;
//! let vm = kvm.create_vm()?;
//! let ram = Arc::new(GuestRam::new(64 << 20)?);
//! let memory = GuestMemory::new(vec![RamRegion::new(0, ram)]).expect("no overlap");
//! let vcpus = vec![vm.create_vcpu(0)?];
//! // ... load the guest and set up registers (Debugger::with_vcpu) ...
//! let debugger = Arc::new(Debugger::new(vm, vcpus, memory)?);
//! let gdb = Arc::clone(&debugger);
//! std::thread::spawn(move || gdb.serve(GdbListener::tcp("127.0.0.1:9001")?));
//! debugger.run_vcpu(0, |_vcpu, exit| {
//!     println!("unhandled exit {exit:?}");
//!     ExitAction::Continue
//! });
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The debugger owns the memslots of the RAM it is given (it re-lays them
//! out to trap watched pages). While no gdb is attached the guest runs
//! normally; when gdb attaches, every vCPU stops (all-stop); when gdb
//! detaches or disconnects, breakpoints and watchpoints are removed and
//! the guest runs on.

mod breakpoints;
mod connection;
mod event_loop;
mod kick;
mod memory;
mod memory_packets;
mod monitor;
mod paging;
mod qemu_packets;
mod regs;
mod stub;
mod vcpu;
mod wait;
mod watchpoints;

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use kvm_bindings::{
    kvm_guest_debug, CpuId, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd, VmFd};
use log::{debug, info};

pub use connection::Stream;
pub use event_loop::GdbListener;
pub use memory::{GuestMemory, GuestRam, GuestTables, RamRegion, TablePool};
pub use paging::vcpu_mmu;
pub use regs::{X86_64Kvm, X86_64RegId, X86_64Regs};

use breakpoints::Breakpoints;
use paging::CpuLimits;
use vcpu::{Command, Vcpu};
use watchpoints::{Memslots, Watchpoints};

/// What the VMM's exit handler tells the vCPU loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Keep running the vCPU.
    Continue,
    /// Stop every vCPU: the VM is shutting down.
    Shutdown,
}

/// A debugger for one VM.
#[derive(Debug)]
pub struct Debugger {
    inner: Inner,
}

/// State shared by the vCPU threads and the gdb thread.
#[derive(Debug)]
pub(crate) struct Inner {
    vm: VmFd,
    memory: GuestMemory,
    vcpus: Vec<Vcpu>,
    breakpoints: RwLock<Breakpoints>,
    watchpoints: RwLock<Watchpoints>,
    memslots: Mutex<Memslots>,
    /// Wakes the attached session's gdb thread.
    session: Mutex<Option<wait::Waker>>,
    idle_sleep: Duration,
    /// The host copies registers into `kvm_run` on exit (KVM_CAP_SYNC_REGS).
    sync_regs: bool,
    exec_file: Option<String>,
    table_pool: Option<TablePool>,
    /// Address spaces known to `monitor vmem spaces`, with how they are known.
    spaces: Mutex<std::collections::BTreeMap<u64, &'static str>>,
    /// The MMU limits of the vCPUs' CPUID.
    cpu_limits: CpuLimits,
}

/// Lock a mutex, ignoring poisoning (a panicked holder leaves plain data).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Debugger {
    /// Take over `vm`'s RAM memslots (registering `memory`) and `vcpus`
    /// (vCPU `i` is gdb thread `i + 1`).
    pub fn new(vm: VmFd, vcpus: Vec<VcpuFd>, memory: GuestMemory) -> io::Result<Debugger> {
        kick::install_handler();
        let sync_regs = vm.check_extension(Cap::SyncRegs);
        debug!("KVM_CAP_SYNC_REGS: {sync_regs} (steps read registers from kvm_run)");
        let memslots = Memslots::new(&vm, &memory)?;
        let cpuid = match vcpus.first() {
            Some(fd) => fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(io::Error::from)?,
            None => CpuId::new(0).map_err(|e| io::Error::other(format!("{e:?}")))?,
        };
        let cpu_limits = CpuLimits::from_cpuid(cpuid.as_slice());
        debug!("vCPU MMU from KVM_GET_CPUID2: {cpu_limits}");
        let vcpus = vcpus
            .into_iter()
            .enumerate()
            .map(|(i, fd)| Vcpu::new(i, fd))
            .collect();
        Ok(Debugger {
            inner: Inner {
                vm,
                memory,
                vcpus,
                breakpoints: RwLock::default(),
                watchpoints: RwLock::default(),
                memslots: Mutex::new(memslots),
                session: Mutex::new(None),
                idle_sleep: Duration::from_millis(2),
                sync_regs,
                exec_file: None,
                table_pool: None,
                spaces: Mutex::default(),
                cpu_limits,
            },
        })
    }

    /// How long a vCPU that executed `hlt` with interrupts enabled sleeps
    /// before it runs again (default 2 ms): it stands in for a timer
    /// interrupt, for VMMs without an in-kernel interrupt controller (with
    /// one, KVM handles `hlt` itself). A vCPU that halts with interrupts
    /// disabled sleeps until the debugger or shutdown wakes it, as a real
    /// CPU would.
    pub fn set_idle_sleep(&mut self, sleep: Duration) {
        self.inner.idle_sleep = sleep;
    }

    /// Tell gdb where the guest's ELF (with symbols) is, so a plain
    /// `target remote` loads it (`qXfer:exec-file`).
    pub fn set_exec_file(&mut self, path: impl Into<String>) {
        self.inner.exec_file = Some(path.into());
    }

    /// Guest-physical pages (page-aligned range, not used by the guest)
    /// from which `monitor vmem map` takes new page tables.
    pub fn set_table_pool(&mut self, range: std::ops::Range<u64>) {
        self.inner.table_pool = Some(TablePool::new(range));
    }

    /// Make an address space (a CR3 value) known to `monitor vmem spaces`.
    pub fn add_space(&self, cr3: u64) {
        lock(&self.inner.spaces).insert(cr3 & paging::CR3_ADDR_MASK, "registered");
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.inner.memory
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.inner.vcpus.len()
    }

    /// Run `f` on vCPU `index` (set up registers before it starts; while
    /// it runs this waits for it to leave `KVM_RUN`). The fd is lent, not
    /// given: the debugger keeps a pointer into its `kvm_run` page, so it
    /// cannot be replaced.
    ///
    /// ```no_run
    /// # fn regs(dbg: &vmem_gdbstub::target::Debugger) {
    /// let rip = dbg.with_vcpu(0, |fd| fd.get_regs().map(|r| r.rip));
    /// # }
    /// ```
    ///
    /// ```compile_fail
    /// # fn swap(dbg: &vmem_gdbstub::target::Debugger, other: kvm_ioctls::VcpuFd) {
    /// // Replacing the fd would unmap the `kvm_run` page under the debugger.
    /// dbg.with_vcpu(0, |fd| *fd = other);
    /// # }
    /// ```
    pub fn with_vcpu<R>(&self, index: usize, f: impl FnOnce(&VcpuFd) -> R) -> Option<R> {
        let vcpu = self.inner.vcpus.get(index)?;
        Some(f(&lock(&vcpu.fd)))
    }

    /// Run vCPU `index` until the VM shuts down. Call it from that vCPU's
    /// own thread, for every vCPU (stopping the VM for gdb waits until each
    /// one is parked). Exits the debugger does not handle itself (port I/O,
    /// MMIO outside trapped pages…) go to `on_exit`.
    pub fn run_vcpu(
        &self,
        index: usize,
        mut on_exit: impl FnMut(usize, VcpuExit<'_>) -> ExitAction,
    ) {
        if let Some(vcpu) = self.inner.vcpus.get(index) {
            vcpu.run(&self.inner, &mut on_exit);
        }
    }

    /// Stop every vCPU loop (they return from [`Self::run_vcpu`]).
    pub fn shut_down(&self) {
        self.inner.shut_down();
    }

    /// Accept gdb connections forever: one session at a time; while one
    /// is attached, another client is told so and disconnected.
    pub fn serve(&self, listener: GdbListener) -> io::Result<()> {
        info!("waiting for gdb on {}", listener.describe());
        // Whether a session is attached; a session that is just ending
        // (gdb detached, cleanup running) is waited for, not refused.
        let busy = (Mutex::new(false), Condvar::new());
        std::thread::scope(|scope| loop {
            let stream = listener.accept()?;
            let (flag, ended) = &busy;
            let mut attached = ended
                .wait_timeout_while(lock(flag), Duration::from_secs(1), |b| *b)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
            if *attached {
                scope.spawn(move || event_loop::refuse(stream));
                continue;
            }
            *attached = true;
            drop(attached);
            let busy = &busy;
            scope.spawn(move || {
                event_loop::session(&self.inner, stream);
                *lock(&busy.0) = false;
                busy.1.notify_all();
            });
        })
    }
}

impl Inner {
    fn breakpoints(&self) -> RwLockReadGuard<'_, Breakpoints> {
        self.breakpoints.read().unwrap_or_else(|e| e.into_inner())
    }

    fn breakpoints_mut(&self) -> RwLockWriteGuard<'_, Breakpoints> {
        self.breakpoints.write().unwrap_or_else(|e| e.into_inner())
    }

    fn watchpoints(&self) -> RwLockReadGuard<'_, Watchpoints> {
        self.watchpoints.read().unwrap_or_else(|e| e.into_inner())
    }

    fn watchpoints_mut(&self) -> RwLockWriteGuard<'_, Watchpoints> {
        self.watchpoints.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `gpa` is on a page trapped for a watchpoint.
    fn traps(&self, gpa: u64) -> bool {
        let watches = self.watchpoints();
        !watches.is_empty() && watches.traps(gpa)
    }

    /// Re-lay out memslots for the current watchpoints (vCPUs parked).
    fn apply_memslots(&self) -> io::Result<()> {
        let watches = self.watchpoints();
        lock(&self.memslots).apply(&self.vm, &self.memory, &watches)
    }

    fn attached(&self) -> bool {
        lock(&self.session).is_some()
    }

    /// Tell the gdb thread a vCPU stopped by itself.
    fn wake(&self) {
        if let Some(waker) = lock(&self.session).as_ref() {
            waker.wake();
        }
    }

    /// The guest-debug settings for the next `KVM_RUN` of a vCPU.
    fn guest_debug(&self, stepping: bool, step_over: bool) -> kvm_guest_debug {
        let mut dbg = kvm_guest_debug::default();
        if !self.attached() && !stepping {
            return dbg;
        }
        dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        if stepping {
            dbg.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if !step_over {
            let hw = self.breakpoints().hw();
            let mut dr7 = 0u64;
            for (slot, addr) in hw.iter().enumerate() {
                if let Some(addr) = addr {
                    dbg.arch.debugreg[slot] = *addr;
                    dr7 |= 1 << (slot * 2);
                }
            }
            if dr7 != 0 {
                dbg.control |= KVM_GUESTDBG_USE_HW_BP;
                dbg.arch.debugreg[7] = dr7 | 0x400;
            }
        }
        dbg
    }

    fn pause_all(&self) {
        for v in &self.vcpus {
            v.request(Command::Pause);
        }
        for v in &self.vcpus {
            v.wait_parked();
        }
    }

    fn shut_down(&self) {
        for v in &self.vcpus {
            v.request(Command::Quit);
        }
    }
}
