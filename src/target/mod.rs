//! A gdbstub target over live KVM vCPUs, embedded in a VMM that keeps its
//! own vCPU loops, guest memory and memslots.
//!
//! Two ways in, one core:
//! - **Hooks** ([`VcpuHooks`]): the VMM's own vCPU loop calls
//!   [`VcpuHooks::before_run`] before each `KVM_RUN` and tells
//!   [`VcpuHooks::after_run`] how it ended; the debugger keeps its own exits
//!   and leaves the rest to the VMM untouched.
//! - **Turnkey** ([`Debugger::run_vcpu`]): that loop, written once, calling
//!   the VMM only for its own exits.
//!
//! Guest RAM is the VMM's `vm-memory` guest memory ([`GuestRam::new`]
//! takes a `GuestMemoryMmap` as is; [`GuestRam::from_memory`] any other
//! `GuestMemory`, and the `unsafe` [`GuestRam::with_host_mappings`] one
//! whose regions the VMM vouches are mappings). The VMM keeps its `VmFd` and
//! `VcpuFd`s, from whichever kvm-ioctls release (or other KVM crate) it
//! uses: the debugger takes their file descriptors and makes its own
//! handles (a duplicate fd, its own mapping of each `kvm_run`). Memslots
//! stay the VMM's, and watched pages are trapped through [`PageTraps`] if
//! it offers that ([`KvmMemslots`] is a ready one).
//!
//! ```no_run
//! use std::sync::Arc;
//! use kvm_ioctls::{Kvm, VcpuExit};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmem_gdbstub::target::{Debugger, Entry, ExitOwner, GdbListener, GuestRam, KvmMemslots};
//!
//! let kvm = Kvm::new()?;
//! let vm = Arc::new(kvm.create_vm()?);
//! let guest_memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
//! let ram = GuestRam::new(guest_memory.clone());
//! let mut fd = vm.create_vcpu(0)?;
//! // ... load the guest, set up registers ...
//! let debugger = Arc::new(
//!     Debugger::builder(&vm, 1, ram.clone())?
//!         .page_traps(KvmMemslots::new(&vm, &ram, 0)?)
//!         .build(),
//! );
//! let gdb = Arc::clone(&debugger);
//! std::thread::spawn(move || gdb.serve(GdbListener::tcp("127.0.0.1:9001")?));
//! // The vCPU thread: the VMM's loop, with the hooks around KVM_RUN.
//! let mut hooks = debugger.vcpu(0, &fd).expect("vcpu 0");
//! while hooks.before_run() == Entry::Run {
//!     let exit = fd.run();
//!     if hooks.after_run(exit.as_ref().map(|_| ()).map_err(|e| e.errno())) == ExitOwner::Debugger {
//!         continue;
//!     }
//!     match exit {
//!         Ok(VcpuExit::IoOut(port, data)) => println!("out {port:#x} {data:?}"),
//!         other => println!("VMM exit {other:?}"),
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! While no gdb is attached the guest runs normally; when gdb attaches,
//! every vCPU stops (all-stop); when gdb detaches or disconnects,
//! breakpoints and watchpoints are removed and the guest runs on.

mod dump;
mod error;
mod gdb;
mod kvm;
mod machine;
mod monitor;
mod progress;
mod stub;
mod sync;
mod wait;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{KVM_CAP_SET_GUEST_DEBUG2, KVM_GUESTDBG_BLOCKIRQ};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd, VmFd};
use log::{debug, warn};

pub use dump::arm_kernel::ArmKernel;
pub use dump::cpu::{Aarch64Cpu, Aarch64Fp, DumpArch, DumpCpu};
pub use dump::dump_file::Dump;
pub use dump::error::DumpError;
pub use dump::symbols::{symbol_file, symbol_file_for, SymbolFile, SymbolsError};
pub use dump::vmcoreinfo::VmcoreInfo;
pub use error::StubError;
pub use gdb::connection::Stream;
pub use gdb::event_loop::GdbListener;
pub use gdb::rsp;
pub use kvm::hooks::{Entry, ExitOwner, VcpuHooks};
pub use kvm::irq_step::StepIrqs;
pub use kvm::watch::memslots::{KvmMemslots, PageTraps, Trap};
pub use machine::memory::{GuestRam, GuestTables, RamRange, TablePool};
pub use machine::paging::vcpu_mmu;
pub use machine::regs::{RegLayout, X86_64Kvm, X86_64RegId, X86_64Regs};
pub use machine::x86_constants::flat_segment;
pub use progress::{Progress, ProgressUnit};

use dump::arm_kernel::ArmDump;
use dump::host_file::ExecFile;
use kvm::shared::Inner;
use kvm::vcpus::Vcpus;
use monitor::state::DumpFacts;

