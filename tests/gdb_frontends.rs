//! What front-ends that know QEMU expect, through the real gdb against the
//! demo VM: control registers with QEMU's flag types, `$reg` expressions in
//! monitor arguments (checked against gdb's own evaluation), QEMU's thread
//! names, bare `qSupported`, one-line errors, and `x` / `xp` at the edges
//! of what is mapped.

mod demo;

use demo::{hex_after, DemoVm};

/// The names gdb shows for the set bits of `value`, from Intel's SDM
/// (high bits first, as gdb prints flags).
fn flag_names(value: u64, bits: &[(&str, u32)]) -> String {
    let set: Vec<&str> = bits
        .iter()
        .filter(|(_, bit)| value >> bit & 1 == 1)
        .map(|(name, _)| *name)
        .collect();
    format!("[ {} ]", set.join(" "))
}

/// Control registers and EFER as QEMU's target description shows them.
#[test]
fn control_registers_show_their_flags() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&["info registers cr0 cr3 cr4 efer eflags"]);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}: {out}"))
            .to_string()
    };
    let cr0 = hex_after(&line("cr0"), "cr0").unwrap();
    let cr0_bits = [
        ("PG", 31),
        ("CD", 30),
        ("NW", 29),
        ("AM", 18),
        ("WP", 16),
        ("NE", 5),
        ("ET", 4),
        ("TS", 3),
        ("EM", 2),
        ("MP", 1),
        ("PE", 0),
    ];
    assert!(line("cr0").ends_with(&flag_names(cr0, &cr0_bits)), "{out}");
    assert!(line("cr0").ends_with("[ PG WP NE ET MP PE ]"), "{out}");
    assert!(line("cr4").ends_with("[ OSXMMEXCPT OSFXSR PAE ]"), "{out}");
    assert!(line("efer").ends_with("[ NXE LMA LME ]"), "{out}");
    let cr3 = line("cr3");
    let value = hex_after(&cr3, "cr3").unwrap();
    assert!(
        cr3.ends_with(&format!("[ PDBR={} PCID=0 ]", value >> 12)),
        "{out}"
    );
    assert!(line("eflags").contains("IOPL=0"), "{out}");
}

/// `$pc`, `$sp`, arithmetic and spaces in monitor arguments give what gdb
/// itself computes for the same expressions.
#[test]
fn monitor_arguments_take_registers_and_arithmetic() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "x/2gx $sp+8",
        "monitor x /2gx $sp+8",
        "monitor x /2gx ( $rsp + 0x10 ) - 8",
        "print/x $pc",
        "monitor gva2gpa $pc",
        "monitor vmem translate $rip & ~0xfff",
        "monitor gva2gpa $nosuch",
    ]);
    // gdb: "0xADDR <sym>:\t0xA\t0xB"; ours: "ADDR: 0xA 0xB".
    let gdb_line = out.lines().find(|l| l.contains(":\t0x")).expect(&out);
    let gdb_values: Vec<u64> = gdb_line
        .split('\t')
        .skip(1)
        .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        .collect();
    let ours: Vec<Vec<u64>> = out
        .lines()
        .filter(|l| {
            l.len() > 17
                && l.as_bytes()[16] == b':'
                && l[..16].chars().all(|c| c.is_ascii_hexdigit())
        })
        .map(|l| {
            l[17..]
                .split_whitespace()
                .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
                .collect()
        })
        .collect();
    assert_eq!(ours.len(), 2, "{out}");
    assert_eq!(ours[0], gdb_values, "{out}");
    assert_eq!(ours[1], gdb_values, "{out}");
    let pc = hex_after(&out, "$1 = ").unwrap();
    let gpa = hex_after(&out, "gpa: ").unwrap();
    // The demo's kernel window: VA 0xffffffff80000000 + x is PA x.
    assert_eq!(gpa, pc - 0xffff_ffff_8000_0000, "{out}");
    assert!(
        out.contains(&format!("{:#x} in space", pc & !0xfff)),
        "translate of the page: {out}"
    );
    assert!(out.contains("error: unknown register $nosuch\n"), "{out}");
}

