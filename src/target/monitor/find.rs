//! `monitor vmem find`: the reverse map — every virtual address, in every
//! known address space, that maps a physical range.

use std::fmt::Write;

use super::args::{self, Args};
use super::context::{space_of, Context};
use super::errors::{usage, CmdError};
use super::json;
use super::listing::row;
use crate::target::machine::memory::GuestTables;
use crate::target::machine::paging::WALK_BUDGET;
use crate::vmem::{self, Mapping};

/// Rows shown per space unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 200;

pub(crate) const USAGE: &str = "\
vmem find PA [LEN] [--limit N] [--json]
vmem find --va VA [--space CR3] [--limit N] [--json]
    every VA, in every known space, that maps PA..PA+LEN (default: 1 byte),
    or the physical page VA maps to
    e.g. monitor vmem find 0x1000000 4k
";

pub(crate) fn run(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), CmdError> {
    let (start, len) = match args.option("va") {
        Some(va) => {
            let va = args::number(va)?;
            let root = space_of(ctx, args)?;
            let fmt = ctx.format_of(root)?;
            let tables = GuestTables::new(ctx.memory, root, None);
            let pa = vmem::translate_pa(fmt, &tables, root, va)
                .map_err(|fault| format!("{va:#x} is not mapped in space {root:#x}: {fault}"))?
                .0;
            if !args.flag("json") {
                let _ = writeln!(out, "{va:#x} in space {root:#x} maps physical {pa:#x}");
            }
            (pa & !0xfff, 0x1000)
        }
        None => {
            let pa = args.number(0, "PA")?;
            let len = if args.positional.len() > 1 {
                args.number(1, "LEN")?
            } else {
                1
            };
            (pa, len)
        }
    };
    let end = start
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or_else(|| usage("PA + LEN must be above PA and below 2^64"))?;
    let limit = args.limit(DEFAULT_LIMIT)?;
    let mut found: Vec<Found> = Vec::new();
    for (root, label) in &ctx.spaces {
        let fmt = ctx.format_of(*root)?;
        let tables = GuestTables::new(ctx.memory, *root, None);
        // Streamed: a hostile space may map the range a million times.
        let mut here = Found {
            root: *root,
            label,
            count: 0,
            shown: Vec::new(),
            cut: false,
        };
        for item in vmem::virt_to_phys(fmt, &tables, 0, u64::MAX).with_budget(WALK_BUDGET) {
            match item {
                Ok(m) => {
                    if let Some(part) = vmem::phys_overlap(&m, start, end) {
                        here.count += 1;
                        if here.shown.len() < limit {
                            here.shown.push(part);
                        }
                    }
                }
                Err(vmem::WalkError::BudgetExhausted { .. }) => here.cut = true,
                Err(_) => {}
            }
        }
        if here.count > 0 || here.cut {
            found.push(here);
        }
    }
    if args.flag("json") {
        report_json(start..end, &found, out);
    } else {
        report(start..end, &found, out);
    }
    Ok(())
}

/// What one space maps of the range.
struct Found<'a> {
    root: u64,
    label: &'a str,
    /// Mappings overlapping the range.
    count: usize,
    /// The first `--limit` of them, cut to the range.
    shown: Vec<Mapping>,
    /// The walk stopped at its bound.
    cut: bool,
}

fn report(range: std::ops::Range<u64>, found: &[Found<'_>], out: &mut String) {
    let _ = writeln!(
        out,
        "physical {:#x}..{:#x} is mapped at:",
        range.start, range.end
    );
    for space in found {
        let _ = writeln!(out, "space {:#x} ({}):", space.root, space.label);
        for m in &space.shown {
            let _ = writeln!(out, "  {}", row(m));
        }
        if space.count > space.shown.len() {
            let more = space.count - space.shown.len();
            let _ = writeln!(out, "  ... {more} more (raise --limit)");
        }
        if space.cut {
            let _ = writeln!(out, "  (walk cut short at {WALK_BUDGET} entries)");
        }
    }
    let total: usize = found.iter().map(|s| s.count).sum();
    let spaces = found.iter().filter(|s| s.count > 0).count();
    let _ = writeln!(out, "{total} mappings in {spaces} spaces");
}

/// `find --json`: `{"start", "end", "spaces": [{"space", "known_as",
/// "count", "shown": [MAPPING…], "cut"}…], "total"}`.
fn report_json(range: std::ops::Range<u64>, found: &[Found<'_>], out: &mut String) {
    let spaces: Vec<String> = found
        .iter()
        .map(|s| {
            let shown: Vec<String> = s.shown.iter().map(json::mapping).collect();
            format!(
                "{{\"space\":{},\"known_as\":{},\"count\":{},\"shown\":[{}],\"cut\":{}}}",
                json::hex(s.root),
                json::string(s.label),
                s.count,
                shown.join(","),
                s.cut
            )
        })
        .collect();
    let total: usize = found.iter().map(|s| s.count).sum();
    let _ = writeln!(
        out,
        "{{\"start\":{},\"end\":{},\"spaces\":[{}],\"total\":{total}}}",
        json::hex(range.start),
        json::hex(range.end),
        spaces.join(",")
    );
}
