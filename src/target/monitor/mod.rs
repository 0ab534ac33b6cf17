//! `monitor` commands: see and change the guest's page tables (`vmem …`)
//! and QEMU's commands (`info mem`, `info tlb`, `gva2gpa`, `xp`,
//! `info registers`, `info cpus`, `info lapic`).
//!
//! A command never fails the gdb session: every error is printed as text
//! with the command's usage, and changes nothing. Commands are pure text
//! over vmem; what they change in the session comes back as an
//! [`Effect`], applied by the stub (`stub/monitor_cmd.rs`).
//!
//! Layers, each file importing only from lower ones (this file dispatches):
//! - the commands: `vmem` (walk, translate, map, unmap, protect, spaces,
//!   use, watch), which hands `find`, `audit`, `diff`, `scan` theirs;
//!   `qemu` (QEMU's commands, `info lapic` among them); `dump_info`
//!   (`info dump`, `info vmcoreinfo`);
//! - what they share: `context` (what a command sees, its `Effect`),
//!   `args` and `expr` (arguments, `$reg` arithmetic), `listing` (the
//!   bounded walk and its rows), `json`, `snapshot`, `recorder` (tables
//!   that note their pages), `parallel` (work over many spaces on every
//!   core), `lapic` (an APIC page decoded);
//! - at the bottom: `errors` (how a command fails), and `state` (what the
//!   monitor keeps across commands and sessions).

mod args;
mod audit;
mod context;
mod diff;
mod dump_info;
mod errors;
mod expr;
mod find;
mod json;
mod lapic;
mod listing;
mod parallel;
mod qemu;
mod qemu_aarch64;
mod recorder;
mod scan;
mod snapshot;
pub(crate) mod state;
mod vmem;

use errors::{usage, CmdError};

pub(crate) use context::{Context, Effect, Registers, RunState, View};
pub(crate) use diff::take as take_snapshot;
pub(crate) use lapic::Lapic;
pub(crate) use snapshot::Snapshot;

const HELP: &str = "\
Commands (monitor COMMAND):
  help                this text
  vmem help           the page-table commands with examples
";

