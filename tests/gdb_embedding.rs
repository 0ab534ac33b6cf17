//! The VMM keeps its own exits: port I/O and MMIO to the demo VMM's device
//! reach the VMM exactly once and untouched while gdb is attached, also
//! while gdb single-steps over the accessing instructions, through the
//! hooks (the demo's own loop) and through the turnkey loop. And the
//! VMM's RAM as VMMs lay it out: split around the 32-bit MMIO gap.

mod demo;

use std::time::Duration;

use demo::{hex_after, number_after, DemoVm};

/// Step vCPU 0 instruction by instruction through `poll_device` (which
/// reads the device's port, then its MMIO register) and check what the
/// guest got: the VMM's next answers, each exactly one read later.
fn device_reads_survive_single_steps(extra: &[&str]) {
    let Some(vm) = DemoVm::start_with(extra) else {
        return;
    };
    let script = "\
break *poll_device
continue
delete
printf \"port before: %#lx\\n\", device_port_value
printf \"mmio before: %#lx\\n\", device_mmio_value
set $ret = *(unsigned long *)$rsp
set $steps = 0
while $pc != $ret && $steps < 200
  stepi
  set $steps = $steps + 1
end
printf \"steps: %d\\n\", $steps
printf \"port after: %#lx\\n\", device_port_value
printf \"mmio after: %#lx\\n\", device_mmio_value
";
    let out = vm.gdb_script("device-steps", script, Duration::from_secs(60));
    eprintln!("{out}");
    let steps = number_after(&out, "steps: ").unwrap_or(0);
    assert!(
        steps > 3 && steps < 200,
        "stepped through poll_device: {out}"
    );
    let value = |label: &str| hex_after(&out, label).unwrap_or_else(|| panic!("{label} {out}"));
    let (port0, port1) = (value("port before: "), value("port after: "));
    let (mmio0, mmio1) = (value("mmio before: "), value("mmio after: "));
    // The VMM answers 0xfeed_NNNN / 0xcafe_NNNN, NNNN counting its reads.
    assert_eq!(port0 >> 16, 0xfeed, "{out}");
    assert_eq!(mmio0 >> 16, 0xcafe, "{out}");
    assert_eq!(
        port1,
        port0 + 1,
        "one port read, answered by the VMM: {out}"
    );
    assert_eq!(
        mmio1,
        mmio0 + 1,
        "one MMIO read, answered by the VMM: {out}"
    );
}

#[test]
fn vmm_exits_are_the_vmms_during_steps_through_the_hooks() {
    device_reads_survive_single_steps(&[]);
}

#[test]
fn vmm_exits_are_the_vmms_during_steps_through_the_turnkey_loop() {
    device_reads_survive_single_steps(&["--turnkey"]);
}

#[test]
fn vmm_exits_are_the_vmms_without_an_irqchip() {
    device_reads_survive_single_steps(&["--no-irqchip"]);
}

/// A VMM that keeps its memslots to itself: watchpoints fall back to the
/// four debug registers (which kvm_pvm never fires, so this only checks
/// what gdb is told when it inserts them).
#[test]
fn without_page_traps_watchpoints_take_the_debug_registers() {
    let Some(vm) = DemoVm::start_with(&["--no-page-traps"]) else {
        return;
    };
    let fits = vm.gdb(&[
        "watch watched_value",
        "watch counter",
        "stepi",
        "info watchpoints",
    ]);
    assert!(!fits.contains("Could not insert"), "{fits}");
    assert!(fits.contains("hw watchpoint"), "{fits}");
    let five = [
        "watch watched_value",
        "watch counter",
        "watch last_result",
        "watch bp_hits",
        "watch cr3_switches",
        "stepi",
    ];
    let too_many = vm.gdb(&five);
    assert!(
        too_many.contains("Could not insert hardware watchpoint 5"),
        "{too_many}"
    );
    let odd = vm.gdb(&["watch *(char(*)[3])&watched_value", "stepi"]);
    assert!(
        odd.contains("Could not insert hardware watchpoint"),
        "{odd}"
    );
}

