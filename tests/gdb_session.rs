//! A real gdb against the real demo VM on /dev/kvm: symbols, breakpoints,
//! stepping, watchpoints, threads, registers, memory.

mod demo;

use std::time::Duration;

use demo::{hex_after, number_after, DemoVm};

#[test]
fn break_continue_backtrace_locals_and_finish() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "break level3",
        "continue",
        "bt",
        "info locals",
        "print counter",
        "finish",
    ]);
    assert!(out.contains("hit Breakpoint 1, level3"), "{out}");
    // Nested frames, innermost first.
    let frames: Vec<&str> = [
        "#0  level3",
        "#1  ",
        "level2",
        "#2  ",
        "level1",
        "#3  ",
        "vcpu0_main",
        "kmain",
    ]
    .into_iter()
    .collect();
    let mut at = 0;
    for f in frames {
        at += out[at..]
            .find(f)
            .unwrap_or_else(|| panic!("frame {f} missing in\n{out}"));
    }
    assert!(out.contains("local = "), "{out}");
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
    // finish returns to level2 with level3's value (x * 3 + 1).
    // (The attach itself may stop the guest inside level3: take the x of
    // the breakpoint's hit.)
    let x = number_after(&out, "hit Breakpoint 1, level3 (x=").expect("x");
    assert_eq!(
        number_after(&out, "Value returned is $2 = "),
        Some(x * 3 + 1),
        "{out}"
    );
    assert!(
        out[out.find("Value returned").unwrap() - 200..].contains("level2 ("),
        "{out}"
    );
}

#[test]
fn globals_strings_threads_and_registers() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "x/s &greeting",
        "print watched_value",
        "info threads",
        "info registers cr3 efer fs_base cr0 cr4",
        "print/x $cs",
    ]);
    assert!(
        out.contains("0xffffffff8") && out.contains("\"Hello from the higher half!\""),
        "{out}"
    );
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
    assert!(
        out.contains("Thread 1.1") && out.contains("Thread 1.2"),
        "{out}"
    );
    // Register lines start the line ("read_cr3 ()" may be the frame).
    let cr3 = hex_after(&out, "\ncr3 ").expect("cr3");
    assert!(cr3 != 0 && cr3.is_multiple_of(4096), "{out}");
    // LME | LMA | NXE.
    assert_eq!(
        hex_after(&out, "\nefer ").expect("efer") & 0xd00,
        0xd00,
        "{out}"
    );
    assert_eq!(
        hex_after(&out, "\ncr0 ").expect("cr0") >> 31,
        1,
        "paging on: {out}"
    );
    assert!(out.contains("fs_base        0x0"), "{out}");
    assert!(out.contains("$2 = 0x8"), "{out}");
}

#[test]
fn stepi_advances_rip_and_hbreak_stops() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "hbreak level2",
        "continue",
        "print/x $rip",
        "stepi",
        "print/x $rip",
        "stepi",
        "stepi",
        "print/x $rip",
        "delete",
        "info registers rip",
    ]);
    assert!(out.contains("Hardware assisted breakpoint 1"), "{out}");
    assert!(out.contains("hit Breakpoint 1, level2"), "{out}");
    let first = hex_after(&out, "$1 = ").expect("rip 1");
    let second = hex_after(&out, "$2 = ").expect("rip 2");
    let third = hex_after(&out, "$3 = ").expect("rip 3");
    assert!(
        second > first && second - first < 16,
        "stepi from {first:#x} to {second:#x}\n{out}"
    );
    assert_ne!(third, second, "{out}");
}

#[test]
fn other_vcpus_still_run_while_one_is_stepped_for_long() {
    let Some(vm) = DemoVm::start() else { return };
    // Steps hold vCPU 1 back for speed, but never for more than a few
    // milliseconds in a row: a guest stepped through a wait on another
    // vCPU must still advance.
    let out = vm.gdb(&[
        "thread 1",
        "print vcpu1_iterations",
        "stepi 1500",
        "print vcpu1_iterations",
    ]);
    let before = number_after(&out, "$1 = ").expect("before");
    let after = number_after(&out, "$2 = ").expect("after");
    assert!(
        after > before,
        "vcpu 1 ran meanwhile: {before} -> {after}\n{out}"
    );
}

