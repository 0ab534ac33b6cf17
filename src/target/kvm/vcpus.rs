//! The VM's vCPUs as one component: their control blocks, the MMU they
//! share, and how they run (the host's register sync, how a step keeps
//! interrupts out, the tick that ends an idle `hlt`).

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::VcpuFd;
use log::{debug, warn};

use crate::target::kvm::command::Command;
use crate::target::kvm::irq_step::StepIrqs;
use crate::target::kvm::vcpu::{Vcpu, VmmKick};
use crate::target::machine::paging::CpuLimits;

/// The vCPUs (indexable as a slice of [`Vcpu`]) and how they run.
#[derive(Debug)]
pub(crate) struct Vcpus {
    list: Vec<Vcpu>,
    /// The MMU limits of the vCPUs' CPUID (read by the first vCPU to run).
    limits: OnceLock<CpuLimits>,
    halt_tick: Duration,
    /// The host copies registers into `kvm_run` on exit (KVM_CAP_SYNC_REGS).
    sync_regs: bool,
    /// How steps keep interrupts out.
    step_irqs: StepIrqs,
}

impl Deref for Vcpus {
    type Target = [Vcpu];

    fn deref(&self) -> &[Vcpu] {
        &self.list
    }
}

impl Vcpus {
    /// `count` vCPUs, parked in nothing yet (their loops claim them).
    pub(crate) fn new(count: usize, sync_regs: bool, step_irqs: StepIrqs) -> Vcpus {
        Vcpus {
            list: (0..count).map(Vcpu::new).collect(),
            limits: OnceLock::new(),
            halt_tick: Duration::from_millis(2),
            sync_regs,
            step_irqs,
        }
    }

    /// The VMM's own kick replaces the debugger's.
    pub(crate) fn set_vmm_kick(&mut self, kick: VmmKick) {
        let kick = Arc::new(kick);
        for v in &mut self.list {
            v.set_vmm_kick(Arc::clone(&kick));
        }
    }

    /// How long a vCPU halted with interrupts enabled waits (no irqchip).
    pub(crate) fn halt_tick(&self) -> Duration {
        self.halt_tick
    }

    /// Set [`Self::halt_tick`].
    pub(crate) fn set_halt_tick(&mut self, tick: Duration) {
        self.halt_tick = tick;
    }

    /// Whether exits can bring the registers in `kvm_run`.
    pub(crate) fn sync_regs(&self) -> bool {
        self.sync_regs
    }

    /// How steps keep interrupts out.
    pub(crate) fn step_irqs(&self) -> StepIrqs {
        self.step_irqs
    }

    /// Set [`Self::step_irqs`].
    pub(crate) fn set_step_irqs(&mut self, how: StepIrqs) {
        self.step_irqs = how;
    }

    /// The vCPUs' MMU limits (from the first vCPU to run; until then the
    /// documented assumption).
    pub(crate) fn cpu_limits(&self) -> CpuLimits {
        self.limits.get().copied().unwrap_or_default()
    }

    /// Learn the MMU limits from a vCPU's CPUID, once.
    pub(crate) fn learn_cpuid(&self, fd: &VcpuFd) {
        self.limits.get_or_init(|| {
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

    /// Stop every vCPU and wait until each is parked.
    pub(crate) fn pause_all(&self) {
        for v in &self.list {
            v.request(Command::Pause);
        }
        for v in &self.list {
            v.wait_parked();
        }
    }

    /// Make every vCPU leave `KVM_RUN` if it is inside.
    pub(crate) fn kick_all(&self) {
        self.list.iter().for_each(Vcpu::kick_out);
    }

    /// Every vCPU loop ends.
    pub(crate) fn quit_all(&self) {
        for v in &self.list {
            v.request(Command::Quit);
        }
    }
}
