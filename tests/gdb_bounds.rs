//! Entries pointing outside guest RAM and the listener's security rules.

mod demo;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use demo::{number_after, DemoVm};

#[test]
fn ptes_pointing_outside_ram_give_errors() {
    let Some(vm) = DemoVm::start() else { return };
    // In both spaces, so the vCPU's current one does not matter: past the
    // end of the 64 MiB of RAM, the highest encodable page, and a range
    // straddling the end of RAM (first page RAM, second not).
    let mut commands: Vec<String> = Vec::new();
    let top = demo::highest_page();
    for space in &vm.spaces {
        commands.push(format!(
            "monitor vmem map 0x70000000 0x100000000 4k rw --space {space:#x}"
        ));
        commands.push(format!(
            "monitor vmem map 0x70001000 {top:#x} 4k rw --space {space:#x}"
        ));
        commands.push(format!(
            "monitor vmem map 0x70002000 0x3fff000 8k rw --space {space:#x}"
        ));
    }
    let mut all: Vec<&str> = commands.iter().map(String::as_str).collect();
    all.extend([
        "x/gx 0x70000000",
        "x/gx 0x70001ff8",
        "set {long}0x70001000 = 1",
        "x/2gx 0x70002ff8",
        "monitor vmem translate 0x70001000",
        "monitor xp /gx 0xffffffffffffff00",
        "monitor gva2gpa 0x70001008",
        "print counter",
    ]);
    let out = vm.gdb(&all);
    assert!(
        out.contains("Cannot access memory at address 0x70000000"),
        "{out}"
    );
    assert!(
        out.contains("Cannot access memory at address 0x70001ff8"),
        "{out}"
    );
    assert!(
        out.contains("Cannot access memory at address 0x70001000"),
        "{out}"
    );
    // The RAM half of the straddling read is returned, then it stops.
    assert!(out.contains("0x70002ff8:\t0x"), "{out}");
    assert!(
        out.contains("Cannot access memory at address 0x70003000"),
        "{out}"
    );
    assert!(out.contains(&format!("=> physical {top:#x}")), "{out}");
    assert!(
        out.contains("error: Cannot access memory at 0xffffffffffffff00"),
        "{out}"
    );
    assert!(out.contains(&format!("gpa: {:#x}", top + 8)), "{out}");
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
}

fn demo_vm(args: &[&str]) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/demo-vm");
    Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo VM")
}

fn first_line_with(reader: impl std::io::Read, needle: &str) -> Option<String> {
    BufReader::new(reader)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains(needle))
}

#[test]
fn a_non_loopback_listener_logs_a_warning() {
    if !demo::available() {
        return;
    }
    let mut vm = demo_vm(&["--listen", "0.0.0.0:0", "--vcpus", "1"]);
    let warning = first_line_with(vm.stderr.take().unwrap(), "non-loopback");
    let _ = vm.kill();
    let _ = vm.wait();
    let warning = warning.expect("a warning about the non-loopback address");
    assert!(
        warning.contains("WARN") && warning.contains("0.0.0.0"),
        "{warning}"
    );
}

#[test]
fn the_unix_socket_is_private() {
    if !demo::available() {
        return;
    }
    let path = std::env::temp_dir().join(format!("vmem-gdbstub-{}.sock", std::process::id()));
    let mut vm = demo_vm(&["--unix", path.to_str().unwrap(), "--vcpus", "1"]);
    let ready = first_line_with(vm.stdout.take().unwrap(), "listening on");
    assert!(ready.is_some());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    let out = demo::run_with_timeout(
        {
            let mut gdb = Command::new("gdb");
            gdb.args(["-batch", "-nx", "-ex"])
                .arg(format!("target remote {}", path.display()))
                .args(["-ex", "print counter"]);
            gdb
        },
        std::time::Duration::from_secs(30),
    );
    let _ = vm.kill();
    let _ = vm.wait();
    let _ = std::fs::remove_file(&path);
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
}
