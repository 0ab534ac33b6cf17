//! `monitor` commands from a real gdb against the demo VM, checked against
//! the layout the demo VM built: kernel window at 0xffffffff80000000 in
//! 2 MiB pages (PA 0), 1 GiB direct map at 0xffff888000000000 (in 1 GiB
//! pages where the vCPU has them, else 2 MiB), a user page
//! at 0x400000 (PA 0x1000000 / 0x1001000), two spaces sharing the kernel half.

mod demo;

use std::time::Duration;

use demo::{hex_after, number_after, DemoVm};
use regex::Regex;

fn lines_matching<'a>(out: &'a str, re: &str) -> Vec<&'a str> {
    let re = Regex::new(re).unwrap();
    out.lines().filter(|l| re.is_match(l)).collect()
}

#[test]
fn walk_shows_the_demo_layout() {
    let Some(vm) = DemoVm::start() else { return };
    let a = format!("monitor vmem walk --space {:#x}", vm.spaces[0]);
    let out = vm.gdb(&[
        &a,
        "monitor vmem walk 0x400000 0x401000",
        "monitor vmem walk --limit 2",
    ]);
    let row = r"^[0-9a-f]{16}-[0-9a-f]{16}  [0-9a-f]{16}-[0-9a-f]{16}  +\S+ +(4K|2M|1G)  [r-][w-][x-][u-][g-][a-][d-][c-][s-]$";
    assert!(lines_matching(&out, row).len() >= 5, "{out}");
    assert!(Regex::new(r"(?m)^0000000000400000-0000000000400fff  0000000001000000-0000000001000fff      4K    4K  rw-u")
        .unwrap()
        .is_match(&out), "{out}");
    // The direct map in the largest pages this vCPU has.
    let page = demo::direct_map_page();
    assert!(Regex::new(&format!(r"(?m)^ffff888000000000-ffff88803fffffff  0000000000000000-000000003fffffff      1G    {page}  rw--"))
        .unwrap()
        .is_match(&out), "{out}");
    assert!(
        Regex::new(r"(?m)^ffffffff80000000-ffffffff8\S+  0000000000000000-\S+ +\S+    2M  rwx-")
            .unwrap()
            .is_match(&out),
        "{out}"
    );
    let summary = if page == "1G" {
        "1G in 1G pages, 64M in 2M pages, 8K in 4K pages"
    } else {
        "1088M in 2M pages, 8K in 4K pages"
    };
    assert!(out.contains(summary), "{out}");
    // A range walk and a limited walk.
    assert!(out.contains("1 mappings; 4K in 4K pages"), "{out}");
    assert!(
        Regex::new(r"\.\.\. \d+ more mappings not shown")
            .unwrap()
            .is_match(&out),
        "{out}"
    );
}

#[test]
fn translate_prints_every_level() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "monitor vmem translate 0xffffffff80400123",
        "monitor vmem translate 0x7000",
        "monitor vmem translate 0x400000",
        "monitor vmem translate 0xffff888000001000",
    ]);
    let chain = lines_matching(
        &out,
        r"^  (PML4|PDPT|PD|PT)\[\d+\] +at 0x[0-9a-f]+: 0x[0-9a-f]{16}  ",
    );
    // Kernel text, a hole, the user page (4 levels), the direct map (3
    // levels in 1 GiB pages, 4 in 2 MiB pages: the vCPU decides).
    let direct = if demo::direct_map_page() == "1G" {
        2
    } else {
        3
    };
    assert_eq!(chain.len(), 3 + 3 + 4 + direct, "{out}");
    // What each privilege level may do, as the vCPU (CR0.WP = 1, no SMEP
    // or SMAP in the demo) decides: kernel text, the user page (NX), the
    // direct map (NX, supervisor).
    let rights: Vec<&str> = out.lines().filter(|l| l.starts_with("   may: ")).collect();
    assert_eq!(
        rights,
        [
            "   may: kernel rwx user ---",
            "   may: kernel rw- user rw-",
            "   may: kernel rw- user ---"
        ],
        "{out}"
    );
    assert!(
        chain[0].starts_with("  PML4[511]") && chain[0].contains("table 0x"),
        "{out}"
    );
    assert!(chain[1].starts_with("  PDPT[510]"), "{out}");
    assert!(
        chain[2].starts_with("  PD[2]") && chain[2].contains("2M page 0x400000, rwx-"),
        "{out}"
    );
    assert!(
        out.contains("=> physical 0x400123 (2M page; effective rwx-"),
        "{out}"
    );
    // 0x7000: PML4[0] and PDPT[0] exist (for the user page at 0x400000 =
    // PD[2]); PD[0] does not.
    assert!(
        chain[5].starts_with("  PD[0]") && chain[5].ends_with("not present"),
        "{out}"
    );
    assert!(out.contains("=> no translation: level 2 table"), "{out}");
    assert!(out.contains("entry 0: not present"), "{out}");
}

