//! Debian's own kernel, met through a memory dump: QEMU TCG boots Debian's
//! cloud kernel with a busybox initramfs (tests/linux/make-fixture.sh,
//! cached under target/linux-fixture), `dump-guest-memory` writes the
//! dump, and the demo VM serves it (`--dump`) to the real gdb. The oracles
//! are QEMU's own `info registers` at the moment of the dump, the
//! kernel's own /proc/kallsyms of that boot, and what Linux documents
//! about its layout and rights.

mod fixture;

use std::process::{Command, Stdio};

use fixture::{fixture, kallsyms, known_spaces, low_ram, number_after, qemu_registers, Served};
use regex::Regex;

#[test]
fn registers_are_the_ones_qemu_saw() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let expected = qemu_registers(dir);
    assert_eq!(expected.len(), 2, "two vCPUs in the fixture");
    for (i, cpu) in expected.iter().enumerate() {
        let out = served.gdb(&[
            &format!("thread {}", i + 1),
            "printf \"rip=%#lx\\n\", $rip",
            "printf \"rsp=%#lx\\n\", $rsp",
            "printf \"rax=%#lx\\n\", $rax",
            "printf \"r15=%#lx\\n\", $r15",
            "printf \"cr0=%#lx\\n\", $cr0",
            "printf \"cr3=%#lx\\n\", $cr3",
            "printf \"cr4=%#lx\\n\", $cr4",
            "printf \"gs_base=%#lx\\n\", $gs_base",
        ]);
        for (ours, qemus) in [
            ("rip=", "RIP"),
            ("rsp=", "RSP"),
            ("rax=", "RAX"),
            ("r15=", "R15"),
            ("cr0=", "CR0"),
            ("cr3=", "CR3"),
            ("cr4=", "CR4"),
            ("gs_base=", "GS_BASE"),
        ] {
            assert_eq!(
                number_after(&out, ours),
                cpu.get(qemus).copied(),
                "vcpu {i} {qemus}: {out}"
            );
        }
    }
}

#[test]
fn linux_banner_reads_through_the_kernels_own_tables() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let banner = kallsyms(dir)["linux_banner"];
    let out = served.gdb(&[&format!("x/s {banner:#x}")]);
    assert!(out.contains("\"Linux version 6."), "{out}");
    assert!(out.contains("Debian"), "{out}");
}

#[test]
fn kernel_sections_have_the_rights_linux_gives_them() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let symbols = kallsyms(dir);
    let out = served.gdb(&[
        &format!("monitor vmem translate {:#x}", symbols["_stext"]),
        &format!("monitor vmem translate {:#x}", symbols["__start_rodata"]),
        &format!("monitor vmem translate {:#x}", symbols["jiffies_64"]),
        &format!("x/gx {:#x}", symbols["page_offset_base"]),
    ]);
    let rights: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("may: "))
        .collect();
    assert_eq!(rights.len(), 3, "{out}");
    assert!(rights[0].starts_with("kernel r-x user ---"), "text: {out}");
    assert!(
        rights[1].starts_with("kernel r-- user ---"),
        "rodata: {out}"
    );
    assert!(rights[2].starts_with("kernel rw- user ---"), "data: {out}");
    // The direct map (at the randomised page_offset_base): never
    // executable, but for the real-mode trampoline below 1 MiB, which
    // Linux makes executable on purpose (arch/x86/realmode/init.c).
    let direct = number_after(&out, ":\t").expect("page_offset_base");
    let walk = served.gdb(&[&format!(
        "monitor vmem walk {direct:#x} {:#x}",
        direct + (256 << 20)
    )]);
    let leaves: Vec<Vec<&str>> = walk
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 5 && f[0].contains('-') && f[4].len() == 9)
        .collect();
    assert!(leaves.len() > 10, "{walk}");
    for f in &leaves {
        let (flags, phys) = (f[4], f[1]);
        let pa = u64::from_str_radix(&phys[..16], 16).unwrap();
        assert!(flags.starts_with("r"), "{f:?}");
        if flags.as_bytes()[2] == b'x' {
            assert!(pa < 1 << 20, "executable direct map at {pa:#x}: {f:?}");
        }
    }
    assert!(
        walk.contains("in 2M pages"),
        "RAM mapped in 2 MiB pages: {walk}"
    );
}

