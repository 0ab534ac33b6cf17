//! `monitor vmem audit`: what in the page tables is unsafe — mappings both
//! writable and executable, user pages in the kernel half, user pages the
//! kernel may execute (no SMEP or PXN), page-table pages mapped writable, and one
//! physical page writable in one place and executable in another (W^X
//! broken through an alias). Each finding names the VA range, the PA and
//! the leaf entry that grants it.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::args::Args;
use super::context::{space_of, Context};
use super::errors::CmdError;
use super::json;
use super::listing::{row, walk_space, CUT_SHORT};
use super::parallel::{map_in_parallel, sort_in_parallel};
use super::recorder::Recorder;
use crate::target::machine::memory::GuestTables;
use crate::target::progress::{Progress, ProgressUnit};
use crate::vmem::{self, Access, Mapping, PhysAddr};

pub(crate) const USAGE: &str = "\
vmem audit [--space CR3|--all] [--limit N] [--json]
    writable+executable mappings, user pages in the kernel half, user pages
    the kernel may execute, page tables mapped writable, W^X broken
    through an alias (default: the current space; N findings per kind)
    e.g. monitor vmem audit --all
";

/// Findings shown per kind unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 10;

/// One kind of finding: how many, and the first `limit` of them.
struct Kind {
    title: &'static str,
    count: usize,
    found: Vec<(u64, Mapping, String)>,
}

impl Kind {
    fn new(title: &'static str) -> Kind {
        Kind {
            title,
            count: 0,
            found: Vec::new(),
        }
    }

    /// Take `more`'s findings after ours (counted all, kept up to `limit`).
    fn append(&mut self, more: Kind, limit: usize) {
        self.count += more.count;
        let room = limit.saturating_sub(self.found.len());
        self.found.extend(more.found.into_iter().take(room));
    }

    /// Count a finding; keep it if fewer than `limit` are kept (the note
    /// is made only then: a hostile space may give millions).
    fn add(&mut self, limit: usize, root: u64, m: &Mapping, note: impl FnOnce() -> String) {
        self.count += 1;
        if self.found.len() < limit {
            self.found.push((root, *m, note()));
        }
    }
}

/// What a leaf allows, for the alias sweep: writable only, executable
/// only, or both.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Use {
    Write = 0,
    Exec = 1,
    Both = 2,
}

