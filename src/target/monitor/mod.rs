//! `monitor` commands: see and change the guest's page tables (`vmem …`)
//! and QEMU's commands (`info mem`, `info tlb`, `gva2gpa`, `xp`,
//! `info registers`).
//!
//! A command never fails the gdb session: every error is printed as text
//! with the command's usage, and changes nothing.

mod args;
mod audit;
mod diff;
mod find;
mod qemu;
mod scan;
mod vmem;

use std::fmt;

use super::memory::{GuestRam, TablePool};
use super::regs::KvmState;
use crate::arch::PageTableFormat;

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

/// What the target must do after a command.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    None,
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
}

/// What a command may look at.
pub(crate) struct Context<'a> {
    pub memory: &'a GuestRam,
    pub pool: Option<&'a TablePool>,
    /// Paging format of the current vCPU (`None`: paging off).
    pub format: Option<&'a dyn PageTableFormat>,
    /// Root of the current space (`None`: paging off).
    pub root: Option<u64>,
    /// The bits of a CR3 value that name the root table in this mode.
    pub root_mask: u64,
    /// Known spaces with how they are known, in walk order.
    pub spaces: Vec<(u64, String)>,
    /// The current vCPU's registers, read only by the commands that show
    /// them (a `help` costs no ioctl).
    pub registers: &'a dyn Registers,
    /// Snapshots taken with `vmem snapshot`, by name.
    pub snapshots: &'a std::collections::BTreeMap<String, Snapshot>,
    /// The tables as they were when the VM last stopped (taken as it
    /// resumed), with what that stop is called.
    pub last_stop: Option<&'a (Snapshot, String)>,
}

/// The current vCPU's registers, read when a command asks.
pub(crate) trait Registers {
    /// All of them (`None`: they cannot be read).
    fn all_registers(&self) -> Option<KvmState>;
    /// DR0-DR3, DR6, DR7.
    fn debug_registers(&self) -> [u64; 6];
}

const HELP: &str = "\
Commands (monitor COMMAND):
  help                this text
  vmem help           the page-table commands with examples
";

/// Run one monitor command line; returns its output and what to do next.
pub(crate) fn run(ctx: &Context<'_>, line: &str) -> (String, Effect) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = String::new();
    let result = match words.as_slice() {
        [] | ["help"] => {
            out.push_str(HELP);
            out.push_str(vmem::USAGE);
            out.push_str(find::USAGE);
            out.push_str(audit::USAGE);
            out.push_str(diff::USAGE);
            out.push_str(vmem::WATCH_USAGE);
            out.push_str(qemu::USAGE);
            Ok(Effect::None)
        }
        ["vmem", rest @ ..] => vmem::run(ctx, rest, &mut out).map_err(|e| (e, vmem::USAGE)),
        ["info", "mem"] => qemu::info_mem(ctx, &mut out)
            .map(|()| Effect::None)
            .map_err(|e| (e, qemu::USAGE)),
        ["info", "tlb"] => qemu::info_tlb(ctx, &mut out)
            .map(|()| Effect::None)
            .map_err(|e| (e, qemu::USAGE)),
        ["info", "registers"] => qemu::info_registers(ctx, &mut out)
            .map(|()| Effect::None)
            .map_err(|e| (e, qemu::USAGE)),
        ["gva2gpa", addr] => qemu::gva2gpa(ctx, addr, &mut out)
            .map(|()| Effect::None)
            .map_err(|e| (e, qemu::USAGE)),
        ["xp", rest @ ..] => qemu::xp(ctx, rest, &mut out)
            .map(|()| Effect::None)
            .map_err(|e| (e, qemu::USAGE)),
        _ => Err((format!("unknown command: '{}'", line.trim()), HELP)),
    };
    match result {
        Ok(effect) => (out, effect),
        Err((error, usage)) => {
            out.push_str(&format!("error: {error}\nusage:\n{usage}"));
            (out, Effect::None)
        }
    }
}