#[test]
fn info_mem_shows_linuxs_layout() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let symbols = kallsyms(dir);
    let out = served.gdb(&[
        "monitor info mem",
        &format!("x/gx {:#x}", symbols["vmalloc_base"]),
    ]);
    let ranges: Vec<(u64, u64, &str)> = out
        .lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (start, end) = range.split_once('-')?;
            let rights = rest.split_whitespace().nth(1)?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                rights,
            ))
        })
        .collect();
    let within = |lo: u64, hi: u64| ranges.iter().filter(move |r| r.0 >= lo && r.1 <= hi);
    // Kernel text and data inside the kernel image.
    let (text, end) = (symbols["_stext"], symbols["_end"]);
    assert!(
        within(text & !0x1f_ffff, end + (2 << 20)).count() >= 3,
        "{out}"
    );
    // vmalloc space (its randomised base read from the kernel).
    let vmalloc = number_after(&out, ":\t").expect("vmalloc_base");
    assert!(
        within(vmalloc, vmalloc + (1 << 45)).count() > 0,
        "vmalloc: {out}"
    );
    // The fixmap, at the top of the address space.
    assert!(
        within(0xffff_ffff_ff00_0000, u64::MAX).count() > 0,
        "fixmap: {out}"
    );
    // The kernel half is the kernel's (`info mem` prints u for user
    // pages); what a process maps in the lower half is its own.
    for &(start, _, rights) in &ranges {
        let user = start < 1 << 63;
        assert_eq!(rights.starts_with('u'), user, "{start:#x} {rights}: {out}");
    }
}

#[test]
fn every_cr3_in_the_dump_is_a_known_space() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let out = served.gdb(&["monitor vmem spaces", "monitor vmem walk"]);
    for cpu in qemu_registers(dir) {
        let cr3 = cpu["CR3"] & !0xfff;
        assert!(out.contains(&format!("space {cr3:#x}")), "{cr3:#x}: {out}");
    }
    assert!(
        out.contains("5-level") || out.contains("mappings;"),
        "{out}"
    );
}

#[test]
fn a_dump_refuses_to_run_and_stays_usable() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let banner = kallsyms(dir)["linux_banner"];
    let out = served.gdb(&[
        "continue",
        "stepi",
        &format!("break *{banner:#x}"),
        "continue",
        "print 6 * 7",
        &format!("x/s {banner:#x}"),
        "monitor info lapic",
        "monitor info cpus",
    ]);
    assert!(out.contains("memory dump: it cannot run or step"), "{out}");
    assert!(
        out.contains("error: a memory dump holds no local APIC state\n"),
        "{out}"
    );
    for cpu in 0..2 {
        assert!(
            out.contains(&format!(" CPU #{cpu}: no host thread has run it\n")),
            "{out}"
        );
    }
    assert!(out.contains("$1 = 42"), "the session goes on: {out}");
    assert!(out.contains("Linux version"), "{out}");
}

/// 8 MiB of kernel memory read by gdb through the kernel's direct map (its
/// randomised base read from page_offset_base) are exactly the RAM bytes
/// the dump file holds for physical 0 (located with the `elf` crate).
#[test]
fn the_direct_map_reads_the_dumps_ram() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let base = number_after(
        &served.gdb(&[&format!("x/gx {:#x}", kallsyms(dir)["page_offset_base"])]),
        ":\t",
    )
    .expect("page_offset_base");
    let out_path = std::env::temp_dir().join(format!("vmem-directmap-{}.bin", std::process::id()));
    let len: u64 = 8 << 20;
    served.gdb(&[&format!(
        "dump binary memory {} {base:#x} {:#x}",
        out_path.display(),
        base + len
    )]);
    let read = std::fs::read(&out_path).expect("gdb wrote the dump");
    let _ = std::fs::remove_file(&out_path);
    let file = std::fs::read(dir.join("dump.elf")).unwrap();
    let start = low_ram(&file).start;
    assert_eq!(read.len() as u64, len);
    assert!(read == file[start..start + len as usize], "bytes differ");
}

