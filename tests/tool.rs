//! The `vmem-gdbstub` tool on the Linux fixture's dump: its offline
//! commands print what the same `monitor vmem` command prints through gdb
//! on the same dump, `audit` exits 1 on findings, bad files and bad
//! arguments get one line and status 2.

mod fixture;

use std::process::{Command, Output};

use fixture::{fixture, Served};

/// The tool with `args`.
fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmem-gdbstub"))
        .args(args)
        .output()
        .expect("vmem-gdbstub")
}

/// What gdb printed for `monitor COMMAND`: the lines after the prompt echo
/// up to the detach.
fn monitor_lines(out: &str) -> Vec<&str> {
    out.lines()
        .skip_while(|l| !l.starts_with("space 0x") && !l.starts_with("audit of"))
        .take_while(|l| !l.starts_with("[Inferior"))
        .collect()
}

#[test]
fn walk_and_audit_print_what_the_monitor_prints() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let dump = dump.to_str().unwrap();
    let served = Served::start(dir);
    for args in [
        vec!["walk", "--limit", "40"],
        vec!["walk", "0xffffffff80000000", "--limit", "10"],
        vec!["audit", "--all", "--limit", "3"],
    ] {
        let through_gdb = served.gdb(&[&format!("monitor vmem {}", args.join(" "))]);
        let mut tool_args = vec![args[0], dump];
        tool_args.extend(&args[1..]);
        let offline = tool(&tool_args);
        let printed = String::from_utf8_lossy(&offline.stdout);
        let expected = monitor_lines(&through_gdb);
        assert!(expected.len() > 3, "{through_gdb}");
        assert_eq!(printed.lines().collect::<Vec<_>>(), expected, "{args:?}");
        // Linux maps its page tables writable through the direct map: an
        // audit of the fixture always finds something.
        let status = if args[0] == "audit" { 1 } else { 0 };
        assert_eq!(offline.status.code(), Some(status), "{args:?}: {printed}");
    }
}

#[test]
fn bad_files_and_arguments_get_one_line_and_status_2() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let dump = dump.to_str().unwrap();
    let kdump = dir.join("dump.kdump");
    let cut = std::env::temp_dir().join(format!("vmem-tool-cut-{}.elf", std::process::id()));
    let head = std::fs::read(dump).unwrap()[..1 << 20].to_vec();
    std::fs::write(&cut, head).unwrap();
    for args in [
        vec!["walk", "/nonexistent/dump"],
        vec!["walk", kdump.to_str().unwrap()],
        vec!["walk", cut.to_str().unwrap()],
        vec!["walk", dump, "--bogus"],
        vec!["translate", dump, "zz"],
        vec!["audit", dump, "--all", "1"],
    ] {
        let out = tool(&args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        let last = said.lines().last().unwrap_or("");
        assert!(last.starts_with("vmem-gdbstub: "), "{args:?}: {said}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_file(&cut);
    let help = tool(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for command in [
        "serve",
        "walk",
        "translate",
        "spaces",
        "find",
        "audit",
        "diff",
    ] {
        assert!(help.contains(command), "{help}");
    }
}
