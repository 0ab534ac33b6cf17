//! `monitor vmem snapshot NAME` and `vmem diff [NAME | --dump FILE] [--limit N]`: what
//! changed in the page tables since the VM last stopped, since a snapshot,
//! or since an earlier memory dump — mappings added, removed, re-pointed to
//! other physical memory, or with other rights — per known space. A
//! snapshot is the coalesced walk of every space (cost proportional to the
//! tables); accessed/dirty bits are not changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use super::args::Args;
use super::vmem::{row, walk_space, CUT_SHORT};
use super::{CmdError, Context};
use crate::arch::PageTableFormat;
use crate::target::dump::Dump;
use crate::target::host_file::open_regular;
use crate::target::memory::{GuestRam, GuestTables};
use crate::vmem::{self, Flags, Mapping};

pub(crate) const USAGE: &str = "\
vmem snapshot NAME
    remember the mappings of every known space under NAME
vmem diff [NAME | --dump FILE] [--limit N]
    what changed since the last stop (the first time: since the session's
    first run), since snapshot NAME, or since the memory dump FILE (an
    earlier dump of this VM): mappings added, removed, re-pointed, rights
    (accessed/dirty bits are not changes)
    e.g. monitor vmem snapshot before; (continue); monitor vmem diff before
";

/// Every known space's mappings at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    spaces: BTreeMap<u64, Vec<Mapping>>,
    /// The spaces whose walk the budget cut short.
    cut: BTreeSet<u64>,
}

/// The mappings of `roots` in `memory`.
fn take_in(
    fmt: &dyn PageTableFormat,
    memory: &GuestRam,
    roots: impl IntoIterator<Item = u64>,
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for root in roots {
        let (mut mappings, cut) = walk_space(fmt, &GuestTables::new(memory, root, None));
        for m in &mut mappings {
            m.flags.remove(Flags::ACCESSED | Flags::DIRTY);
        }
        snapshot.spaces.insert(root, mappings);
        if cut {
            snapshot.cut.insert(root);
        }
    }
    snapshot
}

/// The mappings of every known space now.
pub(crate) fn take(ctx: &Context<'_>) -> Result<Snapshot, CmdError> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    Ok(take_in(fmt, ctx.memory, ctx.roots()))
}

/// Changes shown per space unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 200;

/// Print what changed from `before` (called `what`) to `now`, at most
/// `limit` changes per space.
fn report(before: &Snapshot, now: &Snapshot, what: &str, limit: usize, out: &mut String) {
    let mut total = 0;
    for (root, new) in &now.spaces {
        let Some(old) = before.spaces.get(root) else {
            let _ = writeln!(out, "space {root:#x}: not in {what}");
            continue;
        };
        let changes = vmem::diff_mappings(old, new);
        if before.cut.contains(root) || now.cut.contains(root) {
            let _ = writeln!(
                out,
                "space {root:#x}: {CUT_SHORT}; changes past it are not shown"
            );
        }
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "space {root:#x}:");
        for change in changes.iter().take(limit) {
            let label = change.kind.label();
            match (&change.old, &change.new) {
                (Some(o), Some(n)) => {
                    let _ = writeln!(out, "  {label:<10} was {}", row(o));
                    let _ = writeln!(out, "  {:<10} now {}", "", row(n));
                }
                (Some(m), None) | (None, Some(m)) => {
                    let _ = writeln!(out, "  {label:<10}     {}", row(m));
                }
                (None, None) => {}
            }
        }
        if changes.len() > limit {
            let _ = writeln!(out, "  ... {} more (raise --limit)", changes.len() - limit);
        }
        total += changes.len();
    }
    let _ = writeln!(out, "{total} changes since {what}");
}

/// `vmem diff [NAME | --dump FILE] [--limit N]`.
pub(crate) fn diff(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), CmdError> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    let limit = args.limit(DEFAULT_LIMIT)?;
    let now = take(ctx)?;
    if let Some(file) = args.option("dump") {
        if !ctx.host_files {
            return Err("this VMM does not let gdb name host files".into());
        }
        let opened = open_regular(Path::new(file))?;
        let dump = Dump::open_file(&opened, Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
        let before = take_in(fmt, dump.ram(), ctx.roots());
        report(&before, &now, &format!("dump {file}"), limit, out);
        return Ok(());
    }
    match args.positional.first() {
        Some(&name) => {
            let before = ctx.snapshots.get(name).ok_or_else(|| {
                format!("no snapshot named '{name}' (take one with vmem snapshot {name})")
            })?;
            report(before, &now, &format!("snapshot '{name}'"), limit, out);
        }
        None => {
            let (before, what) = ctx
                .last_stop
                .ok_or("the VM has not run since gdb attached: nothing to compare with")?;
            report(before, &now, what, limit, out);
        }
    }
    Ok(())
}