/// What the VMM's exit handler tells the turnkey vCPU loop.
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
    inner: Arc<Inner>,
}

/// Sets up a [`Debugger`]; every setting has a default.
#[must_use]
pub struct DebuggerBuilder {
    inner: Inner,
    /// The host has `KVM_GUESTDBG_BLOCKIRQ`.
    block_irq: bool,
}

impl std::fmt::Debug for DebuggerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl DebuggerBuilder {
    fn with(
        vm: Option<VmFd>,
        memory: GuestRam,
        vcpus: usize,
        sync_regs: bool,
        block_irq: bool,
    ) -> Self {
        let step_irqs = if block_irq {
            StepIrqs::Block
        } else {
            StepIrqs::SkipHandlers
        };
        let vcpus = Vcpus::new(vcpus, sync_regs, step_irqs);
        DebuggerBuilder {
            block_irq,
            inner: Inner::new(vm, memory, vcpus),
        }
    }

    /// Called as long monitor commands run (`vmem spaces --scan` over all
    /// of RAM, `vmem audit --all` over many spaces), from the thread
    /// running the command or a helper of it; the tool draws a progress
    /// bar with it.
    pub fn on_progress(mut self, report: impl Fn(Progress<'_>) + Send + Sync + 'static) -> Self {
        self.inner.monitor.set_progress(Box::new(report));
        self
    }

    /// Tell gdb where the guest's ELF (with symbols) is, so a plain
    /// `target remote` loads it (`qXfer:exec-file`). gdb reads it through
    /// the stub (`vFile`), so a gdb on another machine gets it too; the
    /// stub serves this one file and no other.
    pub fn exec_file(mut self, path: impl Into<String>) -> Self {
        self.inner.exec_file = Some(ExecFile::host(path.into()));
        self
    }

    /// Hand gdb `bytes` (an ELF, e.g. from [`symbol_file`]) as the guest's
    /// exec-file under the name `name`, without writing it anywhere: gdb
    /// reads it through the stub (`vFile`).
    pub fn exec_file_bytes(mut self, name: impl Into<String>, bytes: Vec<u8>) -> Self {
        self.inner.exec_file = Some(ExecFile::bytes(name.into(), bytes));
        self
    }

    /// Whether gdb's monitor commands may open host files the client names
    /// (default: yes): `chardev-add file,…,path=P` (pwndbg's way of finding
    /// the VMM's process) and `vmem diff --dump P`. Even when allowed, only
    /// existing regular files are opened, read-only, never through a
    /// symbolic link, never blocking.
    pub fn host_files(mut self, allowed: bool) -> Self {
        self.inner.monitor.set_host_files(allowed);
        self
    }

    /// Guest-physical pages (page-aligned range, not used by the guest)
    /// from which `monitor vmem map` takes new page tables.
    pub fn table_pool(mut self, range: std::ops::Range<u64>) -> Self {
        self.inner.monitor.set_table_pool(TablePool::new(range));
        self
    }

    /// How watched pages are trapped (memslots are the VMM's). Without
    /// it, watchpoints use the debug registers: at most four, of 1, 2, 4
    /// or 8 aligned bytes, and only on hosts where they fire (not on
    /// kvm_pvm).
    pub fn page_traps(mut self, traps: impl PageTraps + 'static) -> Self {
        self.inner.trapping.set_page_traps(Box::new(traps));
        self
    }

    /// For a VMM that wants no signal of the debugger's on its vCPU threads
    /// (by default the debugger kicks a run with `SIGRTMIN+3` and its own
    /// `immediate_exit`): how the debugger makes vCPU `index` leave
    /// `KVM_RUN` instead (e.g. set `immediate_exit` and signal its thread).
    /// Called whenever gdb stops the VM; [`VcpuHooks::after_run`] takes the
    /// `EINTR`.
    pub fn kick(mut self, kick: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.inner.vcpus.set_vmm_kick(Box::new(kick));
        self
    }

    /// For VMMs without an in-kernel interrupt controller, whose `hlt`
    /// exits to user space: how long a vCPU that halted with interrupts
    /// enabled waits before it runs again (default 2 ms), standing in for
    /// a timer interrupt. One that halts with interrupts disabled sleeps
    /// until the debugger or shutdown wakes it, as a real CPU would. With
    /// an irqchip, KVM handles `hlt` itself and this is unused.
    pub fn halt_tick(mut self, tick: Duration) -> Self {
        self.inner.vcpus.set_halt_tick(tick);
        self
    }

    /// How single steps keep interrupts out when gdb asks for it (QEMU's
    /// NOIRQ, the default): [`StepIrqs::Block`] where the host has
    /// `KVM_GUESTDBG_BLOCKIRQ` (the default there), else
    /// [`StepIrqs::SkipHandlers`].
    pub fn step_irqs(mut self, how: StepIrqs) -> Self {
        let how = match how {
            StepIrqs::Block if !self.block_irq => {
                warn!("this host cannot hold interrupts back in a step (no KVM_GUESTDBG_BLOCKIRQ): skipping handlers instead");
                StepIrqs::SkipHandlers
            }
            how => how,
        };
        self.inner.vcpus.set_step_irqs(how);
        self
    }

    /// Make an address space (a CR3 value) known to `monitor vmem spaces`;
    /// its root is read from it as the vCPU's paging mode reads CR3.
    pub fn space(self, cr3: u64) -> Self {
        self.inner.monitor.add_space(cr3, "registered");
        self
    }

    /// The debugger.
    pub fn build(self) -> Debugger {
        Debugger {
            inner: Arc::new(self.inner),
        }
    }
}

impl Debugger {
    /// A debugger for `vm` (asked only what the host supports) with
    /// `vcpus` vCPUs (vCPU `i` is gdb thread `i + 1`) and guest RAM `memory`.
    /// `vm` is the VM's fd as the VMM holds it, through any KVM crate (a
    /// kvm-ioctls `VmFd` of any release): the debugger keeps a duplicate.
    pub fn builder(
        vm: &impl AsRawFd,
        vcpus: usize,
        memory: GuestRam,
    ) -> io::Result<DebuggerBuilder> {
        let vm = kvm::fds::vm_of(vm)?;
        kvm::kick::install_handler();
        let sync_regs = vm.check_extension(Cap::SyncRegs);
        let debug_flags = vm.check_extension_raw(KVM_CAP_SET_GUEST_DEBUG2.into());
        let block_irq = u32::try_from(debug_flags).is_ok_and(|f| f & KVM_GUESTDBG_BLOCKIRQ != 0);
        debug!("KVM_CAP_SYNC_REGS: {sync_regs} (steps read registers from kvm_run)");
        debug!("KVM_GUESTDBG_BLOCKIRQ: {block_irq} (steps can hold interrupts back)");
        Ok(DebuggerBuilder::with(
            Some(vm),
            memory,
            vcpus,
            sync_regs,
            block_irq,
        ))
    }

