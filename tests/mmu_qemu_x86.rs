//! QEMU TCG as the MMU oracle for the x86 modes this KVM host cannot run:
//! 32-bit paging without and with PSE (4 MiB pages, PSE-36 above 4 GiB),
//! PAE, and 5-level IA-32e paging (LA57). Random raw tables in a RAM image,
//! a CPL 0 probe (`mmu/qemu_x86.S`) loading, storing and calling at sampled
//! VAs with CR0.WP = 1, first without and then with SMAP; our walker, on
//! the same image with the CPU model QEMU reports, must agree on every
//! access. Skips (or fails under VMEM_GDBSTUB_REQUIRE_KVM=1) without
//! qemu-system-x86_64.

#[path = "mmu/assemble.rs"]
mod assemble;
#[path = "mmu/qemu.rs"]
mod qemu;
#[path = "mmu/rng.rs"]
mod rng;

use std::path::{Path, PathBuf};
use std::process::Command;

use qemu::Image;
use rng::Rng;
use vmem_gdbstub::arch::{Amd64, PageTableFormat, X86Cpu, I686};
use vmem_gdbstub::vmem::{self, Access, BufferTables, TranslateFault, Translated};

const IMG: u64 = 0x20_0000;
const IMG_LEN: u64 = 8 << 20;
const IDT32: u64 = IMG + 0x1000;
const IDT64: u64 = IMG + 0x2000;
const HARNESS_PT32: u64 = IMG + 0x3000;
const HARNESS_PD_PAE: u64 = IMG + 0x4000;
const HARNESS_PT_A: u64 = IMG + 0x5000;
const HARNESS_PT_B: u64 = IMG + 0x6000;
const HARNESS_PML4: u64 = IMG + 0x7000;
const HARNESS_PDPT: u64 = IMG + 0x8000;
const HARNESS_PD: u64 = IMG + 0x9000;
const CONFIG: u64 = IMG + 0x10000;
const PROBES: u64 = IMG + 0x11000;
const POOL: u64 = 0x30_0000;
const POOL_PAGES: u64 = 64;
const DATA: u64 = 0x40_0000;
const END: u64 = IMG + IMG_LEN;
/// A second RAM blob above 4 GiB, for PSE-36 pages. Its PDE, read as a
/// PTE or followed as a table (without CR4.PSE), points to PA 0x402000,
/// in the data region.
const HIGH: u64 = 0x1_0040_0000;
const HIGH_LEN: u64 = 4 << 20;
const MAX_PROBES: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Legacy,
    Pse,
    Pae,
    La57,
}

impl Mode {
    fn entry_size(self) -> u64 {
        if matches!(self, Mode::Legacy | Mode::Pse) {
            4
        } else {
            8
        }
    }
    fn levels(self) -> usize {
        match self {
            Mode::Legacy | Mode::Pse => 2,
            Mode::Pae => 3,
            Mode::La57 => 5,
        }
    }
    /// VA bit where `level`'s index starts, and how many index bits.
    fn index(self, level: usize) -> (u32, u32) {
        match self {
            Mode::Legacy | Mode::Pse => ([22, 12][level], 10),
            Mode::Pae => ([30, 21, 12][level], if level == 0 { 2 } else { 9 }),
            Mode::La57 => (48 - 9 * level as u32, 9),
        }
    }
    fn number(self) -> u32 {
        self as u32
    }
    fn cr4(self) -> u32 {
        match self {
            Mode::Legacy => 0,
            Mode::Pse => 0x10,
            Mode::Pae => 0x20,
            Mode::La57 => 0x20 | 0x1000,
        }
    }
}

/// The physical memory QEMU gets: the image and the high blob.
struct Ram {
    image: Image,
    high: Image,
}

fn pattern(pa: u64) -> u64 {
    (pa << 8) | 0xcc
}

