//! `monitor vmem find`: the reverse map — every virtual address, in every
//! known address space, that maps a physical range.

use std::fmt::Write;

use super::args::{self, Args};
use super::vmem::{row, space_of, WALK_BUDGET};
use super::{usage, CmdError, Context};
use crate::target::memory::GuestTables;
use crate::vmem;

/// Rows shown per space unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 200;

pub(crate) const USAGE: &str = "\
vmem find PA [LEN] [--limit N]
vmem find --va VA [--space CR3] [--limit N]
    every VA, in every known space, that maps PA..PA+LEN (default: 1 byte),
    or the physical page VA maps to
    e.g. monitor vmem find 0x1000000 4k
";

pub(crate) fn run(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), CmdError> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    let (start, len) = match args.option("va") {
        Some(va) => {
            let va = args::number(va)?;
            let root = space_of(ctx, args)?;
            let tables = GuestTables::new(ctx.memory, root, None);
            let pa = vmem::translate_pa(fmt, &tables, root, va)
                .map_err(|fault| format!("{va:#x} is not mapped in space {root:#x}: {fault}"))?
                .0;
            let _ = writeln!(out, "{va:#x} in space {root:#x} maps physical {pa:#x}");
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
    let _ = writeln!(out, "physical {start:#x}..{end:#x} is mapped at:");
    let limit = args.limit(DEFAULT_LIMIT)?;
    let mut found = 0usize;
    let mut spaces = 0usize;
    for (root, label) in &ctx.spaces {
        let tables = GuestTables::new(ctx.memory, *root, None);
        // Streamed: a hostile space may map the range a million times.
        let (mut here, mut rows, mut cut) = (0usize, Vec::new(), false);
        for item in vmem::virt_to_phys(fmt, &tables, 0, u64::MAX).with_budget(WALK_BUDGET) {
            match item {
                Ok(m) => {
                    if let Some(part) = vmem::phys_overlap(&m, start, end) {
                        here += 1;
                        if rows.len() < limit {
                            rows.push(row(&part));
                        }
                    }
                }
                Err(vmem::WalkError::BudgetExhausted { .. }) => cut = true,
                Err(_) => {}
            }
        }
        if here == 0 && !cut {
            continue;
        }
        spaces += usize::from(here > 0);
        let _ = writeln!(out, "space {root:#x} ({label}):");
        for r in &rows {
            let _ = writeln!(out, "  {r}");
        }
        if here > rows.len() {
            let _ = writeln!(out, "  ... {} more (raise --limit)", here - rows.len());
        }
        if cut {
            let _ = writeln!(out, "  (walk cut short at {WALK_BUDGET} entries)");
        }
        found += here;
    }
    let _ = writeln!(out, "{found} mappings in {spaces} spaces");
    Ok(())
}