    /// A debugger serving a memory dump: registers and memory from the
    /// file, every vCPU stopped for good (resuming, stepping and
    /// breakpoints are refused with a message). No KVM needed.
    pub fn from_dump(dump: Dump) -> DebuggerBuilder {
        if dump.arch() == DumpArch::Aarch64 {
            return Debugger::from_arm_dump(dump);
        }
        let cpus = dump.cpus().len();
        let mut builder = DebuggerBuilder::with(None, dump.ram().clone(), cpus, false, false);
        for v in builder.inner.vcpus.iter() {
            v.mark_finished();
        }
        let monitor = &mut builder.inner.monitor;
        for cpu in dump.cpus() {
            monitor.add_space(cpu.sregs.cr3, "in the dump");
        }
        if let Some((root, _)) = dump.vmcoreinfo().and_then(|info| info.kernel_root()) {
            monitor.add_space(root, "the kernel's (VMCOREINFO)");
        }
        monitor.set_dump(DumpFacts {
            format: dump.format().to_string(),
            vmcoreinfo: dump.vmcoreinfo().cloned(),
        });
        builder.inner.frozen = Some(dump.cpus().to_vec());
        builder
    }

    /// An arm64 dump's debugger: its CPUs as gdb's threads, memory
    /// through the kernel's table (VMCOREINFO's, else found in RAM; when
    /// neither finds it, kernel addresses do not translate: `monitor vmem
    /// use phys` reads physical ones) and the processes' tables `monitor
    /// vmem spaces --scan` finds.
    fn from_arm_dump(dump: Dump) -> DebuggerBuilder {
        let mut builder = DebuggerBuilder::with(None, dump.ram().clone(), 0, false, false);
        let kernel = match dump.aarch64_kernel() {
            Ok(kernel) => kernel.clone(),
            Err(why) => {
                warn!("{why}: kernel addresses do not translate");
                ArmKernel {
                    format: crate::arch::aarch64::Aarch64::UPPER_48,
                    root: u64::MAX,
                    how: format!("not found: {why}"),
                    pac_mask: None,
                }
            }
        };
        debug!(
            "arm64 dump: the kernel's table (TTBR1) at {:#x}, {}",
            kernel.root, kernel.how
        );
        builder.inner.monitor.set_dump(DumpFacts {
            format: dump.format().to_string(),
            vmcoreinfo: dump.vmcoreinfo().cloned(),
        });
        builder.inner.arm = Some(ArmDump {
            cpus: dump.aarch64_cpus().to_vec(),
            kernel,
        });
        builder
    }