impl Ram {
    fn new() -> Ram {
        Ram {
            image: Image::filled(IMG, IMG_LEN, pattern),
            high: Image::filled(HIGH, HIGH_LEN, pattern),
        }
    }
    fn read(&self, pa: u64, size: u64) -> Option<u64> {
        self.image
            .read(pa, size)
            .or_else(|| self.high.read(pa, size))
    }
    fn write(&mut self, pa: u64, value: u64, size: u64) {
        self.image.write(pa, value, size);
    }
}

fn build_probe(dir: &Path) -> PathBuf {
    let elf64 = assemble::x86_probe(dir, "qemu_x86", 0x10_0000);
    // QEMU's multiboot loader takes 32-bit ELF files only.
    let elf32 = dir.join("qemu_x86_32.elf");
    let status = Command::new("objcopy")
        .args(["-O", "elf32-i386"])
        .arg(&elf64)
        .arg(&elf32)
        .status()
        .expect("objcopy");
    assert!(status.success());
    elf32
}

fn symbols(elf: &Path) -> Vec<(String, u64)> {
    let out = Command::new("nm").arg(elf).output().expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            parts.next()?;
            Some((parts.next()?.to_string(), addr))
        })
        .collect()
}

/// GDT, IDTs, harness tables identity-mapping the first 4 MiB.
fn install_harness(ram: &mut Ram, elf: &Path) {
    for (i, d) in [
        0u64,
        0x00cf_9a00_0000_ffff, // 32-bit code
        0x00cf_9200_0000_ffff, // data
        0x00af_9a00_0000_ffff, // 64-bit code
    ]
    .iter()
    .enumerate()
    {
        ram.write(IMG + i as u64 * 8, *d, 8);
    }
    let syms = symbols(elf);
    let sym = |name: &str| syms.iter().find(|(n, _)| n == name).map(|&(_, a)| a);
    for v in 0..32u64 {
        let (h32, h64) = match v {
            3 => (sym("bp32"), sym("bp64")),
            14 => (sym("pf32"), sym("pf64")),
            _ => (sym(&format!("v32_{v}")), sym(&format!("v64_{v}"))),
        };
        if let Some(h) = h32 {
            let gate = (h & 0xffff) | 0x08 << 16 | 0x8e00u64 << 32 | (h >> 16) << 48;
            ram.write(IDT32 + v * 8, gate, 8);
        }
        if let Some(h) = h64 {
            let gate = (h & 0xffff) | 0x18 << 16 | 0x8e00u64 << 32 | ((h >> 16) & 0xffff) << 48;
            ram.write(IDT64 + v * 16, gate, 8);
            ram.write(IDT64 + v * 16 + 8, h >> 32, 8);
        }
    }
    // 32-bit: one PT of 4-byte entries (4 MiB). PAE / IA-32e: two PTs of
    // 8-byte entries (2 MiB each) under a PD; IA-32e adds PML4 and PDPT.
    for i in 0..1024u64 {
        ram.write(HARNESS_PT32 + i * 4, (i << 12) | 3, 4);
    }
    for i in 0..512u64 {
        ram.write(HARNESS_PT_A + i * 8, (i << 12) | 3, 8);
        ram.write(HARNESS_PT_B + i * 8, ((512 + i) << 12) | 3, 8);
    }
    for t in [HARNESS_PD_PAE, HARNESS_PD, HARNESS_PDPT, HARNESS_PML4] {
        for i in 0..512u64 {
            ram.write(t + i * 8, 0, 8);
        }
    }
    for pd in [HARNESS_PD_PAE, HARNESS_PD] {
        ram.write(pd, HARNESS_PT_A | 3, 8);
        ram.write(pd + 8, HARNESS_PT_B | 3, 8);
    }
    ram.write(HARNESS_PDPT, HARNESS_PD | 3, 8);
    ram.write(HARNESS_PML4, HARNESS_PDPT | 3, 8);
    // Random self-maps reach these tables as pages too: the word at 0xff8
    // (nothing the harness needs) is absent with 0xcc low, like every
    // random table's.
    for t in [
        HARNESS_PT32,
        HARNESS_PT_A,
        HARNESS_PT_B,
        HARNESS_PD_PAE,
        HARNESS_PD,
        HARNESS_PDPT,
        HARNESS_PML4,
    ] {
        ram.write(t + 0xff8, 0xcc, 8);
    }
}