#[test]
fn map_a_page_then_gdb_and_the_guest_read_it() {
    let Some(vm) = DemoVm::start() else { return };
    let mut cmds: Vec<String> = vm
        .spaces
        .iter()
        .map(|s| format!("monitor vmem map 0x70000000 0x1800000 4k rw --space {s:#x}"))
        .collect();
    cmds.extend(
        [
            "set {unsigned long}0x70000010 = 0x1122334455667788",
            "x/gx 0x70000010",
            "monitor xp /2xg 0x1800008",
            "set var probe_va = 0x70000010",
            "monitor vmem translate 0x70000010",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let out = vm.gdb(&refs);
    assert_eq!(
        out.matches("mapped 0x70000000..0x70001000 to 0x1800000")
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("0x70000010:\t0x1122334455667788"), "{out}");
    assert!(
        out.contains("0000000001800008: 0x0000000000000000 0x1122334455667788"),
        "{out}"
    );
    assert!(out.contains("=> physical 0x1800010 (4K page"), "{out}");
    // The guest (vCPU 0, whichever space it is in) reads it through its own tables.
    std::thread::sleep(Duration::from_millis(500));
    let out = vm.gdb(&[
        "print/x probe_value",
        "print probe_count",
        "print last_fault_vector",
    ]);
    assert!(out.contains("$1 = 0x1122334455667788"), "{out}");
    assert_eq!(number_after(&out, "$2 = "), Some(1), "{out}");
    assert_eq!(number_after(&out, "$3 = "), Some(0), "{out}");
}

#[test]
fn protect_read_only_makes_the_guest_write_fault() {
    let Some(vm) = DemoVm::start() else { return };
    let cmds: Vec<String> = vm
        .spaces
        .iter()
        .map(|s| format!("monitor vmem protect 0x400000 4k ru --space {s:#x}"))
        .chain(["monitor vmem walk 0x400000 0x401000".to_string()])
        .collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let out = vm.gdb(&refs);
    assert_eq!(
        out.matches("protected 0x400000..0x401000").count(),
        2,
        "{out}"
    );
    assert!(
        Regex::new(r"(?m)^0000000000400000-0000000000400fff  \S+ +4K +4K  r--u")
            .unwrap()
            .is_match(&out),
        "{out}"
    );
    // vCPU 0 writes its user page every iteration: it must now take #PF.
    std::thread::sleep(Duration::from_millis(500));
    let out = vm.gdb(&["print/x last_fault_addr", "print last_fault_vector"]);
    assert!(out.contains("$1 = 0x400000"), "{out}");
    assert_eq!(number_after(&out, "$2 = "), Some(14), "{out}");
}

#[test]
fn unmap_makes_reads_fail() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "x/bx 0x400000",
        "monitor vmem unmap 0x400000 4k",
        "x/bx 0x400000",
        "monitor vmem translate 0x400000",
    ]);
    assert!(out.contains("0x400000:\t0x"), "{out}");
    assert!(out.contains("unmapped 0x400000..0x401000"), "{out}");
    assert!(
        out.contains("Cannot access memory at address 0x400000"),
        "{out}"
    );
    assert!(out.contains("=> no translation"), "{out}");
}

#[test]
fn spaces_show_the_shared_kernel_half() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&["monitor vmem spaces"]);
    for space in &vm.spaces {
        assert!(out.contains(&format!("space {space:#x} (")), "{out}");
    }
    let shared = lines_matching(
        &out,
        r"shared with space 0x[0-9a-f]+ at VA 0x[0-9a-f]+ \(depth 1\)$",
    );
    assert_eq!(shared.len(), 2, "{out}");
    assert!(
        shared.iter().any(|l| l
            .trim_start()
            .starts_with("ffffff8000000000-ffffffffffffffff")),
        "{out}"
    );
    assert!(
        shared.iter().any(|l| l
            .trim_start()
            .starts_with("ffff888000000000-ffff88ffffffffff")),
        "{out}"
    );
    // The user pages are each space's own.
    assert!(
        out.contains("0000000000400000-0000000000400fff  0000000001000000"),
        "{out}"
    );
    assert!(
        out.contains("0000000000400000-0000000000400fff  0000000001001000"),
        "{out}"
    );
}

