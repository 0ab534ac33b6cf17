//! `monitor vmem snapshot NAME` and `vmem diff [NAME | --dump FILE] [--limit N]`: what
//! changed in the page tables since the VM last stopped, since a snapshot,
//! or since an earlier memory dump — mappings added, removed, re-pointed to
//! other physical memory, or with other rights — per known space. A
//! snapshot is the coalesced walk of every space (cost proportional to the
//! tables); accessed/dirty bits are not changes.

use std::fmt::Write;
use std::path::Path;

use super::args::Args;
use super::context::Context;
use super::errors::CmdError;
use super::json;
use super::listing::{row, CUT_SHORT};
use super::snapshot::{take_in, Snapshot};
use crate::target::dump::dump_file::Dump;
use crate::target::dump::host_file::open_client_named;
use crate::vmem::{self, Mapping};

pub(crate) const USAGE: &str = "\
vmem snapshot NAME
    remember the mappings of every known space under NAME
vmem diff [NAME | --dump FILE] [--limit N] [--json]
    what changed since the last stop (the first time: since the session's
    first run), since snapshot NAME, or since the memory dump FILE (an
    earlier dump of this VM): mappings added, removed, re-pointed, rights
    (accessed/dirty bits are not changes)
    e.g. monitor vmem snapshot before; (continue); monitor vmem diff before
";

/// The mappings of every known space now.
pub(crate) fn take(ctx: &Context<'_>) -> Result<Snapshot, CmdError> {
    Ok(take_in(ctx.memory, ctx.with_formats(ctx.roots())?))
}

/// Changes shown per space unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 200;

/// Print what changed from `before` (called `what`) to `now`, at most
/// `limit` changes per space, as text or (`json`) as JSON.
fn report(
    before: &Snapshot,
    now: &Snapshot,
    what: &str,
    (limit, json): (usize, bool),
    out: &mut String,
) {
    if json {
        report_json(before, now, what, limit, out);
        return;
    }
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
    let limit = args.limit(DEFAULT_LIMIT)?;
    let now = take(ctx)?;
    if let Some(file) = args.option("dump") {
        let opened = open_client_named(ctx.host_files, Path::new(file))?;
        let dump = Dump::open_file(&opened, Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
        let before = take_in(dump.ram(), ctx.with_formats(ctx.roots())?);
        report(
            &before,
            &now,
            &format!("dump {file}"),
            (limit, args.flag("json")),
            out,
        );
        return Ok(());
    }
    match args.positional.first() {
        Some(&name) => {
            let before = ctx.snapshots.get(name).ok_or_else(|| {
                format!("no snapshot named '{name}' (take one with vmem snapshot {name})")
            })?;
            report(
                before,
                &now,
                &format!("snapshot '{name}'"),
                (limit, args.flag("json")),
                out,
            );
        }
        None => {
            let (before, what) = ctx
                .last_stop
                .ok_or("the VM has not run since gdb attached: nothing to compare with")?;
            report(before, &now, what, (limit, args.flag("json")), out);
        }
    }
    Ok(())
}

/// `diff --json`: `{"since", "spaces": [{"space", "in_before", "cut",
/// "count", "changes": [{"kind", "old", "new"}…]}…], "total"}` (`old`,
/// `new`: MAPPING or null; `changes` holds the first `--limit`).
fn report_json(before: &Snapshot, now: &Snapshot, what: &str, limit: usize, out: &mut String) {
    let or_null = |m: &Option<Mapping>| m.as_ref().map_or("null".to_string(), json::mapping);
    let mut total = 0;
    let spaces: Vec<String> = now
        .spaces
        .iter()
        .map(|(root, new)| {
            let old = before.spaces.get(root);
            let changes = old
                .map(|old| vmem::diff_mappings(old, new))
                .unwrap_or_default();
            total += changes.len();
            let shown: Vec<String> = changes
                .iter()
                .take(limit)
                .map(|c| {
                    format!(
                        "{{\"kind\":{},\"old\":{},\"new\":{}}}",
                        json::string(c.kind.label()),
                        or_null(&c.old),
                        or_null(&c.new)
                    )
                })
                .collect();
            format!(
                "{{\"space\":{},\"in_before\":{},\"cut\":{},\"count\":{},\"changes\":[{}]}}",
                json::hex(*root),
                old.is_some(),
                before.cut.contains(root) || now.cut.contains(root),
                changes.len(),
                shown.join(",")
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "{{\"since\":{},\"spaces\":[{}],\"total\":{total}}}",
        json::string(what),
        spaces.join(",")
    );
}