/// Random raw tables for `mode`; returns the root.
fn generate(ram: &mut Ram, rng: &mut Rng, mode: Mode, phys_bits: u32, pse36: bool) -> u64 {
    let es = mode.entry_size();
    let tables: Vec<u64> = (0..POOL_PAGES).map(|i| POOL + i * 0x1000).collect();
    let root = tables[0];
    for (n, &table) in tables.iter().enumerate() {
        let level = if n == 0 {
            0
        } else {
            1 + n % (mode.levels() - 1)
        };
        let entries = 4096 / es;
        for index in 0..entries {
            let raw = entry(rng, mode, &tables, level, index, n == 0, phys_bits, pse36);
            ram.write(table + index * es, raw, es);
        }
    }
    // The harness, and PAE's four PDPTEs (loaded at MOV CR3: they must
    // be valid or absent).
    match mode {
        Mode::Legacy | Mode::Pse => ram.write(root, HARNESS_PT32 | 3, 4),
        Mode::Pae => {
            ram.write(root, HARNESS_PD_PAE | 1, 8);
            for i in 1..4 {
                let t = tables[1 + rng.below(POOL_PAGES - 1) as usize];
                ram.write(root + i * 8, if rng.chance(80) { t | 1 } else { 0 }, 8);
            }
        }
        Mode::La57 => ram.write(root, HARNESS_PML4 | 3, 8),
    }
    root
}

#[allow(clippy::too_many_arguments)]
fn entry(
    rng: &mut Rng,
    mode: Mode,
    tables: &[u64],
    level: usize,
    index: u64,
    is_root: bool,
    phys_bits: u32,
    pse36: bool,
) -> u64 {
    let es = mode.entry_size();
    // The word at offset 0xff8 has 0xcc in its low byte, absent.
    if index * es == 0xff8 {
        return rng.next() & !0xff | 0xcc;
    }
    let last = level + 1 == mode.levels();
    let density = if is_root { 30 } else { 25 };
    let mask = if es == 4 { 0xffff_ffff } else { u64::MAX };
    if !rng.chance(density) {
        return rng.next() & !1 & mask;
    }
    let mut raw = 1 | (rng.next() & 0xe7e); // RW US PWT PCD A D, 9-11 (no PS, no G)
    let wide = es == 8;
    if wide && rng.chance(30) {
        raw |= 1 << 63;
    }
    let huge_level = match mode {
        Mode::Legacy | Mode::Pse => level == 0,
        Mode::Pae => level == 1,
        Mode::La57 => level == 2 || level == 3,
    };
    let leaf = last || (huge_level && rng.chance(40)) || (!huge_level && rng.chance(3));
    if !leaf {
        raw |= match rng.below(20) {
            0 => tables[0],
            1 => DATA + (rng.below((END - DATA) >> 12) << 12),
            _ => *rng.pick(tables),
        };
        if mode == Mode::Legacy {
            raw |= rng.next() & 0x80; // PS, ignored without CR4.PSE
        }
    } else {
        raw |= rng.next() & 0x100; // G
        if last {
            raw |= rng.next() & 0x80; // PAT
            raw |= if rng.chance(20) {
                *rng.pick(tables)
            } else {
                DATA + (rng.below((END - DATA) >> 12) << 12)
            };
        } else {
            raw |= 0x80 | (rng.next() & 0x1000); // PS, PAT
            let span_shift = mode.index(level).0;
            raw |= match (mode, span_shift) {
                (Mode::Legacy | Mode::Pse, _) if pse36 && phys_bits > 32 && rng.chance(25) => {
                    (HIGH & 0xffc0_0000) | ((HIGH >> 19) & 0x1f_e000) // PSE-36: PA 39:32 in 20:13
                }
                (_, 30) => 0, // 1 GiB at PA 0
                (_, shift) => {
                    let n = (END - DATA) >> shift;
                    DATA + (rng.below(n.max(1)) << shift)
                }
            };
        }
    }
    if rng.chance(5) {
        // A reserved bit: above MAXPHYADDR, or one only this mode reserves.
        raw |= match mode {
            Mode::Legacy | Mode::Pse if !last => 1 << 21,
            Mode::Legacy | Mode::Pse => 0,
            Mode::Pae => 1 << (52 + rng.below(11)),
            Mode::La57 if phys_bits < 52 => {
                1 << (phys_bits as u64 + rng.below(52 - phys_bits as u64))
            }
            Mode::La57 => 0x80,
        };
    }
    raw & mask
}

