//! What the hooks do to the guest itself: the `hlt` a step makes, the
//! interrupt shadow and halted state a step must not inherit, trapped
//! accesses served and their instruction completed, `int3`s told apart
//! (ours stop, the guest's are delivered), interrupt handlers a step
//! runs through.

use gdbstub::common::Signal;
use kvm_bindings::{
    kvm_mp_state, kvm_regs, kvm_sregs, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE,
    KVM_VCPUEVENT_VALID_SHADOW,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, trace, warn};

use crate::target::kvm::command::StopKind;
use crate::target::kvm::irq_step::MAX_HANDLER_STEPS;
use crate::target::kvm::vcpu::Core;
use crate::target::kvm::watch::page_watchpoints;
use crate::target::machine::paging::Paging;
use crate::target::machine::x86_constants::{code_address, BP_VECTOR, HLT, INT3};
use crate::vmem::PhysAddr;

use super::Hooks;

/// `kvm_run.internal.suberror` for an emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

impl Hooks {
    /// The guest-physical address of the instruction at rip, through the
    /// vCPU's own tables.
    pub(super) fn code_gpa(&self, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<PhysAddr> {
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
    pub(super) fn step_hlt(&mut self, fd: &mut VcpuFd) -> bool {
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
    pub(super) fn end_interrupt_shadow(&self, fd: &VcpuFd) {
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
    pub(super) fn wake_for_step(&self, fd: &VcpuFd) {
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

    /// A trapped access, served from guest RAM; the watchpoint it hit, or
    /// the watched translation a table write changed.
    pub(super) fn serve_trapped(&self, gpa: u64, data: &mut [u8], write: bool) -> Option<StopKind> {
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

    /// After a step, with interrupt handlers skipped: whether the vCPU is
    /// (still) in a handler the step entered, so the step goes on silently.
    /// Back at the step's origin, the instruction itself is stepped next.
    pub(super) fn in_interrupt_handler(&mut self, fd: &VcpuFd) -> bool {
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
    pub(super) fn snapshot(&self, fd: &VcpuFd) -> Option<Core> {
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
    pub(super) fn complete_trapped_instruction(&self, fd: &mut VcpuFd) {
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

    pub(super) fn on_internal_error(&self, fd: &mut VcpuFd) -> Option<StopKind> {
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
    pub(super) fn on_int3(&self, fd: &VcpuFd) -> Option<StopKind> {
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
