//! Builds the bundled demo guest (C + asm, freestanding, with DWARF) with
//! the system gcc; the demo VM embeds the resulting ELF.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    for file in [
        "guest/guest.c",
        "guest/entry.S",
        "guest/pvh.S",
        "guest/guest.ld",
        "guest/guest32.c",
        "guest/guest32.ld",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let common = [
        "-g",
        "-O0",
        "-ffreestanding",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-fno-pic",
        "-mgeneral-regs-only",
        "-fno-stack-protector",
        "-fcf-protection=none",
        "-fno-omit-frame-pointer",
        "-fno-asynchronous-unwind-tables",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
    ];
    let guest64 = out.join("demo-guest.elf");
    build(
        &common,
        &[
            "-m64",
            "-mno-red-zone",
            "-mcmodel=kernel",
            "-T",
            "guest/guest.ld",
            "guest/entry.S",
            "guest/pvh.S",
            "guest/guest.c",
        ],
        &guest64,
    );
    let guest32 = out.join("demo-guest32.elf");
    build(
        &common,
        &["-m32", "-T", "guest/guest32.ld", "guest/guest32.c"],
        &guest32,
    );
    println!("cargo:rustc-env=DEMO_GUEST_ELF={}", guest64.display());
    println!("cargo:rustc-env=DEMO_GUEST32_ELF={}", guest32.display());
}

fn build(common: &[&str], args: &[&str], elf: &std::path::Path) {
    let status = Command::new(env::var("CC").unwrap_or_else(|_| "gcc".into()))
        .args(common)
        .args(args)
        .arg("-o")
        .arg(elf)
        .status()
        .expect("running gcc to build the demo guests (install gcc)");
    assert!(status.success(), "gcc failed to build {}", elf.display());
}
