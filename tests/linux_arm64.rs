//! Debian's arm64 kernel through QEMU's dumps of it (tests/linux/
//! make-arm64-fixture.sh: `qemu-system-aarch64 -machine virt -cpu max`,
//! TCG): the vCPUs from the dump's `NT_PRSTATUS` notes against QEMU's own
//! `info registers`; kernel memory read through the kernel's own tables
//! (TTBR1's, which VMCOREINFO names: the dump has no system registers)
//! against what QEMU's gdbstub read at the moment of the dump; the rights
//! Linux gives its text, rodata, data and linear map; the kdump file
//! against the ELF one; the kernel's symbols from the dump itself.

mod fixture;
#[path = "mmu/rng.rs"]
mod rng;
#[path = "demo/rsp.rs"]
mod rsp;

use std::collections::HashMap;
use std::path::Path;

use fixture::{arm64_fixture, have, qemu_registers, Served};
use vmem_gdbstub::arch::aarch64::{Aarch64, Half};
use vmem_gdbstub::arch::PageTableFormat;
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

/// The dump `file` of the fixture served by the demo VM (with `args`).
fn serve(dir: &Path, file: &str, args: &[&str]) -> Served {
    let dump = dir.join(file);
    let mut all = vec!["--dump", dump.to_str().unwrap()];
    all.extend_from_slice(args);
    Served::with_args(&all)
}

/// gdb-multiarch's output for `commands` against `served`.
fn gdb(served: &Served, commands: &[&str]) -> String {
    served.gdb_as("gdb-multiarch", &[], commands)
}

/// The `NAME VALUE` pairs gdb printed on lines starting with `tag `.
fn printed(text: &str, tag: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' '))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((
                name.to_string(),
                u64::from_str_radix(value.trim(), 16).ok()?,
            ))
        })
        .collect()
}

/// QEMU's `Znn` lines (each z register as 128-bit elements `[3-2]`,
/// `[1-0]`, two words each): element 0, v0-v31, of each CPU.
fn qemu_vector_registers(dir: &Path) -> Vec<Vec<u128>> {
    let text = std::fs::read_to_string(dir.join("registers")).unwrap();
    let mut cpus: Vec<Vec<u128>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("CPU#") {
            cpus.push(Vec::new());
        } else if let Some(low) = line.trim_start().strip_prefix("[1-0]=") {
            // Two 128-bit elements as four words, element 0 last.
            let words: Vec<u128> = low
                .split(':')
                .map(|w| u128::from_str_radix(w, 16).unwrap())
                .collect();
            let v = (words[2] << 64) | words[3];
            cpus.last_mut().unwrap().push(v);
        }
    }
    cpus
}

/// The registers gdb reads of every thread are the ones QEMU printed:
/// x0-x30, sp, pc, cpsr, v0-v31, FPSR, FPCR; the threads are named after
/// their CPUs.
#[test]
fn gdb_sees_every_cpu_as_qemu_printed_it() {
    let Some(dir) = arm64_fixture() else { return };
    let qemu = qemu_registers(dir);
    let vectors = qemu_vector_registers(dir);
    let served = serve(dir, "dump.kdump", &[]);
    let mut names: Vec<String> = (0..31).map(|i| format!("x{i}")).collect();
    names.extend(["sp", "pc", "cpsr", "fpsr", "fpcr"].map(String::from));
    let mut commands = vec!["info threads".to_string()];
    for thread in 1..=qemu.len() {
        commands.push(format!("thread {thread}"));
        commands.push(format!("printf \"CPU {}\\n\"", thread - 1));
        for name in &names {
            commands.push(format!("printf \"R {name} %lx\\n\", ${name}"));
        }
        for i in 0..32 {
            commands.push(format!(
                "printf \"V v{i} %016lx%016lx\\n\", $v{i}.d.u[1], $v{i}.d.u[0]"
            ));
        }
    }
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = gdb(&served, &commands);
    for (index, q) in qemu.iter().enumerate() {
        assert!(out.contains(&format!("CPU#{index} [EL1h]")), "{out}");
        let part = out
            .split(&format!("CPU {index}\n"))
            .nth(1)
            .expect("the thread's registers")
            .split("CPU ")
            .next()
            .unwrap();
        let regs = printed(part, "R");
        assert_eq!(regs.len(), names.len(), "{part}");
        for (name, value) in regs {
            let key = match name.as_str() {
                "cpsr" => "PSTATE".to_string(),
                x if x.starts_with('x') => format!("X{:02}", x[1..].parse::<u32>().unwrap()),
                other => other.to_uppercase(),
            };
            assert_eq!(value, q[&key], "CPU {index} {name}");
        }
        let v: Vec<u128> = part
            .lines()
            .filter_map(|l| l.strip_prefix("V v"))
            .map(|l| u128::from_str_radix(l.split_once(' ').unwrap().1, 16).unwrap())
            .collect();
        assert_eq!(v, vectors[index], "CPU {index}");
    }
}