/// VAs along present paths, at offset 0xff8 of a 4 KiB page whose memory
/// exists (huge pages at PA 0 are probed only from the data region on).
fn sample(ram: &Ram, rng: &mut Rng, mode: Mode, root: u64, count: usize) -> Vec<u64> {
    let es = mode.entry_size();
    let mut out = Vec::new();
    while out.len() < count {
        let mut table = root;
        let mut va = 0u64;
        for level in 0..mode.levels() {
            let (shift, bits) = mode.index(level);
            let n = 1u64 << bits;
            let read = |i: u64| ram.read(table + i * es, es).unwrap_or(0);
            let present: Vec<u64> = (0..n).filter(|&i| read(i) & 1 != 0).collect();
            let index = if !present.is_empty() && rng.chance(92) {
                *rng.pick(&present)
            } else {
                rng.below(n)
            };
            va |= index << shift;
            let raw = read(index);
            let last = level + 1 == mode.levels();
            let ps = raw & 0x80 != 0
                && !last
                && mode != Mode::Legacy
                && !(mode == Mode::Pae && level == 0);
            let next = raw & 0x000f_ffff_ffff_f000 & if es == 4 { 0xffff_f000 } else { u64::MAX };
            if raw & 1 != 0 && !last && !ps {
                if ram.read(next, 8).is_none() {
                    // A table outside the memory this test wrote.
                    va = u64::MAX;
                    break;
                }
                table = next;
                continue;
            }
            if raw & 1 != 0 && (last || ps) {
                // A page: probe one of its 4 KiB pages that is memory this
                // test wrote (the pool, the data, the high blob), so that
                // the call meets int3; skip pages that have none.
                let span = 1u64 << shift;
                let leaf_mask = if es == 4 {
                    0xffff_f000
                } else {
                    0x000f_ffff_ffff_f000
                };
                let mut base = raw & leaf_mask & !(span - 1);
                if es == 4 && ps {
                    base |= (raw & 0x1f_e000) << 19; // PSE-36
                }
                let pick = [(POOL, END), (HIGH, HIGH + HIGH_LEN)]
                    .iter()
                    .map(|&(lo, hi)| (lo.max(base), hi.min(base + span)))
                    .find(|(lo, hi)| lo < hi);
                match pick {
                    Some((lo, hi)) => va |= lo - base + (rng.below((hi - lo) >> 12) << 12),
                    None => va = u64::MAX,
                }
            } else if !last {
                va |= rng.below(1u64 << (shift - 12)) << 12;
            }
            break;
        }
        if va == u64::MAX {
            continue;
        }
        let va = va | 0xff8;
        let va = if mode == Mode::La57 {
            ((va << 7) as i64 >> 7) as u64
        } else {
            va
        };
        let harness = match mode {
            Mode::La57 => va >> 48 == 0,
            _ => va < 4 << 20,
        };
        if !harness {
            out.push(va);
        }
    }
    out
}

struct Outcome {
    status: u64,
    value: u64,
}