#[test]
fn use_switches_what_gdb_reads() {
    let Some(vm) = DemoVm::start() else { return };
    let (a, b) = (vm.spaces[0], vm.spaces[1]);
    let out = vm.gdb(&[
        &format!("monitor vmem use {a:#x}"),
        "set {unsigned char}0x400008 = 0x41",
        &format!("monitor vmem use {b:#x}"),
        "set {unsigned char}0x400008 = 0x42",
        "x/bx 0x400008",
        &format!("monitor vmem use {a:#x}"),
        "x/bx 0x400008",
        "monitor vmem use phys",
        "x/bx 0x1001008",
        "monitor vmem use current",
        "x/s &greeting",
    ]);
    let values: Vec<u64> = out
        .lines()
        .filter(|l| l.starts_with("0x400008:") || l.starts_with("0x1001008:"))
        .filter_map(|l| hex_after(l, ":"))
        .collect();
    assert_eq!(values, vec![0x42, 0x41, 0x42], "{out}");
    assert!(
        out.contains("gdb memory accesses now go through physical addresses"),
        "{out}"
    );
    assert!(out.contains("\"Hello from the higher half!\""), "{out}");
}

#[test]
fn qemu_formats_match_qemus_format_strings() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "monitor info mem",
        "monitor info tlb",
        "monitor gva2gpa 0xffffffff80400123",
        "monitor gva2gpa 0x7000",
        "monitor xp /4xg 0x400000",
        "monitor xp /3dw 0x400000",
        "eval \"monitor xp /4c 0x%lx\", (unsigned long)&greeting - 0xffffffff80000000",
        "monitor info registers",
    ]);
    // info mem: "%016x-%016x %016x %c%c%c"
    let mem = lines_matching(&out, r"^[0-9a-f]{16}-[0-9a-f]{16} [0-9a-f]{16} [u-]r[w-]$");
    assert_eq!(
        mem,
        vec![
            "0000000000400000-0000000000401000 0000000000001000 urw",
            "ffff888000000000-ffff888040000000 0000000040000000 -rw",
            "ffffffff80000000-ffffffff84000000 0000000004000000 -rw",
            "ffffffffc0000000-ffffffffc0001000 0000000000001000 -rw",
        ],
        "{out}"
    );
    // info tlb: "%016x: %016x XGPDACTUW"
    let tlb = lines_matching(
        &out,
        r"^[0-9a-f]{16}: [0-9a-f]{16} [X-][G-][P-][D-][A-][C-][T-][U-][W-]$",
    );
    // The user page, the direct map's leaves (one 1 GiB page, or 512 of
    // 2 MiB on a vCPU without 1 GiB pages), the kernel window's 32, the
    // device page.
    let direct_leaves = if demo::direct_map_page() == "1G" {
        1
    } else {
        512
    };
    assert_eq!(tlb.len(), 1 + direct_leaves + 32 + 1, "{out}");
    assert!(
        tlb.iter()
            .any(|l| l.starts_with("ffffffffc0000000: 0000001000000000 X-") && l.ends_with("W")),
        "{out}"
    );
    assert!(
        tlb.contains(&"ffff888000000000: 0000000000000000 X-P-----W"),
        "{out}"
    );
    assert!(
        tlb.iter()
            .any(|l| l.starts_with("0000000000400000: 0000000001000000 X--")
                || l.starts_with("0000000000400000: 0000000001001000 X--")),
        "{out}"
    );
    assert!(out.contains("gpa: 0x400123"), "{out}");
    assert!(out.contains("\nUnmapped\n"), "{out}");
    assert_eq!(
        lines_matching(&out, r"^0000000000400000: 0x[0-9a-f]{16} 0x[0-9a-f]{16}$").len(),
        1,
        "{out}"
    );
    assert_eq!(
        lines_matching(&out, r"^0000000000400010: 0x[0-9a-f]{16} 0x[0-9a-f]{16}$").len(),
        1,
        "{out}"
    );
    assert_eq!(
        lines_matching(&out, r"^0000000000400000: +-?\d+ +-?\d+ +-?\d+$").len(),
        1,
        "{out}"
    );
    assert!(
        Regex::new(r"(?m)^00000000004[0-9a-f]{5}: 'H' 'e' 'l' 'l'$")
            .unwrap()
            .is_match(&out),
        "{out}"
    );
    for re in [
        r"^RAX=[0-9a-f]{16} RBX=[0-9a-f]{16} RCX=[0-9a-f]{16} RDX=[0-9a-f]{16}$",
        r"^RIP=[0-9a-f]{16} RFL=[0-9a-f]{8} \[[D-][O-][S-][Z-][A-][P-][C-]\] CPL=0 ",
        // The descriptor's high word as the GDT holds it (limit 19:16 too).
        r"^CS =0008 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 \[-R",
        r"^GDT=     ffffffff80001000 00000017$",
        r"^IDT=     [0-9a-f]{16} [0-9a-f]{8}$",
        r"^CR0=80010033 CR2=[0-9a-f]{16} CR3=[0-9a-f]{16} CR4=[0-9a-f]{8}$",
        r"^EFER=0000000000000d00$",
    ] {
        assert_eq!(lines_matching(&out, re).len(), 1, "{re}\n{out}");
    }
}

