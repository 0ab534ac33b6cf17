//! The Linux fixture's dump as gdb, lldb and the QEMU-minded front-ends
//! meet it: `info registers` line for line as QEMU printed it, kernel
//! symbols that name only what the kernel holds, the symbol file handed
//! over the protocol (no file on the host), `info mtree`, and dump files
//! this target does not read named for what they are.

mod fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::{demo_vm, fixture, kallsyms, number_after, Served};

/// QEMU's `info registers -a` text of CPU `index`: its lines, trailing
/// blanks cut.
fn qemu_register_lines(dir: &Path, index: usize) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("registers")).unwrap();
    let mut cpus: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("CPU#") {
            cpus.push(Vec::new());
        } else if let Some(cpu) = cpus.last_mut() {
            cpu.push(line.trim_end().to_string());
        }
    }
    cpus.swap_remove(index)
}

/// `monitor info registers` of each vCPU against QEMU's own text of the
/// same moment: segments (the flags word with its limit bits 19:16),
/// descriptor tables, control and debug registers equal, line for line.
/// The debug registers are not in the dump: shown at their reset values
/// (what QEMU shows of a CPU that never set them), and said so.
#[test]
fn info_registers_are_the_lines_qemu_printed() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    for cpu in 0..2 {
        let out = served.gdb(&[&format!("monitor cpu {cpu}"), "monitor info registers"]);
        let ours: Vec<&str> = out.lines().map(str::trim_end).collect();
        let prefixes = [
            "ES =", "CS =", "SS =", "DS =", "FS =", "GS =", "LDT=", "TR =", "GDT=", "IDT=", "CR0=",
            "DR0=", "DR6=",
        ];
        for line in qemu_register_lines(dir, cpu) {
            if prefixes.iter().any(|p| line.starts_with(p)) {
                assert!(
                    ours.contains(&line.as_str()),
                    "cpu {cpu}: {line:?} in\n{out}"
                );
            }
        }
        assert!(
            out.contains(
                "(DR0-DR7 unknown here, as in a memory dump: shown at their reset values)"
            ),
            "{out}"
        );
    }
}

