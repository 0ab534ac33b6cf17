//! [`ArmDumpTarget`], the gdbstub `Target` of an arm64 memory dump: one
//! thread per CPU with its registers from the dump's notes (and the PAC
//! masks gdb strips return addresses with), memory through the kernel's
//! table (TTBR1) and — once `monitor vmem use ROOT` names one — a
//! process's (TTBR0), the monitor commands over both halves, the
//! exec-file (the kernel's symbols) over `vFile`. A dump never runs:
//! resuming is refused by the connection, writes change nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use gdbstub::common::{Pid, Tid};
use gdbstub::target::ext::base::multithread::MultiThreadBase;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::exec_file::{ExecFile, ExecFileOps};
use gdbstub::target::ext::host_io::HostIoOps;
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use log::debug;

use super::host_io::serve_exec_file;
use super::monitor_effects::{apply_shared, Picks};
use super::target::{copy_at, tid};
use crate::arch::aarch64::Aarch64;
use crate::target::dump::arm_kernel::ArmDump;
use crate::target::dump::cpu::Aarch64Cpu;
use crate::target::dump::host_file::OpenFiles;
use crate::target::error::StubError;
use crate::target::kvm::shared::Inner;
use crate::target::machine::aarch64_regs::{Aarch64Dump, Aarch64Regs};
use crate::target::machine::arm_paging::ArmPaging;
use crate::target::machine::memory::GuestTables;
use crate::target::machine::paging::pieces;
use crate::target::machine::regions::{self, Region};
use crate::target::monitor::{self, Effect, Snapshot, View};

/// The bits of a TTBR value that name its table (BADDR, 4 KiB aligned).
const TTBR_TABLE: u64 = 0x0000_ffff_ffff_f000;

/// One gdb session's (or one `Debugger::monitor` call's) view of an arm64
/// dump.
#[derive(Debug)]
pub(crate) struct ArmDumpTarget {
    inner: Arc<Inner>,
    arm: ArmDump,
    /// TTBR0's format (the lower half, as wide as the kernel's).
    lower: Aarch64,
    /// The CPU `monitor cpu N` chose.
    monitor_cpu: Option<usize>,
    /// What gdb's memory accesses go through (`monitor vmem use`).
    view: View,
    /// The files gdb opened with `vFile:open`.
    open_files: OpenFiles,
    /// Page-table snapshots taken with `monitor vmem snapshot`.
    snapshots: BTreeMap<String, Snapshot>,
    /// lldb's memory map of what gdb reads through, for the view it was
    /// made in.
    regions: RefCell<Option<(View, Vec<Region>)>>,
}

impl ArmDumpTarget {
    /// The target of `inner`'s arm64 dump (`None`: it serves none).
    pub(crate) fn new(inner: Arc<Inner>) -> Option<ArmDumpTarget> {
        let arm = inner.arm.clone()?;
        let paging = ArmPaging {
            kernel: arm.kernel.format,
            kernel_root: arm.kernel.root,
            user_root: None,
        };
        Some(ArmDumpTarget {
            lower: paging.lower(),
            inner,
            arm,
            monitor_cpu: None,
            view: View::Current,
            open_files: OpenFiles::default(),
            snapshots: BTreeMap::new(),
            regions: RefCell::new(None),
        })
    }

    fn cpu(&self, tid: Tid) -> TargetResult<&Aarch64Cpu, Self> {
        self.arm
            .cpus
            .get(tid.get() - 1)
            .ok_or(TargetError::NonFatal)
    }

    /// How gdb's addresses translate in the current view (`None`: they are
    /// physical).
    fn paging(&self) -> Option<ArmPaging> {
        let user_root = match self.view {
            View::Physical => return None,
            View::Current => None,
            View::Space(ttbr0) => Some(ttbr0 & TTBR_TABLE),
        };
        (!self.inner.qemu.phys_mode()).then_some(ArmPaging {
            kernel: self.arm.kernel.format,
            kernel_root: self.arm.kernel.root,
            user_root,
        })
    }