/// `info threads` names each vCPU as QEMU does: halted while in `hlt`,
/// running when stopped elsewhere (at a breakpoint in `level3`).
///
/// The guest works a short burst at every timer tick, so an attach may
/// find a vCPU mid-burst: a vCPU named halted must sit in `halt()`, and
/// one of a few attaches must find both vCPUs halted.
#[test]
fn threads_are_named_like_qemus_cpus() {
    let Some(vm) = DemoVm::start() else { return };
    let both_idle = (0..10).any(|_| {
        let idle = vm.gdb(&["info threads"]);
        for line in idle.lines().filter(|l| l.contains("(CPU#")) {
            assert!(
                !line.contains("[halted])") || line.contains(" in halt ()"),
                "a vCPU named halted must sit in halt(): {idle}"
            );
        }
        idle.contains("(CPU#0 [halted])") && idle.contains("(CPU#1 [halted])")
    });
    assert!(both_idle, "no attach found both vCPUs halted");
    let busy = vm.gdb(&["break level3", "continue", "info threads", "delete"]);
    assert!(
        busy.lines()
            .any(|l| l.starts_with('*') && l.contains("[running])") && l.contains("level3")),
        "{busy}"
    );
}

/// A bare `qSupported` (pwndbg's `maint packet qSupported`) gets the
/// features gdb's own query gets, exec-file among them; `Qqemu.sstep`
/// is remembered.
#[test]
fn bare_qsupported_and_sstep_state() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "maint packet qSupported",
        "maint packet Qqemu.sstep=0x1",
        "maint packet qqemu.sstep",
        "maint packet Qqemu.sstep=0x7",
    ]);
    assert!(out.contains("received: \"PacketSize="), "{out}");
    assert!(out.contains("qXfer:exec-file:read+"), "{out}");
    assert!(out.contains("received: \"0x1\""), "{out}");
}

/// `xp` across the end of RAM prints what exists, then one error line;
/// `x` stops at the first unmapped page the same way; a missing argument
/// is not an unknown command.
#[test]
fn memory_dumps_print_what_exists() {
    let Some(vm) = DemoVm::start() else { return };
    let end = 64u64 << 20; // the demo's RAM
    let out = vm.gdb(&[
        &format!("monitor xp /4gx {:#x}", end - 16),
        "monitor x /4gx 0x401000-16",
        "monitor gva2gpa",
        "monitor xp",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&format!("{:016x}:", end - 16)))
        .expect(&out);
    assert_eq!(lines[at].split_whitespace().count(), 3, "{out}");
    assert_eq!(
        lines[at + 1],
        format!("error: Cannot access memory at {end:#x}"),
        "{out}"
    );
    // 0x400000 is the user page of the current space (0x401000 is not
    // mapped): two values, then the error at 0x401000.
    let user = lines
        .iter()
        .position(|l| l.starts_with("0000000000400ff0:"))
        .expect(&out);
    assert_eq!(
        lines[user + 1],
        "error: Cannot access memory at 0x401000",
        "{out}"
    );
    assert!(
        out.contains("error: missing ADDR\nusage: gva2gpa ADDR"),
        "{out}"
    );
    assert!(
        out.contains("error: missing ADDR\nusage: xp /FMT ADDR"),
        "{out}"
    );
    assert!(!out.contains("unknown command"), "{out}");
}

