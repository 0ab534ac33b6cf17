//! Whose a `KVM_RUN`'s end is, and what the debugger does with it: a pure
//! function of the exit and of what the vCPU was doing
//! ([`decide`]), so the hooks' choices are tested without KVM.

use gdbstub::common::Signal;

use crate::target::kvm::command::StopKind;
use crate::target::machine::x86_constants::{BP_VECTOR, DB_VECTOR};

/// A `KVM_RUN`'s end, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitSeen {
    /// `KVM_RUN` failed with this errno (`EINTR`: a kick).
    Failed(i32),
    /// The guest executed `hlt` (no in-kernel irqchip).
    Hlt,
    /// A debug exception: its vector, and the breakpoint or watchpoint
    /// the debug registers say hit (for a #DB).
    Debug { vector: u32, hit: Option<StopKind> },
    /// KVM could not go on (on kvm_pvm: how an `int3` arrives).
    InternalError,
    /// An MMIO access: on a page the debugger traps, or the VMM's.
    Mmio { trapped: bool },
    /// A triple fault, or a state KVM refused to enter.
    Shutdown,
    /// Anything else (port I/O, the VMM's MMIO…).
    Other,
}

/// What the vCPU was doing when the run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunFacts {
    /// The run was a single step.
    pub(crate) stepping: bool,
    /// The run only returned: its step's `hlt` was made by the hooks.
    pub(crate) stepped_hlt: bool,
    /// The debugger wants the vCPU stopped (it was kicked for that).
    pub(crate) stop_wanted: bool,
    /// The gdb session is lent to this vCPU's thread.
    pub(crate) lent: bool,
    /// The memslot gate closed during the run (it was kicked for that).
    pub(crate) gate_closed: bool,
    /// A gdb session is attached.
    pub(crate) attached: bool,
}

/// The debugger's part of an exit, finished in the next `before_run`
/// (which has the fd: the exit itself borrows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// `hlt` outside a step: idle until a tick, the debugger or shutdown.
    Halted,
    /// A single step finished.
    StepDone,
    /// The vCPU stopped for the debugger.
    Stopped(StopKind),
    /// rip is on an `int3` (a #BP exit).
    Int3,
    /// KVM could not go on; on kvm_pvm this is how an `int3` arrives.
    InternalError,
    /// A trapped access hit a watchpoint: complete the instruction, stop.
    FinishTrap(StopKind),
}

/// What to do with an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The debugger's, nothing more to do now (`before_run` parks the
    /// vCPU if it is wanted stopped, else it runs on).
    RunOn,
    /// The lent step or run outlasted its deadline: the session goes home
    /// and the run goes on without it.
    SendHome,
    /// The debugger's, finished in the next `before_run`.
    Finish(Pending),
    /// A trapped page's access: serve it from guest RAM, then stop if it
    /// hit a watch.
    ServeTrap,
    /// The VMM's: it handles the exit as without a debugger.
    Vmm,
}

/// Whose `exit` is and what the debugger does with it.
pub(crate) fn decide(exit: ExitSeen, facts: RunFacts) -> Decision {
    let kicked = exit == ExitSeen::Failed(libc::EINTR);
    match exit {
        _ if kicked && facts.stepped_hlt => Decision::Finish(Pending::StepDone),
        _ if kicked && facts.stop_wanted => Decision::RunOn,
        _ if kicked && facts.lent => Decision::SendHome,
        _ if kicked && facts.gate_closed => Decision::RunOn,
        ExitSeen::Failed(errno) if errno != libc::EINTR && facts.attached => crashed(),
        ExitSeen::Hlt if facts.stepping => Decision::Finish(Pending::StepDone),
        ExitSeen::Hlt => Decision::Finish(Pending::Halted),
        ExitSeen::Debug {
            vector: DB_VECTOR,
            hit,
        } => match hit {
            Some(kind) => Decision::Finish(Pending::Stopped(kind)),
            None if facts.stepping => Decision::Finish(Pending::StepDone),
            None => Decision::RunOn,
        },
        ExitSeen::Debug {
            vector: BP_VECTOR, ..
        } => Decision::Finish(Pending::Int3),
        ExitSeen::Debug { .. } => Decision::RunOn,
        ExitSeen::InternalError => Decision::Finish(Pending::InternalError),
        ExitSeen::Mmio { trapped: true } => Decision::ServeTrap,
        ExitSeen::Shutdown if facts.attached => crashed(),
        _ => Decision::Vmm,
    }
}