pub(crate) fn run(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), CmdError> {
    args.no_positional()?;
    let roots: Vec<u64> = if args.flag("all") {
        ctx.roots().collect()
    } else {
        vec![space_of(ctx, args)?]
    };
    let spaces = ctx.with_formats(roots.iter().copied())?;
    let limit = args.limit(DEFAULT_LIMIT)?;
    // Each space walked whole (the rights of a table shared with another
    // space depend on the entries above it, which may differ: KPTI's
    // user copy), several at once.
    let walked = AtomicU64::new(0);
    let report = |done| {
        (ctx.progress)(Progress {
            task: "auditing spaces",
            done,
            total: roots.len() as u64,
            unit: ProgressUnit::Spaces,
        })
    };
    report(0);
    let walks = map_in_parallel(&spaces, |&(root, fmt)| {
        let recorder = Recorder::new(GuestTables::new(ctx.memory, root, None));
        let (mappings, cut) = walk_space(fmt, &recorder);
        report(walked.fetch_add(1, Ordering::Relaxed) + 1);
        (root, mappings, cut, recorder.into_pages())
    });
    let mut table_pages = BTreeSet::new();
    for (root, _, cut, pages) in &walks {
        if *cut {
            let _ = writeln!(
                out,
                "(space {root:#x}: {CUT_SHORT}; what lies beyond is not audited)"
            );
        }
        table_pages.extend(pages);
    }
    let tables: Vec<PhysAddr> = table_pages.iter().copied().collect();
    // The findings of one leaf at a time, per space and several spaces at
    // once, put together in the spaces' order (as one pass would list them).
    let mut kinds = map_in_parallel(&walks, |(root, mappings, _, _)| {
        let mut kinds = leaf_kinds();
        for m in mappings {
            check_leaf(&mut kinds, limit, *root, m, &tables);
        }
        kinds
    })
    .into_iter()
    .fold(leaf_kinds(), |mut all, space| {
        for (kind, more) in all.iter_mut().zip(space) {
            kind.append(more, limit);
        }
        all
    })
    .into_iter()
    .chain([Kind::new("W^X broken through an alias")])
    .collect::<Vec<_>>();
    let leaves: Vec<(u64, &[Mapping])> = walks
        .iter()
        .map(|(root, mappings, _, _)| (*root, mappings.as_slice()))
        .collect();
    sweep_aliases(&leaves, &mut kinds[4], limit);
    let leaf_count: usize = leaves.iter().map(|(_, m)| m.len()).sum();
    if args.flag("json") {
        report_json(
            ctx,
            &kinds,
            (roots.len(), leaf_count, table_pages.len()),
            out,
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "audit of {} space(s), {} mappings, {} page-table pages",
        roots.len(),
        leaf_count,
        table_pages.len()
    );
    for kind in &kinds {
        let _ = writeln!(out, "{}: {}", kind.title, kind.count);
        for (root, m, note) in &kind.found {
            let grant = granted_by(ctx, *root, m);
            let _ = writeln!(out, "  space {root:#x}  {}", row(m));
            let _ = writeln!(
                out,
                "    granted by {grant}{}{note}",
                if note.is_empty() { "" } else { "; " }
            );
        }
        if kind.count > kind.found.len() {
            let _ = writeln!(
                out,
                "  ... {} more (raise --limit)",
                kind.count - kind.found.len()
            );
        }
    }
    Ok(())
}

/// The leaf entry that grants `m` in space `root`: `entry ADDR = RAW`.
/// What a leaf allows, all levels together.
fn exec(m: &Mapping) -> bool {
    (m.rights.kernel | m.rights.user).contains(Access::EXEC)
}

fn write(m: &Mapping) -> bool {
    (m.rights.kernel | m.rights.user).contains(Access::WRITE)
}

/// The kinds found one leaf at a time, in the report's order.
fn leaf_kinds() -> [Kind; 4] {
    [
        Kind::new("writable and executable"),
        Kind::new("user-accessible in the kernel half"),
        Kind::new("user pages the kernel may execute (no SMEP or PXN)"),
        Kind::new("page-table pages mapped writable"),
    ]
}

/// What is wrong with leaf `m` of space `root` by itself; `tables`: every
/// page-table page of the audited spaces, in order.
fn check_leaf(kinds: &mut [Kind; 4], limit: usize, root: u64, m: &Mapping, tables: &[PhysAddr]) {
    let none = String::new;
    if write(m) && exec(m) {
        kinds[0].add(limit, root, m, none);
    }
    if m.user_accessible && m.virt_base >> 63 == 1 {
        kinds[1].add(limit, root, m, none);
    }
    if m.user_accessible && m.rights.kernel.contains(Access::EXEC) {
        kinds[2].add(limit, root, m, none);
    }
    if write(m) {
        let end = m.phys_base.saturating_add(m.len);
        let first = tables.partition_point(|&t| t < m.phys_base);
        for &table in tables[first..].iter().take_while(|&&t| t < end) {
            let va = m.virt_base + (table - m.phys_base);
            kinds[3].add(limit, root, m, || {
                format!("table page {table:#x} at VA {va:#x}")
            });
        }
    }
}

/// W^X through aliases: sweep the leaves (of every space, in walk order)
/// by physical address, keeping per use the leaf seen so far that reaches
/// furthest; a writable leaf overlapping an executable one elsewhere
/// breaks W^X (two W+X leaves are already findings of their own). Linear
/// after the sort, whatever the overlap.
fn sweep_aliases(leaves: &[(u64, &[Mapping])], kind: &mut Kind, limit: usize) {
    let use_of = |m: &Mapping| match (write(m), exec(m)) {
        (true, true) => Some(Use::Both),
        (true, false) => Some(Use::Write),
        (false, true) => Some(Use::Exec),
        (false, false) => None,
    };
    // (PA, space << 34 | leaf << 2 | use): sorted by address, then walk
    // order, which a stable sort would give, at the speed of an unstable
    // one (on every core).
    let mut by_pa: Vec<(u64, u64)> = leaves
        .iter()
        .enumerate()
        .filter(|&(space, _)| space < 1 << 30)
        .flat_map(|(space, (_, mappings))| {
            mappings.iter().enumerate().filter_map(move |(i, m)| {
                let at =
                    (space as u64) << 34 | u64::try_from(i).ok().filter(|&i| i < 1 << 32)? << 2;
                Some((m.phys_base, at | use_of(m)? as u64))
            })
        })
        .collect();
    sort_in_parallel(&mut by_pa);
    let end = |m: &Mapping| m.phys_base.saturating_add(m.len);
    let leaf = |space: u32, i: u32| {
        (
            leaves[space as usize].0,
            &leaves[space as usize].1[i as usize],
        )
    };
    let mut furthest: [Option<(u64, &Mapping)>; 3] = [None; 3];
    for (_, at) in by_pa {
        let used = match at & 3 {
            0 => Use::Write,
            1 => Use::Exec,
            _ => Use::Both,
        };
        let item = leaf((at >> 34) as u32, (at >> 2) as u32);
        let m = item.1;
        let conflicting: &[Use] = match used {
            Use::Write => &[Use::Exec, Use::Both],
            Use::Exec => &[Use::Write, Use::Both],
            Use::Both => &[Use::Write, Use::Exec],
        };
        let other = conflicting
            .iter()
            .filter_map(|&u| furthest[u as usize])
            .find(|(_, o)| end(o) > m.phys_base);
        if let Some(other) = other {
            let o = other.1;
            // Which of the two is the writable one.
            let ((w_root, w), (x_root, x)) = if used == Use::Write || !write(o) {
                (item, other)
            } else {
                (other, item)
            };
            let pa = m.phys_base.max(o.phys_base);
            kind.add(limit, w_root, w, || {
                format!(
                    "PA {pa:#x} writable here, executable at {:#x} in space {x_root:#x}",
                    x.virt_base + (pa - x.phys_base)
                )
            });
        }
        let slot = &mut furthest[used as usize];
        if slot.is_none_or(|(_, f)| end(f) < end(m)) {
            *slot = Some(item);
        }
    }
}

fn granted_by(ctx: &Context<'_>, root: u64, m: &Mapping) -> String {
    let Ok(fmt) = ctx.format_of(root) else {
        return String::new();
    };
    let tables = GuestTables::new(ctx.memory, root, None);
    vmem::translate(fmt, &tables, m.virt_base)
        .steps()
        .last()
        .map(|s| {
            let entry = s.at.table + s.at.index * fmt.entry_size();
            format!("entry {:#x} = {:#x}", entry, s.raw)
        })
        .unwrap_or_default()
}

/// `audit --json`: `{"spaces", "mappings", "table_pages", "findings":
/// [{"kind", "count", "shown": [{"space", "mapping", "granted_by",
/// "note"}…]}…]}`; `count` counts all, `shown` holds the first `--limit`.
fn report_json(
    ctx: &Context<'_>,
    kinds: &[Kind],
    (spaces, mappings, table_pages): (usize, usize, usize),
    out: &mut String,
) {
    let findings: Vec<String> = kinds
        .iter()
        .map(|kind| {
            let shown: Vec<String> = kind
                .found
                .iter()
                .map(|(root, m, note)| {
                    format!(
                        "{{\"space\":{},\"mapping\":{},\"granted_by\":{},\"note\":{}}}",
                        json::hex(*root),
                        json::mapping(m),
                        json::string(&granted_by(ctx, *root, m)),
                        json::string(note)
                    )
                })
                .collect();
            format!(
                "{{\"kind\":{},\"count\":{},\"shown\":[{}]}}",
                json::string(kind.title),
                kind.count,
                shown.join(",")
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "{{\"spaces\":{spaces},\"mappings\":{mappings},\"table_pages\":{table_pages},\"findings\":[{}]}}",
        findings.join(",")
    );
}