/// lldb on the same dump: registers, memory through the kernel's tables,
/// and a `continue` that says why it cannot and leaves the dump stopped.
#[test]
fn lldb_reads_the_dump_too() {
    let Some(dir) = fixture() else { return };
    if Command::new("lldb").arg("--version").output().is_err() {
        let required = std::env::var("VMEM_GDBSTUB_REQUIRE_KVM").is_ok_and(|v| v == "1");
        assert!(!required, "lldb is missing");
        eprintln!("SKIPPED: no lldb");
        return;
    }
    let served = Served::start(dir);
    let banner = kallsyms(dir)["linux_banner"];
    let rip = qemu_registers(dir)[0]["RIP"];
    let out = Command::new("lldb")
        .arg("--batch")
        .args(["-o", &format!("gdb-remote 127.0.0.1:{}", served.port)])
        .args(["-o", "register read rip"])
        .args([
            "-o",
            &format!("memory read --format c --count 24 {banner:#x}"),
        ])
        .args(["-o", "continue"])
        .args(["-o", "register read rip"])
        .stdin(Stdio::null())
        .output()
        .expect("lldb");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(text.contains("Linux version 6."), "{text}");
    assert!(
        text.contains("this is a memory dump: it cannot run or step"),
        "{text}"
    );
    let rips: Vec<&str> = text
        .lines()
        .filter(|l| l.trim().starts_with("rip = "))
        .collect();
    assert_eq!(rips.len(), 2, "{text}");
    assert!(
        rips.iter().all(|l| l.contains(&format!("{rip:#018x}"))),
        "{text}"
    );
    assert!(!text.contains("lost connection"), "{text}");
}

/// Another VMM's snapshot: raw RAM and the few registers it recorded
/// (`--raw`, `--cr3`, `--rip`, …): here the dump's RAM from physical 0 and
/// vCPU 0's registers as QEMU printed them, and the kernel is readable the
/// same way.
#[test]
fn a_raw_ram_image_with_registers_is_served_too() {
    let Some(dir) = fixture() else { return };
    let file = std::fs::read(dir.join("dump.elf")).unwrap();
    let raw = std::env::temp_dir().join(format!("vmem-raw-{}.ram", std::process::id()));
    std::fs::write(&raw, &file[low_ram(&file)]).unwrap();
    drop(file);
    let cpu = &qemu_registers(dir)[0];
    let hex = |name: &str| format!("{:#x}", cpu[name]);
    let served = Served::with_args(&[
        "--raw",
        raw.to_str().unwrap(),
        "--cr3",
        &hex("CR3"),
        "--cr0",
        &hex("CR0"),
        "--cr4",
        &hex("CR4"),
        "--efer",
        &hex("EFER"),
        "--rip",
        &hex("RIP"),
        "--rsp",
        &hex("RSP"),
    ]);
    let banner = kallsyms(dir)["linux_banner"];
    let out = served.gdb(&[
        "printf \"rip=%#lx\\n\", $rip",
        &format!("x/s {banner:#x}"),
        "monitor vmem walk --limit 3",
    ]);
    let _ = std::fs::remove_file(&raw);
    assert_eq!(number_after(&out, "rip="), Some(cpu["RIP"]), "{out}");
    assert!(out.contains("\"Linux version 6."), "{out}");
    assert!(out.contains("5-level") || out.contains("mappings"), "{out}");
}