    /// Run one `monitor` command as gdb's `monitor` would (`vmem audit
    /// --all 1`, `vmem spaces --scan shared`, `info mem` …) and return what
    /// it prints: for the VMM's own console, a crash report, a test. The
    /// vCPUs are paused while it runs and resumed after. Fails with
    /// [`StubError::Attached`] while a gdb session holds the VM (ask through
    /// gdb then). Snapshots (`vmem snapshot`) and watches (`vmem watch`)
    /// belong to a gdb session and are not kept.
    pub fn monitor(&self, line: &str) -> Result<String, StubError> {
        stub::run_monitor(&self.inner, line)
    }

    /// Make an address space (a CR3 value) known to `monitor vmem spaces`;
    /// its root is read from it as the vCPU's paging mode reads CR3.
    pub fn add_space(&self, cr3: u64) {
        self.inner.monitor.add_space(cr3, "registered");
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestRam {
        &self.inner.memory
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.inner.vcpus.len()
    }

    /// The hooks of vCPU `index`, whose fd the VMM holds as `fd` (through
    /// any KVM crate), for the VMM's loop in that vCPU's thread (one holder
    /// at a time). Every vCPU's loop must run through its hooks: stopping
    /// the VM for gdb waits until each one is parked.
    pub fn vcpu(&self, index: usize, fd: &impl AsRawFd) -> Result<VcpuHooks, StubError> {
        let vcpu = self
            .inner
            .vcpus
            .get(index)
            .ok_or(StubError::NoSuchVcpu(index))?;
        let vm = self.inner.vm.as_ref().ok_or(StubError::Frozen)?;
        let own = kvm::fds::vcpu_of(vm, fd).map_err(|source| StubError::VcpuHandle {
            vcpu: index,
            source,
        })?;
        if !vcpu.claim() {
            return Err(StubError::VcpuClaimed(index));
        }
        Ok(VcpuHooks::new(Arc::clone(&self.inner), index, own))
    }

    /// The turnkey vCPU loop: run vCPU `index` on `fd` until the VM shuts
    /// down, in that vCPU's own thread. Exits the debugger does not take
    /// (port I/O, MMIO outside trapped pages…) go to `on_exit`.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use kvm_ioctls::VcpuExit;
    /// # use vmem_gdbstub::target::{Debugger, ExitAction};
    /// # fn spawn(debugger: Arc<Debugger>, mut fd: kvm_ioctls::VcpuFd) {
    /// std::thread::spawn(move || {
    ///     debugger.run_vcpu(0, &mut fd, |_index, exit| match exit {
    ///         VcpuExit::IoOut(0x3f8, data) => {
    ///             print!("{}", String::from_utf8_lossy(data));
    ///             ExitAction::Continue
    ///         }
    ///         VcpuExit::Shutdown => ExitAction::Shutdown,
    ///         _ => ExitAction::Continue,
    ///     })
    /// });
    /// # }
    /// ```
    pub fn run_vcpu(
        &self,
        index: usize,
        fd: &mut VcpuFd,
        mut on_exit: impl FnMut(usize, VcpuExit<'_>) -> ExitAction,
    ) -> Result<(), StubError> {
        let mut hooks = self.vcpu(index, fd)?;
        while hooks.before_run() == Entry::Run {
            let exit = fd.run();
            let owner = hooks.after_run(exit.as_ref().map(|_| ()).map_err(|e| e.errno()));
            let action = match (owner, exit) {
                (ExitOwner::Debugger, _) => ExitAction::Continue,
                (ExitOwner::Vmm, Ok(exit)) => on_exit(index, exit),
                (ExitOwner::Vmm, Err(e)) if e.errno() == libc::EINTR => ExitAction::Continue,
                (ExitOwner::Vmm, Err(e)) => {
                    warn!("vcpu {index}: KVM_RUN failed: {e}; shutting down");
                    ExitAction::Shutdown
                }
            };
            if action == ExitAction::Shutdown {
                self.shut_down();
            }
        }
        Ok(())
    }

    /// Stop every vCPU loop ([`VcpuHooks::before_run`] says
    /// [`Entry::Quit`]; [`Self::run_vcpu`] returns).
    pub fn shut_down(&self) {
        self.inner.shut_down();
    }

    /// Accept gdb connections until [`Self::stop_serving`]: one session
    /// at a time; while one is attached, another client is told so and
    /// disconnected.
    pub fn serve(&self, listener: GdbListener) -> io::Result<()> {
        gdb::event_loop::serve(&self.inner, listener)
    }

    /// End the gdb session, if any (breakpoints and watchpoints removed,
    /// the guest runs on), and make [`Self::serve`] return.
    pub fn stop_serving(&self) {
        self.inner.stop_serving();
    }
}
