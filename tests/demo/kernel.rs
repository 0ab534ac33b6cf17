//! A user kernel for `demo-vm --kernel`: a static ELF64 that counts and
//! halts, built with gcc. Shared by tests/gdb_kernel.rs and the bench-e2e
//! example (which includes this file by path).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build, in `dir`, a kernel whose loop does `ticks++` and then the
/// instructions `halt` (e.g. `hlt`, or `sti; hlt; cli`); returns its ELF.
pub fn halting_kernel(dir: &Path, name: &str, halt: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    let elf = dir.join(format!("{name}.elf"));
    let source = format!(
        r#"
volatile unsigned long ticks;
const char banner[] = "my own kernel";
void _start(void) {{ for (;;) {{ ticks++; __asm__ volatile("{halt}"); }} }}
"#
    );
    std::fs::write(&c, source).expect("write the kernel source");
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
    assert!(status.success(), "gcc failed for {}", c.display());
    elf
}