/// The VMM asks the debugger itself (`Debugger::monitor`, the demo's
/// `--monitor`) while the guest runs: the scan's spaces stay known to gdb's
/// session afterwards, `vmem watch` is refused without gdb, and the guest
/// was resumed (its counter moves between two gdb sessions).
#[test]
fn the_vmm_runs_monitor_commands_itself() {
    let Some(vm) = DemoVm::start_with(&[
        "--monitor",
        "vmem spaces --scan any",
        "--monitor",
        "vmem watch 0x400000",
    ]) else {
        return;
    };
    assert!(
        vm.startup
            .contains("(vmm) monitor vmem spaces --scan any\n"),
        "{}",
        vm.startup
    );
    assert!(
        vm.startup.contains("2 new address spaces"),
        "{}",
        vm.startup
    );
    assert!(
        vm.startup
            .contains("error: vmem watch reports its stop to gdb: attach gdb first"),
        "{}",
        vm.startup
    );
    let first = vm.gdb(&["monitor vmem spaces", "print counter"]);
    assert_eq!(first.matches("(added)").count(), 2, "{first}");
    std::thread::sleep(Duration::from_millis(300));
    let second = vm.gdb(&["print counter"]);
    let (a, b) = (
        number_after(&first, "$1 = ").unwrap(),
        number_after(&second, "$1 = ").unwrap(),
    );
    assert!(b > a, "the guest runs between sessions: {a} then {b}");
}

/// RAM as VMMs lay it out past 3 GiB: split around the 32-bit MMIO gap
/// (the demo's `--mem 3200`: 0-3 GiB and 4 GiB-4.125 GiB). gdb reads and
/// writes above the gap, the gap itself is no memory, the reverse map
/// finds high RAM in the direct map of both spaces, a watchpoint in low
/// RAM leaves the high range's memslot in place, and the guest reads
/// what gdb wrote above the gap after that.
#[test]
fn ram_split_around_the_mmio_gap() {
    let Some(vm) = DemoVm::start_logging(
        "vmem_gdbstub::target::kvm::watch::memslots=debug",
        &["--mem", "3200"],
    ) else {
        return;
    };
    let out = vm.gdb(&[
        "set {unsigned long}0xffff888100000008 = 0x1122334455667788",
        "monitor xp /2gx 0x100000000",
        "x/gx 0xffff8880c0000000",
        "monitor xp /1gx 0xc0000000",
        "monitor gpa2hva 0x100000008",
        "monitor gpa2hva 0xc0000000",
        "monitor vmem find 0x100000008",
        "monitor info mtree -f",
        "set var probe_va = 0xffff888100000008",
        "watch counter",
        "continue",
    ]);
    assert!(
        out.contains("0000000100000000: 0x0000000000000000 0x1122334455667788"),
        "{out}"
    );
    assert!(
        out.contains("Cannot access memory at address 0xffff8880c0000000"),
        "{out}"
    );
    assert!(
        out.contains("error: Cannot access memory at 0xc0000000"),
        "{out}"
    );
    assert!(
        out.contains("Host virtual address for 0x100000008 (ram) is 0x"),
        "{out}"
    );
    assert!(
        out.contains("error: No memory is mapped at address 0xc0000000"),
        "{out}"
    );
    assert!(out.contains("2 mappings in 2 spaces"), "{out}");
    // QEMU's flat view: RAM below the gap, the gap, RAM above it.
    assert!(
        out.contains(
            "  0000000000000000-00000000bfffffff (prio 0, ram): ram0 KVM\n  \
             00000000c0000000-00000000ffffffff (prio 0, i/o): hole (no RAM)\n  \
             0000000100000000-0000000107ffffff (prio 0, ram): ram1 KVM\n"
        ),
        "{out}"
    );
    assert_eq!(
        out.matches("  ffff888100000008-ffff888100000008  0000000100000008-")
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("hit Hardware watchpoint 1: counter"), "{out}");
    // The guest (vCPU 0) reads high RAM through its own tables and the
    // memslot the watch kept.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let probed = loop {
        let out = vm.gdb(&["print/x probe_value", "print probe_count"]);
        if number_after(&out, "$2 = ") == Some(1) || std::time::Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(probed.contains("$1 = 0x1122334455667788"), "{probed}");
    let layouts = vm.memslot_layouts(3);
    assert!(layouts.len() >= 3, "{layouts:?}");
    assert_eq!(
        layouts[..3],
        [
            "2 slots, 0 trapped pages (0 kept, 0 deleted, 2 added)",
            "4 slots, 1 trapped pages (1 kept, 1 deleted, 3 added)",
            "2 slots, 0 trapped pages (1 kept, 3 deleted, 1 added)"
        ],
        "at boot, at the Z2, after the session: the slot above the gap stays"
    );
}