#[test]
fn watch_reports_old_and_new_values() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "watch watched_value",
        "continue",
        "continue",
        "print watched_value",
    ]);
    let old = number_after(&out, "Old value = ").expect("old value");
    let new = number_after(&out, "New value = ").expect("new value");
    assert_eq!(new, old + 1, "{out}");
    assert!(out.contains("write_watched"), "{out}");
    assert_eq!(number_after(&out, "$1 = "), Some(new + 1), "{out}");
}

/// gdb lifts its watchpoints at every stop and puts them back when it
/// resumes: the memslots are laid out again only when the trapped pages
/// really change (`RUST_LOG=debug` logs each layout), not twice per stop;
/// once gdb is gone and the guest runs on, the page traps no more. A
/// second watched page above the first keeps the slots below it.
#[test]
fn watch_stops_lay_out_no_memslots() {
    let Some(vm) = DemoVm::start_logging("vmem_gdbstub=debug", &[]) else {
        return;
    };
    let mut commands = vec!["watch counter"];
    commands.extend(std::iter::repeat_n("continue", 20));
    let out = vm.gdb(&commands);
    assert_eq!(
        out.matches("hit Hardware watchpoint 1: counter").count(),
        20,
        "{out}"
    );
    assert_eq!(
        vm.memslot_layouts(3),
        [
            "1 slots, 0 trapped pages (0 kept, 0 deleted, 1 added)",
            "3 slots, 1 trapped pages (0 kept, 1 deleted, 3 added)",
            "1 slots, 0 trapped pages (0 kept, 3 deleted, 1 added)"
        ],
        "at boot, at the first Z2, after the session"
    );
    // 32 MiB into RAM, far above the kernel's data: never written.
    let out = vm.gdb(&[
        "watch counter",
        "watch *(long *)0xffff888002000000",
        "continue",
    ]);
    assert!(out.contains("hit Hardware watchpoint 1: counter"), "{out}");
    assert_eq!(
        vm.memslot_layouts(6)[3..],
        [
            "3 slots, 1 trapped pages (0 kept, 1 deleted, 3 added)",
            "5 slots, 2 trapped pages (2 kept, 1 deleted, 3 added)",
            "1 slots, 0 trapped pages (0 kept, 5 deleted, 1 added)"
        ],
        "the first Z2, the second Z2, after the session"
    );
}

#[test]
fn unmapped_reads_fail_cleanly() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "x/2xg 0x1000",
        "x/2xg 0x0000800000000000",
        "x/1xg 0xffffffffffff0000",
        "print counter",
    ]);
    assert!(
        out.contains("Cannot access memory at address 0x1000"),
        "{out}"
    );
    assert!(
        out.contains("Cannot access memory at address 0x800000000000"),
        "{out}"
    );
    assert!(
        out.contains("Cannot access memory at address 0xffffffffffff0000"),
        "{out}"
    );
    assert!(
        number_after(&out, "$1 = ").is_some(),
        "the session survives: {out}"
    );
}