/// With the boot's kallsyms (`--symbols`), gdb names kernel addresses: the
/// banner by name, and a backtrace of the idle vCPUs through the kernel's
/// own frames.
#[test]
fn kernel_symbols_name_addresses_and_frames() {
    let Some(dir) = fixture() else { return };
    let dump = dir.join("dump.elf");
    let symbols = dir.join("kallsyms");
    let served = Served::with_args(&[
        "--dump",
        dump.to_str().unwrap(),
        "--symbols",
        symbols.to_str().unwrap(),
    ]);
    let out = served.gdb(&["x/s &linux_banner", "info symbol $pc", "bt 6"]);
    assert!(out.contains("<linux_banner>:\t\"Linux version 6."), "{out}");
    // Both vCPUs were idle when QEMU dumped them.
    assert!(out.contains("in section .kernel"), "{out}");
    assert!(
        out.contains("do_idle") || out.contains("default_idle"),
        "{out}"
    );
}

/// What GEF and pwndbg (monitor mode) check and parse, as
/// ../shared/reference/gdb-clients.md records it from their traces against
/// QEMU (neither can be installed on this machine: pwndbg is not on PyPI
/// and GEF is not packaged): the QEMU-target test, and `monitor info mem`
/// in the form their parsers take, on Linux's real layout.
#[test]
fn the_dump_passes_gefs_and_pwndbgs_checks() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let out = served.gdb(&[
        "maint packet Qqemu.sstepbits",
        "maint packet qOffsets",
        "monitor info mem",
        "printf \"%#lx %#lx %#lx %#lx\\n\", $cr0, $cr3, $cr4, $efer",
        "printf \"%#x %#x %#x\\n\", $eflags, $cs, $ss",
    ]);
    assert!(
        out.contains("received: \"ENABLE=1,NOIRQ=2,NOTIMER=4\""),
        "{out}"
    );
    assert!(out.contains("received: \"\""), "qOffsets empty: {out}");
    let mem: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.len() > 16
                && l.as_bytes()[16] == b'-'
                && l.chars().take(16).all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    assert!(mem.len() > 20, "{out}");
    for line in &mem {
        // GEF: three whitespace-separated tokens; pwndbg: a '-' and a space.
        assert_eq!(line.split_whitespace().count(), 3, "{line}");
        assert!(line.contains('-') && line.contains(' '), "{line}");
    }
    assert!(!out.contains("unknown command"), "{out}");
}

/// The reverse map on Linux: the page of linux_banner (kernel rodata) is
/// mapped in the kernel image and in the direct map, in both spaces, and
/// nowhere writable.
#[test]
fn find_shows_where_linux_maps_a_kernel_page() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let symbols = kallsyms(dir);
    let banner = symbols["linux_banner"];
    let out = served.gdb(&[
        &format!("x/gx {:#x}", symbols["page_offset_base"]),
        &format!("monitor vmem find --va {banner:#x}"),
    ]);
    let direct = number_after(&out, ":\t").expect("page_offset_base");
    let pa = number_after(&out, "maps physical ").expect("the banner's PA");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains('-'))
        .collect();
    let image = format!("{:016x}", banner & !0xfff);
    let alias = format!("{:016x}", direct + (pa & !0xfff));
    // Every known space maps the kernel alike: the vCPUs' and the
    // kernel's own (VMCOREINFO's init_top_pgt).
    assert!(out.contains("the kernel's (VMCOREINFO)"), "{out}");
    let spaces = known_spaces(dir);
    assert_eq!(
        rows.iter()
            .filter(|r| r.trim_start().starts_with(&image))
            .count(),
        spaces,
        "{out}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.trim_start().starts_with(&alias))
            .count(),
        spaces,
        "{out}"
    );
    for r in &rows {
        let flags = r.split_whitespace().last().unwrap();
        assert!(flags.starts_with("r-"), "read-only everywhere: {r}");
    }
}