/// pwndbg's default `kernel-vmmap page-tables` runs gdb-pt-dump, which
/// finds the VMM as `pgrep qemu-system` (with several, the one that has the
/// file of `monitor chardev-add file,id=…,path=…` open), then reads guest
/// RAM from `/proc/PID/mem` at `monitor gpa2hva`'s host address. Its exact
/// steps against the demo named `qemu-system-vmm`: the handshake finds the
/// demo's pid, and the root table read at the host address equals
/// `monitor xp` of it.
#[test]
fn gdb_pt_dumps_way_to_guest_ram_works() {
    let Some(vm) = DemoVm::start_with(&["--process-name", "qemu-system-vmm"]) else {
        return;
    };
    let marker = std::env::temp_dir().join(format!("gdb-pt-dump-{}", vm.pid()));
    std::fs::write(&marker, b"").unwrap();
    let root = vm.spaces[0];
    let out = vm.gdb(&[
        &format!(
            "monitor chardev-add file,id=gdb-pt-dump-test,path={}",
            marker.display()
        ),
        &format!(
            "shell ls -l /proc/{}/fd > {}.fds",
            vm.pid(),
            marker.display()
        ),
        "monitor chardev-remove gdb-pt-dump-test",
        "monitor chardev-remove gdb-pt-dump-test",
        &format!("monitor gpa2hva {root:#x}"),
        &format!("monitor xp /512gx {root:#x}"),
        "monitor gpa2hva 0x7fff000000",
        "monitor chardev-add socket,id=x,path=/tmp/x",
    ]);
    let fds = std::fs::read_to_string(format!("{}.fds", marker.display())).unwrap();
    let _ = std::fs::remove_file(format!("{}.fds", marker.display()));
    let _ = std::fs::remove_file(&marker);
    assert!(
        fds.contains(&marker.display().to_string()),
        "the VMM holds the chardev's file: {fds}"
    );
    let pgrep = std::process::Command::new("pgrep")
        .arg("qemu-system")
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&pgrep.stdout);
    assert!(
        pids.lines().any(|p| p == vm.pid().to_string()),
        "pgrep qemu-system: {pids}"
    );
    assert!(
        out.contains("error: no chardev 'gdb-pt-dump-test'"),
        "{out}"
    );
    // gdb-pt-dump: int(res.split(" ")[-1], 16), then pread /proc/PID/mem.
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("Host virtual address for {root:#x} (ram) is ")))
        .expect(&out);
    let hva = u64::from_str_radix(
        line.split(' ')
            .next_back()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let mem = std::fs::File::open(format!("/proc/{}/mem", vm.pid())).unwrap();
    let mut table = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut table, hva).unwrap();
    let from_proc: Vec<u64> = table
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let from_xp: Vec<u64> = out
        .lines()
        .filter(|l| l.len() > 17 && l.as_bytes()[16] == b':')
        .flat_map(|l| {
            l[17..]
                .split_whitespace()
                .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(from_xp.len(), 512, "{out}");
    assert_eq!(from_proc, from_xp);
    assert!(from_proc.iter().any(|&e| e & 1 == 1), "a root with entries");
    assert!(
        out.contains("error: No memory is mapped at address 0x7fff000000"),
        "{out}"
    );
    assert!(
        out.contains("error: only the file backend is supported"),
        "{out}"
    );
}

/// lldb's memory map comes from the page tables (`qMemoryRegionInfo`):
/// `memory region` on the user page (4K, rw-), the unmapped gap after it,
/// and an address inside the kernel window's 2 MiB pages (one rwx region
/// for all 64 MiB); walking on with `memory region` visits the demo's
/// whole layout in order, gaps included (lldb 14 has no `--all`).
#[test]
fn lldb_memory_regions_come_from_the_page_tables() {
    if std::process::Command::new("lldb")
        .arg("--version")
        .output()
        .is_err()
    {
        let required = std::env::var("VMEM_GDBSTUB_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(!required, "lldb is missing");
        eprintln!("SKIPPED: no lldb");
        return;
    }
    let Some(vm) = DemoVm::start() else { return };
    let mut lldb = std::process::Command::new("lldb");
    lldb.arg("--batch")
        .args(["-o", &format!("gdb-remote 127.0.0.1:{}", vm.port)])
        .args(["-o", "memory region 0x400123"])
        .args(["-o", "memory region 0x401000"])
        .args(["-o", "memory region 0xffffffff80412345"])
        .args(["-o", "memory region 0"]);
    for _ in 0..8 {
        lldb.args(["-o", "memory region"]);
    }
    lldb.args(["-o", "detach"])
        .stdin(std::process::Stdio::null());
    let out = demo::run_with_timeout(lldb, std::time::Duration::from_secs(60));
    let regions: Vec<&str> = out.lines().filter(|l| l.starts_with("[0x")).collect();
    assert_eq!(regions.len(), 12, "{out}");
    assert_eq!(
        regions[0], "[0x0000000000400000-0x0000000000401000) rw-",
        "{out}"
    );
    assert_eq!(
        regions[1], "[0x0000000000401000-0xffff888000000000) ---",
        "{out}"
    );
    assert_eq!(
        regions[2], "[0xffffffff80000000-0xffffffff84000000) rwx",
        "{out}"
    );
    assert_eq!(
        regions[3..],
        [
            "[0x0000000000000000-0x0000000000400000) ---",
            "[0x0000000000400000-0x0000000000401000) rw-",
            "[0x0000000000401000-0xffff888000000000) ---",
            "[0xffff888000000000-0xffff888040000000) rw-",
            "[0xffff888040000000-0xffffffff80000000) ---",
            "[0xffffffff80000000-0xffffffff84000000) rwx",
            "[0xffffffff84000000-0xffffffffc0000000) ---",
            "[0xffffffffc0000000-0xffffffffc0001000) rw-",
            // The last gap ends at 2^64, which lldb prints as 0.
            "[0xffffffffc0001000-0x0000000000000000) ---",
        ],
        "{out}"
    );
}

/// gdb itself reads both target descriptions (`set tdesc filename`, no
/// target needed: this host cannot run a 32-bit paged guest): the
/// architecture, and for every register its remote number, `g` offset and
/// size exactly where our codec puts it.
#[test]
fn gdb_reads_both_register_layouts_as_the_codec_writes_them() {
    use vmem_gdbstub::target::{RegLayout, X86_64RegId};
    if std::process::Command::new("gdb")
        .arg("--version")
        .output()
        .is_err()
    {
        let required = std::env::var("VMEM_GDBSTUB_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(!required, "gdb is missing");
        eprintln!("SKIPPED: no gdb");
        return;
    }
    for (layout, arch) in [
        (RegLayout::X86_64, "i386:x86-64"),
        (RegLayout::I386, "i386"),
    ] {
        let file =
            std::env::temp_dir().join(format!("vmem-tdesc-{}-{arch}.xml", std::process::id()));
        std::fs::write(&file, layout.target_xml()).unwrap();
        let mut gdb = std::process::Command::new("gdb");
        gdb.args(["-batch", "-nx", "-ex"])
            .arg(format!("set tdesc filename {}", file.display()))
            .args([
                "-ex",
                "show architecture",
                "-ex",
                "maint print remote-registers",
            ]);
        let out = demo::run_with_timeout(gdb, std::time::Duration::from_secs(60));
        let _ = std::fs::remove_file(&file);
        assert!(out.contains(&format!("(currently \"{arch}\")")), "{out}");
        // Name Nr Rel Offset Size Type RmtNr g/G-Offset
        let mut seen = 0;
        for line in out.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() != 8 || cols[6].parse::<usize>().is_err() {
                continue;
            }
            let (size, remote, offset): (usize, usize, usize) = (
                cols[4].parse().unwrap(),
                cols[6].parse().unwrap(),
                cols[7].parse().unwrap(),
            );
            let range = layout
                .byte_range(X86_64RegId(remote))
                .unwrap_or_else(|| panic!("{line}"));
            assert_eq!((offset, size), (range.start, range.len()), "{arch}: {line}");
            seen += 1;
        }
        let expected = (0..)
            .take_while(|&id| layout.byte_range(X86_64RegId(id)).is_some())
            .count();
        assert_eq!(seen, expected, "{arch}: every register: {out}");
    }
}

/// QEMU's `info registers` line `RIP=… CPL=0 II=… A20=1 SMM=0 HLT=…` says
/// what the CPU itself holds: at the `hlt` right after the guest's `sti`
/// the interrupt shadow is up (II=1: the SDM's one-instruction block after
/// STI) and the vCPU is not halted yet; stepped past the `hlt`, it is
/// halted (HLT=1) and the shadow is gone; at a breakpoint in `level3`
/// neither.
#[test]
fn info_registers_shows_the_interrupt_shadow_and_hlt() {
    let Some(vm) = DemoVm::start() else { return };
    let script = "\
set $p = (unsigned char *)halt
while *$p != 0xf4
  set $p = $p + 1
end
hbreak *$p
continue
monitor info registers
delete
stepi
monitor info registers
break level3
continue
monitor info registers
";
    let out = vm.gdb_script("run-state", script, std::time::Duration::from_secs(60));
    let states: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("RIP="))
        .map(|l| &l[l.find(" CPL=").expect("CPL") + 1..])
        .collect();
    assert_eq!(
        states,
        [
            "CPL=0 II=1 A20=1 SMM=0 HLT=0",
            "CPL=0 II=0 A20=1 SMM=0 HLT=1",
            "CPL=0 II=0 A20=1 SMM=0 HLT=0"
        ],
        "at the hlt after sti, past the hlt, in level3: {out}"
    );
}

/// `monitor info cpus` as QEMU prints it: each vCPU with the host thread
/// that runs it — the demo names its vCPU threads `vcpu0`, `vcpu1`, and
/// the kernel's /proc says so of each thread_id — and `*` on the vCPU the
/// monitor commands use, which follows the stop (vCPU 1 stops in
/// `write_watched`, which only it calls).
#[test]
fn info_cpus_names_each_vcpus_host_thread() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "monitor info cpus",
        "break write_watched",
        "continue",
        "monitor info cpus",
    ]);
    assert!(
        out.contains("Thread 2 hit Breakpoint 1, write_watched"),
        "{out}"
    );
    // gdb prints monitor output on its own stream: two listings in order.
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" CPU #")).collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (listing, current) in lines.chunks(2).zip([None, Some(1)]) {
        for (cpu, line) in listing.iter().enumerate() {
            let prefix = format!(" CPU #{cpu}: thread_id=");
            let tid = line
                .split_once(&prefix)
                .and_then(|(mark, tid)| (mark == "*" || mark == " ").then_some(tid))
                .unwrap_or_else(|| panic!("{line}: {out}"));
            let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", vm.pid()))
                .unwrap_or_else(|e| panic!("thread {tid}: {e}"));
            assert_eq!(comm.trim(), format!("vcpu{cpu}"), "{out}");
            if current == Some(cpu) {
                assert!(line.starts_with('*'), "{out}");
            }
        }
        assert_eq!(
            listing.iter().filter(|l| l.starts_with('*')).count(),
            1,
            "{out}"
        );
    }
}