#[test]
fn qemu_packets_and_physical_mode() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "maint packet Qqemu.sstepbits",
        "maint packet qqemu.sstepbits",
        "maint packet qOffsets",
        "maint packet qqemu.PhyMemMode",
        "x/s 0x500000",
        "maint packet Qqemu.PhyMemMode:1",
        "maint packet qqemu.PhyMemMode",
        "eval \"x/s 0x%lx\", (unsigned long)&greeting - 0xffffffff80000000",
        "maint packet Qqemu.PhyMemMode:0",
        "x/s &greeting",
    ]);
    let replies = demo::packet_replies(&out);
    assert_eq!(
        replies,
        vec![
            "\"ENABLE=1,NOIRQ=2,NOTIMER=4\"",
            "\"ENABLE=1,NOIRQ=2,NOTIMER=4\"",
            "\"\"",
            "\"0\"",
            "\"OK\"",
            "\"1\"",
            "\"OK\"",
        ],
        "{out}"
    );
    assert!(
        out.contains("Cannot access memory at address 0x500000"),
        "virtual 0x500000 is not mapped: {out}"
    );
    assert!(
        Regex::new(r#"(?m)^0x4[0-9a-f]{5}:\t"Hello from the higher half!"$"#)
            .unwrap()
            .is_match(&out),
        "physical read: {out}"
    );
}

/// Every bad command line is one error line (plus that command's usage when
/// the line itself was wrong), and nothing changes.
#[test]
fn bad_arguments_print_usage_and_change_nothing() {
    let Some(vm) = DemoVm::start() else { return };
    let walk = format!("monitor vmem walk --space {:#x}", vm.spaces[0]);
    let before = vm.gdb(&[&walk]);
    let out = vm.gdb(&[
        "monitor vmem map 0x1001 0 4k",
        "monitor vmem map 0x70000000",
        "monitor vmem map 0x0000800000000000 0 4k",
        "monitor vmem unmap 0xfffffffffffff000 8k",
        "monitor vmem protect 0x400000 4k rq",
        "monitor vmem walk --bogus 1",
        "monitor vmem translate",
        "monitor vmem frobnicate",
        "monitor xp /4q 0",
        "monitor xp /4xg 0xffffffffffff0000",
        "monitor gva2gpa nonsense",
        "monitor bogus",
        "print counter",
    ]);
    assert_eq!(out.matches("error: ").count(), 12, "{out}");
    // Usage only where the command line was wrong, and only that
    // command's: not after a failure (not canonical, cannot access…).
    assert_eq!(out.matches("\nusage: ").count(), 7, "{out}");
    assert!(
        out.contains("error: missing PA\nusage: vmem map VA PA LEN"),
        "{out}"
    );
    assert!(
        out.contains("error: Cannot access memory at 0xffffffffffff0000\nerror: "),
        "{out}"
    );
    assert!(
        out.contains("error: unknown command 'bogus' (monitor help lists them)"),
        "{out}"
    );
    assert!(
        number_after(&out, "$1 = ").is_some(),
        "the session survives: {out}"
    );
    let after = vm.gdb(&[&walk]);
    let table = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("  4K  ") || l.contains("  1G  ") || l.contains("  2M  "))
            .map(String::from)
            .collect()
    };
    assert_eq!(table(&before), table(&after), "nothing changed");
}

