//! `monitor vmem snapshot NAME` and `vmem diff NAME`: what changed in the
//! page tables since a snapshot — mappings added, removed, re-pointed to
//! other physical memory, or with other rights — per known space. A
//! snapshot is the coalesced walk of every space (cost proportional to the
//! tables); accessed/dirty bits are not changes.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::args::Args;
use super::vmem::{row, WALK_BUDGET};
use super::Context;
use crate::target::memory::GuestTables;
use crate::vmem::{self, Flags, Mapping};

pub(crate) const USAGE: &str = "\
vmem snapshot NAME
    remember the mappings of every known space under NAME
vmem diff NAME
    what changed since snapshot NAME: added, removed, re-pointed, rights
    e.g. monitor vmem snapshot before; (run); monitor vmem diff before
";

/// Every known space's mappings at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    spaces: BTreeMap<u64, Vec<Mapping>>,
}

/// The mappings of every known space now.
pub(crate) fn take(ctx: &Context<'_>) -> Result<Snapshot, String> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    let mut spaces = BTreeMap::new();
    for (root, _) in &ctx.spaces {
        let tables = GuestTables::new(ctx.memory, *root, None);
        let mappings = vmem::virt_to_phys(fmt, &tables, 0, u64::MAX)
            .with_budget(WALK_BUDGET)
            .flatten()
            .map(|mut m| {
                m.flags.remove(Flags::ACCESSED | Flags::DIRTY);
                m
            })
            .collect();
        spaces.insert(*root, mappings);
    }
    Ok(Snapshot { spaces })
}

/// How one VA run differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Removed,
    Repointed,
    Rights,
}

impl Change {
    fn label(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Repointed => "re-pointed",
            Change::Rights => "rights",
        }
    }
}

/// The mapping of `va` in `list` (sorted, not overlapping).
fn at(list: &[Mapping], va: u64) -> Option<&Mapping> {
    let i = list.partition_point(|m| m.virt_last() < va);
    list.get(i).filter(|m| m.virt_base <= va)
}

/// `m` cut to `start .. start + len`.
fn cut(m: &Mapping, start: u64, len: u64) -> Mapping {
    Mapping {
        phys_base: m.phys_base + (start - m.virt_base),
        virt_base: start,
        len,
        ..*m
    }
}

/// The differences of two walks of one space, as (change, old, new) runs.
fn compare(old: &[Mapping], new: &[Mapping]) -> Vec<(Change, Option<Mapping>, Option<Mapping>)> {
    // Every VA where some mapping starts or ends in either walk.
    let mut cuts: Vec<u64> = old
        .iter()
        .chain(new)
        .flat_map(|m| [m.virt_base, m.virt_last().wrapping_add(1)])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut changes: Vec<(Change, Option<Mapping>, Option<Mapping>)> = Vec::new();
    for pair in cuts.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        if end <= start {
            continue;
        }
        let (o, n) = (at(old, start), at(new, start));
        let change = match (o, n) {
            (None, None) => continue,
            (None, Some(_)) => Change::Added,
            (Some(_), None) => Change::Removed,
            (Some(o), Some(n)) => {
                let (o, n) = (cut(o, start, end - start), cut(n, start, end - start));
                if o.phys_base != n.phys_base {
                    Change::Repointed
                } else if (o.kind, o.user_accessible, o.rights, o.flags)
                    != (n.kind, n.user_accessible, n.rights, n.flags)
                {
                    Change::Rights
                } else {
                    continue;
                }
            }
        };
        let (o, n) = (
            o.map(|m| cut(m, start, end - start)),
            n.map(|m| cut(m, start, end - start)),
        );
        // Runs of one change that continue each other are one change.
        if let Some((last, lo, ln)) = changes.last_mut() {
            let joins = |a: &mut Option<Mapping>, b: Option<Mapping>| match (a, b) {
                (Some(a), Some(b)) if a.virt_base + a.len == b.virt_base => {
                    a.len += b.len;
                    true
                }
                (None, None) => true,
                _ => false,
            };
            if *last == change && joins(lo, o) && joins(ln, n) {
                continue;
            }
        }
        changes.push((change, o, n));
    }
    changes
}

pub(crate) fn diff(
    ctx: &Context<'_>,
    args: &Args<'_>,
    saved: &BTreeMap<String, Snapshot>,
    out: &mut String,
) -> Result<(), String> {
    let name = *args.positional.first().ok_or("missing NAME")?;
    let before = saved.get(name).ok_or_else(|| {
        format!("no snapshot named '{name}' (take one with vmem snapshot {name})")
    })?;
    let now = take(ctx)?;
    let mut total = 0;
    for (root, new) in &now.spaces {
        let Some(old) = before.spaces.get(root) else {
            let _ = writeln!(out, "space {root:#x}: not in snapshot '{name}'");
            continue;
        };
        let changes = compare(old, new);
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "space {root:#x}:");
        for (change, o, n) in &changes {
            let label = change.label();
            match (o, n) {
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
    let _ = writeln!(out, "{total} changes since snapshot '{name}'");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmem::{BasicMapping, MappingKind};

    const RW: MappingKind = MappingKind::Basic(BasicMapping {
        readable: true,
        writable: true,
        executable: false,
    });
    const RO: MappingKind = MappingKind::Basic(BasicMapping {
        readable: true,
        writable: false,
        executable: false,
    });

    #[test]
    fn changes_are_cut_to_what_changed() {
        let old = [Mapping::new(0x1000, 0x10_0000, 0x4000, RW)];
        let new = [
            Mapping::new(0x1000, 0x10_0000, 0x1000, RW),
            Mapping::new(0x2000, 0x10_1000, 0x1000, RO),
            Mapping::new(0x3000, 0x20_0000, 0x1000, RW),
            Mapping::new(0x8000, 0x30_0000, 0x1000, RW),
        ];
        let changes = compare(&old, &new);
        let kinds: Vec<(Change, u64, u64)> = changes
            .iter()
            .map(|(c, o, n)| {
                let m = n.or(*o).unwrap();
                (*c, m.virt_base, m.len)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (Change::Rights, 0x2000, 0x1000),
                (Change::Repointed, 0x3000, 0x1000),
                (Change::Removed, 0x4000, 0x1000),
                (Change::Added, 0x8000, 0x1000),
            ]
        );
        assert!(compare(&old, &old).is_empty());
    }
}