/// Where `linux_banner` is, from the kernel's own Image: the Image is
/// the kernel from `_text`, and its bytes at `_stext` (but words boot
/// patched) are the ones QEMU's gdbstub read there (this kernel's kallsyms has no data symbols, and
/// Debian's System.map is a placeholder).
fn linux_banner(dir: &Path) -> u64 {
    let image = std::fs::read(dir.join("Image")).unwrap();
    let stext = fixture::kallsyms(dir)["_stext"];
    let (words, _) = gdb_reads(dir);
    // The first word is ftrace's and the last a jump label's, patched at
    // boot: the five between are the Image's.
    let head: Vec<u8> = (1..6)
        .flat_map(|i| words[&(stext + 8 * i)].to_le_bytes())
        .collect();
    let find = |needle: &[u8]| {
        image
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap() as u64
    };
    stext + 8 - find(&head) + find(b"Linux version 6.")
}

/// gdb reads kernel memory as QEMU's own gdbstub read it at the moment of
/// the dump, from the ELF and the kdump file alike; with a listing naming
/// `linux_banner` (`--symbols`), `x/s linux_banner` and the function of
/// each CPU's pc.
#[test]
fn gdb_reads_what_qemus_gdbstub_read() {
    let Some(dir) = arm64_fixture() else { return };
    let (words, strings) = gdb_reads(dir);
    let listing = std::fs::read_to_string(dir.join("kallsyms")).unwrap()
        + &format!("{:016x} D linux_banner\n", linux_banner(dir));
    let symbols = std::env::temp_dir().join(format!("vmem-arm64-symbols-{}", std::process::id()));
    std::fs::write(&symbols, listing).unwrap();
    for file in ["dump.elf", "dump.kdump"] {
        let served = serve(dir, file, &["--symbols", symbols.to_str().unwrap()]);
        let mut commands: Vec<String> = words
            .keys()
            .map(|va| format!("printf \"M {va:x} %lx\\n\", *(unsigned long *){va:#x}"))
            .collect();
        commands.extend(
            strings
                .keys()
                .map(|va| format!("printf \"S {va:x} %s\\n\", (char *){va:#x}")),
        );
        commands.extend(["x/s linux_banner".into(), "info symbol $pc".into()]);
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        let out = gdb(&served, &commands);
        let read: HashMap<u64, u64> = printed(&out, "M")
            .into_iter()
            .map(|(va, w)| (u64::from_str_radix(&va, 16).unwrap(), w))
            .collect();
        assert_eq!(read, words, "{file}");
        for (va, s) in &strings {
            assert!(out.contains(&format!("S {va:x} {s}\n")), "{file}: {out}");
        }
        let release = open(&dir.join(file))
            .vmcoreinfo()
            .unwrap()
            .os_release()
            .unwrap()
            .to_string();
        let banner = out
            .lines()
            .find(|l| l.contains("<linux_banner>:"))
            .unwrap_or("");
        assert!(
            banner.contains(&format!("\"Linux version {release}")),
            "{out}"
        );
        assert!(out.contains("cpu_do_idle + "), "{out}");
    }
    let _ = std::fs::remove_file(&symbols);
}