#[test]
fn without_a_table_pool_map_says_why() {
    let Some(vm) = DemoVm::start_with(&["--no-table-pool"]) else {
        return;
    };
    let out = vm.gdb(&[
        "monitor vmem map 0x70000000 0x1800000 4k",
        "monitor vmem map 0x401000 0x1800000 4k",
    ]);
    assert!(out.contains("the VMM reserved no table pool"), "{out}");
    // Filling an existing table needs no new one.
    assert!(
        out.contains("mapped 0x401000..0x402000 to 0x1800000"),
        "{out}"
    );
}

#[test]
fn help_lists_every_command() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&["monitor help", "monitor vmem help"]);
    for cmd in [
        "vmem walk",
        "vmem translate",
        "vmem map",
        "vmem unmap",
        "vmem protect",
        "vmem spaces",
        "vmem use",
        "info mem",
        "info tlb",
        "gva2gpa",
        "xp /FMT",
        "info registers",
        "info lapic [CPU]",
        "info cpus",
        "cpu N",
    ] {
        assert!(out.contains(cmd), "{cmd} missing: {out}");
    }
    assert!(out.matches("e.g. monitor").count() >= 6, "{out}");
}

/// The reverse map: the demo's user page of space A (PA 0x1000000) is
/// mapped at its user VA in A only, and through the kernel window and the
/// direct map in both spaces (their kernel half is shared); `--va` starts
/// from a virtual address instead.
#[test]
fn find_lists_every_alias_of_a_physical_page() {
    let Some(vm) = DemoVm::start() else { return };
    let (a, b) = (vm.spaces[0], vm.spaces[1]);
    let out = vm.gdb(&[
        "monitor vmem find 0x1000000",
        &format!("monitor vmem find --va 0x400000 --space {a:#x}"),
    ]);
    let page = demo::direct_map_page();
    for space in [a, b] {
        assert!(out.contains(&format!("space {space:#x} (")), "{out}");
    }
    let user = Regex::new(
        r"(?m)^  0000000000400000-0000000000400000  0000000001000000-0000000001000000 +1 +4K  rw-u",
    )
    .unwrap();
    let direct = Regex::new(&format!(r"(?m)^  ffff888001000000-ffff888001000000  0000000001000000-0000000001000000 +1 +{page}  rw--")).unwrap();
    let window = Regex::new(
        r"(?m)^  ffffffff81000000-ffffffff81000000  0000000001000000-0000000001000000 +1 +2M  rwx-",
    )
    .unwrap();
    assert_eq!(
        user.find_iter(&out).count(),
        1,
        "the user page, in space A only: {out}"
    );
    assert_eq!(
        direct.find_iter(&out).count(),
        2,
        "direct map, both spaces: {out}"
    );
    assert_eq!(
        window.find_iter(&out).count(),
        2,
        "kernel window, both spaces: {out}"
    );
    assert!(out.contains("5 mappings in 2 spaces"), "{out}");
    // From the VA: the whole page, the same five places.
    assert!(
        out.contains(&format!("0x400000 in space {a:#x} maps physical 0x1000000")),
        "{out}"
    );
    let whole = Regex::new(r"(?m)^  0000000000400000-0000000000400fff  0000000001000000-0000000001000fff +4K +4K  rw-u").unwrap();
    assert!(whole.is_match(&out), "{out}");
    let bad = vm.gdb(&["monitor vmem find 0x1000 0", "monitor vmem find"]);
    assert!(bad.contains("error: PA + LEN must be above PA"), "{bad}");
    assert!(bad.contains("error: missing PA"), "{bad}");
}

