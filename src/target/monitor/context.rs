//! What a monitor command may look at ([`Context`]), what it asks the
//! target to do afterwards ([`Effect`]), and the views of memory.

use std::fmt;

use super::args::{self, Args};
use super::errors::{usage, CmdError};
use super::lapic::Lapic;
use super::snapshot::Snapshot;
use crate::arch::PageTableFormat;
use crate::target::dump::cpu::Aarch64Cpu;
use crate::target::machine::memory::{GuestRam, TablePool};
use crate::target::machine::regs::KvmState;
use crate::target::monitor::state::DumpFacts;
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

/// A page-table format a command walks with.
pub(crate) type Format<'a> = &'a (dyn PageTableFormat + Sync);

/// What a command may look at.
pub(crate) struct Context<'a> {
    pub memory: &'a GuestRam,
    pub pool: Option<&'a TablePool>,
    /// Paging format of the current vCPU (`None`: paging off); on arm64
    /// the kernel's half (TTBR1).
    pub format: Option<Format<'a>>,
    /// arm64: the format of every root but the current one, which is the
    /// kernel's (TTBR1): the others are processes' TTBR0 tables, the
    /// lower half. `None`: every root has `format` (x86).
    pub lower_half: Option<Format<'a>>,
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
    /// The dump being served (`None`: a live VM).
    pub dump: Option<&'a DumpFacts>,
}

impl<'a> Context<'a> {
    /// The format the tables at `root` are in: `format`, except on arm64
    /// where only the kernel's root is TTBR1's (see `lower_half`).
    pub(crate) fn format_of(&self, root: u64) -> Result<Format<'a>, CmdError> {
        match (self.lower_half, self.root) {
            (Some(lower), Some(kernel)) if root != kernel => Ok(lower),
            _ => self
                .format
                .ok_or_else(|| "paging is off on this vCPU: there are no page tables".into()),
        }
    }

    /// Each of `roots` with the format of its tables.
    pub(crate) fn with_formats(
        &self,
        roots: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<(u64, Format<'a>)>, CmdError> {
        roots
            .into_iter()
            .map(|root| Ok((root, self.format_of(root)?)))
            .collect()
    }

    /// The known spaces grouped by the format of their tables (one group
    /// on x86; the kernel's and the processes' on arm64), in walk order.
    pub(crate) fn spaces_by_format(&self) -> Result<Vec<(Format<'a>, Vec<u64>)>, CmdError> {
        let mut groups: Vec<(Format<'a>, Vec<u64>)> = Vec::new();
        for root in self.roots() {
            let fmt = self.format_of(root)?;
            match groups.iter_mut().find(|(f, _)| std::ptr::addr_eq(*f, fmt)) {
                Some((_, roots)) => roots.push(root),
                None => groups.push((fmt, vec![root])),
            }
        }
        Ok(groups)
    }

    /// The roots of the known spaces, in walk order.
    pub(crate) fn roots(&self) -> impl Iterator<Item = u64> + '_ {
        self.spaces.iter().map(|(root, _)| *root)
    }
}

/// The vCPUs' state (the current one's registers, any one's local APIC),
/// read when a command asks.
pub(crate) trait Registers {
    /// All of the current vCPU's registers (`None`: they cannot be read,
    /// or the CPU is not an x86 one).
    fn all_registers(&self) -> Option<KvmState>;
    /// The current CPU's registers, if it is an arm64 one (a dump's).
    fn aarch64(&self) -> Option<Aarch64Cpu> {
        None
    }
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

/// The vCPU index `word` names, if this VM has it.
pub(crate) fn cpu_index(ctx: &Context<'_>, word: &str) -> Result<usize, CmdError> {
    let index: usize = word
        .parse()
        .map_err(|_| usage(format!("bad CPU '{word}' (a vCPU index)")))?;
    if index >= ctx.cpu_count {
        return Err(format!("no CPU {index}: this VM has {}", ctx.cpu_count).into());
    }
    Ok(index)
}

/// The space `--space` names, or the current vCPU's.
pub(crate) fn space_of(ctx: &Context<'_>, args: &Args<'_>) -> Result<u64, CmdError> {
    match args.option("space") {
        Some(cr3) => Ok(args::number(cr3)? & ctx.root_mask),
        None => ctx
            .root
            .ok_or_else(|| "paging is off on this vCPU: there are no page tables".into()),
    }
}