/// Boot QEMU on the image; returns the CPUID words and the outcomes.
fn run_qemu(dir: &Path, elf: &Path, ram: &Ram) -> (Vec<u32>, Vec<Outcome>) {
    let img = dir.join("ram.img");
    let high = dir.join("high.img");
    let out = dir.join("out.bin");
    std::fs::write(&img, &ram.image.bytes).unwrap();
    std::fs::write(&high, &ram.high.bytes).unwrap();
    let args: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "6G",
        "-machine",
        "pc",
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-kernel".into(),
        elf.display().to_string(),
        "-device".into(),
        format!("loader,file={},addr={IMG:#x},force-raw=on", img.display()),
        "-device".into(),
        format!("loader,file={},addr={HIGH:#x},force-raw=on", high.display()),
        "-chardev".into(),
        format!("file,id=out,path={}", out.display()),
        "-device".into(),
        "isa-debugcon,iobase=0xe9,chardev=out".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=4".into(),
    ])
    .collect();
    let bytes = qemu::run("qemu-system-x86_64", &args, &out);
    assert!(bytes.len() >= 20, "the probe reported nothing");
    let words = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    let cpuid = bytes[..20]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let outcomes = bytes[20..]
        .chunks_exact(16)
        .map(|c| Outcome {
            status: words(&c[..8]),
            value: words(&c[8..]),
        })
        .collect();
    (cpuid, outcomes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Completes,
    NotPresent,
    Reserved,
    Denied,
    WalkerFailed,
}

fn expect(tr: &Result<Translated, TranslateFault>, k: usize) -> Seen {
    match tr {
        Err(TranslateFault::NotPresent(_)) => Seen::NotPresent,
        Err(TranslateFault::Reserved { .. }) => Seen::Reserved,
        Err(_) => Seen::WalkerFailed,
        Ok(t)
            if t.rights
                .kernel
                .contains([Access::READ, Access::WRITE, Access::EXEC][k]) =>
        {
            Seen::Completes
        }
        Ok(_) => Seen::Denied,
    }
}

fn observed(o: &Outcome, k: usize, va: u64) -> Option<Seen> {
    match (o.status, k) {
        (0, 0 | 1) => Some(Seen::Completes),
        (2, 2) if o.value == va + 1 => Some(Seen::Completes),
        (1, _) if o.value & 8 != 0 => Some(Seen::Reserved),
        (1, _) if o.value & 1 == 0 => Some(Seen::NotPresent),
        (1, _) => Some(Seen::Denied),
        _ => None,
    }
}