/// The audit on the demo's deliberately loose layout: its kernel window is
/// writable and executable (2 MiB pages), its page tables are writable
/// through the direct map, and the user page is writable at 0x400000 while
/// the kernel window makes the same PA executable; no user page in the
/// kernel half.
#[test]
fn audit_names_what_is_unsafe_in_the_demo_layout() {
    let Some(vm) = DemoVm::start() else { return };
    let (a, b) = (vm.spaces[0], vm.spaces[1]);
    let out = vm.gdb(&[
        "monitor vmem audit --all --limit 1000",
        "monitor vmem audit --all 1",
    ]);
    assert!(out.contains("audit of 2 space(s)"), "{out}");
    // --all is on/off: a value after it is refused, the session goes on.
    assert!(out.contains("error: unexpected argument '1'"), "{out}");
    let wx = Regex::new(
        r"(?m)^  space 0x[0-9a-f]+  ffffffff80400000-\S+  0000000000400000-\S+ +\S+ +2M  rwx-",
    )
    .unwrap();
    assert_eq!(
        wx.find_iter(&out).count(),
        2,
        "the kernel image in both spaces: {out}"
    );
    assert!(
        out.contains("user-accessible in the kernel half: 0"),
        "{out}"
    );
    assert!(
        out.contains("user pages the kernel may execute (no SMEP or PXN): 0"),
        "{out}"
    );
    for root in [a, b] {
        assert!(
            out.contains(&format!(
                "table page {root:#x} at VA 0xffff8880{:08x}",
                root
            )),
            "root {root:#x} writable through the direct map: {out}"
        );
    }
    assert!(
        out.contains("PA 0x1000000 writable here, executable at 0xffffffff81000000"),
        "the user page's alias: {out}"
    );
    let one = vm.gdb(&[&format!("monitor vmem audit --space {a:#x} --limit 0")]);
    assert!(one.contains("audit of 1 space(s)"), "{one}");
    assert!(one.contains("more (raise --limit)"), "{one}");
}

/// A snapshot, then changes made through the stub itself: the diff shows
/// exactly the mapping added and the rights changed; undoing them leaves
/// no difference (accessed/dirty bits are not changes).
#[test]
fn diff_shows_what_changed_since_a_snapshot() {
    let Some(vm) = DemoVm::start() else { return };
    let a = vm.spaces[0];
    let out = vm.gdb(&[
        "monitor vmem snapshot before",
        &format!("monitor vmem map 0x70000000 0x1800000 4k rwu --space {a:#x}"),
        &format!("monitor vmem protect 0x400000 4k ru --space {a:#x}"),
        "monitor vmem diff before",
        &format!("monitor vmem unmap 0x70000000 4k --space {a:#x}"),
        &format!("monitor vmem protect 0x400000 4k rwu --space {a:#x}"),
        "monitor vmem diff before",
        "monitor vmem diff nothing",
    ]);
    assert!(
        out.contains("snapshot 'before' of 2 space(s) taken"),
        "{out}"
    );
    let added = Regex::new(r"(?m)^  added +0000000070000000-0000000070000fff  0000000001800000-0000000001800fff +4K +4K  rw-u").unwrap();
    assert!(added.is_match(&out), "{out}");
    let was = Regex::new(r"(?m)^  rights +was 0000000000400000-0000000000400fff  0000000001000000-0000000001000fff +4K +4K  rw-u").unwrap();
    let now = Regex::new(r"(?m)^ +now 0000000000400000-0000000000400fff  0000000001000000-0000000001000fff +4K +4K  r--u").unwrap();
    assert!(was.is_match(&out) && now.is_match(&out), "{out}");
    assert!(out.contains(&format!("space {a:#x}:")), "{out}");
    assert!(out.contains("2 changes since snapshot 'before'"), "{out}");
    assert!(out.contains("0 changes since snapshot 'before'"), "{out}");
    assert!(out.contains("error: no snapshot named 'nothing'"), "{out}");
}

/// The demo builds a third address space no vCPU loads and nobody
/// registers (its own user page at 0x400000 → PA 0x1002000, the kernel half
/// shared): the scan finds exactly it, and its user page.
#[test]
fn scan_finds_the_space_no_vcpu_has_loaded() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&["monitor vmem spaces --scan", "monitor vmem find 0x1002000"]);
    let found: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("space 0x") && l.contains("in the user half"))
        .collect();
    assert_eq!(found.len(), 1, "{out}");
    assert!(
        found[0].contains(": 1 mappings, 4K in the user half"),
        "{out}"
    );
    assert!(out.contains("1 new address spaces"), "{out}");
    let root = found[0]
        .split(':')
        .next()
        .unwrap()
        .trim_start_matches("space ");
    let user = Regex::new(&format!(
        r"(?m)^space {root} \(added\):\n  0000000000400000-0000000000400000  0000000001002000-"
    ))
    .unwrap();
    assert!(
        user.is_match(&out),
        "the new space's user page, found by PA: {out}"
    );
}