/// The monitor on arm64: QEMU's `info registers` lines, the kernel's
/// half as its current space (the root QEMU's TTBR1 held), the same walk
/// from the ELF and the kdump file and from the tool offline, rights of text and data, `$pc`
/// arithmetic, and what a dump cannot do said in one line.
#[test]
fn monitor_commands_work_on_arm64() {
    let Some(dir) = arm64_fixture() else { return };
    let qemu_text = std::fs::read_to_string(dir.join("registers")).unwrap();
    let qemu_cpu0: Vec<&str> = qemu_text
        .lines()
        .skip_while(|l| *l != "CPU#0")
        .skip(1)
        .take(12)
        .collect();
    let ttbr1 = sysregs(dir)[0]["TTBR1_EL1"] & 0x0000_ffff_ffff_f000;
    let commands = [
        "monitor info registers",
        "monitor vmem spaces --json",
        "monitor vmem walk --limit 100000",
        "monitor vmem translate $pc",
        "monitor gva2gpa $pc+4",
        "monitor vmem watch $pc",
        "monitor info lapic",
        "monitor x /2gx $sp",
        "monitor vmem find --va $pc",
    ];
    let mut walks = Vec::new();
    for file in ["dump.elf", "dump.kdump"] {
        let served = serve(dir, file, &[]);
        let out = gdb(&served, &commands);
        let lines: Vec<&str> = out.lines().collect();
        let first = lines
            .iter()
            .position(|l| l.starts_with(" PC="))
            .expect("info registers");
        assert_eq!(&lines[first..first + 11], &qemu_cpu0[..11], "{file}");
        assert!(
            qemu_cpu0[11].starts_with(lines[first + 11]),
            "{file}: {}",
            lines[first + 11]
        );
        assert!(
            out.contains(&format!("{{\"spaces\":[{{\"space\":\"{ttbr1:#x}\"")),
            "{file}: {out}"
        );
        let walk: Vec<&str> = lines
            .iter()
            .skip_while(|l| !l.starts_with(&format!("space {ttbr1:#x}:")))
            .take_while(|l| !l.contains(" mappings; "))
            .copied()
            .collect();
        assert!(walk.len() > 100, "{file}: {out}");
        walks.push(walk.join("\n"));
        assert!(out.contains("; effective r-x"), "{file}: {out}");
        assert!(out.contains("gpa: 0x"), "{file}: {out}");
        assert!(
            out.contains("error: a memory dump does not run: nothing can change"),
            "{out}"
        );
        assert!(
            out.contains("error: an arm64 machine has no local APIC"),
            "{out}"
        );
        assert!(out.contains(" maps physical 0x"), "{out}");
        assert!(!out.contains("Remote connection closed"), "{out}");
    }
    assert_eq!(walks[0], walks[1], "the ELF and kdump walks differ");
    // The tool answers offline what the monitor answers through gdb.
    let tool = std::process::Command::new(env!("CARGO_BIN_EXE_vmem-gdbstub"))
        .arg("walk")
        .arg(dir.join("dump.kdump"))
        .args(["--limit", "100000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tool.stdout);
    let offline: Vec<&str> = text
        .lines()
        .take_while(|l| !l.contains(" mappings; "))
        .collect();
    assert_eq!(offline.join("\n"), walks[0]);
}

/// Each CPU's TTBR0_EL1, TTBR1_EL1, TCR_EL1 as QEMU's gdbstub read them.
fn sysregs(dir: &Path) -> Vec<HashMap<String, u64>> {
    let text = std::fs::read_to_string(dir.join("sysregs")).unwrap();
    let mut cpus: Vec<HashMap<String, u64>> = Vec::new();
    let names = ["TTBR0_EL1", "TTBR1_EL1", "TCR_EL1"];
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_once(" = 0x"))
        .map(|(_, v)| u64::from_str_radix(v.trim(), 16).unwrap())
        .collect();
    assert_eq!(values.len(), 6, "{text}");
    for cpu in values.chunks(3) {
        cpus.push(
            names
                .iter()
                .map(|n| n.to_string())
                .zip(cpu.iter().copied())
                .collect(),
        );
    }
    cpus
}

/// `spaces --scan` finds the processes' TTBR0 tables by their structure:
/// every one QEMU's TTBR0 held that maps anything is among them, and
/// through each that maps busybox's load address gdb reads the busybox
/// binary the guest runs.
#[test]
fn processes_are_found_by_their_tables() {
    let Some(dir) = arm64_fixture() else { return };
    let busybox = std::fs::read(dir.join("busybox")).unwrap();
    let found = scanned(dir, "dump.kdump");
    let dump = open(&dir.join("dump.kdump"));
    for cpu in sysregs(dir) {
        let root = cpu["TTBR0_EL1"] & 0x0000_ffff_ffff_f000;
        let mut table = vec![0u8; 4096];
        dump.ram().read(root, &mut table).unwrap();
        if table.iter().any(|&b| b != 0) {
            assert!(
                found.contains(&root),
                "TTBR0 {root:#x} not found: {found:x?}"
            );
        }
    }
    let served = serve(dir, "dump.kdump", &[]);
    let mut commands = vec!["monitor vmem spaces --scan".to_string()];
    for root in &found {
        commands.push(format!("monitor vmem use {root:#x}"));
        commands.push(format!(
            "printf \"B {root:x} %lx\\n\", *(unsigned long *)0x400000"
        ));
    }
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = gdb(&served, &commands);
    let head = u64::from_le_bytes(busybox[..8].try_into().unwrap());
    let processes = printed(&out, "B");
    assert!(!processes.is_empty(), "{out}");
    for (root, word) in &processes {
        assert_eq!(*word, head, "space {root}: {out}");
    }
    assert!(processes.len() >= 2, "{out}");
}

/// gdb 18 reads the upper half's PAC mask and strips the PAC of the
/// saved return address: the caller's frame is the function (by the
/// kernel's kallsyms) holding x30 with its top bits set again.
#[test]
fn gdb_18_strips_pac_from_return_addresses() {
    let Some(dir) = arm64_fixture() else { return };
    let gdb18 = "/opt/gdb18/bin/gdb";
    if !have(gdb18) {
        return;
    }
    let dump = open(&dir.join("dump.elf"));
    let mask = dump.vmcoreinfo().unwrap().number("KERNELPACMASK").unwrap() as u64;
    let x30 = dump.aarch64_cpus()[0].x[30];
    let lr = x30 | mask;
    assert_ne!(lr, x30, "the fixture's x30 carries a PAC");
    let served = serve(dir, "dump.elf", &[]);
    let out = served.gdb_as(gdb18, &[], &["p/x $pauth_cmask_high", "bt 2"]);
    assert!(out.contains(&format!("= {mask:#x}")), "{out}");
    let caller = kallsyms_function(dir, lr);
    assert!(
        out.contains(&format!("#1  {lr:#018x} [PAC] in {caller} ()")),
        "{caller}: {out}"
    );
}

/// The function of the kernel's kallsyms listing holding `addr`.
fn kallsyms_function(dir: &Path, addr: u64) -> String {
    let listing = std::fs::read_to_string(dir.join("kallsyms")).unwrap();
    let mut best = (0, String::new());
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(a), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let a = u64::from_str_radix(a, 16).unwrap_or(0);
        if "tT".contains(kind) && a <= addr && a > best.0 {
            best = (a, name.to_string());
        }
    }
    best.1
}

