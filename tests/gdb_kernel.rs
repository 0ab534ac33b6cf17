//! The demo VM boots a user's own static ELF64 (`--kernel`), mapping its
//! segments at their virtual addresses.

mod demo;

use std::process::Command;

use demo::{number_after, DemoVm};

const SOURCE: &str = r#"
volatile unsigned long ticks;
const char banner[] = "my own kernel";
void _start(void) { for (;;) { ticks++; __asm__ volatile("hlt"); } }
"#;

#[test]
fn boots_a_low_linked_static_elf() {
    if !demo::available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmem-gdbstub-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("k.c");
    let elf = dir.join("k.elf");
    std::fs::write(&c, SOURCE).unwrap();
    let status = Command::new("gcc")
        .args([
            "-O1",
            "-g",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
        ])
        .args([
            "-mno-red-zone",
            "-fno-asynchronous-unwind-tables",
            "-Wl,-Ttext=0x600000",
            "-Wl,--build-id=none",
        ])
        .arg(&c)
        .arg("-o")
        .arg(&elf)
        .status()
        .expect("gcc");
    assert!(status.success());
    let Some(vm) = DemoVm::start_with(&["--kernel", elf.to_str().unwrap(), "--vcpus", "1"]) else {
        return;
    };
    assert_eq!(vm.elf, elf.to_str().unwrap());
    let first = vm.gdb(&["print ticks", "x/s banner", "info threads"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = vm.gdb(&["print ticks"]);
    let (a, b) = (
        number_after(&first, "$1 = ").unwrap(),
        number_after(&second, "$1 = ").unwrap(),
    );
    assert!(b > a, "the kernel runs: {a} -> {b}");
    assert!(first.contains("\"my own kernel\""), "{first}");
    assert!(!first.contains("Thread 1.2"), "one vCPU: {first}");
    let _ = std::fs::remove_dir_all(&dir);
}