/// `vmem watch`: the guest rewrites neighbouring entries of the same table
/// page (no stop) and then re-points its own user page (a stop right after
/// the store, in `remap_user_page`, saying what changed as the guest
/// wrote it); `vmem diff` shows the same change since the last stop;
/// after `vmem unwatch` the guest remaps again without a stop, and a new
/// session starts with no watch.
#[test]
fn watch_stops_when_the_guest_remaps_the_page() {
    let Some(vm) = DemoVm::start() else { return };
    let a = vm.spaces[0];
    let out = vm.gdb(&[
        &format!("monitor vmem watch 0x400000 --space {a:#x}"),
        "monitor vmem watch",
        "set var touch_neighbour = 1",
        "set var remap_to = 0x1003000",
        "continue",
        "print neighbour_touches",
        "print remaps",
        "monitor vmem diff",
        "monitor vmem unwatch 0x400000",
        "tbreak level3",
        "continue",
        "set var remap_to = 0x1000000",
        "break level3 if remaps == 2",
        "continue",
        "print remaps",
        "monitor vmem watch",
    ]);
    assert!(
        out.contains(&format!("watching 0x400000 in space {a:#x}: now PA 0x1000000 rw-u (4K page); 4 table page(s) trapped for writes")),
        "{out}"
    );
    assert!(out.contains("1 watched translation(s)"), "{out}");
    assert_one_remap_stop(&out, a);
    // The neighbour was written twice before, without a stop; the remap
    // has not reached its count yet.
    assert!(out.contains("$1 = 1\n$2 = 0"), "{out}");
    let now = Regex::new(r"(?m)^ +now 0000000000400000-0000000000400fff  0000000001003000-0000000001003fff +4K +4K  rw-u").unwrap();
    assert!(now.is_match(&out), "{out}");
    assert!(
        out.contains("1 changes since the session's first run (from now on: since the last stop)"),
        "{out}"
    );
    assert!(out.contains("1 watch(es) removed"), "{out}");
    assert!(
        out.contains("$3 = 2"),
        "remapped back without a stop: {out}"
    );
    assert!(out.contains("0 watched translation(s)"), "{out}");
    // The session's end removes every watch.
    let again = vm.gdb(&[
        &format!("monitor vmem watch 0x400000 --space {a:#x}"),
        "detach",
    ]);
    assert!(again.contains("trapped for writes"), "{again}");
    let listed = vm.gdb(&["monitor vmem watch"]);
    assert!(listed.contains("0 watched translation(s)"), "{listed}");
}

/// gdb stopped once for `vmem watch` of 0x400000 in space `a`, when the
/// guest re-pointed it from PA 0x1000000 to 0x1003000: a SIGTRAP right
/// after the store, in `remap_user_page`.
fn assert_one_remap_stop(out: &str, a: u64) {
    let note = format!("vmem watch: the translation of 0x400000 in space {a:#x} changed");
    assert_eq!(out.matches(&note).count(), 1, "{out}");
    assert!(
        out.contains("was PA 0x1000000 rw-u (4K page), now PA 0x1003000 rw-u (4K page)"),
        "{out}"
    );
    assert!(out.contains("received signal SIGTRAP"), "{out}");
    assert!(
        out.contains("remap_user_page ("),
        "stopped after the store: {out}"
    );
}

/// `vmem watch` follows tables that move: vCPU 0 copies the user page's
/// page table elsewhere and re-points the directory entry (the
/// translation stays: no stop), then remaps the page through the moved
/// table (a stop: the new table is trapped). Re-trapping lays the
/// memslots out again while vCPU 1 runs code without a pause: it must
/// wait outside KVM_RUN meanwhile, else it fetches code from a hole
/// between two slots (a crash gdb would report).
#[test]
fn watch_follows_a_moved_table_while_the_other_vcpu_runs() {
    let Some(vm) = DemoVm::start() else { return };
    let a = vm.spaces[0];
    let out = vm.gdb(&[
        &format!("monitor vmem watch 0x400000 --space {a:#x}"),
        "set var vcpu1_spin = 1",
        "set var move_table_to = 0x1006000",
        "set var remap_to = 0x1003000",
        "continue",
        "print table_moves",
        "print remaps",
        &format!("monitor vmem translate 0x400000 --space {a:#x}"),
        "set var vcpu1_spin = 0",
    ]);
    assert_one_remap_stop(&out, a);
    assert!(
        out.contains("$1 = 1\n$2 = 0"),
        "moved once, no remap counted yet: {out}"
    );
    assert!(
        out.contains("0x1006000"),
        "the walk goes through the moved table: {out}"
    );
    assert!(!out.contains("SIGILL") && !out.contains("SIGSEGV"), "{out}");
}