/// The lines of `block` that document `command` (its line and the
/// indented ones after it), or all of `block` if none does.
fn usage_of(block: &str, command: &str) -> String {
    let mut lines = block.lines().skip_while(|l| {
        !(l.starts_with(command) && l[command.len()..].starts_with([' ', '\0'])) && *l != command
    });
    let Some(first) = lines.next() else {
        return block.to_string();
    };
    let mut text = format!("{first}\n");
    for line in lines.take_while(|l| l.starts_with(' ')) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Run one monitor command line; returns its output and what to do next.
pub(crate) fn run(ctx: &Context<'_>, line: &str) -> (String, Effect) {
    let mut out = String::new();
    let registers = || match ctx.registers.aarch64() {
        Some(cpu) => Some(expr::RegisterFile::Aarch64(cpu)),
        None => ctx.registers.all_registers().map(expr::RegisterFile::X86),
    };
    let line = match expr::substitute(line, registers) {
        Ok(line) => line,
        Err(CmdError::Usage(why) | CmdError::Failed(why)) => {
            return (format!("error: {why}\n"), Effect::None);
        }
    };
    let owned = expr::words(&line);
    let words: Vec<&str> = owned.iter().map(String::as_str).collect();
    let none = |r: Result<(), CmdError>| r.map(|()| Effect::None);
    let (result, block, command) = match words.as_slice() {
        [] | ["help"] => {
            out.push_str(HELP);
            out.push_str(vmem::USAGE);
            out.push_str(find::USAGE);
            out.push_str(audit::USAGE);
            out.push_str(diff::USAGE);
            out.push_str(vmem::WATCH_USAGE);
            out.push_str(qemu::USAGE);
            out.push_str(lapic::USAGE);
            out.push_str(dump_info::USAGE);
            (Ok(Effect::None), "", String::new())
        }
        ["vmem", rest @ ..] => {
            let command = format!("vmem {}", rest.first().unwrap_or(&""));
            let block = [
                vmem::USAGE,
                find::USAGE,
                audit::USAGE,
                diff::USAGE,
                vmem::WATCH_USAGE,
            ]
            .concat();
            return finish(vmem::run(ctx, rest, &mut out), &block, &command, out);
        }
        ["info", "mem"] => (
            none(qemu::info_mem(ctx, &mut out)),
            qemu::USAGE,
            "info mem".into(),
        ),
        ["info", "tlb"] => (
            none(qemu::info_tlb(ctx, &mut out)),
            qemu::USAGE,
            "info tlb".into(),
        ),
        ["info", "mtree", rest @ ..] => (
            none(qemu::info_mtree(ctx, rest, &mut out)),
            qemu::USAGE,
            "info mtree".into(),
        ),
        ["info", "dump"] => (
            none(dump_info::info_dump(ctx, &mut out)),
            dump_info::USAGE,
            "info dump".into(),
        ),
        ["info", "vmcoreinfo"] => (
            none(dump_info::info_vmcoreinfo(ctx, &mut out)),
            dump_info::USAGE,
            "info vmcoreinfo".into(),
        ),
        ["info", "registers"] => (
            none(qemu::info_registers(ctx, &mut out)),
            qemu::USAGE,
            "info registers".into(),
        ),
        ["cpu", rest @ ..] => (qemu::cpu(ctx, rest), qemu::USAGE, "cpu".into()),
        ["info", "cpus"] => {
            qemu::info_cpus(ctx, &mut out);
            (Ok(Effect::None), qemu::USAGE, "info cpus".into())
        }
        ["info", "lapic", rest @ ..] => (
            none(qemu::info_lapic(ctx, rest, &mut out)),
            lapic::USAGE,
            "info lapic".into(),
        ),
        ["gva2gpa", rest @ ..] => (
            none(qemu::gva2gpa(ctx, rest, &mut out)),
            qemu::USAGE,
            "gva2gpa".into(),
        ),
        ["xp", rest @ ..] => (
            none(qemu::xp(ctx, rest, &mut out)),
            qemu::USAGE,
            "xp".into(),
        ),
        ["x", rest @ ..] => (none(qemu::x(ctx, rest, &mut out)), qemu::USAGE, "x".into()),
        ["gpa2hva", rest @ ..] => (
            none(qemu::gpa2hva(ctx, rest, &mut out)),
            qemu::USAGE,
            "gpa2hva".into(),
        ),
        ["chardev-add", rest @ ..] => (qemu::chardev_add(rest), qemu::USAGE, "chardev-add".into()),
        ["chardev-remove", rest @ ..] => (
            match rest {
                [id] => Ok(Effect::ChardevRemove(id.to_string())),
                _ => Err(usage("expected one ID")),
            },
            qemu::USAGE,
            "chardev-remove".into(),
        ),
        [first, ..] => {
            let what = if *first == "info" { line.trim() } else { first };
            return (
                format!("error: unknown command '{what}' (monitor help lists them)\n"),
                Effect::None,
            );
        }
    };
    finish(result, block, &command, out)
}

/// The output of a command that ended with `result`: a failure is one
/// line; a usage error adds the command's usage.
fn finish(
    result: Result<Effect, CmdError>,
    block: &str,
    command: &str,
    mut out: String,
) -> (String, Effect) {
    match result {
        Ok(effect) => (out, effect),
        Err(CmdError::Failed(why)) => {
            out.push_str(&format!("error: {why}\n"));
            (out, Effect::None)
        }
        Err(CmdError::Usage(why)) => {
            out.push_str(&format!(
                "error: {why}\nusage: {}",
                usage_of(block, command)
            ));
            (out, Effect::None)
        }
    }
}