/// Linux enforces W^X on its own mappings (no page is both writable and
/// executable), keeps user pages out of the kernel half and, with SMEP,
/// user pages from kernel execution; its page tables are writable through
/// the direct map, as Linux does on purpose.
#[test]
fn audit_of_linux_finds_no_writable_code() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let out = served.gdb(&["monitor vmem audit --all"]);
    // The vCPUs' spaces and the kernel's own (VMCOREINFO).
    let audited = format!("audit of {} space(s)", known_spaces(dir));
    assert!(out.contains(&audited), "{out}");
    assert!(out.contains("writable and executable: 0"), "{out}");
    assert!(
        out.contains("user-accessible in the kernel half: 0"),
        "{out}"
    );
    assert!(
        out.contains("user pages the kernel may execute (no SMEP or PXN): 0"),
        "{out}"
    );
    let tables = number_after(&out, "page-table pages mapped writable: ").unwrap();
    assert!(tables > 0, "{out}");
}

/// Parsed `vmem spaces --scan shared` output: (kernel roots found with
/// user mappings, KPTI pairs as (kernel root, user copy), every root).
fn scanned(scan: &str) -> (Vec<u64>, Vec<(u64, u64)>, Vec<u64>) {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let mut with_users = Vec::new();
    let mut pairs = Vec::new();
    let mut all = Vec::new();
    for line in scan.lines() {
        let Some(rest) = line.strip_prefix("space ") else {
            continue;
        };
        let (root, what) = rest.split_once(": ").unwrap();
        let root = hex(root);
        all.push(root);
        if what.contains(" in the user half;") && !what.starts_with("nothing") {
            with_users.push(root);
        }
        if let Some(of) = what.strip_prefix("KPTI user copy of ") {
            pairs.push((hex(of.split_whitespace().next().unwrap()), root));
        }
    }
    (with_users, pairs, all)
}

/// The scan finds the processes no vCPU was running: with the vCPUs'
/// own roots, exactly the init script's five processes with their own mm
/// (sleep as pid 1, the shell loop, its sleep, the other sleep, the
/// mapper), each as a KPTI pair (booted with pti=on: the user copy is the
/// next page, its user half the same); exactly one maps the mapper's
/// region (fixture's mapper.c): its first half user rw-, the mprotect'ed
/// second half user r--, and the marker reads through that space.
#[test]
fn the_scan_finds_every_process_and_the_mapper_among_them() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let scan = served.gdb(&["monitor vmem spaces --scan shared"]);
    assert!(scan.contains("new address spaces"), "{scan}");
    let (with_users, pairs, mut roots) = scanned(&scan);
    let current: Vec<u64> = qemu_registers(dir)
        .iter()
        .map(|c| c["CR3"] & !0xfff)
        .collect();
    roots.extend(&current);
    // A process: a kernel root with user mappings and its KPTI twin.
    let mut processes: Vec<u64> = pairs
        .iter()
        .map(|&(kernel, _)| kernel)
        .filter(|kernel| {
            with_users.contains(kernel) || {
                // A vCPU's own root is not in the scan's list: walk it.
                current.contains(kernel)
                    && !served
                        .gdb(&[&format!(
                            "monitor vmem walk 0 0x800000000000 --space {kernel:#x}"
                        )])
                        .lines()
                        .any(|l| l.starts_with("0 mappings;"))
            }
        })
        .collect();
    processes.dedup();
    assert_eq!(processes.len(), 5, "{processes:x?} in {scan}");
    for (kernel, user) in &pairs {
        assert_eq!(user - kernel, 0x1000, "{scan}");
        assert_eq!(kernel % 0x2000, 0, "{scan}");
    }
    let mut mappers = Vec::new();
    for root in &roots {
        let out = served.gdb(&[
            &format!("monitor vmem translate 0x7e0000000000 --space {root:#x}"),
            &format!("monitor vmem translate 0x7e0000008000 --space {root:#x}"),
        ]);
        let rights: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("may: "))
            .collect();
        if !rights.is_empty() {
            // SMAP is on: the kernel may not touch user pages either way.
            assert_eq!(rights.len(), 2, "{out}");
            assert!(rights[0].starts_with("kernel --- user rw-"), "{out}");
            assert!(
                rights[1].starts_with("kernel --- user r--"),
                "mprotect: {out}"
            );
            mappers.push(*root);
        }
    }
    mappers.sort();
    mappers.dedup();
    assert_eq!(
        mappers.len(),
        2,
        "one process (a KPTI pair) maps the region: {mappers:x?}"
    );
    assert!(processes.contains(&mappers[0]), "{mappers:x?}");
    assert!(pairs.contains(&(mappers[0], mappers[1])), "{mappers:x?}");
    for mapper in mappers {
        let marker = served.gdb(&[
            &format!("monitor vmem use {mapper:#x}"),
            "x/s 0x7e0000000000",
            "x/s 0x7e0000008000",
        ]);
        assert_eq!(
            marker.matches("\"vmem-gdbstub mapper\"").count(),
            2,
            "{marker}"
        );
    }
}

