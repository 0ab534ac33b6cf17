//! Building the x86 probes: a static ELF from one assembly file, its text
//! at a fixed address, with the system gcc.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Assemble `tests/mmu/<name>.S` into `dir/<name>.elf`, text at `text`.
pub fn x86_probe(dir: &Path, name: &str, text: u64) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/mmu/{name}.S"));
    let elf = dir.join(format!("{name}.elf"));
    let status = Command::new("gcc")
        .args(["-nostdlib", "-static", "-no-pie", "-Wl,-N"])
        .args(["-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments"])
        .arg(format!("-Wl,-Ttext={text:#x}"))
        .arg(&src)
        .arg("-o")
        .arg(&elf)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed on {}", src.display());
    elf
}
