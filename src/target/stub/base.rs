//! Registers and memory: gdbstub's base operations, and the memory reads
//! our packet layer answers itself.

use std::num::NonZeroUsize;

use gdbstub::common::{Pid, Tid};
use gdbstub::target::ext::base::multithread::{MultiThreadBase, MultiThreadResumeOps};
use gdbstub::target::ext::base::single_register_access::{
    SingleRegisterAccess, SingleRegisterAccessOps,
};
use gdbstub::target::ext::exec_file::ExecFile;
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{TargetError, TargetResult};
use kvm_bindings::KVM_MP_STATE_HALTED;
use log::debug;

use super::target::{tid, KvmTarget};
use crate::target::error::StubError;
use crate::target::kvm::msrs::msr_list;
use crate::target::machine::memory::GuestTables;
use crate::target::machine::paging::Paging;
use crate::target::machine::regions;
use crate::target::machine::regs::{X86_64RegId, X86_64Regs};
use crate::target::machine::x86_constants::{HLT, MSR_KERNEL_GS_BASE};
use crate::target::monitor::View;

impl KvmTarget {
    /// How gdb's addresses are translated for thread `tid`: its own space,
    /// the space chosen with `monitor vmem use`, or physical.
    fn paging_for_gdb(&self, tid: Tid) -> Result<Paging, TargetError<StubError>> {
        let index = self.index(tid)?;
        if self.inner.qemu.phys_mode() || self.view == View::Physical {
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

    /// Write `data` at `addr` as gdb's `M`/`X` would, for gdb thread
    /// `thread`: the errno of a refused write.
    pub(crate) fn write_for_gdb(
        &mut self,
        addr: u64,
        data: &[u8],
        thread: usize,
    ) -> Result<(), u8> {
        let thread = NonZeroUsize::new(thread).unwrap_or(NonZeroUsize::MIN);
        match self.write_addrs(addr, data, thread) {
            Ok(()) => Ok(()),
            Err(TargetError::Errno(errno)) => Err(errno),
            Err(_) => Err(1),
        }
    }

    /// lldb's `qMemoryRegionInfo` for `addr` in what gdb's memory accesses
    /// go through (the current vCPU's space, another, or physical), from a
    /// map made once per stop.
    pub(crate) fn region_info(&self, addr: u64) -> String {
        let paging = self
            .paging_for_gdb(tid(self.current))
            .unwrap_or(Paging::Off);
        let key = match paging {
            Paging::Paged { root, .. } => Some(root),
            Paging::Off => None,
        };
        let mut cached = self.regions.borrow_mut();
        if cached.as_ref().is_none_or(|(made_for, _)| *made_for != key) {
            let map = match paging {
                Paging::Paged { format, root } => {
                    let tables = GuestTables::new(&self.inner.memory, root, None);
                    regions::mapped(format.as_dyn(), &tables)
                }
                Paging::Off => regions::physical(self.inner.memory.ranges()),
            };
            *cached = Some((key, map));
        }
        cached
            .as_ref()
            .map(|(_, map)| regions::describe(map, addr))
            .unwrap_or_default()
    }

    /// Read `len` bytes at `addr` into `data` as gdb would see them, for
    /// gdb thread `thread`: how many bytes were read, or the errno of
    /// nothing readable.
    pub(crate) fn read_for_gdb(
        &mut self,
        data: &mut Vec<u8>,
        (addr, len): (u64, usize),
        thread: usize,
    ) -> Result<usize, u8> {
        data.resize(len, 0);
        let thread = NonZeroUsize::new(thread).unwrap_or(NonZeroUsize::MIN);
        match self.read_addrs(addr, data, thread) {
            Ok(n) => Ok(n),
            Err(TargetError::Errno(errno)) => Err(errno),
            Err(_) => Err(1),
        }
    }
}

impl ExecFile for KvmTarget {
    fn get_exec_file(
        &self,
        _pid: Option<Pid>,
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let path = self.inner.exec_file.as_ref().map_or("", |f| &f.name);
        Ok(super::target::copy_at(path.as_bytes(), offset, length, buf))
    }
}

impl MultiThreadBase for KvmTarget {
    fn read_registers(&mut self, regs: &mut X86_64Regs, tid: Tid) -> TargetResult<(), Self> {
        *regs = self.state(self.index(tid)?)?.to_gdb();
        regs.layout = self.layout;
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64Regs, tid: Tid) -> TargetResult<(), Self> {
        let index = self.index(tid)?;
        if self.inner.frozen.is_some() {
            debug!("register write refused: a memory dump does not change");
            return Err(TargetError::NonFatal);
        }
        let mut state = self.state(index)?;
        self.forget(index);
        // A 32-bit layout writes the low halves and leaves the rest.
        let changed = state.apply(&state.to_gdb().merged(regs));
        debug!("vcpu {index}: writing registers {changed:?}");
        if changed.sregs {
            // KVM refuses some special-register values: gdb gets an error.
            let sregs = state.sregs;
            self.on_vcpu(index, "KVM_SET_SREGS", move |fd| fd.set_sregs(&sregs))
                .map_err(|_| TargetError::NonFatal)?;
        }
        if changed.regs || changed.sregs {
            self.inner.vcpus[index].mark_registers_written();
        }
        self.on_vcpu(index, "KVM_SET_REGS/FPU/MSRS", move |fd| {
            if changed.regs {
                fd.set_regs(&state.regs)?;
            }
            if changed.fpu {
                fd.set_fpu(&state.fpu)?;
            }
            if changed.k_gs_base {
                fd.set_msrs(&msr_list(MSR_KERNEL_GS_BASE, state.k_gs_base)?)?;
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
        for (gpa, offset, n) in paging.pieces(&self.inner.memory, start, data.len()) {
            let chunk = &mut data[offset..offset + n];
            let read = self.inner.memory.read_prefix(gpa, chunk);
            self.inner
                .watches
                .breakpoints()
                .mask(gpa, &mut chunk[..read]);
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
        *self.regions.borrow_mut() = None;
        let paging = self.paging_for_gdb(tid)?;
        // Translate every page first: nothing is written unless all is.
        let pieces: Vec<_> = paging
            .pieces(&self.inner.memory, start, data.len())
            .collect();
        if pieces.iter().map(|&(_, _, n)| n).sum::<usize>() < data.len() {
            return Err(TargetError::Errno(14));
        }
        for (gpa, offset, n) in pieces {
            let chunk = &data[offset..offset + n];
            self.inner
                .memory
                .write(gpa, chunk)
                .map_err(|_| TargetError::Errno(14))?;
            self.inner
                .watches
                .breakpoints_mut()
                .after_write(&self.inner.memory, gpa, chunk);
        }
        Ok(())
    }

    fn list_active_threads(&mut self, register: &mut dyn FnMut(Tid)) -> Result<(), StubError> {
        for i in 0..self.inner.vcpus.len() {
            register(tid(i));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl KvmTarget {
    /// Whether vCPU `index` stopped in `hlt` (rip just past one): KVM's
    /// halted state, or the instruction before rip.
    pub(super) fn halted(&self, index: usize) -> bool {
        if self.inner.frozen.is_none() {
            let state = self.on_vcpu(index, "KVM_GET_MP_STATE", |fd| fd.get_mp_state());
            if state.is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED) {
                return true;
            }
        }
        let mut byte = [0u8];
        self.linear_pc(index)
            .and_then(|pc| pc.checked_sub(1))
            .and_then(|at| self.gpa_of(index, at))
            .is_some_and(|gpa| self.inner.memory.read(gpa, &mut byte).is_ok() && byte[0] == HLT)
    }
}

impl ThreadExtraInfo for KvmTarget {
    /// What `info threads` shows, as QEMU says it: `CPU#0 [running]` or
    /// `CPU#0 [halted]`.
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, StubError> {
        let index = tid.get() - 1;
        let state = if self.halted(index) {
            "halted"
        } else {
            "running"
        };
        let text = format!("CPU#{index} [{state}]");
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl SingleRegisterAccess<Tid> for KvmTarget {
    fn read_register(
        &mut self,
        tid: Tid,
        reg_id: X86_64RegId,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let mut regs = X86_64Regs::default();
        self.read_registers(&mut regs, tid)?;
        let bytes = regs.to_bytes();
        let range = self
            .layout
            .byte_range(reg_id)
            .ok_or(TargetError::NonFatal)?;
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
        let range = self
            .layout
            .byte_range(reg_id)
            .ok_or(TargetError::NonFatal)?;
        if val.len() != range.len() {
            return Err(TargetError::NonFatal);
        }
        bytes[range].copy_from_slice(val);
        let regs = X86_64Regs::from_bytes(&bytes).ok_or(TargetError::NonFatal)?;
        self.write_registers(&regs, tid)
    }
}
