//! `monitor vmem …`: see and change the guest's page tables.

use std::fmt::Write;

use super::args::{self, Args, Opt};
use super::context::{space_of, Context, Effect, View};
use super::errors::{usage, CmdError};
use super::listing::{flag_letters, row};
use super::{audit, diff, find, json, scan};
use crate::arch::{Descriptor, PageTableFormat};
use crate::target::machine::memory::GuestTables;
use crate::target::machine::paging::WALK_BUDGET;
use crate::vmem::{self, HumanBytes, MapError, PageSize, SpaceAwareMapping, WalkError};

const DEFAULT_LIMIT: usize = 200;

pub(crate) const USAGE: &str = "\
vmem walk [START [END]] [--space CR3] [--limit N] [--json]
    coalesced mappings of an address space (END exclusive; default: all)
    e.g. monitor vmem walk 0xffffffff80000000 --limit 20
vmem translate VA [--space CR3] [--json]
    every level of the walk for one address
    e.g. monitor vmem translate 0xffffffff80400000
vmem map VA PA LEN [rwxuc] [--page 4k|2m|1g] [--space CR3]
    map LEN bytes at VA to PA (default rights rw; tables from the VMM's pool)
    e.g. monitor vmem map 0x70000000 0x1000000 4k rwu
vmem unmap VA LEN [--space CR3]
    remove the translations of LEN bytes at VA
    e.g. monitor vmem unmap 0x70000000 4k
vmem protect VA LEN [rwxuc] [--space CR3]
    change the rights of mapped pages (default r: read-only)
    e.g. monitor vmem protect 0x400000 4k ru
vmem spaces [--scan [shared|any]] [--json]
    every known address space, walked together; shared sub-tables shown once
    --scan first finds, in guest RAM, the roots no vCPU has loaded: shared
    (the default): by the kernel half they share with this space (KPTI
    pairs as pairs); any: by their structure alone (guests without a
    shared kernel half)
    e.g. monitor vmem spaces --scan
vmem space add CR3
    remember another address space for `vmem spaces`
vmem use CR3|current|phys
    which space gdb's memory accesses go through (phys: physical addresses)
    e.g. monitor vmem use 0x107000
";

/// `r w x u g a d c` with `-` for what is missing (c = copy-on-write).
const HEADER: &str =
    "virtual start    -end               physical start   -end                 size  page  rwxugadcs";

fn summary(out: &mut String, rows: usize, per_size: &std::collections::BTreeMap<PageSize, u64>) {
    let sizes: Vec<String> = per_size
        .iter()
        .rev()
        .map(|(size, bytes)| format!("{} in {size} pages", HumanBytes(*bytes)))
        .collect();
    let mapped = if sizes.is_empty() {
        "nothing mapped".into()
    } else {
        sizes.join(", ")
    };
    let _ = writeln!(out, "{rows} mappings; {mapped}");
}

fn walk(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), CmdError> {
    let root = space_of(ctx, args)?;
    let start = if args.positional.is_empty() {
        0
    } else {
        args.number(0, "START")?
    };
    let end = if args.positional.len() > 1 {
        args.number(1, "END")?
    } else {
        0
    };
    let len = if end == 0 {
        u64::MAX - start
    } else {
        end.checked_sub(start)
            .ok_or_else(|| usage("END is below START"))?
    };
    let limit = args.limit(DEFAULT_LIMIT)?;
    let fmt = ctx.format_of(root)?;
    let tables = GuestTables::new(ctx.memory, root, None);
    if args.flag("json") {
        walk_json(fmt, &tables, root, (start, len), limit, out);
        return Ok(());
    }
    let _ = writeln!(out, "space {root:#x}:");
    let _ = writeln!(out, "{HEADER}");
    let mut per_size = std::collections::BTreeMap::new();
    let (mut shown, mut hidden) = (0usize, 0usize);
    for item in vmem::virt_to_phys(fmt, &tables, start, len).with_budget(WALK_BUDGET) {
        match item {
            Ok(m) => {
                *per_size.entry(m.page_size).or_insert(0u64) += m.len;
                if shown < limit {
                    let _ = writeln!(out, "{}", row(&m));
                    shown += 1;
                } else {
                    hidden += 1;
                }
            }
            Err(e) => {
                let _ = writeln!(out, "! {e}");
            }
        }
    }
    if hidden > 0 {
        let _ = writeln!(out, "... {hidden} more mappings not shown (raise --limit)");
    }
    summary(out, shown + hidden, &per_size);
    Ok(())
}

/// `walk --json`: `{"space", "mappings": [mapping…], "total", "errors":
/// [text…]}`; `mappings` holds the first `limit`, `total` counts all.
fn walk_json(
    fmt: &dyn PageTableFormat,
    tables: &GuestTables<'_>,
    root: u64,
    (start, len): (u64, u64),
    limit: usize,
    out: &mut String,
) {
    let (mut rows, mut errors, mut total) = (Vec::new(), Vec::new(), 0usize);
    for item in vmem::virt_to_phys(fmt, tables, start, len).with_budget(WALK_BUDGET) {
        match item {
            Ok(m) => {
                if rows.len() < limit {
                    rows.push(json::mapping(&m));
                }
                total += 1;
            }
            Err(e) => errors.push(json::string(&e.to_string())),
        }
    }
    let _ = writeln!(
        out,
        "{{\"space\":{},\"mappings\":[{}],\"total\":{total},\"errors\":[{}]}}",
        json::hex(root),
        rows.join(","),
        errors.join(",")
    );
}

/// How an entry reads to a person.
pub(crate) fn describe(fmt: &dyn PageTableFormat, level: usize, d: &Descriptor) -> String {
    match *d {
        Descriptor::Invalid => "not present".into(),
        Descriptor::Reserved { bits } => format!("reserved bits {bits:#x} set: the MMU faults"),
        Descriptor::Table { addr, allowed } => format!("table {addr:#x}, lets through {allowed}"),
        Descriptor::Leaf { addr, perms, flags } => format!(
            "{} page {addr:#x}, {}",
            PageSize(fmt.entry_span(level)),
            flag_letters(perms, flags)
        ),
    }
}

fn translate(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), CmdError> {
    let va = args.number(0, "VA")?;
    let root = space_of(ctx, args)?;
    let fmt = ctx.format_of(root)?;
    let tables = GuestTables::new(ctx.memory, root, None);
    let tr = vmem::translate(fmt, &tables, va);
    if args.flag("json") {
        translate_json(fmt, &tr, (root, va), out);
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{va:#x} in space {root:#x} ({}-level paging):",
        fmt.levels()
    );
    for step in tr.steps() {
        let at = step.at;
        let name = format!("{}[{}]", fmt.level_name(at.level), at.index);
        let _ = writeln!(
            out,
            "  {name:<10} at {:#014x}: {:#018x}  {}",
            at.table + at.index * fmt.entry_size(),
            step.raw,
            describe(fmt, at.level, &step.descriptor)
        );
    }
    match tr.result {
        Ok(t) => {
            let _ = writeln!(
                out,
                "=> physical {:#x} ({} page; effective {})",
                t.pa,
                t.page_size,
                flag_letters(t.perms, t.flags)
            );
            let key = t
                .protection_key
                .map(|k| format!(", protection key {k}"))
                .unwrap_or_default();
            let _ = writeln!(out, "   may: {}{key}", t.rights);
        }
        Err(fault) => {
            let _ = writeln!(out, "=> no translation: {fault}");
        }
    }
    Ok(())
}

/// `translate --json`: `{"space", "va", "levels", "steps": [{"level",
/// "name", "index", "entry", "raw", "meaning"}…], "pa", "page",
/// "attributes", "may", "fault"}` (`pa`, `page`, `attributes`, `may` null
/// without a translation, `fault` null with one).
fn translate_json(
    fmt: &dyn PageTableFormat,
    tr: &vmem::Translation,
    (root, va): (u64, u64),
    out: &mut String,
) {
    let steps: Vec<String> = tr
        .steps()
        .iter()
        .map(|step| {
            let at = step.at;
            format!(
                "{{\"level\":{},\"name\":{},\"index\":{},\"entry\":{},\"raw\":{},\"meaning\":{}}}",
                at.level,
                json::string(fmt.level_name(at.level)),
                at.index,
                json::hex(at.table + at.index * fmt.entry_size()),
                json::hex(step.raw),
                json::string(&describe(fmt, at.level, &step.descriptor))
            )
        })
        .collect();
    let null = || "null".to_string();
    let (pa, page, attributes, may, fault) = match &tr.result {
        Ok(t) => (
            json::hex(t.pa),
            json::string(&t.page_size.to_string()),
            json::string(&flag_letters(t.perms, t.flags)),
            json::string(&t.rights.to_string()),
            null(),
        ),
        Err(fault) => (
            null(),
            null(),
            null(),
            null(),
            json::string(&fault.to_string()),
        ),
    };
    let _ = writeln!(
        out,
        "{{\"space\":{},\"va\":{},\"levels\":{},\"steps\":[{}],\"pa\":{pa},\"page\":{page},\"attributes\":{attributes},\"may\":{may},\"fault\":{fault}}}",
        json::hex(root),
        json::hex(va),
        fmt.levels(),
        steps.join(",")
    );
}

fn edit(
    ctx: &Context<'_>,
    command: &str,
    args: &Args<'_>,
    out: &mut String,
) -> Result<Effect, CmdError> {
    let root = space_of(ctx, args)?;
    let fmt = ctx.format_of(root)?;
    let tables = GuestTables::new(ctx.memory, root, ctx.pool);
    let va = args.number(0, "VA")?;
    let result = match command {
        "map" => {
            let pa = args.number(1, "PA")?;
            let len = args.number(2, "LEN")?;
            let (kind, user) = args::rights(args.positional.get(3).copied().unwrap_or("rw"))?;
            let mut m = vmem::MapRequest::new(va, pa, len, kind);
            m.user_accessible = user;
            if let Some(size) = args.option("page") {
                m.max_page_size = args::page_size(size)?;
            }
            vmem::map(fmt, &tables, m)
                .map(|()| format!("mapped {va:#x}..{:#x} to {pa:#x}", va.wrapping_add(len)))
        }
        "unmap" => {
            let len = args.number(1, "LEN")?;
            vmem::unmap(fmt, &tables, va, len)
                .map(|()| format!("unmapped {va:#x}..{:#x}", va.wrapping_add(len)))
        }
        _ => {
            let len = args.number(1, "LEN")?;
            let (kind, user) = args::rights(args.positional.get(2).copied().unwrap_or("r"))?;
            vmem::protect(fmt, &tables, va, len, kind, user)
                .map(|()| format!("protected {va:#x}..{:#x}", va.wrapping_add(len)))
        }
    };
    match result {
        Ok(done) => {
            let _ = writeln!(out, "{done} in space {root:#x}");
            Ok(Effect::TablesChanged)
        }
        Err(MapError::Alloc { cause, .. }) if ctx.pool.is_none() => Err(format!(
            "cannot {command}: a new page table is needed but the VMM reserved no table pool ({cause})"
        )
        .into()),
        Err(e) => Err(format!("cannot {command}: {e}").into()),
    }
}

fn spaces(ctx: &Context<'_>, json: bool, out: &mut String) -> Result<(), CmdError> {
    let tables = GuestTables::new(ctx.memory, 0, None);
    // Spaces share sub-tables only within one format (on arm64 the
    // kernel's half is a root of its own).
    let mut walks = Vec::new();
    for (fmt, roots) in ctx.spaces_by_format()? {
        let group = vmem::walk_va_spaces(fmt, &tables, roots.as_slice()).with_budget(WALK_BUDGET);
        walks.extend(group.map(|walk| (fmt, walk)));
    }
    let order = |space: u64| ctx.roots().position(|root| root == space);
    walks.sort_by_key(|(_, walk)| order(walk.space));
    if json {
        spaces_json(&walks, &ctx.spaces, out);
        return Ok(());
    }
    for ((fmt, walk), (_, label)) in walks.iter().zip(&ctx.spaces) {
        let _ = writeln!(out, "space {:#x} ({label}):", walk.space);
        for item in &walk.mappings {
            match item {
                SpaceAwareMapping::ThisSpace(m) => {
                    let _ = writeln!(out, "  {}", row(m));
                }
                SpaceAwareMapping::AnotherSpace(r) => {
                    let span = fmt.entry_span(r.depth - 1);
                    let _ = writeln!(
                        out,
                        "  {:016x}-{:016x}  shared with space {:#x} at VA {:#x} (depth {})",
                        r.our_va,
                        r.our_va.wrapping_add(span - 1),
                        r.space,
                        r.their_va,
                        r.depth
                    );
                }
            }
        }
        for e in &walk.errors {
            let _ = writeln!(out, "  ! {e}");
        }
        if walk
            .errors
            .iter()
            .any(|e| matches!(e, WalkError::BudgetExhausted { .. }))
        {
            let _ = writeln!(out, "  (walk cut short)");
        }
    }
    Ok(())
}

/// `spaces --json`: `{"spaces": [{"space", "known_as", "mappings":
/// [MAPPING…], "shared": [{"va", "len", "with", "their_va", "depth"}…],
/// "errors": [TEXT…]}…]}` (`shared`: sub-tables another space holds).
fn spaces_json(
    walks: &[(&(dyn PageTableFormat + Sync), vmem::SpaceWalk)],
    known: &[(u64, String)],
    out: &mut String,
) {
    let spaces: Vec<String> = walks
        .iter()
        .zip(known)
        .map(|((fmt, walk), (_, label))| {
            let (mut own, mut shared) = (Vec::new(), Vec::new());
            for item in &walk.mappings {
                match item {
                    SpaceAwareMapping::ThisSpace(m) => own.push(json::mapping(m)),
                    SpaceAwareMapping::AnotherSpace(r) => shared.push(format!(
                        "{{\"va\":{},\"len\":{},\"with\":{},\"their_va\":{},\"depth\":{}}}",
                        json::hex(r.our_va),
                        json::hex(fmt.entry_span(r.depth - 1)),
                        json::hex(r.space),
                        json::hex(r.their_va),
                        r.depth
                    )),
                }
            }
            let errors: Vec<String> = walk
                .errors
                .iter()
                .map(|e| json::string(&e.to_string()))
                .collect();
            format!(
                "{{\"space\":{},\"known_as\":{},\"mappings\":[{}],\"shared\":[{}],\"errors\":[{}]}}",
                json::hex(walk.space),
                json::string(label),
                own.join(","),
                shared.join(","),
                errors.join(",")
            )
        })
        .collect();
    let _ = writeln!(out, "{{\"spaces\":[{}]}}", spaces.join(","));
}

fn use_space(args: &Args<'_>, out: &mut String) -> Result<Effect, CmdError> {
    let view = match args.positional.first().copied() {
        Some("current") => View::Current,
        Some("phys") | Some("physical") => View::Physical,
        Some(word) => View::Space(args::number(word)?),
        None => return Err(usage("missing CR3, current or phys")),
    };
    let _ = writeln!(out, "gdb memory accesses now go through {view}");
    Ok(Effect::Use(view))
}

pub(crate) const WATCH_USAGE: &str = "\
vmem watch VA [--space CR3]
    stop when VA's translation changes (where it goes, or its rights): the
    table pages on its walk are trapped for writes; the stop says what
    changed, gdb shows the writing instruction. vmem watch: list
vmem unwatch [VA]
    stop watching VA (default: everything)
    e.g. monitor vmem watch 0x400000; continue
";

/// Run `vmem WORDS…`.
pub(crate) fn run(ctx: &Context<'_>, words: &[&str], out: &mut String) -> Result<Effect, CmdError> {
    let (command, rest) = words
        .split_first()
        .ok_or_else(|| usage("missing vmem command"))?;
    let args = Args::parse(
        rest,
        &[
            Opt::Value("space"),
            Opt::Value("limit"),
            Opt::Value("page"),
            Opt::Value("va"),
            Opt::Flag("all"),
            Opt::MaybeValue("scan"),
            Opt::Value("dump"),
            Opt::Flag("json"),
        ],
    )?;
    match *command {
        "help" => {
            out.push_str(USAGE);
            out.push_str(find::USAGE);
            out.push_str(audit::USAGE);
            out.push_str(diff::USAGE);
            out.push_str(WATCH_USAGE);
            Ok(Effect::None)
        }
        "snapshot" => {
            let name = *args
                .positional
                .first()
                .ok_or_else(|| usage("missing NAME"))?;
            let snapshot = diff::take(ctx)?;
            let _ = writeln!(
                out,
                "snapshot '{name}' of {} space(s) taken",
                ctx.spaces.len()
            );
            Ok(Effect::Snapshot(name.to_string(), snapshot))
        }
        "diff" => diff::diff(ctx, &args, out).map(|()| {
            if args.positional.is_empty() && args.option("dump").is_none() {
                Effect::DiffUsed
            } else {
                Effect::None
            }
        }),
        "find" => find::run(ctx, &args, out).map(|()| Effect::None),
        "audit" => audit::run(ctx, &args, out).map(|()| Effect::None),
        "walk" => walk(ctx, &args, out).map(|()| Effect::None),
        "translate" => translate(ctx, &args, out).map(|()| Effect::None),
        "map" | "unmap" | "protect" => edit(ctx, command, &args, out),
        "spaces" if args.option("scan").is_some() => {
            args.no_positional()?;
            if args.flag("json") {
                return Err(usage("--scan prints text; run vmem spaces --json after it"));
            }
            let mode = scan::ScanMode::parse(args.option("scan").unwrap_or_default())?;
            let found = scan::scan(ctx, mode, out)?;
            Ok(Effect::AddSpaces(found))
        }
        "spaces" => {
            args.no_positional()?;
            spaces(ctx, args.flag("json"), out).map(|()| Effect::None)
        }
        "space" => match args.positional.as_slice() {
            ["add", cr3] => {
                let root = args::number(cr3)? & ctx.root_mask;
                let _ = writeln!(out, "added space {root:#x}");
                Ok(Effect::AddSpaces(vec![root]))
            }
            _ => Err(usage("expected: vmem space add CR3")),
        },
        "use" => use_space(&args, out),
        "watch" if args.positional.is_empty() => Ok(Effect::ListWatches),
        "watch" => {
            let va = args.number(0, "VA")?;
            let root = space_of(ctx, &args)?;
            ctx.format_of(root)?;
            Ok(Effect::Watch { va, root })
        }
        "unwatch" => match args.positional.first() {
            Some(word) => Ok(Effect::Unwatch(Some(args::number(word)?))),
            None => Ok(Effect::Unwatch(None)),
        },
        other => Err(usage(format!("unknown vmem command '{other}'"))),
    }
}