    /// A memory read gdb asked for (answered by the connection layer):
    /// how many bytes were read, or gdb's errno.
    pub(crate) fn read_for_gdb(
        &mut self,
        data: &mut Vec<u8>,
        (addr, len): (u64, usize),
    ) -> Result<usize, u8> {
        data.resize(len, 0);
        let memory = &self.inner.memory;
        let mut done = 0usize;
        let mut read_piece = |gpa: u64, offset: usize, n: usize| {
            let read = memory.read_prefix(gpa, &mut data[offset..offset + n]);
            done += read;
            read == n
        };
        match self.paging() {
            Some(paging) => {
                for (gpa, offset, n) in pieces(|va| paging.translate(memory, va), addr, len) {
                    if !read_piece(gpa, offset, n) {
                        break;
                    }
                }
            }
            None => {
                read_piece(addr, 0, len);
            }
        }
        if done == 0 && len > 0 {
            debug!("read at {addr:#x}: not mapped or not RAM");
            return Err(14);
        }
        Ok(done)
    }

    /// lldb's `qMemoryRegionInfo` for `addr`, from the kernel's half and
    /// the chosen process's (or physical RAM in the physical view).
    pub(crate) fn region_info(&self, addr: u64) -> String {
        let mut cached = self.regions.borrow_mut();
        if cached.as_ref().is_none_or(|(view, _)| *view != self.view) {
            let memory = &self.inner.memory;
            let map = match self.paging() {
                Some(paging) => {
                    // The lower half (a chosen process's), then the
                    // kernel's: in address order.
                    let lower = paging.user_root.map(|root| {
                        regions::mapped(&paging.lower(), &GuestTables::new(memory, root, None))
                    });
                    let root = paging.kernel_root;
                    let kernel =
                        regions::mapped(&paging.kernel, &GuestTables::new(memory, root, None));
                    lower.into_iter().flatten().chain(kernel).collect()
                }
                None => regions::physical(memory.ranges()),
            };
            *cached = Some((self.view, map));
        }
        cached
            .as_ref()
            .map(|(_, map)| regions::describe(map, addr))
            .unwrap_or_default()
    }

    /// The monitor's context: the kernel's root as the current space, the
    /// processes' roots (TTBR0, the lower half) as the others.
    fn monitor_context(&self) -> monitor::Context<'_> {
        let kernel = &self.arm.kernel;
        let mut spaces = vec![(kernel.root, format!("the kernel's, TTBR1 ({})", kernel.how))];
        for (root, how) in self.inner.monitor.spaces() {
            let root = root & TTBR_TABLE;
            if spaces.iter().all(|(known, _)| *known != root) {
                spaces.push((root, format!("TTBR0, {how}")));
            }
        }
        monitor::Context {
            memory: &self.inner.memory,
            pool: None,
            format: Some(&kernel.format),
            lower_half: Some(&self.lower),
            root: Some(kernel.root),
            root_mask: TTBR_TABLE,
            spaces,
            cpu: self.monitor_cpu.unwrap_or(0),
            cpu_count: self.arm.cpus.len(),
            registers: self,
            snapshots: &self.snapshots,
            host_files: self.inner.monitor.host_files(),
            last_stop: None,
            progress: self.inner.monitor.progress(),
            dump: self.inner.monitor.dump(),
        }
    }

    /// Run one monitor command line; what it prints.
    pub(crate) fn monitor_text(&mut self, line: &str) -> String {
        debug!("monitor: {line}");
        *self.regions.borrow_mut() = None;
        let (mut text, effect) = monitor::run(&self.monitor_context(), line);
        let picks = Picks {
            monitor_cpu: &mut self.monitor_cpu,
            view: &mut self.view,
            snapshots: &mut self.snapshots,
        };
        match apply_shared(effect, &self.inner, picks, &mut text) {
            Some(Effect::Watch { .. }) => {
                text.push_str("error: a memory dump does not run: nothing can change\n")
            }
            Some(Effect::ListWatches) => text.push_str("0 watched translation(s)\n"),
            Some(Effect::Unwatch(_)) => text.push_str("0 watch(es) removed\n"),
            // Tables in a dump do not change (its RAM is read-only), and
            // `vmem diff` has no last stop to compare with.
            _ => {}
        }
        text
    }
}