fn check(mode: Mode, seed: u64, nxe: bool) {
    if !qemu::available("qemu-system-x86_64") {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "vmem-qemu-{}-{mode:?}-{seed:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = build_probe(&dir);
    let mut ram = Ram::new();
    install_harness(&mut ram, &elf);
    // QEMU's `max` CPU under TCG: MAXPHYADDR 40 with PSE-36 (checked
    // against its CPUID below).
    let mut rng = Rng(seed);
    let root = generate(&mut ram, &mut rng, mode, 40, true);
    let vas = sample(&ram, &mut rng, mode, root, MAX_PROBES);
    for (i, va) in vas.iter().enumerate() {
        ram.write(PROBES + i as u64 * 8, *va, 8);
    }
    let wide_nxe = nxe && mode.entry_size() == 8;
    for (off, v) in [
        (0, mode.number()),
        (4, root as u32),
        (8, vas.len() as u32),
        (12, u32::from(wide_nxe)),
        (16, mode.cr4()),
    ] {
        ram.write(CONFIG + off, u64::from(v), 4);
    }
    let (cpuid, outcomes) = run_qemu(&dir, &elf, &ram);
    assert_eq!(outcomes.len(), 2 * 3 * vas.len(), "one outcome per access");
    let cpu = X86Cpu {
        phys_bits: (cpuid[0] & 0xff) as u8,
        page_1g: cpuid[2] & (1 << 26) != 0,
        pse36: cpuid[1] & (1 << 17) != 0,
        nxe: wide_nxe,
        wp: true,
        smep: false,
        smap: false,
        pke: false,
        pkru: 0,
    };
    assert_eq!((cpu.phys_bits, cpu.pse36), (40, true), "QEMU's max CPU");
    let has_smap = cpuid[3] & (1 << 20) != 0;
    if mode == Mode::La57 {
        assert!(cpuid[4] & (1 << 16) != 0, "QEMU's max CPU has LA57");
    }
    let t = BufferTables::with_root(ram.image.bytes.clone(), IMG, END..END, root).unwrap();
    let mut disagreements = Vec::new();
    let mut cases = std::collections::BTreeMap::new();
    let mut above_4g = 0;
    for pass in 0..2 {
        let cpu = X86Cpu {
            smap: pass == 1 && has_smap,
            ..cpu
        };
        let formats: (I686, Amd64) = (
            I686::with_cpu(mode == Mode::Pae, mode != Mode::Legacy, cpu),
            Amd64::with_cpu(true, cpu),
        );
        let fmt: &dyn PageTableFormat = if mode == Mode::La57 {
            &formats.1
        } else {
            &formats.0
        };
        for (i, &va) in vas.iter().enumerate() {
            let tr = vmem::translate_addr(fmt, &t, root, va);
            let mut why = Vec::new();
            for k in 0..3 {
                let o = &outcomes[(pass * vas.len() + i) * 3 + k];
                let want = expect(&tr, k);
                match observed(o, k, va) {
                    Some(seen) if seen == want => {
                        *cases.entry((pass, k, format!("{seen:?}"))).or_insert(0) += 1;
                    }
                    seen => why.push(format!(
                        "{} (SMAP {pass}): QEMU {seen:?} (status {}, value {:#x}), walker {want:?}",
                        ["load", "store", "call"][k],
                        o.status,
                        o.value
                    )),
                }
                if let (0, 0, Ok(tk)) = (k, o.status, &tr) {
                    above_4g += usize::from(tk.pa >= 1 << 32);
                    let size = if mode == Mode::La57 { 8 } else { 4 };
                    if let Some(word) = ram.read(tk.pa, size) {
                        if o.value & !0x60 != word & !0x60 {
                            why.push(format!(
                                "load read {:#x}, RAM at {:#x} holds {word:#x}",
                                o.value, tk.pa
                            ));
                        }
                    }
                }
            }
            if !why.is_empty() {
                disagreements.push(format!("{va:#x}: {} [{tr:x?}]", why.join("; ")));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        disagreements.is_empty(),
        "{mode:?}: {} disagreements of {} VAs:\n{}",
        disagreements.len(),
        vas.len(),
        disagreements[..disagreements.len().min(12)].join("\n")
    );
    eprintln!(
        "{mode:?} (NXE {wide_nxe}): {} VAs x 3 accesses x 2 passes, 0 disagreements, {above_4g} loads above 4 GiB; {cases:?}",
        vas.len()
    );
    if mode == Mode::Pse {
        assert!(above_4g > 0, "PSE-36 pages were probed");
    }
    for k in 0..3 {
        for case in ["Completes", "NotPresent", "Reserved", "Denied"] {
            let n: usize = (0..2)
                .map(|p| cases.get(&(p, k, case.to_string())).copied().unwrap_or(0))
                .sum();
            let impossible = (case == "Denied" && k == 0 && !has_smap)
                || (case == "Denied" && k == 2 && !wide_nxe)
                || (case == "Reserved" && mode == Mode::Legacy);
            assert!(n > 0 || impossible, "{mode:?}: no {case} for access {k}");
        }
    }
}

#[test]
fn two_level_paging_without_pse() {
    check(Mode::Legacy, 0x1001, false);
}

#[test]
fn two_level_paging_with_pse_and_pse36() {
    check(Mode::Pse, 0x1002, false);
}

#[test]
fn pae_paging_with_nx() {
    check(Mode::Pae, 0x1003, true);
}

#[test]
fn pae_paging_without_nxe() {
    check(Mode::Pae, 0x1004, false);
}

#[test]
fn five_level_paging() {
    check(Mode::La57, 0x1005, true);
}
