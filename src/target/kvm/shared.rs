//! `Inner`: the state vCPU threads and the gdb thread share, made of
//! components that each keep their fields to themselves — the vCPUs, what
//! is watched, the page traps, the link to the gdb side, the monitor's
//! state — plus guest RAM and what never changes after building. Its
//! methods are the few decisions that need more than one component.

use std::sync::Arc;

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};
use log::warn;

use crate::target::dump::arm_kernel::ArmDump;
use crate::target::dump::cpu::DumpCpu;
use crate::target::dump::host_file::ExecFile;
use crate::target::error::StubError;
use crate::target::kvm::command::Command;
use crate::target::kvm::gdb_link::GdbLink;
use crate::target::kvm::irq_step::StepIrqs;
use crate::target::kvm::lending::Lent;
use crate::target::kvm::qemu_flags::QemuFlags;
use crate::target::kvm::vcpus::Vcpus;
use crate::target::kvm::watch::table_watches::Remap;
use crate::target::kvm::watch::trapping::Trapping;
use crate::target::kvm::watch::watches::Watches;
use crate::target::machine::memory::GuestRam;
use crate::target::monitor::state::MonitorState;

/// State shared by the vCPU threads and the gdb thread.
pub(crate) struct Inner {
    /// The debugger's own handle on the VM (`None`: a memory dump).
    pub(crate) vm: Option<kvm_ioctls::VmFd>,
    pub(crate) memory: GuestRam,
    /// A memory dump's vCPUs, which never run (`None`: live vCPUs).
    pub(crate) frozen: Option<Vec<DumpCpu>>,
    /// An arm64 dump's CPUs and kernel (served by their own target).
    pub(crate) arm: Option<ArmDump>,
    pub(crate) vcpus: Vcpus,
    pub(crate) watches: Watches,
    pub(crate) trapping: Trapping,
    pub(crate) link: GdbLink,
    /// What QEMU's packets set (`Qqemu.sstep`, `Qqemu.PhyMemMode`).
    pub(crate) qemu: Arc<QemuFlags>,
    pub(crate) monitor: MonitorState,
    /// The file gdb is told to load (`qXfer:exec-file`), served over
    /// `vFile`.
    pub(crate) exec_file: Option<ExecFile>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("trapping", &self.trapping)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The state of a VM with `vcpus` over `memory`.
    pub(crate) fn new(vm: Option<kvm_ioctls::VmFd>, memory: GuestRam, vcpus: Vcpus) -> Inner {
        Inner {
            vm,
            memory,
            frozen: None,
            arm: None,
            vcpus,
            watches: Watches::default(),
            trapping: Trapping::default(),
            link: GdbLink::default(),
            qemu: Arc::default(),
            monitor: MonitorState::new(),
            exec_file: None,
        }
    }

    /// Remove every breakpoint and watch (detach, kill, disconnect); the
    /// traps go before any vCPU runs next.
    pub(crate) fn clear_watches(&self) {
        self.watches.clear(&self.memory);
        self.trapping.untrap_later();
    }

    /// Ask the VMM to trap the pages of the current watchpoints and
    /// watched translations (the table pages on their paths, for writes),
    /// unless it traps exactly those already.
    pub(crate) fn apply_traps(&self) -> Result<(), StubError> {
        let pages = self.watches.trapped_pages();
        self.trapping.apply(pages, || self.vcpus.kick_all())
    }

    /// Before a vCPU runs: make the traps of watches removed since.
    pub(crate) fn sync_traps(&self) {
        if self.trapping.stale() {
            if let Err(e) = self.apply_traps() {
                warn!("{e}");
            }
        }
    }

    /// The guest wrote `gpa` on a trapped page (already in RAM): a watched
    /// translation it changed. The traps follow tables that moved.
    pub(crate) fn table_written(&self, gpa: u64) -> Option<Remap> {
        let (remap, moved) = self.watches.table_written(&self.memory, gpa);
        if moved {
            if let Err(e) = self.apply_traps() {
                warn!("vmem watch: cannot trap the moved tables: {e}");
            }
        }
        remap
    }

    /// The guest-debug settings for the next `KVM_RUN` under `command`.
    pub(crate) fn guest_debug(&self, command: Command) -> kvm_guest_debug {
        let mut debug = kvm_guest_debug::default();
        let stepping = command.steps();
        if !self.link.attached() && !stepping {
            return debug;
        }
        debug.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        if stepping {
            debug.control |= KVM_GUESTDBG_SINGLESTEP;
            // QEMU's default: a step does not enter an interrupt handler.
            if self.vcpus.step_irqs() == StepIrqs::Block && self.steps_without_irqs(command) {
                debug.control |= KVM_GUESTDBG_BLOCKIRQ;
            }
        }
        let over = command == Command::StepOver;
        if let Some((addrs, dr7)) = self.watches.debug_regs().encode(over) {
            debug.control |= KVM_GUESTDBG_USE_HW_BP;
            debug.arch.debugreg[..4].copy_from_slice(&addrs);
            debug.arch.debugreg[7] = dr7;
        }
        debug
    }

    /// Whether a step under `command` keeps interrupts out (NOIRQ; a step
    /// over a breakpoint always does).
    fn steps_without_irqs(&self, command: Command) -> bool {
        command == Command::StepOver || self.qemu.step_blocks_irqs()
    }

    /// Whether a step under `command` runs interrupt handlers it enters
    /// without stopping.
    pub(crate) fn skips_handlers(&self, command: Command) -> bool {
        self.vcpus.step_irqs() == StepIrqs::SkipHandlers && self.steps_without_irqs(command)
    }

    /// Lend `session` to vCPU `index` to run `command` (a step or a run);
    /// if the vCPU cannot take it (not parked, or its loop has ended), the
    /// command is given the ordinary way and the session is given back.
    pub(crate) fn lend(&self, index: usize, command: Command, session: Lent) -> Option<Lent> {
        let home = self.link.home();
        home.set_away(true);
        let kept = self.vcpus[index].lend(command, session).err()?;
        home.set_away(false);
        self.vcpus[index].request(command);
        Some(kept)
    }

    /// End the session and stop accepting gdb connections.
    pub(crate) fn stop_serving(&self) {
        self.link.stop_serving();
    }

    /// Every vCPU loop ends.
    pub(crate) fn shut_down(&self) {
        self.vcpus.quit_all();
        // A vCPU thread answering gdb reads gdb's socket alone: end it.
        self.link.home().end_lent_reads();
    }
}
