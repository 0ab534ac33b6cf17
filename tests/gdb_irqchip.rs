//! The demo VM as real VMMs build theirs: KVM's in-kernel irqchip and a
//! LAPIC timer per vCPU (100 Hz). The guest takes real timer interrupts;
//! the stub stays correct around them.

mod demo;

use std::time::Duration;

use demo::{number_after, DemoVm};

#[test]
fn timer_interrupts_arrive_while_running_and_not_while_stopped() {
    let Some(vm) = DemoVm::start() else { return };
    // One session, stopped for a second.
    let stopped = vm.gdb(&["print timer_ticks", "shell sleep 1", "print timer_ticks"]);
    let (a, b) = (
        number_after(&stopped, "$1 = ").unwrap(),
        number_after(&stopped, "$2 = ").unwrap(),
    );
    assert_eq!(a, b, "no interrupt is taken while the VM is stopped");
    // Detached, the guest runs: two vCPUs at 100 Hz, 100 ticks a second
    // when it gets the CPU (a loaded host gets it there later).
    let mut c = b;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let running = vm.gdb(&["print timer_ticks"]);
        c = number_after(&running, "$1 = ").unwrap();
        if c >= b + 100 {
            break;
        }
    }
    assert!(c >= b + 100, "timer interrupts while running: {b} -> {c}");
}

/// Single-step vCPU 0 up to `limit` times (stopping at the first step
/// inside the timer handler if `stop_in_handler`); returns (steps taken,
/// steps inside the handler, timer ticks gained meanwhile).
fn step_around_the_timer(
    vm: &DemoVm,
    setup: &str,
    limit: u32,
    stop_in_handler: bool,
) -> (u64, u64, u64) {
    let stop = if stop_in_handler {
        "&& $inside == 0"
    } else {
        ""
    };
    // The attach may have stopped vCPU 0 inside the handler: out first.
    let script = format!(
        "\
{setup}
while $pc >= (unsigned long)&timer_stub && $pc < (unsigned long)&spurious_stub
  stepi
end
set $start = timer_ticks
set $inside = 0
set $steps = 0
while $steps < {limit} {stop}
  stepi
  set $steps = $steps + 1
  if $pc >= (unsigned long)&timer_stub && $pc < (unsigned long)&spurious_stub
    set $inside = $inside + 1
  end
end
printf \"steps: %d\\n\", $steps
printf \"inside: %d\\n\", $inside
printf \"ticks: %d\\n\", timer_ticks - $start
"
    );
    let out = vm.gdb_script("timer-steps", &script, Duration::from_secs(240));
    let tail: String = out.lines().rev().take(8).collect::<Vec<_>>().join("\n");
    eprintln!("{tail}");
    let value = |label| number_after(&out, label).unwrap_or_else(|| panic!("{label}: {tail}"));
    (value("steps: "), value("inside: "), value("ticks: "))
}

#[test]
fn ten_thousand_steps_never_enter_the_timer_handler_by_default() {
    let Some(vm) = DemoVm::start() else { return };
    let (steps, inside, ticks) = step_around_the_timer(&vm, "", 10_000, false);
    assert_eq!(steps, 10_000);
    assert_eq!(inside, 0, "QEMU's default NOIRQ: steps skip interrupts");
    // Interrupts did arrive meanwhile (the other vCPU runs between steps).
    assert!(ticks > 0, "timer ticks during the steps: {ticks}");
}

/// Where KVM cannot hold interrupts back (no KVM_GUESTDBG_BLOCKIRQ; here
/// chosen with `--skip-irq-handlers`), steps take them, and the handlers
/// they enter run to their return without a stop.
#[test]
fn steps_skip_the_handlers_of_interrupts_they_take() {
    let Some(vm) = DemoVm::start_with(&["--skip-irq-handlers", "--vcpus", "1"]) else {
        return;
    };
    let (steps, inside, ticks) = step_around_the_timer(&vm, "", 10_000, false);
    assert_eq!(steps, 10_000);
    assert_eq!(inside, 0, "no step stopped in the timer handler");
    // One vCPU: only the stepped one counts ticks, so its handler ran.
    assert!(
        ticks > 0,
        "timer interrupts taken during the steps: {ticks}"
    );
}

#[test]
fn with_noirq_cleared_steps_do_enter_the_timer_handler() {
    let Some(vm) = DemoVm::start() else { return };
    let setup = "maint packet Qqemu.sstep=0x1\nmaint packet qqemu.sstep";
    let (steps, inside, _) = step_around_the_timer(&vm, setup, 10_000, true);
    assert_eq!(
        inside, 1,
        "a step landed in the timer handler within {steps} steps"
    );
}

#[test]
fn an_idle_guest_costs_almost_no_cpu() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&["set var guest_idle = 1", "print timer_ticks"]);
    let before = number_after(&out, "$1 = ").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let cpu = vm.cpu_ticks();
    std::thread::sleep(Duration::from_secs(3));
    let used = vm.cpu_ticks() - cpu;
    let after = number_after(&vm.gdb(&["print timer_ticks"]), "$1 = ").unwrap();
    eprintln!(
        "idle: {used} CPU ticks of 10 ms in 3 s, {} timer interrupts",
        after - before
    );
    assert!(after > before + 300, "the guest still takes its interrupts");
    // Two vCPUs in hlt between timer interrupts: ~0 % (3 % allowed).
    assert!(used <= 9, "{used} ticks of 10 ms in 3 s");
}