#[test]
fn the_guests_own_int3_reaches_the_guest() {
    let Some(vm) = DemoVm::start() else { return };
    let first = vm.gdb(&["print bp_hits", "print vcpu1_iterations"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = vm.gdb(&[
        "print bp_hits",
        "print vcpu1_iterations",
        "print last_fault_vector",
    ]);
    let (hits0, hits1) = (
        number_after(&first, "$1 = ").unwrap(),
        number_after(&second, "$1 = ").unwrap(),
    );
    let iterations = number_after(&second, "$2 = ").unwrap();
    assert!(
        hits1 > hits0,
        "the guest kept taking its own #BP: {hits0} -> {hits1}"
    );
    // One #BP per 16 iterations; the attach may stop vCPU 1 between
    // counting its 16th iteration and its handler counting the #BP.
    let reached = iterations / 16;
    assert!(
        hits1 == reached || (iterations.is_multiple_of(16) && hits1 + 1 == reached),
        "one #BP per 16 iterations: {hits1} after {iterations}"
    );
    assert_eq!(
        number_after(&second, "$3 = "),
        Some(0),
        "no other exception"
    );
}

#[test]
fn breakpoint_bytes_are_hidden_from_memory_reads() {
    let Some(vm) = DemoVm::start() else { return };
    // `maint packet` bypasses gdb's own breakpoint shadowing: the stub
    // itself must show the original byte while its int3 is planted.
    let out = vm.gdb(&[
        "break *level2",
        "continue",
        "print/x (unsigned long)&level2",
    ]);
    assert!(out.contains("hit Breakpoint 1"), "{out}");
    let addr = hex_after(&out, "$1 = ").expect("address");
    let packet = format!("maint packet m{addr:x},1");
    let out = vm.gdb(&["break *level2", "continue", &packet, "delete", &packet]);
    let replies = demo::packet_replies(&out);
    assert_eq!(replies, vec!["\"55\"", "\"55\""], "{out}");
}

#[test]
fn plain_target_remote_finds_the_symbols_itself() {
    let Some(vm) = DemoVm::start() else { return };
    let mut gdb = std::process::Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex"])
        .arg(format!("target remote 127.0.0.1:{}", vm.port))
        .args(["-ex", "bt", "-ex", "print greeting"])
        .stdin(std::process::Stdio::null());
    let out = demo::run_with_timeout(gdb, std::time::Duration::from_secs(60));
    assert!(out.contains("kmain (vcpu="), "{out}");
    assert!(out.contains("\"Hello from the higher half!\""), "{out}");
}

#[test]
fn packets_gdbstub_rejects_do_not_end_the_session() {
    let Some(vm) = DemoVm::start() else { return };
    // A stray space makes `m` malformed; a bad breakpoint kind.
    let out = vm.gdb(&[
        "maint packet m ffffffff80400000,1",
        "maint packet Z0,zz,1",
        "print counter",
        "x/s &greeting",
    ]);
    let replies = demo::packet_replies(&out);
    assert_eq!(replies, vec!["\"E01\"", "\"E01\""], "{out}");
    assert!(number_after(&out, "$1 = ").is_some(), "{out}");
    assert!(out.contains("\"Hello from the higher half!\""), "{out}");
}

/// One step of vCPU 0 with a raw client; its stop reply.
fn step(rsp: &mut demo::rsp::Rsp) -> Vec<u8> {
    match rsp.request(b"vCont;s:1") {
        demo::rsp::Reply::Packet(p) if p.starts_with(b"T05") => p,
        other => panic!("step: {other:?}"),
    }
}

/// A raw client that has stepped vCPU 0 twice (after the first step,
/// vCPU 0's own thread answers), and vCPU 0's rip.
fn stepped_client(port: u16) -> (demo::rsp::Rsp, u64) {
    let mut rsp = demo::rsp::Rsp::connect(port);
    step(&mut rsp);
    let rip = stop_rip(&step(&mut rsp));
    (rsp, rip)
}

/// rip of a stop reply (our stop replies expedite it as register 0x10).
fn stop_rip(reply: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(reply);
    let at = text.find("10:").expect("rip in the stop reply") + 3;
    let bytes = demo::rsp_decode::unhex(text[at..at + 16].as_bytes());
    u64::from_le_bytes(bytes.try_into().unwrap())
}

/// After a step, vCPU 0's own thread answers gdb. A breakpoint planted
/// under its rip must still be stepped over at the next step (its thread
/// cannot wait for its own step: the gdb thread does it), the step must
/// leave the breakpoint byte hidden, and the session goes on.
#[test]
fn a_breakpoint_under_the_answering_vcpu_is_stepped_over() {
    use demo::rsp::{Reply, Rsp};
    let Some(vm) = DemoVm::start() else { return };
    let (mut rsp, rip) = stepped_client(vm.port);
    let read = |rsp: &mut Rsp| match rsp.request(format!("m{rip:x},1").as_bytes()) {
        Reply::Packet(p) => p,
        other => panic!("read: {other:?}"),
    };
    let byte = read(&mut rsp);
    let planted = rsp.request(format!("Z0,{rip:x},1").as_bytes());
    assert_eq!(planted, Reply::Packet(b"OK".to_vec()));
    let next = stop_rip(&step(&mut rsp));
    assert_ne!(next, rip, "the step went past the breakpoint");
    assert_eq!(read(&mut rsp), byte, "the int3 stays hidden");
    let removed = rsp.request(format!("z0,{rip:x},1").as_bytes());
    assert_eq!(removed, Reply::Packet(b"OK".to_vec()));
    step(&mut rsp);
    assert_eq!(rsp.request(b"D"), Reply::Packet(b"OK".to_vec()));
}

/// KVM puts a step's trap flag into RFLAGS when it is given the guest
/// debug, and KVM_SET_REGS can take it out again: a register write between
/// two steps (gdb's `set $rax = …` then `stepi`) must leave the next step a
/// step, not a free run of the guest. rax is changed and put back.
#[test]
fn a_register_write_between_steps_leaves_the_next_a_step() {
    use demo::rsp::Reply;
    let Some(vm) = DemoVm::start() else { return };
    let (mut rsp, from) = stepped_client(vm.port);
    assert_eq!(rsp.request(b"Hg1"), Reply::Packet(b"OK".to_vec()));
    let Reply::Packet(wire) = rsp.request(b"p0") else {
        panic!("no rax")
    };
    let rax = demo::rsp_decode::expand_runs(&wire);
    let mut flipped = rax.clone();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    for value in [&flipped, &rax] {
        let write = [b"P0=".as_slice(), value].concat();
        assert_eq!(rsp.request(&write), Reply::Packet(b"OK".to_vec()));
    }
    // A free run never reports a stop (`step` panics on the timeout).
    let to = stop_rip(&step(&mut rsp));
    assert_ne!(to, from, "the step moved");
    assert_eq!(rsp.request(b"D"), Reply::Packet(b"OK".to_vec()));
}

/// A VM with more vCPUs than host cores (8 on this 2-core machine): gdb
/// sees each as a thread named as QEMU does, unwinds any of them, stops
/// all of them at a breakpoint on one, and after the detach all run on.
#[test]
fn eight_vcpus_stop_and_run_together() {
    let Some(vm) = DemoVm::start_with(&["--vcpus", "8"]) else {
        return;
    };
    let out = vm.gdb(&[
        "info threads",
        "thread 6",
        "bt",
        "break level3",
        "continue",
        "print vcpu1_iterations",
        "print bp_hits",
    ]);
    for cpu in 0..8 {
        assert!(
            out.contains(&format!("Thread 1.{} (CPU#{cpu} [", cpu + 1)),
            "{out}"
        );
    }
    assert!(out.contains("in kmain (vcpu=5)"), "thread 6 unwinds: {out}");
    assert!(out.contains("Thread 1 hit Breakpoint 1, level3"), "{out}");
    let (iterations, hits) = (
        number_after(&out, "$1 = ").expect("iterations"),
        number_after(&out, "$2 = ").expect("hits"),
    );
    // A loaded host may run the seven late: up to 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (iterations_later, hits_later) = loop {
        std::thread::sleep(Duration::from_millis(300));
        let later = vm.gdb(&["print vcpu1_iterations", "print bp_hits"]);
        let counts = (
            number_after(&later, "$1 = ").expect("iterations"),
            number_after(&later, "$2 = ").expect("hits"),
        );
        if (counts.0 > iterations && counts.1 > hits) || std::time::Instant::now() >= deadline {
            break counts;
        }
    };
    assert!(
        iterations_later > iterations && hits_later > hits,
        "the vCPUs run on: iterations {iterations} -> {iterations_later}, #BP {hits} -> {hits_later}"
    );
}
