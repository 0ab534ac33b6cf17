//! Sessions coming and going: Ctrl-C, detach and re-attach, gdb killed
//! with SIGKILL while breakpoints are planted.

mod demo;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use demo::{hex_after, number_after, DemoVm};

#[test]
fn ctrl_c_stops_a_running_guest() {
    let Some(vm) = DemoVm::start() else { return };
    let mut cmd = vm.gdb_command(&["continue", "info threads", "print counter"]);
    let mut gdb = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb");
    // Let the guest run, then press Ctrl-C.
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(gdb.id() as i32, libc::SIGINT) };
    let mut out = String::new();
    gdb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = gdb.wait().unwrap();
    eprintln!("{out}\nCtrl-C to gdb exit: {:?}", sent.elapsed());
    assert!(status.success(), "{out}");
    assert!(out.contains("received signal SIGINT"), "{out}");
    assert!(out.contains("Thread 1.2"), "{out}");
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
    assert!(sent.elapsed() < Duration::from_secs(5));
}

#[test]
fn detach_then_a_second_gdb_attaches_and_the_guest_ran_meanwhile() {
    let Some(vm) = DemoVm::start() else { return };
    let first = vm.gdb(&["print counter", "detach"]);
    assert!(first.contains("detached"), "{first}");
    std::thread::sleep(Duration::from_millis(500));
    let second = vm.gdb(&["print counter", "info threads"]);
    let (a, b) = (
        number_after(&first, "$1 = ").unwrap(),
        number_after(&second, "$1 = ").unwrap(),
    );
    assert!(b > a, "the guest ran between sessions: {a} -> {b}");
    assert!(second.contains("Thread 1.2"), "{second}");
}

#[test]
fn gdb_killed_mid_session_leaves_no_int3_behind() {
    let Some(mut vm) = DemoVm::start() else {
        return;
    };
    for round in 0..3 {
        let mut commands = vec!["break level3", "break write_watched", "hbreak level1"];
        commands.extend(std::iter::repeat_n("continue", 500));
        let mut cmd = vm.gdb_command(&commands);
        let mut gdb = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("gdb");
        // Kill at different points: while planting, while stopped, while running.
        std::thread::sleep(Duration::from_millis(300 + 400 * round));
        gdb.kill().expect("SIGKILL gdb");
        let _ = gdb.wait();
        let mut out = String::new();
        gdb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(
            !out.contains("detached"),
            "round {round} ended before the kill:\n{out}"
        );
    }
    assert!(vm.alive());
    // A new session sees the original bytes (no breakpoints are planted now,
    // so nothing masks them) and the guest still runs.
    let out = vm.gdb(&[
        "print counter",
        "x/1xb level3",
        "x/1xb write_watched",
        "x/1xb level1",
        "info breakpoints",
    ]);
    for func in ["<level3>", "<write_watched>", "<level1>"] {
        let byte =
            hex_after(&out, &format!("{func}:")).unwrap_or_else(|| panic!("{func} in {out}"));
        assert_eq!(
            byte, 0x55,
            "{func} must start with push %rbp, found {byte:#x}"
        );
    }
    // Every breakpointed instruction (after the prologue) is intact too.
    let again = vm.gdb(&["x/16xb level3", "x/16xb write_watched", "print counter"]);
    assert!(!again.to_lowercase().contains("0xcc"), "{again}");
    let before = number_after(&out, "$1 = ").unwrap();
    let after = number_after(&again, "$1 = ").unwrap();
    assert!(after > before, "the guest runs on: {before} -> {after}");
}