/// The guest cannot go on: gdb sees it stopped with SIGSEGV.
fn crashed() -> Decision {
    Decision::Finish(Pending::Stopped(StopKind::Crashed(Signal::SIGSEGV)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EINTR: ExitSeen = ExitSeen::Failed(libc::EINTR);

    fn facts(set: impl FnOnce(&mut RunFacts)) -> RunFacts {
        let mut facts = RunFacts::default();
        set(&mut facts);
        facts
    }

    #[test]
    fn a_kick_is_the_debuggers_only_when_it_kicked() {
        // Its own kick, to stop the vCPU or to change memslots: it runs on
        // (or parks in before_run).
        assert_eq!(
            decide(EINTR, facts(|f| f.stop_wanted = true)),
            Decision::RunOn
        );
        assert_eq!(
            decide(EINTR, facts(|f| f.gate_closed = true)),
            Decision::RunOn
        );
        // The deadline of a run made with the session lent.
        assert_eq!(decide(EINTR, facts(|f| f.lent = true)), Decision::SendHome);
        // A stop wanted wins over the lent deadline.
        let both = facts(|f| (f.lent, f.stop_wanted) = (true, true));
        assert_eq!(decide(EINTR, both), Decision::RunOn);
        // Nobody of ours kicked: the VMM's own kick.
        assert_eq!(decide(EINTR, facts(|f| f.attached = true)), Decision::Vmm);
        // A step whose hlt the hooks made ends with the run that only
        // returned.
        let hlt = facts(|f| (f.stepped_hlt, f.stop_wanted) = (true, true));
        assert_eq!(decide(EINTR, hlt), Decision::Finish(Pending::StepDone));
    }

    #[test]
    fn a_failed_run_stops_the_vm_only_for_gdb() {
        let failed = ExitSeen::Failed(libc::EFAULT);
        assert_eq!(decide(failed, facts(|f| f.attached = true)), crashed());
        assert_eq!(decide(failed, RunFacts::default()), Decision::Vmm);
        assert_eq!(
            decide(ExitSeen::Shutdown, facts(|f| f.attached = true)),
            crashed()
        );
        assert_eq!(
            decide(ExitSeen::Shutdown, RunFacts::default()),
            Decision::Vmm
        );
    }

    #[test]
    fn hlt_ends_a_step_or_idles() {
        let stepping = facts(|f| f.stepping = true);
        assert_eq!(
            decide(ExitSeen::Hlt, stepping),
            Decision::Finish(Pending::StepDone)
        );
        let idle = decide(ExitSeen::Hlt, RunFacts::default());
        assert_eq!(idle, Decision::Finish(Pending::Halted));
    }

    #[test]
    fn debug_exits() {
        let db = |hit| ExitSeen::Debug {
            vector: DB_VECTOR,
            hit,
        };
        let stepping = facts(|f| f.stepping = true);
        let hw = Some(StopKind::HwBreak);
        // A debug register that hit stops the vCPU, stepping or not.
        assert_eq!(
            decide(db(hw), RunFacts::default()),
            Decision::Finish(Pending::Stopped(StopKind::HwBreak))
        );
        assert_eq!(
            decide(db(hw), stepping),
            Decision::Finish(Pending::Stopped(StopKind::HwBreak))
        );
        // A #DB of no register ends a step, and is nothing otherwise.
        assert_eq!(
            decide(db(None), stepping),
            Decision::Finish(Pending::StepDone)
        );
        assert_eq!(decide(db(None), RunFacts::default()), Decision::RunOn);
        let bp = ExitSeen::Debug {
            vector: BP_VECTOR,
            hit: None,
        };
        assert_eq!(
            decide(bp, RunFacts::default()),
            Decision::Finish(Pending::Int3)
        );
        let other = ExitSeen::Debug {
            vector: 6,
            hit: None,
        };
        assert_eq!(decide(other, stepping), Decision::RunOn);
    }

    #[test]
    fn trapped_pages_are_the_debuggers_the_rest_the_vmms() {
        let trapped = ExitSeen::Mmio { trapped: true };
        assert_eq!(decide(trapped, RunFacts::default()), Decision::ServeTrap);
        let vmm = ExitSeen::Mmio { trapped: false };
        assert_eq!(decide(vmm, facts(|f| f.attached = true)), Decision::Vmm);
        assert_eq!(
            decide(ExitSeen::Other, facts(|f| f.stepping = true)),
            Decision::Vmm
        );
        let internal = decide(ExitSeen::InternalError, RunFacts::default());
        assert_eq!(internal, Decision::Finish(Pending::InternalError));
    }
}
