//! `vmem-gdbstub`: serve a VM's memory dump to gdb and lldb, or answer
//! questions about its page tables without a debugger.
//!
//! ```sh
//! vmem-gdbstub demo                               # the demo VM on :9001 (KVM)
//! vmem-gdbstub serve vm.elf --symbols kallsyms    # then: gdb -ex "target remote :9001"
//! vmem-gdbstub audit vm.elf --all                 # exit 1 when something is found
//! vmem-gdbstub walk vm.elf 0xffffffff80000000 --limit 20
//! ```
//!
//! The offline commands are the `monitor vmem` commands, with the same
//! arguments, defaults and output (`walk` prints what `monitor vmem walk`
//! prints on the same dump); each takes `--json` (the schema is in
//! docs/monitor.md). `--scan [shared|any]` on any of them first finds the
//! address spaces no CPU had loaded (`monitor vmem spaces --scan`), so
//! `audit --all --scan` audits every process. Exit status: 0, 1 (`audit`
//! found something), 2 (bad input: an unreadable or malformed file, a bad
//! argument). A scan or audit that takes more than a moment draws a
//! progress bar on stderr when that is a terminal.

mod demo;
mod progress_bar;

use std::ffi::OsString;
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmem_gdbstub::target::{Debugger, Dump, GdbListener};

#[derive(Parser)]
#[command(name = "vmem-gdbstub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the demo VM (a small bundled guest on KVM) with the stub on
    /// 127.0.0.1:9001; `demo --help` lists its options.
    #[command(disable_help_flag = true)]
    Demo {
        /// The demo VM's options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Serve a dump (QEMU's `dump-guest-memory` ELF or kdump file, `virsh
    /// dump`, makedumpfile's output) to gdb and lldb until interrupted.
    Serve(Serve),
    /// Coalesced mappings of an address space (`monitor vmem walk`).
    Walk(Offline),
    /// Every level of the walk for one address (`monitor vmem translate`).
    Translate(Offline),
    /// Every known address space, walked together; `--scan` finds more in
    /// RAM (`monitor vmem spaces`).
    Spaces(Offline),
    /// Where a physical page (or a VA's page) is mapped (`monitor vmem find`).
    Find(Offline),
    /// What in the page tables is unsafe (`monitor vmem audit`).
    Audit(Offline),
    /// What changed since an earlier dump: `diff LATER --dump EARLIER`
    /// (`monitor vmem diff`).
    Diff(Offline),
}

#[derive(Args)]
struct Serve {
    /// The dump.
    file: PathBuf,
    /// Where gdb connects.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: String,
    #[command(flatten)]
    options: demo::ServeOptions,
}

#[derive(Args)]
struct Offline {
    /// The dump.
    file: PathBuf,
    /// The command's arguments, as `monitor vmem help` lists them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Bad input: a one-line message and status 2.
fn bad(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmem-gdbstub: {why}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Demo { .. }) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log))
        .format_timestamp_micros()
        .init();
    let (name, offline) = match cli.command {
        Command::Demo { args } => {
            let program = OsString::from("vmem-gdbstub demo");
            demo::main_with(std::iter::once(program).chain(args));
            return ExitCode::SUCCESS;
        }
        Command::Serve(serve) => return run_serve(serve),
        Command::Walk(o) => ("walk", o),
        Command::Translate(o) => ("translate", o),
        Command::Spaces(o) => ("spaces", o),
        Command::Find(o) => ("find", o),
        Command::Audit(o) => ("audit", o),
        Command::Diff(o) => ("diff", o),
    };
    let dump = match Dump::open(&offline.file) {
        Ok(dump) => dump,
        Err(e) => return bad(format!("{}: {e}", offline.file.display())),
    };
    if let Err(why) = demo::servable(&dump) {
        return bad(format!("{}: {why}", offline.file.display()));
    }
    let mut builder = Debugger::from_dump(dump);
    if let Some(bar) = progress_bar::on_terminal() {
        builder = builder.on_progress(bar);
    }
    let debugger = builder.build();
    let (scan, args) = take_scan(name, offline.args);
    if let Some(scan) = scan {
        if let Err(status) = run_monitor(&debugger, &scan) {
            return status;
        }
    }
    let line = std::iter::once(format!("vmem {name}"))
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ");
    let text = match run_monitor(&debugger, &line) {
        Ok(text) => text,
        Err(status) => return status,
    };
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is no error of ours.
        if e.kind() != ErrorKind::BrokenPipe {
            return bad(format!("cannot write the report: {e}"));
        }
    }
    if name == "audit" && findings(&text) > 0 {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// The `--scan [MODE]` a command was given, as the monitor line that runs
/// it first, and the other arguments. `spaces --scan` in text is the
/// monitor's own command and stays as it is.
fn take_scan(name: &str, args: Vec<String>) -> (Option<String>, Vec<String>) {
    let Some(at) = args.iter().position(|a| a == "--scan") else {
        return (None, args);
    };
    if name == "spaces" && !args.iter().any(|a| a == "--json") {
        return (None, args);
    }
    let mut rest = args;
    rest.remove(at);
    let mode = match rest.get(at).map(String::as_str) {
        Some("shared" | "any") => rest.remove(at),
        _ => "shared".to_string(),
    };
    (Some(format!("vmem spaces --scan {mode}")), rest)
}

/// Run one monitor line; a user error (the command's `error: ` line, with
/// its usage when the line was wrong) goes to stderr with status 2.
fn run_monitor(debugger: &Debugger, line: &str) -> Result<String, ExitCode> {
    let text = debugger.monitor(line).map_err(bad)?;
    if let Some(error) = text.lines().find(|l| l.starts_with("error: ")) {
        eprint!("{text}");
        return Err(bad(error.trim_start_matches("error: ")));
    }
    Ok(text)
}

/// The findings an audit's report counts: `KIND: N` lines, or with
/// `--json` each kind's `"count":N`.
fn findings(report: &str) -> u64 {
    let text: u64 = report
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.rsplit_once(": ")?.1.parse::<u64>().ok())
        .sum();
    let json: u64 = report
        .split("\"count\":")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum();
    text + json
}

fn run_serve(serve: Serve) -> ExitCode {
    let dump = match Dump::open(&serve.file) {
        Ok(dump) => dump,
        Err(e) => return bad(format!("{}: {e}", serve.file.display())),
    };
    let served = match serve.options.apply(dump) {
        Ok(served) => served,
        Err(e) => return bad(e),
    };
    let listener = match GdbListener::tcp(&serve.listen) {
        Ok(listener) => listener,
        Err(e) => return bad(format!("cannot listen on {}: {e}", serve.listen)),
    };
    if let Some(note) = served.symbols_note {
        println!("{note}");
    }
    println!("gdb stub listening on {}", listener.describe());
    match served.builder.build().serve(listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => bad(e),
    }
}