/// A vCPU halted in KVM with its timer interrupt already pending (here:
/// the VMM process frozen for a while, as bench-e2e and a loaded host do)
/// must still step: the step executes the next instruction and leaves the
/// interrupt for later, instead of waiting in `hlt` for an interrupt it
/// may not take.
#[test]
fn a_vcpu_halted_with_an_interrupt_pending_still_steps() {
    let Some(vm) = DemoVm::start() else { return };
    let warm = vm.gdb(&["stepi 500", "print $pc"]);
    assert!(warm.contains("$1 = "), "{warm}");
    vm.freeze_for(Duration::from_secs(5));
    let script = "stepi 500\nprintf \"stepped: %d\\n\", 500\n";
    let out = vm.gdb_script("halted-steps", script, Duration::from_secs(30));
    assert!(out.contains("stepped: 500"), "the steps finished: {out}");
}

/// Steps through the guest's idle `sti; hlt; cli` (vCPU 0 passes it about
/// every 120 instructions) must leave the vCPU running afterwards: each
/// step of a `hlt` ends past it, and a later continue reaches the guest's
/// loop again. (On kvm_pvm a vCPU that KVM itself stepped through that
/// `hlt` halted again later, with interrupts off, for good.)
#[test]
fn steps_through_the_idle_hlt_leave_the_vcpu_running() {
    let Some(vm) = DemoVm::start() else { return };
    let script = "\
thread 1
set $hlts = 0
set $i = 0
while $i < 600
  if *(unsigned char *)$pc == 0xf4
    set $at = $pc
    stepi
    if $pc != $at + 1
      printf \"hlt at %p stepped to %p\\n\", $at, $pc
    end
    set $hlts = $hlts + 1
  else
    stepi
  end
  set $i = $i + 1
end
printf \"hlts stepped: %d\\n\", $hlts
break level1
continue
";
    let out = vm.gdb_script("idle-hlt", script, Duration::from_secs(60));
    let hlts: u32 = out
        .split("hlts stepped: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the steps finished: {out}"));
    assert!(hlts >= 2, "the steps went through the idle hlt: {out}");
    assert!(
        !out.contains("stepped to"),
        "a hlt's step ends past it: {out}"
    );
    assert!(out.contains("Breakpoint 1, level1"), "vCPU 0 ran on: {out}");
}

/// The handler of IDT gate `vector` in the guest, as gdb names it.
fn idt_handler(vm: &DemoVm, vector: u64) -> String {
    vm.gdb(&[&format!(
        "print (void (*)(void))(((unsigned long)idt[{vector}].offset_high << 32) \
         | ((unsigned long)idt[{vector}].offset_mid << 16) | idt[{vector}].offset_low)"
    )])
}

/// `monitor info lapic` shows a vCPU's local APIC as QEMU's monitor does,
/// from KVM's in-kernel irqchip: the timer the guest programmed (periodic,
/// divide by 16, 10^9 / 16 / timer_hz counts; its vector's IDT gate is
/// `timer_stub`), the spurious vector's gate `spurious_stub`, x2APIC mode
/// with the logical IDs KVM derives from the APIC IDs (1 << ID); a bad CPU
/// is a one-line error, and without an irqchip there is no APIC to show.
#[test]
fn info_lapic_shows_the_timer_the_guest_programmed() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "print timer_hz",
        "monitor info lapic",
        "monitor info lapic 1",
        "monitor info lapic 2",
        "monitor info lapic one",
    ]);
    let hz = number_after(&out, "$1 = ").expect("timer_hz");
    let initial = 1_000_000_000 / 16 / hz;
    for cpu in 0..2u64 {
        let dump = out
            .split(&format!("dumping local APIC state for CPU {cpu} \n"))
            .nth(1)
            .unwrap_or_else(|| panic!("CPU {cpu}: {out}"));
        let line = |name: &str| {
            dump.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name}: {dump}"))
                .to_string()
        };
        assert!(
            line("LVTT\t").starts_with("LVTT\t 0x00020020 active-hi edge "),
            "{dump}"
        );
        assert!(
            line("LVTT\t").ends_with(" periodic     Fixed  (vec 32)"),
            "{dump}"
        );
        let timer = line("Timer\t");
        assert!(
            timer.starts_with(&format!(
                "Timer\t DCR=0x3 (divide by 16) initial_count = {initial} current_count = "
            )),
            "{dump}"
        );
        let current: u64 = timer.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(current <= initial, "{timer}");
        assert_eq!(
            line("SPIV\t"),
            "SPIV\t 0x0000013f APIC enabled, focus=off, spurious vec 63",
            "{dump}"
        );
        assert!(line("ICR2\t").ends_with("(X2APIC ID)"), "{dump}");
        assert!(
            dump.contains(&format!(
                "LDR 0x{:02x}(cluster 0: id {:#x})",
                1 << cpu,
                1 << cpu
            )),
            "x2APIC logical ID of APIC ID {cpu}: {dump}"
        );
    }
    assert!(out.contains("error: no CPU 2: this VM has 2\n"), "{out}");
    assert!(
        out.contains("error: bad CPU 'one' (a vCPU index)\nusage: info lapic [CPU]"),
        "{out}"
    );
    assert!(
        idt_handler(&vm, 32).contains("<timer_stub>"),
        "the timer's gate"
    );
    assert!(
        idt_handler(&vm, 63).contains("<spurious_stub>"),
        "the spurious gate"
    );
    drop(vm);
    let Some(plain) = DemoVm::start_with(&["--no-irqchip"]) else {
        return;
    };
    let out = plain.gdb(&["monitor info lapic", "print timer_hz"]);
    assert!(
        out.contains(
            "error: no local APIC for CPU 0 (KVM keeps one only with an in-kernel irqchip)"
        ),
        "{out}"
    );
    assert!(out.contains("$1 = 0"), "the session goes on: {out}");
}
