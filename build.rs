//! Builds the bundled demo guest (C + asm, freestanding, with DWARF) with
//! the system gcc; the demo VM embeds the resulting ELF.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let elf = out.join("demo-guest.elf");
    for file in ["guest/guest.c", "guest/entry.S", "guest/guest.ld"] {
        println!("cargo:rerun-if-changed={file}");
    }
    let status = Command::new(env::var("CC").unwrap_or_else(|_| "gcc".into()))
        .args([
            "-m64",
            "-g",
            "-O0",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-mno-red-zone",
            "-mcmodel=kernel",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fcf-protection=none",
            "-fno-omit-frame-pointer",
            "-fno-asynchronous-unwind-tables",
            "-Wl,--build-id=none",
            "-Wl,-z,max-page-size=4096",
            "-T",
            "guest/guest.ld",
            "guest/entry.S",
            "guest/guest.c",
            "-o",
        ])
        .arg(&elf)
        .status()
        .expect("running gcc to build the demo guest (install gcc)");
    assert!(status.success(), "gcc failed to build the demo guest");
    println!("cargo:rustc-env=DEMO_GUEST_ELF={}", elf.display());
}