/// lldb reads the same registers and memory, names frames with the
/// saved symbol file, and sees the kernel's regions with their rights.
#[test]
fn lldb_reads_the_arm64_dump_too() {
    let Some(dir) = arm64_fixture() else { return };
    if !have("lldb") {
        return;
    }
    let (words, _) = gdb_reads(dir);
    let (&va, &word) = words.iter().min().unwrap();
    let pc = qemu_registers(dir)[0]["PC"];
    let symbols = std::env::temp_dir().join(format!("vmem-arm64-lldb-{}.elf", std::process::id()));
    let _ = std::fs::remove_file(&symbols);
    let served = serve(
        dir,
        "dump.kdump",
        &["--save-symbols", symbols.to_str().unwrap()],
    );
    let out = std::process::Command::new("lldb")
        .arg("--batch")
        .arg(&symbols)
        .args(["-o", &format!("gdb-remote 127.0.0.1:{}", served.port)])
        .args(["-o", "register read pc"])
        .args([
            "-o",
            &format!("memory read --format x --size 8 --count 1 {va:#x}"),
        ])
        .args([
            "-o",
            "bt 1",
            "-o",
            "memory region $pc",
            "-o",
            "memory region $sp",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("lldb");
    let _ = std::fs::remove_file(&symbols);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(text.contains(&format!("pc = {pc:#018x}")), "{text}");
    assert!(text.contains(&format!("{word:#018x}")), "{text}");
    // The saved symbols name the frame; the regions come from the
    // kernel's tables: text r-x, the stack rw-.
    assert!(text.contains("`cpu_do_idle + "), "{text}");
    let regions: Vec<&str> = text.lines().filter(|l| l.starts_with("[0x")).collect();
    assert_eq!(regions.len(), 2, "{text}");
    assert!(regions[0].contains(") r-x"), "{text}");
    assert!(regions[1].contains(") rw-"), "{text}");
}

/// Without VMCOREINFO's `swapper_pg_dir` the kernel's table is found in
/// RAM: the root QEMU's TTBR1 held, and kernel memory reads the same.
#[test]
fn the_kernel_table_is_found_without_vmcoreinfo() {
    let Some(dir) = arm64_fixture() else { return };
    let mut bytes = std::fs::read(dir.join("dump.kdump")).unwrap();
    let needle = b"SYMBOL(swapper_pg_dir)=";
    let mut hidden = 0;
    for at in 0..bytes.len() - needle.len() {
        if &bytes[at..at + needle.len()] == needle {
            bytes[at + 7..at + 21].copy_from_slice(b"hidden_pg_root");
            hidden += 1;
        }
    }
    assert!(hidden > 0);
    let copy = std::env::temp_dir().join(format!(
        "vmem-arm64-novmcoreinfo-{}.kdump",
        std::process::id()
    ));
    std::fs::write(&copy, &bytes).unwrap();
    drop(bytes);
    let dump = open(&copy);
    let _ = std::fs::remove_file(&copy);
    assert!(dump.vmcoreinfo().unwrap().kernel_root().is_none());
    let kernel = dump.aarch64_kernel().expect("found in RAM");
    assert!(kernel.how.contains("found in RAM"), "{}", kernel.how);
    assert_eq!(
        kernel.root,
        sysregs(dir)[0]["TTBR1_EL1"] & 0x0000_ffff_ffff_f000
    );
    let (words, _) = gdb_reads(dir);
    let tables = GuestTables::new(dump.ram(), kernel.root, None);
    for (&va, &word) in &words {
        let (pa, _) = vmem::translate_pa(&kernel.format, &tables, kernel.root, va).expect("mapped");
        let mut buf = [0u8; 8];
        dump.ram().read(pa, &mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), word, "{va:#x}");
    }
}

/// Cut short or corrupted, an arm64 kdump file is refused in one line or
/// served — registers, the kernel's walk (its table from VMCOREINFO, or
/// searched for in RAM when the mutation hid it) — never a panic.
#[test]
fn lying_arm64_dumps_get_one_line_and_never_panic() {
    let Some(dir) = arm64_fixture() else { return };
    let tmp = std::env::temp_dir().join(format!("vmem-arm64-mutants-{}", std::process::id()));
    let original = std::fs::read(dir.join("dump.kdump")).unwrap();
    let mut mutants = fixture::mutants(&original);
    // VMCOREINFO's kernel table hidden: the search runs on the mutant.
    let mut hidden = original.clone();
    let needle = b"SYMBOL(swapper_pg_dir)=";
    for at in 0..hidden.len() - needle.len() {
        if &hidden[at..at + needle.len()] == needle {
            hidden[at + 7] = b'X';
        }
    }
    mutants.push(hidden);
    for (i, m) in mutants.iter().enumerate() {
        std::fs::write(&tmp, m).unwrap();
        match Dump::open(&tmp) {
            Err(e) => {
                let line = e.to_string();
                assert!(!line.is_empty() && !line.contains('\n'), "#{i}: {line}");
            }
            Ok(dump) => {
                let debugger = vmem_gdbstub::target::Debugger::from_dump(dump).build();
                for line in [
                    "info registers",
                    "vmem walk --limit 20",
                    "vmem translate $pc",
                    "x /4gx $sp",
                ] {
                    let text = debugger.monitor(line).expect("monitor");
                    assert!(!text.is_empty(), "#{i} {line}");
                }
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
}

/// The space roots `spaces --scan` finds in the fixture's `file`.
fn scanned(dir: &Path, file: &str) -> Vec<u64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmem-gdbstub"))
        .arg("spaces")
        .arg(dir.join(file))
        .arg("--scan")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    text.lines()
        .filter(|l| l.ends_with("found by its structure"))
        .filter_map(|l| {
            u64::from_str_radix(l.strip_prefix("space 0x")?.split(':').next()?, 16).ok()
        })
        .collect()
}

/// Two dumps a moment apart, the guest having started one more process
/// between them: the second holds a process table the first did not,
/// mapping busybox; `vmem diff --dump` of the second against the first,
/// over every space the scan finds, lists exactly the ranges whose
/// translation differs between the two dumps — each listed range
/// differs, sampled unlisted addresses do not — checked page by page
/// through the library, each space in its half. (The kernel's half may
/// not change at all: a new task often reuses a cached kernel stack.)
#[test]
fn diff_between_two_arm64_dumps_agrees_with_translation() {
    let Some(dir) = arm64_fixture() else { return };
    let before = scanned(dir, "dump.elf");
    let after = scanned(dir, "dump2.elf");
    let new: Vec<u64> = after
        .iter()
        .copied()
        .filter(|r| !before.contains(r))
        .collect();
    assert!(!new.is_empty(), "{before:x?} {after:x?}");
    let busybox = std::fs::read(dir.join("busybox")).unwrap();
    let head = u64::from_le_bytes(busybox[..8].try_into().unwrap());
    let first = dir.join("dump.elf");
    let served = serve(dir, "dump2.elf", &[]);
    let mut commands = vec![
        "monitor vmem spaces --scan".to_string(),
        format!(
            "monitor vmem diff --dump {} --limit 100000",
            first.display()
        ),
    ];
    for root in &new {
        commands.push(format!("monitor vmem use {root:#x}"));
        commands.push(format!(
            "printf \"B {root:x} %lx\\n\", *(unsigned long *)0x400000"
        ));
    }
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = gdb(&served, &commands);
    assert!(printed(&out, "B").iter().any(|(_, w)| *w == head), "{out}");
    // The diff's blocks: each space's listed VA ranges.
    let diff = &out[out.find("scanned ").expect("the scan")..];
    let diff = &diff[..diff.find(" changes since dump").expect("the diff")];
    let mut listed: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    for line in diff.lines() {
        if let Some(root) = line
            .strip_prefix("space 0x")
            .and_then(|r| r.strip_suffix(':'))
        {
            listed.push((u64::from_str_radix(root, 16).unwrap(), Vec::new()));
            continue;
        }
        let range = line
            .split_whitespace()
            .find(|w| w.len() == 33 && w.as_bytes()[16] == b'-');
        if let (Some((_, ranges)), true, Some(range)) =
            (listed.last_mut(), line.starts_with("  "), range)
        {
            let (a, b) = range.split_once('-').unwrap();
            ranges.push((
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            ));
        }
    }
    assert!(listed.iter().any(|(root, _)| new.contains(root)), "{diff}");
    let (one, two) = (open(&first), open(&dir.join("dump2.elf")));
    let kernel = one.aarch64_kernel().unwrap().clone();
    let user = Aarch64::new(kernel.format.levels(), Half::Lower);
    // The kernel's half too when nothing in it changed: every address of
    // it is unlisted.
    if listed.iter().all(|(root, _)| *root != kernel.root) {
        listed.push((kernel.root, Vec::new()));
    }
    let mut sampled = 0;
    for (root, ranges) in &listed {
        let (fmt, half) = if *root == kernel.root {
            (kernel.format, (1u64 << 63, (1u64 << 63) - 1))
        } else {
            (user, (0, 1u64 << 48))
        };
        let translate = |dump: &Dump, va: u64| {
            let tables = GuestTables::new(dump.ram(), *root, None);
            vmem::translate_addr(&fmt, &tables, *root, va)
                .ok()
                .map(|t| (t.pa, t.perms))
        };
        for &(start, _) in ranges {
            assert_ne!(
                translate(&one, start),
                translate(&two, start),
                "space {root:#x}: {start:#x} is listed"
            );
        }
        let tables = GuestTables::new(two.ram(), *root, None);
        for m in vmem::virt_to_phys(&fmt, &tables, half.0, half.1) {
            let m = m.unwrap();
            let va = m.virt_base + ((m.len / 2) & !0xfff);
            if ranges.iter().any(|&(a, b)| a <= va && va <= b) {
                continue;
            }
            assert_eq!(
                translate(&one, va),
                translate(&two, va),
                "space {root:#x}: {va:#x} is not listed"
            );
            sampled += 1;
        }
    }
    assert!(sampled > 50, "{sampled}");
}

/// Hostile packets to an arm64 dump's session — reads and writes at
/// absurd addresses and lengths, register numbers past the file, threads
/// that do not exist, monitor lines that point gdb's reads through
/// garbage "process tables", target-description reads past its end —
/// are each answered, and gdb-multiarch attaches afterwards.
#[test]
fn hostile_packets_leave_the_arm64_session_serving() {
    let Some(dir) = arm64_fixture() else { return };
    let served = serve(dir, "dump.kdump", &[]);
    let addrs = [
        0u64,
        0x4000_0000,
        0x0000_ffff_ffff_f000,
        0xffff_0000_0000_0000,
        0xffff_ffff_ffff_fff0,
        0x8000_0000_0000_0000,
        u64::MAX,
    ];
    let lens = [0u64, 1, 0x1000, 0x10_0000, 0xffff_ffff, u64::MAX];
    let mut rng = rng::Rng(0x5eed_a64d);
    let mut client = rsp::Rsp::connect(served.port);
    let (mut sent, mut answered) = (0, 0);
    for _ in 0..20_000 {
        let addr = *rng.pick(&addrs) ^ (rng.below(1 << 20) << 12);
        let len = *rng.pick(&lens);
        let tid = *rng.pick(&["0", "-1", "1", "2", "3", "7fffffff", "zz", ""]);
        let payload = match rng.below(9) {
            0 => format!("m{addr:x},{len:x}"),
            1 => format!("x{addr:x},{len:x}"),
            2 => format!("M{addr:x},4:deadbeef"),
            3 => format!("p{:x}", rng.below(300)),
            4 => format!("Hg{tid}"),
            5 => "g".to_string(),
            6 => format!("qThreadExtraInfo,{tid}"),
            7 => format!(
                "qXfer:features:read:target.xml:{:x},{len:x}",
                rng.below(1 << 16)
            ),
            _ => {
                let line = match rng.below(4) {
                    0 => format!("vmem use {addr:#x}"),
                    1 => format!("vmem walk --space {addr:#x} --limit 5"),
                    2 => format!("x /4gx {addr:#x}"),
                    _ => "vmem use current".to_string(),
                };
                let hex: String = line.bytes().map(|b| format!("{b:02x}")).collect();
                format!("qRcmd,{hex}")
            }
        };
        sent += 1;
        match client.request(payload.as_bytes()) {
            rsp::Reply::Packet(_) => answered += 1,
            rsp::Reply::Timeout => panic!("unanswered: {payload}"),
            rsp::Reply::Closed => panic!("closed after {payload}"),
        }
        // A monitor command answers in several packets: get back in step.
        if payload.starts_with("qRcmd") {
            assert!(client.resync(), "{payload}");
        }
    }
    assert_eq!(answered, sent);
    drop(client);
    let pc = qemu_registers(dir)[0]["PC"];
    let out = gdb(&served, &["p/x $pc"]);
    assert!(out.contains(&format!("= {pc:#x}")), "{out}");
}
