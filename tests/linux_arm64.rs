//! Debian's arm64 kernel through QEMU's dumps of it (tests/linux/
//! make-arm64-fixture.sh: `qemu-system-aarch64 -machine virt -cpu max`,
//! TCG): the vCPUs from the dump's `NT_PRSTATUS` notes against QEMU's own
//! `info registers`; kernel memory read through the kernel's own tables
//! (TTBR1's, which VMCOREINFO names: the dump has no system registers)
//! against what QEMU's gdbstub read at the moment of the dump; the rights
//! Linux gives its text, rodata, data and linear map; the kdump file
//! against the ELF one; the kernel's symbols from the dump itself.

mod fixture;

use std::collections::HashMap;
use std::path::Path;

use fixture::{arm64_fixture, qemu_registers};
use vmem_gdbstub::arch::aarch64::{Aarch64, Half};
use vmem_gdbstub::target::{Dump, DumpArch, GuestTables};
use vmem_gdbstub::vmem::{self, Perms};

fn open(path: &Path) -> Dump {
    Dump::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The words QEMU's gdbstub printed for `x/8xg ADDR` lines, by address,
/// and its `x/s` strings, by address.
fn gdb_reads(dir: &Path) -> (HashMap<u64, u64>, HashMap<u64, String>) {
    let text = std::fs::read_to_string(dir.join("gdb-reads")).unwrap();
    let (mut words, mut strings) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(":\t") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr.trim_start_matches("0x"), 16) else {
            continue;
        };
        if let Some(s) = rest.strip_prefix('"') {
            strings.insert(addr, s.trim_end_matches('"').to_string());
            continue;
        }
        for (i, word) in rest.split_whitespace().enumerate() {
            let word = u64::from_str_radix(word.trim_start_matches("0x"), 16).unwrap();
            words.insert(addr + 8 * i as u64, word);
        }
    }
    (words, strings)
}

/// The kernel's half and its root, as VMCOREINFO gives them.
fn kernel(dump: &Dump) -> (Aarch64, u64) {
    let info = dump.vmcoreinfo().expect("VMCOREINFO");
    let (root, how) = info.kernel_root().expect("swapper_pg_dir");
    assert!(how.contains("swapper_pg_dir"), "{how}");
    let levels = if info.number("VA_BITS") == Some(39) {
        3
    } else {
        4
    };
    (Aarch64::new(levels, Half::Upper), root)
}

/// `len` bytes at kernel address `va`, through the kernel's tables.
fn read_va(dump: &Dump, va: u64, len: usize) -> Vec<u8> {
    let (fmt, root) = kernel(dump);
    let tables = GuestTables::new(dump.ram(), root, None);
    let (pa, _) = vmem::translate_pa(&fmt, &tables, root, va).expect("mapped");
    let mut buf = vec![0u8; len];
    dump.ram().read(pa, &mut buf).expect("RAM");
    buf
}

#[test]
fn every_cpu_is_as_qemu_printed_it() {
    let Some(dir) = arm64_fixture() else { return };
    let dump = open(&dir.join("dump.elf"));
    assert_eq!(dump.arch(), DumpArch::Aarch64);
    let qemu = qemu_registers(dir);
    assert_eq!(dump.aarch64_cpus().len(), qemu.len());
    assert_eq!(qemu.len(), 2);
    for (cpu, q) in dump.aarch64_cpus().iter().zip(&qemu) {
        assert_eq!(cpu.pc, q["PC"]);
        assert_eq!(cpu.sp, q["SP"]);
        assert_eq!(cpu.pstate, q["PSTATE"]);
        for (i, x) in cpu.x.iter().enumerate() {
            assert_eq!(*x, q[&format!("X{i:02}")], "X{i:02}");
        }
    }
}

#[test]
fn kernel_memory_reads_as_qemus_gdbstub_read_it() {
    let Some(dir) = arm64_fixture() else { return };
    let (words, strings) = gdb_reads(dir);
    assert!(
        words.len() >= 16 && strings.len() == 2,
        "{words:?} {strings:?}"
    );
    for file in ["dump.elf", "dump.kdump"] {
        let dump = open(&dir.join(file));
        for (&va, &word) in &words {
            let bytes = read_va(&dump, va, 8);
            assert_eq!(
                u64::from_le_bytes(bytes.try_into().unwrap()),
                word,
                "{file} {va:#x}"
            );
        }
        for (&va, s) in &strings {
            let bytes = read_va(&dump, va, s.len() + 1);
            assert_eq!(&bytes[..s.len()], s.as_bytes(), "{file} {va:#x}");
            assert_eq!(bytes[s.len()], 0);
        }
        let info = dump.vmcoreinfo().unwrap();
        let release = info.os_release().unwrap();
        assert!(strings.values().any(|s| s == release), "{release}");
    }
}