/// `monitor cpu N` (QEMU's) makes vCPU N the one the monitor commands use
/// until the VM next stops: `info cpus` marks it, `info registers` and
/// `$pc` in arguments are that vCPU's (gdb's own `$pc` of thread 2 agrees),
/// and the next stop hands the commands to the vCPU that stopped.
#[test]
fn monitor_cpu_selects_the_vcpu_the_commands_use() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "monitor cpu 1",
        "monitor info cpus",
        "monitor info registers",
        "monitor gva2gpa $pc",
        "thread 2",
        "print/x $pc",
        "monitor cpu 2",
        "monitor cpu",
        "thread 1",
        "break level3",
        "continue",
        "monitor info cpus",
    ]);
    assert!(
        out.contains("monitor commands now use CPU #1 (until the VM next stops)"),
        "{out}"
    );
    let marks: Vec<&str> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marks.len(), 2, "{out}");
    assert!(marks[0].starts_with("* CPU #1: "), "{out}");
    assert!(
        marks[1].starts_with("* CPU #0: "),
        "after the stop in level3: {out}"
    );
    let rip = hex_after(&out, "\nRIP=").expect("RIP");
    assert_eq!(hex_after(&out, "$1 = "), Some(rip), "thread 2's pc: {out}");
    // The kernel window: VA 0xffffffff80000000 + x is PA x.
    assert_eq!(
        hex_after(&out, "gpa: "),
        Some(rip - 0xffff_ffff_8000_0000),
        "{out}"
    );
    assert!(out.contains("error: no CPU 2: this VM has 2\n"), "{out}");
    assert!(
        out.contains("error: expected one CPU index\nusage: cpu N"),
        "{out}"
    );
}