/// The mapper's page, found from its user address: mapped there in both
/// halves of its KPTI pair, and in the direct map (page_offset_base + PA)
/// of every kernel root, kernel-only; the user copies have no direct map.
#[test]
fn find_lists_a_user_pages_direct_map_alias() {
    let Some(dir) = fixture() else { return };
    let served = Served::start(dir);
    let symbols = kallsyms(dir);
    let scan = served.gdb(&["monitor vmem spaces --scan shared"]);
    let (_, pairs, _) = scanned(&scan);
    let mapper = pairs
        .iter()
        .map(|&(kernel, _)| kernel)
        .find(|kernel| {
            served
                .gdb(&[&format!(
                    "monitor vmem translate 0x7e0000000000 --space {kernel:#x}"
                )])
                .contains("may: ")
        })
        .expect("the mapper's root");
    let out = served.gdb(&[
        &format!("x/gx {:#x}", symbols["page_offset_base"]),
        &format!("monitor vmem find --va 0x7e0000000000 --space {mapper:#x}"),
    ]);
    let direct = number_after(&out, ":\t").expect("page_offset_base");
    let pa = number_after(&out, "maps physical ").expect("the page's PA");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains('-'))
        .collect();
    let user: Vec<&&str> = rows
        .iter()
        .filter(|r| r.trim_start().starts_with("00007e0000000000"))
        .collect();
    assert_eq!(user.len(), 2, "the mapper's pair: {out}");
    for r in &user {
        assert!(
            r.contains("rw-u"),
            "read-write until after the first dump: {r}"
        );
    }
    let alias = format!("{:016x}", direct + pa);
    let aliases: Vec<&&str> = rows
        .iter()
        .filter(|r| r.trim_start().starts_with(&alias))
        .collect();
    let kernel_roots = scan
        .lines()
        .filter(|l| l.contains("kernel half as in"))
        .count()
        + known_spaces(dir);
    assert!(aliases.len() >= 2 && aliases.len() <= kernel_roots, "{out}");
    for r in &aliases {
        assert!(r.contains("rw--"), "kernel-only in the direct map: {r}");
    }
}

