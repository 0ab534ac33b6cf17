//! `monitor` commands: see and change the guest's page tables (`vmem …`)
//! and QEMU's commands (`info mem`, `info tlb`, `gva2gpa`, `xp`,
//! `info registers`, `info cpus`, `info lapic`).
//!
//! A command never fails the gdb session: every error is printed as text
//! with the command's usage, and changes nothing.

mod args;
mod audit;
mod diff;
mod expr;
mod find;
mod json;
mod lapic;
mod parallel;
mod qemu;
mod scan;
pub(crate) mod state;
mod vmem;

use std::fmt;

use crate::arch::PageTableFormat;
use crate::target::machine::memory::{GuestRam, TablePool};
use crate::target::machine::regs::KvmState;
use crate::target::progress::ProgressFn;

/// What gdb's memory accesses go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// The stopped vCPU's current CR3.
    Current,
    /// Another address space (its root table).
    Space(u64),
    /// Guest-physical addresses.
    Physical,
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            View::Current => f.write_str("the current vCPU's address space"),
            View::Space(root) => write!(f, "address space {root:#x}"),
            View::Physical => f.write_str("physical addresses"),
        }
    }
}

pub(crate) use diff::{take as take_snapshot, Snapshot};
pub(crate) use lapic::Lapic;

/// Why a command did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CmdError {
    /// The command line was wrong (missing or bad argument): its usage is
    /// shown.
    Usage(String),
    /// The command could not do it (memory not mapped, paging off …): one
    /// line.
    Failed(String),
}

/// The vCPU index `word` names, if this VM has it.
fn cpu_index(ctx: &Context<'_>, word: &str) -> Result<usize, CmdError> {
    let index: usize = word
        .parse()
        .map_err(|_| usage(format!("bad CPU '{word}' (a vCPU index)")))?;
    if index >= ctx.cpu_count {
        return Err(format!("no CPU {index}: this VM has {}", ctx.cpu_count).into());
    }
    Ok(index)
}

/// A usage error.
pub(crate) fn usage(why: impl Into<String>) -> CmdError {
    CmdError::Usage(why.into())
}

impl From<String> for CmdError {
    fn from(why: String) -> Self {
        CmdError::Failed(why)
    }
}

impl From<&str> for CmdError {
    fn from(why: &str) -> Self {
        CmdError::Failed(why.to_string())
    }
}

/// What the target must do after a command.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    None,
    /// The vCPU the commands use from now until the next stop.
    SelectCpu(usize),
    /// Page tables changed: make every vCPU drop cached translations.
    TablesChanged,
    /// Switch gdb's memory view.
    Use(View),
    /// Remember other address spaces.
    AddSpaces(Vec<u64>),
    /// Keep a snapshot of the tables under a name.
    Snapshot(String, Snapshot),
    /// Stop when the translation of `va` in the space at `root` changes.
    Watch {
        va: u64,
        root: u64,
    },
    /// Stop watching a translation (`None`: all of them).
    Unwatch(Option<u64>),
    /// List the watched translations.
    ListWatches,
    /// `vmem diff` without a name ran: keep the tables at every continue.
    DiffUsed,
    /// Open an existing host file read-only under a chardev id.
    ChardevAdd {
        id: String,
        path: String,
    },
    /// Close the chardev `id`.
    ChardevRemove(String),
}

/// What a command may look at.
pub(crate) struct Context<'a> {
    pub memory: &'a GuestRam,
    pub pool: Option<&'a TablePool>,
    /// Paging format of the current vCPU (`None`: paging off).
    pub format: Option<&'a (dyn PageTableFormat + Sync)>,
    /// Root of the current space (`None`: paging off).
    pub root: Option<u64>,
    /// The bits of a CR3 value that name the root table in this mode.
    pub root_mask: u64,
    /// Known spaces with how they are known, in walk order.
    pub spaces: Vec<(u64, String)>,
    /// The vCPU the commands use (`cpu N`'s, else the one that stopped
    /// last).
    pub cpu: usize,
    /// How many vCPUs the VM has.
    pub cpu_count: usize,
    /// The current vCPU's registers, read only by the commands that show
    /// them (a `help` costs no ioctl).
    pub registers: &'a dyn Registers,
    /// Snapshots taken with `vmem snapshot`, by name.
    pub snapshots: &'a std::collections::BTreeMap<String, Snapshot>,
    /// Whether commands may open host files the client names (`vmem diff
    /// --dump`; `chardev-add` opens where it takes effect, by the same
    /// rule).
    pub host_files: bool,
    /// The tables as they were when the VM last stopped (taken as it
    /// resumed), with what that stop is called.
    pub last_stop: Option<&'a (Snapshot, String)>,
    /// Where long commands report how far they have got.
    pub progress: &'a ProgressFn,
}

impl Context<'_> {
    /// The roots of the known spaces, in walk order.
    pub(crate) fn roots(&self) -> impl Iterator<Item = u64> + '_ {
        self.spaces.iter().map(|(root, _)| *root)
    }
}

/// The vCPUs' state (the current one's registers, any one's local APIC),
/// read when a command asks.
pub(crate) trait Registers {
    /// All of the current vCPU's registers (`None`: they cannot be read).
    fn all_registers(&self) -> Option<KvmState>;
    /// DR0-DR3, DR6, DR7 (`None`: not known, as in a memory dump).
    fn debug_registers(&self) -> Option<[u64; 6]>;
    /// The local APIC of vCPU `cpu` (an index the VM has), or why there
    /// is none to show.
    fn local_apic(&self, cpu: usize) -> Result<Lapic, String>;
    /// The current vCPU's run state beside its registers.
    fn run_state(&self) -> RunState;
    /// The host thread (Linux TID) running each vCPU (`None`: none has
    /// run it, as in a memory dump).
    fn vcpu_threads(&self) -> Vec<Option<i32>>;
}