/// Without page traps from the VMM, `vmem watch` says why it cannot.
#[test]
fn watch_needs_page_traps() {
    let Some(vm) = DemoVm::start_with(&["--no-page-traps"]) else {
        return;
    };
    let out = vm.gdb(&["monitor vmem watch 0x400000", "monitor vmem watch"]);
    assert!(
        out.contains("error: vmem watch needs page traps (memslots) from the VMM"),
        "{out}"
    );
    assert!(out.contains("0 watched translation(s)"), "{out}");
}

/// The scan by structure finds both spaces nobody loads — the third
/// process (kernel half shared) and the standalone space that shares
/// nothing — and none of the demo's decoy pages (random data, kernel-half
/// copies whose user half points outside RAM, sets a reserved bit or
/// leads to garbage, an entry to an empty table); the scan by kernel half
/// finds nothing more after it; the standalone space's pages read back.
#[test]
fn scan_by_structure_finds_the_standalone_space_and_no_decoy() {
    let Some(vm) = DemoVm::start() else { return };
    let out = vm.gdb(&[
        "monitor vmem spaces --scan any",
        "monitor vmem spaces --scan shared",
        "monitor vmem find 0x1004000",
        "monitor vmem find 0x1200000",
        "monitor vmem spaces --scan sideways",
    ]);
    let found: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("space 0x") && l.ends_with("found by its structure"))
        .collect();
    assert_eq!(found.len(), 2, "{out}");
    assert_eq!(
        found
            .iter()
            .filter(|l| l.contains(": 2 mappings, 2052K mapped"))
            .count(),
        1,
        "the standalone space: its user page and 2 MiB: {out}"
    );
    assert!(out.contains("2 new address spaces"), "{out}");
    assert!(out.contains("0 new address spaces"), "{out}");
    let user = Regex::new(
        r"(?m)^  0000000000400000-0000000000400000  0000000001004000-0000000001004000 +1 +4K  rw-u",
    )
    .unwrap();
    assert!(user.is_match(&out), "{out}");
    let data = Regex::new(
        r"(?m)^  0000000040000000-0000000040000000  0000000001200000-0000000001200000 +1 +2M  r--",
    )
    .unwrap();
    assert!(data.is_match(&out), "{out}");
    assert!(
        out.contains(
            "error: --scan takes shared (roots sharing the kernel half) or any, not 'sideways'"
        ),
        "{out}"
    );
}

/// A hostile table: one page whose 512 entries all point to itself (from
/// gdb, in physical mode), mapping it 2^36 times. Every command that walks
/// a whole space stops at its bound and says so, prints a bounded number
/// of rows, and ends in bounded time (here: find 0.56 s, audit 0.11 s,
/// snapshot and diff 0.08 s each).
#[test]
fn a_table_that_loops_everywhere_cuts_walks_short_with_a_message() {
    let Some(vm) = DemoVm::start() else { return };
    let page = 0x110_7000u64;
    let entries: Vec<String> = (0..512).map(|_| format!("{:#x}", page | 0x7)).collect();
    let started = std::time::Instant::now();
    let out = vm.gdb(&[
        "monitor vmem use phys",
        &format!(
            "python gdb.selected_inferior().write_memory({page:#x}, b''.join(int(x, 16).to_bytes(8, 'little') for x in '{}'.split()))",
            entries.join(" ")
        ),
        "monitor vmem use current",
        &format!("monitor vmem space add {page:#x}"),
        &format!("monitor vmem find {page:#x} --limit 2"),
        &format!("monitor vmem audit --space {page:#x} --limit 0"),
        "monitor vmem snapshot s",
        "monitor vmem diff s",
    ]);
    assert!(
        out.contains("(walk cut short at 16777216 entries)"),
        "{out}"
    );
    assert!(out.contains("... 16744445 more (raise --limit)"), "{out}");
    let cut = "walk cut short at its bound (2^24 entries read or 2^20 mappings kept)";
    assert!(
        out.contains(&format!(
            "(space {page:#x}: {cut}; what lies beyond is not audited)"
        )),
        "{out}"
    );
    assert!(out.contains("writable and executable: 1048576"), "{out}");
    assert!(
        out.contains(&format!(
            "space {page:#x}: {cut}; changes past it are not shown"
        )),
        "{out}"
    );
    assert!(out.contains("0 changes since snapshot 's'"), "{out}");
    eprintln!("four budgeted walks of the loop: {:?}", started.elapsed());
}
