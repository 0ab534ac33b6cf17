//! What the debugger tells a vCPU to do ([`Command`]) and why a vCPU
//! stopped by itself ([`StopKind`]).

use gdbstub::common::Signal;

use crate::target::kvm::watch::page_watchpoints::Watch;
use crate::target::kvm::watch::table_watches::Remap;

/// Why a vCPU stopped by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopKind {
    /// A single step finished.
    Step,
    /// It reached one of our `int3`s (rip is on it).
    SwBreak,
    /// A debug register matched (rip is on the instruction).
    HwBreak,
    /// An access hit a watchpoint (the instruction completed).
    Watch(Watch),
    /// A table write changed a translation `monitor vmem watch` watches
    /// (the instruction completed).
    Remapped(Remap),
    /// The guest cannot go on (triple fault, undecodable instruction…).
    Crashed(Signal),
}

/// What the debugger wants a vCPU to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Pause,
    Run,
    Step,
    /// One silent step with breakpoints lifted, then pause.
    StepOver,
    Quit,
}

impl Command {
    /// Whether the next `KVM_RUN` is a single step.
    pub(crate) fn steps(self) -> bool {
        matches!(self, Command::Step | Command::StepOver)
    }
}