/// Linux's rights on arm64: its text executable and read-only, its
/// rodata read-only, its data writable and never executable, and the
/// linear map (the lower half of the kernel's VA space) never executable.
#[test]
fn the_kernel_has_the_rights_linux_gives_it() {
    let Some(dir) = arm64_fixture() else { return };
    let dump = open(&dir.join("dump.elf"));
    let (fmt, root) = kernel(&dump);
    let tables = GuestTables::new(dump.ram(), root, None);
    let info = dump.vmcoreinfo().unwrap();
    let rights = |va: u64| {
        vmem::translate_addr(&fmt, &tables, root, va)
            .expect("mapped")
            .perms
    };
    let text = rights(info.symbol("_stext").unwrap());
    assert!(
        text.contains(Perms::EXEC) && !text.contains(Perms::WRITE),
        "{text:?}"
    );
    let rodata = rights(info.symbol("kallsyms_names").unwrap());
    assert!(
        !rodata.contains(Perms::EXEC) && !rodata.contains(Perms::WRITE),
        "{rodata:?}"
    );
    let data = rights(info.symbol("init_uts_ns").unwrap());
    assert!(
        data.contains(Perms::WRITE) && !data.contains(Perms::EXEC),
        "{data:?}"
    );
    for p in [text, rodata, data] {
        assert!(!p.contains(Perms::USER), "{p:?}");
    }
    // The linear map: [-2^48, -2^47) with 48-bit VAs.
    let linear = 0xffff_0000_0000_0000u64;
    let mut mapped = 0u64;
    for m in vmem::virt_to_phys(&fmt, &tables, linear, 1 << 47) {
        let m = m.expect("walk");
        assert!(!m.perms().contains(Perms::EXEC), "{m:?}");
        mapped += m.len;
    }
    assert!(mapped >= 256 << 20, "{mapped:#x} bytes of linear map");
}

#[test]
fn the_kdump_file_holds_the_elf_dumps_ram_and_cpus() {
    let Some(dir) = arm64_fixture() else { return };
    let elf = open(&dir.join("dump.elf"));
    let kdump = open(&dir.join("dump.kdump"));
    assert_eq!(kdump.arch(), DumpArch::Aarch64);
    assert_eq!(kdump.aarch64_cpus(), elf.aarch64_cpus());
    assert_eq!(kdump.vmcoreinfo(), elf.vmcoreinfo());
    let ranges = elf.ram().ranges();
    assert_eq!(kdump.ram().ranges().len(), ranges.len());
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for r in ranges.iter() {
        for gpa in (r.gpa..r.gpa + r.size).step_by(1 << 20) {
            let n = ((r.gpa + r.size - gpa) as usize).min(1 << 20);
            elf.ram().read(gpa, &mut a[..n]).unwrap();
            kdump.ram().read(gpa, &mut b[..n]).unwrap();
            assert!(a[..n] == b[..n], "{gpa:#x}");
        }
    }
}

/// arm64's kallsyms stores unsigned offsets from the base: decoded from
/// the dump, the table says what `/proc/kallsyms` of that boot said.
#[test]
fn the_dump_carries_its_own_symbols() {
    let Some(dir) = arm64_fixture() else { return };
    let listing = std::fs::read_to_string(dir.join("kallsyms")).unwrap();
    let core: Vec<&str> = listing.lines().filter(|l| !l.contains('[')).collect();
    let decoded = open(&dir.join("dump.kdump")).kallsyms().expect("kallsyms");
    let decoded: Vec<&str> = decoded.lines().collect();
    assert_eq!(decoded.len(), core.len());
    let differ = decoded.iter().zip(&core).filter(|(a, b)| a != b).count();
    assert_eq!(
        differ,
        0,
        "first: {:?}",
        decoded.iter().zip(&core).find(|(a, b)| a != b)
    );
}

/// Until gdb and the monitor commands serve arm64 guests, the tool and the
/// demo say so in one line instead of serving nothing.
#[test]
fn serving_an_arm64_dump_is_refused_in_one_line() {
    let Some(dir) = arm64_fixture() else { return };
    let dump = dir.join("dump.kdump");
    for args in [vec!["walk"], vec!["serve", "--listen", "127.0.0.1:0"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmem-gdbstub"))
            .args(&args[..1])
            .arg(&dump)
            .args(&args[1..])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains("an arm64 dump"), "{said}");
        assert_eq!(said.trim_end().lines().count(), 1, "{said}");
    }
}
