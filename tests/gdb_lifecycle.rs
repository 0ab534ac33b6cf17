//! Sessions coming and going: Ctrl-C, detach and re-attach, gdb killed
//! with SIGKILL while breakpoints are planted.

mod demo;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use demo::{ctrl_c_after, number_after, DemoVm};

#[test]
fn ctrl_c_stops_a_running_guest() {
    let Some(vm) = DemoVm::start() else { return };
    // Let the guest run, then press Ctrl-C.
    let gdb = vm.gdb_command(&["continue", "info threads", "print counter"]);
    let (out, clean, took) = ctrl_c_after(gdb, Duration::from_millis(1500));
    assert!(clean, "{out}");
    assert!(out.contains("received signal SIGINT"), "{out}");
    assert!(out.contains("Thread 1.2"), "{out}");
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
    assert!(took < Duration::from_secs(5));
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
    let long = std::env::var("VMEM_GDBSTUB_LONG").is_ok_and(|v| v == "1");
    let rounds = if long { 40 } else { 10 };
    // The guest's code page, before any breakpoint.
    let code = |out: &str| -> Vec<String> {
        out.lines()
            // `x` rows only, not a "0x… in f ()" stop line.
            .filter(|l| l.starts_with("0xffffffff804") && l.contains(">:"))
            .map(String::from)
            .collect()
    };
    let before = code(&vm.gdb(&["x/512xb 0xffffffff80400000"]));
    assert!(before.len() >= 64, "{before:?}");
    let mut seed = 0x1234_5678u64;
    for round in 0..rounds {
        let mut commands = vec![
            "break level3",
            "break write_watched",
            "hbreak level1",
            "watch counter",
        ];
        commands.extend(std::iter::repeat_n("continue", 500));
        let mut cmd = vm.gdb_command(&commands);
        let mut gdb = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("gdb");
        // Kill at a pseudo-random point: while connecting, planting,
        // stopped at a breakpoint, or with the guest running.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 1200));
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
    // A new session: no int3 left (nothing is planted now, so nothing
    // masks the bytes), debug registers clear, the guest still runs.
    let out = vm.gdb(&[
        "print counter",
        "x/512xb 0xffffffff80400000",
        "monitor info registers",
    ]);
    assert_eq!(code(&out), before, "the guest's code changed");
    assert!(
        out.contains(
            "DR0=0000000000000000 DR1=0000000000000000 DR2=0000000000000000 DR3=0000000000000000"
        ),
        "{out}"
    );
    assert!(out.contains("DR7=0000000000000400"), "{out}");
    let again = vm.gdb(&["print counter"]);
    let before = number_after(&out, "$1 = ").unwrap();
    let after = number_after(&again, "$1 = ").unwrap();
    assert!(after > before, "the guest runs on: {before} -> {after}");
}

/// A reply later than gdb's remotetimeout (2 s; here the VMM is frozen
/// for 3 s, as a loaded host or a long monitor command would make it):
/// gdb sends `-` while it waits, and every reply still reaches the
/// command it answers.
#[test]
fn a_reply_past_gdbs_timeout_leaves_the_replies_in_order() {
    let Some(vm) = DemoVm::start() else { return };
    let pid = vm.pid();
    let out = vm.gdb(&[
        &format!("shell kill -STOP {pid}; (sleep 3; kill -CONT {pid}) &"),
        "monitor vmem use phys",
        "monitor vmem use current",
        "print counter",
        "detach",
    ]);
    assert!(
        out.contains("gdb memory accesses now go through physical addresses"),
        "{out}"
    );
    assert!(
        out.contains("gdb memory accesses now go through the current vCPU's address space"),
        "{out}"
    );
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
    assert!(out.contains("[Inferior 1 (process 1) detached]"), "{out}");
    assert!(!out.contains("Target does not support"), "{out}");
}

/// After a step, the stepped vCPU's own thread answers gdb (the session is
/// lent to it) and blocks on gdb's socket alone: shutting the VM down
/// (SIGTERM to the demo VMM) still ends its loop at once.
#[test]
fn the_vm_shuts_down_while_a_vcpu_thread_answers_gdb() {
    let Some(mut vm) = DemoVm::start() else {
        return;
    };
    let marker = std::env::temp_dir().join(format!("vmem-stepped-{}", vm.pid()));
    let _ = std::fs::remove_file(&marker);
    let mut gdb = vm
        .gdb_command(&[
            "thread 1",
            "stepi",
            &format!("shell touch {}", marker.display()),
            "shell sleep 20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdb");
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gdb never stepped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) };
    while vm.alive() {
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the VMM did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("SIGTERM to exit: {:?}", sent.elapsed());
    let _ = gdb.kill();
    let _ = gdb.wait();
    let _ = std::fs::remove_file(&marker);
}
