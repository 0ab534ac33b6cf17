//! The demo VM boots a user's own static ELF64 (`--kernel`), mapping its
//! segments at their virtual addresses. These kernels set up no timer, so
//! they run without an irqchip: how the debugger's stand-in wakes their
//! `hlt` depends on their interrupt flag.

mod demo;

use demo::{number_after, DemoVm};

/// Build a kernel halting with `halt` and return `ticks` as seen by two
/// gdb sessions 300 ms apart (the first also checks symbols and threads);
/// `None` when the demo VM cannot run here.
fn ticks_over_300ms(name: &str, halt: &str) -> Option<(u64, u64)> {
    if !demo::available() {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("vmem-gdbstub-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = demo::kernel::halting_kernel(&dir, name, halt);
    let vm = DemoVm::start_with(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--vcpus",
        "1",
        "--no-irqchip",
    ])?;
    assert_eq!(vm.elf, elf.to_str().unwrap());
    let first = vm.gdb(&["print ticks", "x/s banner", "info threads"]);
    assert!(first.contains("\"my own kernel\""), "{first}");
    assert!(!first.contains("Thread 1.2"), "one vCPU: {first}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = vm.gdb(&["print ticks"]);
    let _ = std::fs::remove_dir_all(&dir);
    Some((
        number_after(&first, "$1 = ").unwrap(),
        number_after(&second, "$1 = ").unwrap(),
    ))
}

#[test]
fn boots_a_low_linked_static_elf_and_ticks_with_interrupts_on() {
    if let Some((a, b)) = ticks_over_300ms("ticking", "sti; hlt; cli") {
        // The VMM's 2 ms stand-in for a timer tick wakes it.
        assert!(b > a + 10, "the kernel runs: {a} -> {b}");
    }
}

#[test]
fn a_kernel_halted_with_interrupts_off_stays_halted() {
    if let Some((a, b)) = ticks_over_300ms("halted", "hlt") {
        // Nothing wakes it but the debugger: each detach lets it run
        // once more (the `jmp` back and the next `hlt`).
        assert!(b <= a + 1, "parked, not woken every 2 ms: {a} -> {b}");
    }
}