/// Two dumps a moment apart: between them the mapper mapped 16 KiB at
/// 0x7e0000100000 (every page written) and made the first page of its
/// region read-only. `vmem diff --dump` of the second against the first
/// shows exactly that in the mapper's KPTI pair (the 16 KiB added as one
/// or more runs of 4 KiB pages, as the physical pages fall), and no
/// change elsewhere in those two spaces.
#[test]
fn diff_between_two_dumps_shows_the_mappers_mmap_and_mprotect() {
    let Some(dir) = fixture() else { return };
    let second = dir.join("dump2.elf");
    let served = Served::with_args(&["--dump", second.to_str().unwrap()]);
    let first = dir.join("dump.elf");
    let out = served.gdb(&[
        "monitor vmem spaces --scan shared",
        &format!("monitor vmem diff --dump {}", first.display()),
    ]);
    let diff = &out[out.find("scanned ").expect("the scan")..];
    let blocks: Vec<&str> = diff
        .split("\nspace ")
        .filter(|b| b.contains("00007e0000100000"))
        .collect();
    assert_eq!(blocks.len(), 2, "the mapper's pair: {out}");
    let rights = Regex::new(r"(?m)^  rights +was 00007e0000000000-00007e0000000fff  (\S+) +4K +4K  rw-u.*\n +now 00007e0000000000-00007e0000000fff  (\S+) +4K +4K  r--u").unwrap();
    // Pages that happen to be physically contiguous come out as one run.
    let added =
        Regex::new(r"(?m)^  added +([0-9a-f]{16})-([0-9a-f]{16})  \S+ +\S+ +4K  rw-u").unwrap();
    for block in &blocks {
        let changes = block
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .count();
        let caps = rights.captures(block).expect("the mprotect");
        assert_eq!(caps[1], caps[2], "the same page, read-only now: {block}");
        let runs: Vec<(u64, u64)> = added
            .captures_iter(block)
            .map(|c| {
                let hex = |i: usize| u64::from_str_radix(&c[i], 16).unwrap();
                (hex(1), hex(2))
            })
            .collect();
        assert_eq!(
            changes,
            1 + runs.len(),
            "one rights change, the rest added: {block}"
        );
        // The added runs are exactly the four pages at 0x7e0000100000.
        let mut next = 0x7e00_0010_0000u64;
        for (first, last) in &runs {
            assert_eq!(*first, next, "{block}");
            next = last + 1;
        }
        assert_eq!(next, 0x7e00_0010_4000, "{block}");
    }
    assert!(!diff.contains("not in dump"), "{out}");
}

/// A VMM's progress callback hears how far a RAM scan and an audit of
/// every space have got: from nothing, never backwards (the scan's own
/// thread), to the whole of RAM and every space.
#[test]
fn long_commands_report_their_progress() {
    use std::sync::{Arc, Mutex};
    use vmem_gdbstub::target::{Debugger, Dump, ProgressUnit};

    let Some(dir) = fixture() else { return };
    type Heard = (String, u64, u64, ProgressUnit);
    let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
    let log = Arc::clone(&heard);
    let dump = Dump::open(&dir.join("dump.elf")).unwrap();
    let ram = dump.ram().total_size();
    let dbg = Debugger::from_dump(dump)
        .on_progress(move |p| {
            log.lock()
                .unwrap()
                .push((p.task.to_string(), p.done, p.total, p.unit))
        })
        .build();
    let scan = dbg.monitor("vmem spaces --scan").unwrap();
    let audit = dbg.monitor("vmem audit --all").unwrap();
    let heard = heard.lock().unwrap();
    let scanning: Vec<_> = heard.iter().filter(|h| h.0 == "scanning RAM").collect();
    assert!(scanning.len() > 2, "{heard:?}");
    assert_eq!(scanning[0].1, 0);
    assert!(
        scanning.windows(2).all(|w| w[0].1 <= w[1].1),
        "{scanning:?}"
    );
    let last = scanning.last().unwrap();
    assert_eq!((last.1, last.2, last.3), (ram, ram, ProgressUnit::Bytes));
    let spaces = number_after(&audit, "audit of ").unwrap();
    let auditing: Vec<_> = heard.iter().filter(|h| h.0 == "auditing spaces").collect();
    assert_eq!(auditing.len() as u64, spaces + 1, "{auditing:?}\n{scan}");
    let most = auditing.iter().map(|h| h.1).max().unwrap();
    assert_eq!(most, spaces);
    assert!(auditing
        .iter()
        .all(|h| h.2 == spaces && h.3 == ProgressUnit::Spaces));
}