/// What QEMU's `info registers` shows of a CPU beside its registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunState {
    /// Interrupts blocked for one instruction (after `sti` or `mov ss`).
    pub interrupt_shadow: bool,
    /// In system-management mode.
    pub smm: bool,
    /// Stopped in `hlt`.
    pub halted: bool,
}

const HELP: &str = "\
Commands (monitor COMMAND):
  help                this text
  vmem help           the page-table commands with examples
";

/// The lines of `block` that document `command` (its line and the
/// indented ones after it), or all of `block` if none does.
fn usage_of(block: &str, command: &str) -> String {
    let mut lines = block.lines().skip_while(|l| {
        !(l.starts_with(command) && l[command.len()..].starts_with([' ', '\0'])) && *l != command
    });
    let Some(first) = lines.next() else {
        return block.to_string();
    };
    let mut text = format!("{first}\n");
    for line in lines.take_while(|l| l.starts_with(' ')) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Run one monitor command line; returns its output and what to do next.
pub(crate) fn run(ctx: &Context<'_>, line: &str) -> (String, Effect) {
    let mut out = String::new();
    let line = match expr::substitute(line, || ctx.registers.all_registers()) {
        Ok(line) => line,
        Err(CmdError::Usage(why) | CmdError::Failed(why)) => {
            return (format!("error: {why}\n"), Effect::None);
        }
    };
    let owned = expr::words(&line);
    let words: Vec<&str> = owned.iter().map(String::as_str).collect();
    let none = |r: Result<(), CmdError>| r.map(|()| Effect::None);
    let (result, block, command) = match words.as_slice() {
        [] | ["help"] => {
            out.push_str(HELP);
            out.push_str(vmem::USAGE);
            out.push_str(find::USAGE);
            out.push_str(audit::USAGE);
            out.push_str(diff::USAGE);
            out.push_str(vmem::WATCH_USAGE);
            out.push_str(qemu::USAGE);
            out.push_str(lapic::USAGE);
            (Ok(Effect::None), "", String::new())
        }
        ["vmem", rest @ ..] => {
            let command = format!("vmem {}", rest.first().unwrap_or(&""));
            let block = [
                vmem::USAGE,
                find::USAGE,
                audit::USAGE,
                diff::USAGE,
                vmem::WATCH_USAGE,
            ]
            .concat();
            return finish(vmem::run(ctx, rest, &mut out), &block, &command, out);
        }
        ["info", "mem"] => (
            none(qemu::info_mem(ctx, &mut out)),
            qemu::USAGE,
            "info mem".into(),
        ),
        ["info", "tlb"] => (
            none(qemu::info_tlb(ctx, &mut out)),
            qemu::USAGE,
            "info tlb".into(),
        ),
        ["info", "mtree", rest @ ..] => (
            none(qemu::info_mtree(ctx, rest, &mut out)),
            qemu::USAGE,
            "info mtree".into(),
        ),
        ["info", "registers"] => (
            none(qemu::info_registers(ctx, &mut out)),
            qemu::USAGE,
            "info registers".into(),
        ),
        ["cpu", rest @ ..] => (qemu::cpu(ctx, rest), qemu::USAGE, "cpu".into()),
        ["info", "cpus"] => {
            qemu::info_cpus(ctx, &mut out);
            (Ok(Effect::None), qemu::USAGE, "info cpus".into())
        }
        ["info", "lapic", rest @ ..] => (
            none(lapic::info_lapic(ctx, rest, &mut out)),
            lapic::USAGE,
            "info lapic".into(),
        ),
        ["gva2gpa", rest @ ..] => (
            none(qemu::gva2gpa(ctx, rest, &mut out)),
            qemu::USAGE,
            "gva2gpa".into(),
        ),
        ["xp", rest @ ..] => (
            none(qemu::xp(ctx, rest, &mut out)),
            qemu::USAGE,
            "xp".into(),
        ),
        ["x", rest @ ..] => (none(qemu::x(ctx, rest, &mut out)), qemu::USAGE, "x".into()),
        ["gpa2hva", rest @ ..] => (
            none(qemu::gpa2hva(ctx, rest, &mut out)),
            qemu::USAGE,
            "gpa2hva".into(),
        ),
        ["chardev-add", rest @ ..] => (qemu::chardev_add(rest), qemu::USAGE, "chardev-add".into()),
        ["chardev-remove", rest @ ..] => (
            match rest {
                [id] => Ok(Effect::ChardevRemove(id.to_string())),
                _ => Err(usage("expected one ID")),
            },
            qemu::USAGE,
            "chardev-remove".into(),
        ),
        [first, ..] => {
            let what = if *first == "info" { line.trim() } else { first };
            return (
                format!("error: unknown command '{what}' (monitor help lists them)\n"),
                Effect::None,
            );
        }
    };
    finish(result, block, &command, out)
}

/// The output of a command that ended with `result`: a failure is one
/// line; a usage error adds the command's usage.
fn finish(
    result: Result<Effect, CmdError>,
    block: &str,
    command: &str,
    mut out: String,
) -> (String, Effect) {
    match result {
        Ok(effect) => (out, effect),
        Err(CmdError::Failed(why)) => {
            out.push_str(&format!("error: {why}\n"));
            (out, Effect::None)
        }
        Err(CmdError::Usage(why)) => {
            out.push_str(&format!(
                "error: {why}\nusage: {}",
                usage_of(block, command)
            ));
            (out, Effect::None)
        }
    }
}