/// The dump served with the boot's kallsyms.
fn with_symbols(dir: &Path, extra: &[&str]) -> Served {
    let dump = dir.join("dump.elf");
    let symbols = dir.join("kallsyms");
    let mut args = vec![
        "--dump",
        dump.to_str().unwrap(),
        "--symbols",
        symbols.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Served::with_args(&args)
}

/// A directory of this test's own under the temporary directory.
fn private_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmem-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Symbols name only what the kernel holds: per-CPU symbols are offsets
/// (absolute, in no section), so a user address, a direct-map address and
/// user code get no kernel name; kernel text does, in section .kernel.
#[test]
fn symbols_name_only_addresses_the_kernel_holds() {
    let Some(dir) = fixture() else { return };
    let syms = kallsyms(dir);
    let served = with_symbols(dir, &[]);
    let first = served.gdb(&[&format!("x/gx {:#x}", syms["page_offset_base"])]);
    let direct_map = number_after(&first, ":\t").expect("page_offset_base");
    let out = served.gdb(&[
        "info symbol 0x400000",
        &format!("info symbol {:#x}", direct_map + 0x10_0000),
        "info symbol $pc",
        "p/x &cpu_tss_rw",
        "x/2i 0x400000",
    ]);
    assert!(out.contains("No symbol matches 0x400000."), "{out}");
    assert!(
        out.contains(&format!("No symbol matches {:#x}.", direct_map + 0x10_0000)),
        "{out}"
    );
    assert!(
        out.contains("native_safe_halt + 11 in section .kernel"),
        "{out}"
    );
    assert!(
        out.contains(&format!("= {:#x}", syms["cpu_tss_rw"])),
        "a per-CPU offset: {out}"
    );
    assert!(!out.contains("__per_cpu_end"), "{out}");
}

/// gdb loads the symbol file by itself (`qXfer:exec-file`) and reads it
/// through the stub (`vFile`), with no file on the host: `remote get` (what
/// GEF does with a `target:` file) brings the same bytes `--save-symbols`
/// writes, frames are named, and no "does not support file transfer".
/// lldb asks for no file; with the saved copy it names the same frames.
#[test]
fn the_symbol_file_travels_over_the_protocol() {
    let Some(dir) = fixture() else { return };
    let tmp = private_dir("symbols");
    let saved = tmp.join("kallsyms.elf");
    let fetched = tmp.join("fetched.elf");
    let served = with_symbols(dir, &["--save-symbols", saved.to_str().unwrap()]);
    let out = served.gdb(&[
        "bt 4",
        &format!(
            "remote get /vmem-gdbstub/kallsyms.elf {}",
            fetched.display()
        ),
    ]);
    assert!(
        out.contains("Reading symbols from target:/vmem-gdbstub/kallsyms.elf"),
        "{out}"
    );
    assert!(!out.contains("does not support file transfer"), "{out}");
    assert!(out.contains("in do_idle ()"), "{out}");
    let (a, b) = (
        std::fs::read(&saved).unwrap(),
        std::fs::read(&fetched).unwrap(),
    );
    assert!(
        a.len() > 1 << 20 && a == b,
        "{} vs {} bytes",
        a.len(),
        b.len()
    );
    // Only the exec-file is served.
    let other = served.gdb(&[&format!(
        "remote get /etc/hostname {}",
        tmp.join("h").display()
    )]);
    assert!(!tmp.join("h").exists(), "{other}");

    if Command::new("lldb").arg("--version").output().is_err() {
        let required = std::env::var("VMEM_GDBSTUB_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(!required, "lldb is missing");
        eprintln!("SKIPPED: no lldb");
    } else {
        let lldb = Command::new("lldb")
            .arg("--batch")
            .arg(&saved)
            .args(["-o", &format!("gdb-remote 127.0.0.1:{}", served.port)])
            .args(["-o", "bt 4"])
            .stdin(Stdio::null())
            .output()
            .expect("lldb");
        let text = String::from_utf8_lossy(&lldb.stdout).into_owned()
            + &String::from_utf8_lossy(&lldb.stderr);
        eprintln!("{text}");
        assert!(
            text.contains("kallsyms.elf`native_safe_halt + 11"),
            "{text}"
        );
        assert!(text.contains("kallsyms.elf`do_idle"), "{text}");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// No file with a guessable name: with links planted at the names the
/// stub once wrote its symbol file to (`vmem-gdbstub-symbols-<pid>.elf`,
/// for the pids a fresh pid namespace hands out), the stub in such a
/// namespace serves its symbols, and the links' target and the directory
/// stay as they were. `--save-symbols` refuses a link and an existing file.
#[test]
fn a_planted_link_is_never_written_through() {
    let Some(dir) = fixture() else { return };
    let tmp = private_dir("planted");
    let victim = tmp.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    for pid in 1..=4 {
        let link = tmp.join(format!("vmem-gdbstub-symbols-{pid}.elf"));
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    let listing = |d: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&tmp);
    let dump = dir.join("dump.elf");
    let symbols = dir.join("kallsyms");
    let demo_args = [
        "--listen",
        "127.0.0.1:0",
        "--dump",
        dump.to_str().unwrap(),
        "--symbols",
        symbols.to_str().unwrap(),
    ];
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let mut command = if unshare {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--kill-child"]).arg(demo_vm());
        c
    } else {
        eprintln!("note: no pid namespace here; the stub runs with its own pid");
        Command::new(demo_vm())
    };
    command.args(demo_args).env("TMPDIR", &tmp);
    let served = Served::launch(command);
    let out = served.gdb(&["bt 2"]);
    assert!(out.contains("in native_safe_halt ()"), "{out}");
    drop(served);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(listing(&tmp), before);

    let link = tmp.join("vmem-gdbstub-symbols-1.elf");
    for target in [&link, &victim] {
        let refused = Command::new(demo_vm())
            .args(demo_args)
            .arg("--save-symbols")
            .arg(target)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{why}");
        assert!(why.contains("--save-symbols"), "{why}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A file in a format known but not read (here a QEMU migration stream)
/// is named for what it is, with the formats that are read, in one line.
#[test]
fn an_unread_format_is_named_and_refused() {
    let Some(_) = fixture() else { return };
    let file = std::env::temp_dir().join(format!("vmem-qevm-{}", std::process::id()));
    let mut bytes = b"QEVM\0\0\0\x03".to_vec();
    bytes.resize(1 << 16, 0);
    std::fs::write(&file, bytes).unwrap();
    let started = Instant::now();
    let run = Command::new(demo_vm())
        .args(["--listen", "127.0.0.1:0", "--dump"])
        .arg(&file)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let why = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{why}");
    assert!(started.elapsed() < Duration::from_secs(10), "{why}");
    assert!(why.contains("a QEMU migration stream"), "{why}");
    assert!(why.contains("readable: ELF cores"), "{why}");
    assert!(why.contains("kdump-compressed dumps"), "{why}");
    assert_eq!(why.trim_end().lines().count(), 1, "{why}");
}

/// `info mtree -f` of the dump: one RAM line per piece of the file, as the
/// `elf` crate reads its program headers, and the holes between them.
#[test]
fn mtree_lists_the_dumps_pieces() {
    let Some(dir) = fixture() else { return };
    let file = std::fs::read(dir.join("dump.elf")).unwrap();
    let elf = elf::ElfBytes::<elf::endian::LittleEndian>::minimal_parse(&file).unwrap();
    let mut pieces: Vec<(u64, u64, u64)> = elf
        .segments()
        .unwrap()
        .iter()
        .filter(|ph| ph.p_type == elf::abi::PT_LOAD && ph.p_filesz > 0)
        .map(|ph| (ph.p_paddr, ph.p_filesz, ph.p_offset))
        .collect();
    pieces.sort();
    drop(file);
    let served = Served::start(dir);
    let out = served.gdb(&["monitor info mtree -f", "monitor info mtree -d"]);
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("(prio 0, ")).collect();
    let mut expected = Vec::new();
    for (i, (gpa, len, offset)) in pieces.iter().enumerate() {
        if i > 0 {
            let (prev, prev_len, _) = pieces[i - 1];
            if prev + prev_len < *gpa {
                expected.push(format!(
                    "  {:016x}-{:016x} (prio 0, i/o): hole (no RAM)",
                    prev + prev_len,
                    gpa - 1
                ));
            }
        }
        expected.push(format!(
            "  {gpa:016x}-{:016x} (prio 0, ram): dump @file+{offset:#x}",
            gpa + len - 1
        ));
    }
    assert_eq!(rows, expected, "{out}");
    assert!(
        out.contains("FlatView #0\n AS \"memory\", root: system"),
        "{out}"
    );
    assert!(
        out.contains("error: only -f (the flat view) is known"),
        "{out}"
    );
}