/// A gdb client controls the guest, not the host: host paths it names
/// (`chardev-add file,…,path=P`, `vmem diff --dump P`) open only if they
/// are regular files — a FIFO (which would block the stub for good), a
/// device, a directory and a symbolic link are refused at once, in one
/// line that reads the same whatever the path is, and the session goes
/// on. With `--no-host-files` even a regular file is refused.
#[test]
fn host_paths_a_client_names_open_only_as_regular_files() {
    let Some(vm) = DemoVm::start() else { return };
    let dir = std::env::temp_dir().join(format!("vmem-host-paths-{}", vm.pid()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let refused = [
        fifo.display().to_string(),
        "/dev/null".to_string(),
        dir.display().to_string(),
        link.display().to_string(),
        dir.join("missing").display().to_string(),
    ];
    let mut commands = Vec::new();
    for (i, path) in refused.iter().enumerate() {
        commands.push(format!("monitor chardev-add file,id=c{i},path={path}"));
        commands.push(format!("monitor vmem diff --dump {path}"));
    }
    commands.push(format!(
        "monitor chardev-add file,id=ok,path={}",
        file.display()
    ));
    commands.push("monitor chardev-remove ok".into());
    commands.push("monitor info registers".into());
    let started = std::time::Instant::now();
    let out = vm.gdb(&commands.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "nothing blocks: {out}"
    );
    for path in &refused {
        let line = format!(
            "error: {path}: not opened (only existing regular files, not links, devices or FIFOs)"
        );
        assert_eq!(out.matches(&line).count(), 2, "{line}\n{out}");
    }
    assert!(!out.contains("error: no chardev 'ok'"), "{out}");
    assert!(out.contains("RIP="), "the session went on: {out}");

    let Some(closed) = DemoVm::start_with(&["--no-host-files"]) else {
        return;
    };
    let out = closed.gdb(&[
        &format!("monitor chardev-add file,id=x,path={}", file.display()),
        &format!("monitor vmem diff --dump {}", file.display()),
    ]);
    assert_eq!(
        out.matches("error: this VMM does not let gdb name host files")
            .count(),
        2,
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
