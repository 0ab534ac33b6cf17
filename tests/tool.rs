//! The `vmem-gdbstub` tool on the Linux fixture's dump: its offline
//! commands print what the same `monitor vmem` command prints through gdb
//! on the same dump, `audit` exits 1 on findings, bad files and bad
//! arguments get one line and status 2.

mod demo;
mod fixture;

use std::process::{Command, Output};

use fixture::{fixture, known_spaces, Served};

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
    let cut = std::env::temp_dir().join(format!("vmem-tool-cut-{}.elf", std::process::id()));
    let head = std::fs::read(dump).unwrap()[..1 << 20].to_vec();
    std::fs::write(&cut, head).unwrap();
    let kdump = std::env::temp_dir().join(format!("vmem-tool-cut-{}.kdump", std::process::id()));
    let head = std::fs::read(dir.join("dump.kdump-plain")).unwrap()[..1 << 14].to_vec();
    std::fs::write(&kdump, head).unwrap();
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
    let _ = std::fs::remove_file(&kdump);
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

/// `audit --json` and `walk --json` parse, and agree with the text: the
/// same counts per kind, the same number of mappings.
#[test]
fn json_output_parses_and_agrees_with_the_text() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let dump = dump.to_str().unwrap();
    let text = String::from_utf8(tool(&["audit", dump, "--all"]).stdout).unwrap();
    let out = tool(&["audit", dump, "--all", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit --json");
    let findings = json["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 5, "{json}");
    for finding in findings {
        let line = format!(
            "{}: {}",
            finding["kind"].as_str().unwrap(),
            finding["count"].as_u64().unwrap()
        );
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        let shown = finding["shown"].as_array().unwrap();
        assert!(shown.len() as u64 <= finding["count"].as_u64().unwrap().min(10));
        for item in shown {
            let va = item["mapping"]["va"].as_str().unwrap();
            assert!(va.starts_with("0x"), "{item}");
            assert!(
                item["granted_by"].as_str().unwrap().starts_with("entry 0x"),
                "{item}"
            );
        }
    }
    let summary = format!(
        "audit of {} space(s), {} mappings, {} page-table pages",
        json["spaces"], json["mappings"], json["table_pages"]
    );
    assert!(text.starts_with(&summary), "{summary}\n{text}");

    let text = String::from_utf8(tool(&["walk", dump, "--limit", "5"]).stdout).unwrap();
    let out = tool(&["walk", dump, "--limit", "5", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("walk --json");
    let mappings = json["mappings"].as_array().unwrap();
    assert_eq!(mappings.len(), 5);
    let total = json["total"].as_u64().unwrap();
    assert!(
        text.contains(&format!("\n{total} mappings; ")),
        "{total}: {text}"
    );
    let first_va = u64::from_str_radix(&mappings[0]["va"].as_str().unwrap()[2..], 16).unwrap();
    let first_row = text.lines().nth(2).unwrap();
    assert!(
        first_row.starts_with(&format!("{first_va:016x}-")),
        "{first_row}"
    );
    assert_eq!(
        json["space"].as_str().unwrap(),
        text.lines()
            .next()
            .unwrap()
            .trim_start_matches("space ")
            .trim_end_matches(':')
    );
}

/// `translate --json` of the kernel's banner: the same levels and physical
/// address as the text.
#[test]
fn translate_json_agrees_with_the_text() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let dump = dump.to_str().unwrap();
    let banner = format!("{:#x}", fixture::kallsyms(dir)["linux_banner"]);
    let text = String::from_utf8(tool(&["translate", dump, &banner]).stdout).unwrap();
    let out = tool(&["translate", dump, &banner, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("translate --json");
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len() + 3, text.lines().count(), "{json}\n{text}");
    let pa = json["pa"].as_str().unwrap();
    assert!(
        text.contains(&format!("=> physical {pa} (")),
        "{pa}: {text}"
    );
    assert!(json["fault"].is_null());
    let unmapped = tool(&["translate", dump, "0x10", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&unmapped.stdout).unwrap();
    assert!(json["pa"].is_null() && json["fault"].is_string(), "{json}");
}

/// `find`, `spaces` and `diff` with `--json` count what their text counts.
#[test]
fn find_spaces_and_diff_json_count_what_the_text_counts() {
    let Some(dir) = fixture() else { return };
    let (dump, dump2) = (dir.join("dump.elf"), dir.join("dump2.elf"));
    let (dump, dump2) = (dump.to_str().unwrap(), dump2.to_str().unwrap());
    let both = |args: &[&str]| {
        let text = String::from_utf8(tool(args).stdout).unwrap();
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let out = tool(&with_json);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        (text, json)
    };
    let (text, json) = both(&["find", dump, "0x1000000"]);
    let total = json["total"].as_u64().unwrap();
    assert!(total > 0, "{json}");
    assert!(
        text.contains(&format!("{total} mappings in ")),
        "{total}: {text}"
    );

    let (text, json) = both(&["spaces", dump]);
    let spaces = json["spaces"].as_array().unwrap();
    let headers = text.lines().filter(|l| l.starts_with("space 0x")).count();
    assert_eq!(spaces.len(), headers, "{text}");
    let own: usize = spaces
        .iter()
        .map(|s| s["mappings"].as_array().unwrap().len())
        .sum();
    let shared: usize = spaces
        .iter()
        .map(|s| s["shared"].as_array().unwrap().len())
        .sum();
    let rows = text.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(own + shared, rows, "{text}");
    assert!(shared > 0, "the kernel half is shared: {json}");

    let (text, json) = both(&["diff", dump2, "--dump", dump]);
    let total = json["total"].as_u64().unwrap();
    assert!(total > 0, "{json}");
    assert!(
        text.contains(&format!("\n{total} changes since dump ")),
        "{total}: {text}"
    );
}

/// `vmem-gdbstub demo` boots the demo VM from the installed binary alone:
/// its guest is built into it, and gdb reads the guest's symbols from the
/// stub (`vFile`), not from a file on the host.
#[test]
fn the_demo_runs_from_the_binary_alone() {
    if !demo::available() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmem-gdbstub"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vmem-gdbstub demo");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("gdb stub listening on 127.0.0.1:")?
                .trim()
                .parse()
                .ok()
        })
        .expect("the demo says where it listens");
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex"])
        .arg(format!("target remote 127.0.0.1:{port}"))
        .args(["-ex", "bt"])
        .stdin(std::process::Stdio::null());
    let out = demo::run_with_timeout(gdb, std::time::Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("{out}");
    assert!(out.contains("Reading symbols from target:"), "{out}");
    assert!(out.contains("in kmain (vcpu="), "{out}");
}

/// `vmem-gdbstub serve` with the boot's kallsyms: gdb names the kernel's
/// frames, as with the demo VM's `--dump`.
#[test]
fn serve_hands_the_dump_and_its_symbols_to_gdb() {
    let Some(dir) = fixture() else { return };
    let mut serve = Command::new(env!("CARGO_BIN_EXE_vmem-gdbstub"));
    serve
        .arg("serve")
        .arg(dir.join("dump.elf"))
        .args(["--listen", "127.0.0.1:0", "--symbols"])
        .arg(dir.join("kallsyms"));
    let served = Served::launch(serve);
    let out = served.gdb(&["bt 4"]);
    assert!(out.contains("in native_safe_halt ()"), "{out}");
    assert!(out.contains("in do_idle ()"), "{out}");
}

/// `--scan` on an offline command finds the spaces no CPU had loaded
/// first, as `monitor vmem spaces --scan` does in a session: `audit --all
/// --scan` prints what gdb's session prints for the two commands in a row.
#[test]
fn scan_first_then_the_command_as_in_a_session() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let dump = dump.to_str().unwrap();
    let served = Served::start(dir);
    let through_gdb = served.gdb(&[
        "monitor vmem spaces --scan",
        "monitor vmem audit --all --limit 2",
    ]);
    let expected: Vec<&str> = through_gdb
        .lines()
        .skip_while(|l| !l.starts_with("audit of"))
        .take_while(|l| !l.starts_with("[Inferior"))
        .collect();
    let offline = tool(&["audit", dump, "--all", "--scan", "--limit", "2"]);
    let printed = String::from_utf8_lossy(&offline.stdout);
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected);
    assert_eq!(offline.status.code(), Some(1), "{printed}");
    let known = tool(&["audit", dump, "--all"]);
    let known = String::from_utf8_lossy(&known.stdout);
    let audited = format!("audit of {} space(s)", known_spaces(dir));
    assert!(
        known.starts_with(&audited) && !printed.starts_with(&audited),
        "{known}\n{printed}"
    );

    // spaces --json after a scan lists what the scan found besides.
    let scan = String::from_utf8(tool(&["spaces", dump, "--scan", "any"]).stdout).unwrap();
    let found = scan.lines().filter(|l| l.starts_with("space 0x")).count();
    let out = tool(&["spaces", dump, "--scan", "any", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("spaces --json");
    // Besides the vCPUs' and the kernel's own (VMCOREINFO).
    assert_eq!(
        json["spaces"].as_array().unwrap().len(),
        found + known_spaces(dir),
        "{scan}"
    );
}

/// A reader that stops early (`vmem-gdbstub walk … | head -1`) ends the
/// tool quietly.
#[test]
fn a_closed_pipe_is_not_an_error() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' walk '{}' --limit 5000 | head -1",
            env!("CARGO_BIN_EXE_vmem-gdbstub"),
            dump.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