impl monitor::Registers for ArmDumpTarget {
    fn all_registers(&self) -> Option<crate::target::machine::regs::KvmState> {
        None
    }

    fn aarch64(&self) -> Option<Aarch64Cpu> {
        self.arm.cpus.get(self.monitor_cpu.unwrap_or(0)).copied()
    }

    fn debug_registers(&self) -> Option<[u64; 6]> {
        None
    }

    fn local_apic(&self, _cpu: usize) -> Result<monitor::Lapic, String> {
        Err("an arm64 machine has no local APIC (its interrupt controller is a GIC)".into())
    }

    fn run_state(&self) -> monitor::RunState {
        monitor::RunState::default()
    }

    fn vcpu_threads(&self) -> Vec<Option<i32>> {
        vec![None; self.arm.cpus.len()]
    }
}

impl Target for ArmDumpTarget {
    type Arch = Aarch64Dump;
    type Error = StubError;

    fn base_ops(&mut self) -> BaseOps<'_, Aarch64Dump, StubError> {
        BaseOps::MultiThread(self)
    }

    /// gdb may try to plant `int3`-like breakpoints by writing memory: a
    /// dump refuses the writes, so nothing is planted.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }

    fn support_exec_file(&mut self) -> Option<ExecFileOps<'_, Self>> {
        self.inner.exec_file.is_some().then_some(self)
    }

    fn support_host_io(&mut self) -> Option<HostIoOps<'_, Self>> {
        self.inner.exec_file.is_some().then_some(self)
    }
}

impl MultiThreadBase for ArmDumpTarget {
    fn read_registers(&mut self, regs: &mut Aarch64Regs, tid: Tid) -> TargetResult<(), Self> {
        let cpu = self.cpu(tid)?;
        let kernel = &self.arm.kernel;
        // Linux's: the kernel's KERNELPACMASK, GENMASK(63, VA_BITS); a
        // process's GENMASK(54, VA_BITS) (`ptrauth_user_pac_mask`).
        let (user, high) = match kernel.pac_mask {
            Some(mask) => (mask & !(0x1ff << 55), mask),
            None => (0, 0),
        };
        *regs = Aarch64Regs {
            x: cpu.x,
            sp: cpu.sp,
            pc: cpu.pc,
            cpsr: cpu.pstate as u32,
            fp: cpu.fp.map(|fp| (fp.v, fp.fpsr, fp.fpcr)),
            pauth: [user, user, high, high],
        };
        Ok(())
    }

    fn write_registers(&mut self, _regs: &Aarch64Regs, _tid: Tid) -> TargetResult<(), Self> {
        debug!("register write refused: a memory dump does not change");
        Err(TargetError::NonFatal)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], _tid: Tid) -> TargetResult<usize, Self> {
        let mut buf = Vec::new();
        let n = self
            .read_for_gdb(&mut buf, (start, data.len()))
            .map_err(TargetError::Errno)?;
        data[..n].copy_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, _data: &[u8], _tid: Tid) -> TargetResult<(), Self> {
        debug!("write at {start:#x} refused: a memory dump does not change");
        Err(TargetError::Errno(30))
    }

    fn list_active_threads(&mut self, register: &mut dyn FnMut(Tid)) -> Result<(), StubError> {
        for index in 0..self.arm.cpus.len() {
            register(tid(index));
        }
        Ok(())
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl ThreadExtraInfo for ArmDumpTarget {
    /// `CPU#0 [EL1h]`: QEMU's name of the CPU and the exception level and
    /// stack it was at.
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, StubError> {
        let index = tid.get() - 1;
        let text = match self.arm.cpus.get(index) {
            Some(cpu) => {
                let stack = if cpu.pstate & 1 != 0 { 'h' } else { 't' };
                format!("CPU#{index} [EL{}{stack}]", (cpu.pstate >> 2) & 3)
            }
            None => format!("CPU#{index}"),
        };
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl ExecFile for ArmDumpTarget {
    fn get_exec_file(
        &self,
        _pid: Option<Pid>,
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let path = self.inner.exec_file.as_ref().map_or("", |f| &f.name);
        Ok(copy_at(path.as_bytes(), offset, length, buf))
    }
}

serve_exec_file!(ArmDumpTarget);
