//! A 32-bit guest (protected mode, PSE or PAE paging): gdb reads a string
//! at a virtual address through the vCPU's 32-bit tables, and `monitor
//! vmem walk` shows them. Hosts that cannot run 32-bit paged guests
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
    // No symbol file: gdb keeps the stub's x86-64 register layout.
    let mut gdb = std::process::Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex"])
        .arg(format!("target remote 127.0.0.1:{}", vm.port))
        .args([
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
}

#[test]
fn pse_guest_reads_through_32_bit_tables() {
    check("pse", "4M");
}

#[test]
fn pae_guest_reads_through_pae_tables() {
    check("pae", "2M");
}
