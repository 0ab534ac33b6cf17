//! A 32-bit guest (protected mode, PSE or PAE paging): gdb gets the i386
//! register file (its ELF32 and the registers agree), reads a string at a
//! virtual address through the vCPU's 32-bit tables, and `monitor vmem
//! walk` shows them. Hosts that cannot run 32-bit paged guests
//! (kvm_pvm keeps CR0.PG only in long mode) skip with the reason.

mod demo;

use demo::DemoVm;

fn check(paging: &str, page: &str) {
    if !demo::available() {
        return;
    }
    let vm = match DemoVm::try_start_with(&["--guest32", paging, "--vcpus", "1"]) {
        Ok(vm) => vm,
        Err(e) if e.contains("cannot run") => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // No symbol file given: gdb takes the stub's i386 description and the
    // 32-bit ELF it names.
    let mut gdb = std::process::Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex"])
        .arg(format!("target remote 127.0.0.1:{}", vm.port))
        .args([
            "-ex",
            "show architecture",
            "-ex",
            "info registers eip cr0",
            "-ex",
            "x/s 0xc0500000",
            "-ex",
            "monitor vmem walk",
            "-ex",
            "monitor vmem translate 0xc0500000",
        ]);
    let out = demo::run_with_timeout(gdb, std::time::Duration::from_secs(60));
    assert!(
        out.contains("0xc0500000:\t\"Hello from 32-bit paging!\""),
        "{out}"
    );
    assert!(
        out.contains("00000000c0000000-") && out.contains(&format!("  {page}  ")),
        "{out}"
    );
    assert!(out.contains("=> physical 0x500000"), "{out}");
    assert!(out.contains("(currently \"i386\")"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("eip ")), "{out}");
    assert!(out.contains("[ PG"), "{out}");
}

#[test]
fn pse_guest_reads_through_32_bit_tables() {
    check("pse", "4M");
}

#[test]
fn pae_guest_reads_through_pae_tables() {
    check("pae", "2M");
}
