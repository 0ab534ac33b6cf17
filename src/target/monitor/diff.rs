//! `monitor vmem snapshot NAME` and `vmem diff [NAME | --dump FILE]`: what
//! changed in the page tables since the VM last stopped, since a snapshot,
//! or since an earlier memory dump — mappings added, removed, re-pointed to
//! other physical memory, or with other rights — per known space. A
//! snapshot is the coalesced walk of every space (cost proportional to the
//! tables); accessed/dirty bits are not changes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use super::args::Args;
use super::vmem::{row, WALK_BUDGET};
use super::Context;
use crate::arch::PageTableFormat;
use crate::target::dump::Dump;
use crate::target::memory::{GuestRam, GuestTables};
use crate::vmem::{self, Flags, Mapping};

pub(crate) const USAGE: &str = "\
vmem snapshot NAME
    remember the mappings of every known space under NAME
vmem diff [NAME | --dump FILE]
    what changed since the last stop, since snapshot NAME, or since the
    memory dump FILE (an earlier dump of this VM): mappings added, removed,
    re-pointed, rights (accessed/dirty bits are not changes)
    e.g. monitor vmem snapshot before; (continue); monitor vmem diff before
";

/// Every known space's mappings at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    spaces: BTreeMap<u64, Vec<Mapping>>,
}

/// The mappings of `roots` in `memory`.
fn take_in(fmt: &dyn PageTableFormat, memory: &GuestRam, roots: &[u64]) -> Snapshot {
    let mut spaces = BTreeMap::new();
    for &root in roots {
        let tables = GuestTables::new(memory, root, None);
        let mappings = vmem::virt_to_phys(fmt, &tables, 0, u64::MAX)
            .with_budget(WALK_BUDGET)
            .flatten()
            .map(|mut m| {
                m.flags.remove(Flags::ACCESSED | Flags::DIRTY);
                m
            })
            .collect();
        spaces.insert(root, mappings);
    }
    Snapshot { spaces }
}

fn known_roots(ctx: &Context<'_>) -> Vec<u64> {
    ctx.spaces.iter().map(|(root, _)| *root).collect()
}

/// The mappings of every known space now.
pub(crate) fn take(ctx: &Context<'_>) -> Result<Snapshot, String> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    Ok(take_in(fmt, ctx.memory, &known_roots(ctx)))
}

/// Print what changed from `before` (called `what`) to `now`.
fn report(before: &Snapshot, now: &Snapshot, what: &str, out: &mut String) {
    let mut total = 0;
    for (root, new) in &now.spaces {
        let Some(old) = before.spaces.get(root) else {
            let _ = writeln!(out, "space {root:#x}: not in {what}");
            continue;
        };
        let changes = vmem::diff_mappings(old, new);
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "space {root:#x}:");
        for change in &changes {
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
        total += changes.len();
    }
    let _ = writeln!(out, "{total} changes since {what}");
}

/// `vmem diff [NAME | --dump FILE]`.
pub(crate) fn diff(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), String> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    let now = take(ctx)?;
    if let Some(file) = args.option("dump") {
        let dump = Dump::open(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
        let before = take_in(fmt, dump.ram(), &known_roots(ctx));
        report(&before, &now, &format!("dump {file}"), out);
        return Ok(());
    }
    match args.positional.first() {
        Some(&name) => {
            let before = ctx.snapshots.get(name).ok_or_else(|| {
                format!("no snapshot named '{name}' (take one with vmem snapshot {name})")
            })?;
            report(before, &now, &format!("snapshot '{name}'"), out);
        }
        None => {
            let (before, what) = ctx
                .last_stop
                .ok_or("the VM has not run since gdb attached: nothing to compare with")?;
            report(before, &now, what, out);
        }
    }
    Ok(())
}
