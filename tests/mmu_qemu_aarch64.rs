//! QEMU TCG as the MMU oracle for AArch64 stage 1 (4 KiB granule, 48- and
//! 39-bit VAs, TTBR0 and TTBR1): random raw tables in a RAM image, and a
//! probe (`mmu/qemu_aarch64.S`) that for each sampled VA makes a real load
//! at EL1, asks `AT S1E1R/S1E1W/S1E0R/S1E0W`, and executes there at EL1
//! and at EL0. Our walker must agree on every outcome: fault or not, which
//! kind of fault, the physical address, and the rights at each EL.

#[path = "mmu/qemu.rs"]
mod qemu;
#[path = "mmu/rng.rs"]
mod rng;

use std::path::{Path, PathBuf};
use std::process::Command;

use qemu::Image;
use rng::Rng;
use vmem_gdbstub::arch::{Aarch64, Half, PageTableFormat};
use vmem_gdbstub::vmem::{self, Access, BufferTables, Flags, TranslateFault, Translated};

const IMG: u64 = 0x4020_0000;
const IMG_LEN: u64 = 8 << 20;
const CONFIG: u64 = IMG;
const PROBES: u64 = IMG + 0x1000;
const HARNESS_L1: u64 = IMG + 0xa000;
const POOL: u64 = 0x4030_0000;
const POOL_PAGES: u64 = 96;
const DATA: u64 = 0x4040_0000;
const END: u64 = IMG + IMG_LEN;
const MAX_PROBES: usize = 4000;
/// `BRK #0` in the low half of every word, the word's address / 8 above.
const BRK: u64 = 0xd420_0000;
/// Descriptor bits.
const VALID: u64 = 1;
const TABLE: u64 = 3;
const AF: u64 = 1 << 10;
const OA: u64 = 0x0000_ffff_ffff_f000;

fn pattern(pa: u64) -> u64 {
    BRK | (pa >> 3) << 32
}

fn build_probe(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mmu/qemu_aarch64.S");
    let obj = dir.join("probe.o");
    let elf = dir.join("probe.elf");
    let ok = Command::new("aarch64-linux-gnu-as")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("aarch64-linux-gnu-as")
        .success()
        && Command::new("aarch64-linux-gnu-ld")
            .args(["-N", "--no-warn-rwx-segments", "-Ttext=0x40100000"])
            .arg(&obj)
            .arg("-o")
            .arg(&elf)
            .status()
            .expect("aarch64-linux-gnu-ld")
            .success();
    assert!(ok, "cannot build {}", src.display());
    elf
}

/// One regime half under test.
struct Space {
    fmt: Aarch64,
    root: u64,
}

/// Random raw tables for a `levels`-level regime; `harness` keeps the
/// identity block of TTBR0's root.
fn generate(img: &mut Image, rng: &mut Rng, pool: &[u64], levels: usize, harness: bool) -> u64 {
    let root = pool[0];
    for (n, &table) in pool.iter().enumerate() {
        let level = if n == 0 { 0 } else { 1 + n % (levels - 1) };
        for index in 0..512u64 {
            let raw = entry(rng, pool, levels, level, index);
            img.write(table + index * 8, raw, 8);
        }
    }
    if harness {
        // 48-bit: L0[0] -> L1 whose [1] maps 1 GiB at 0x40000000 (EL1
        // read/write/execute); 39-bit: the root is an L1 table.
        let block = 0x4000_0000 | VALID | AF | (3 << 8) | (1 << 54);
        if levels == 4 {
            for i in 0..512 {
                img.write(HARNESS_L1 + i * 8, 0, 8);
            }
            img.write(HARNESS_L1 + 8, block, 8);
            img.write(HARNESS_L1 + 0xff8, BRK, 8);
            img.write(root, HARNESS_L1 | TABLE, 8);
        } else {
            img.write(root + 8, block, 8);
        }
    }
    root
}

fn entry(rng: &mut Rng, pool: &[u64], levels: usize, level: usize, index: u64) -> u64 {
    // The word at 0xff8 of a table page is BRK: invalid as a descriptor.
    if index == 511 {
        return BRK | (rng.next() << 32);
    }
    if !rng.chance(25) {
        return rng.next() & !VALID;
    }
    let arm_level = level + 4 - levels;
    let last = arm_level == 3;
    let mut raw;
    // No level-0 blocks: QEMU 7.2 maps them as 512 GiB blocks, where the
    // Arm ARM (and vmem) make them a translation fault with a 4 KiB
    // granule (vmem's unit tests hold that rule).
    let leaf = last || (arm_level > 0 && rng.chance(35));
    if !leaf {
        raw = TABLE
            | match rng.below(20) {
                0 => pool[0],
                1 => DATA + (rng.below((END - DATA) >> 12) << 12),
                _ => *rng.pick(pool),
            };
        // APTable, UXNTable, PXNTable, NSTable, ignored bits.
        raw |= rng.next() & (0xf8 << 56 | 0x0ff0);
        raw &= !(0x7f << 52) | (rng.next() & (0x7f << 52));
    } else {
        let span = 1u64 << (12 + 9 * (3 - arm_level as u64));
        raw = if last { TABLE } else { VALID } | AF;
        // AttrIndx, NS, AP, SH, nG; PXN, UXN, software bits, PBHA.
        raw |= rng.next() & 0xbfc;
        raw |= rng.next() & (0x3 << 53 | 0xf << 55 | 0x1f << 59);
        raw |= match arm_level {
            3 if rng.chance(20) => *rng.pick(pool),
            3 => DATA + (rng.below((END - DATA) >> 12) << 12),
            2 => DATA + (rng.below((END - DATA) >> 21) << 21),
            _ => 0x4000_0000,
        };
        if !last && rng.chance(30) {
            // Bits below the block's alignment (nT, RES0): ignored.
            raw |= rng.next() & (span - 1) & !0xfff;
        }
        if last && rng.chance(3) {
            raw &= !2; // 0b01 at level 3: reserved
        }
    }
    if rng.chance(10) {
        raw |= 1 << (48 + rng.below(4)); // DBM, GP, RES0: not address bits
    }
    raw
}

/// VAs along present paths of `space`, each at offset 0xff8 of a page of
/// the pool or the data region (where BRK waits).
fn sample(img: &Image, rng: &mut Rng, space: &Space, count: usize, out: &mut Vec<u64>) {
    let levels = space.fmt.levels();
    let mut taken = 0;
    while taken < count {
        let mut table = space.root;
        let mut lin = 0u64;
        let mut ok = true;
        for level in 0..levels {
            let shift = space.fmt.shift(level);
            let read = |i: u64| img.read(table + i * 8, 8).unwrap_or(0);
            let present: Vec<u64> = (0..512).filter(|&i| read(i) & 1 != 0).collect();
            let index = if !present.is_empty() && rng.chance(92) {
                *rng.pick(&present)
            } else {
                rng.below(512)
            };
            lin |= index << shift;
            let raw = read(index);
            let arm_level = level + 4 - levels;
            let is_table = raw & 3 == 3 && arm_level < 3;
            if raw & 1 != 0 && is_table {
                if !img.contains(raw & OA, 8) {
                    ok = false;
                    break;
                }
                table = raw & OA;
                continue;
            }
            if raw & 1 != 0 && level + 1 < levels {
                // A block: one of its pages in the pool or data.
                let span = 1u64 << shift;
                let base = raw & OA & !(span - 1);
                let (lo, hi) = (POOL.max(base), END.min(base + span));
                if lo >= hi {
                    ok = false;
                    break;
                }
                lin |= lo - base + (rng.below((hi - lo) >> 12) << 12);
            } else if raw & 1 != 0 && !img.contains(raw & OA, 8) {
                ok = false;
            } else if raw & 1 == 0 && level + 1 < levels {
                lin |= rng.below(1 << (shift - 12)) << 12;
            }
            break;
        }
        let va = space.fmt.canonical(lin | 0xff8);
        // TTBR0's identity slot is the harness's.
        let harness = space.fmt.linear(va).is_some_and(|l| {
            let slot = if levels == 4 {
                l >> 39 == 0
            } else {
                l >> 30 == 1
            };
            slot && matches!(space.fmt, f if f == Aarch64::new(levels, Half::Lower))
        });
        if ok && !harness {
            out.push(va);
            taken += 1;
        }
    }
}

/// What happened, in the walker's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Completes,
    /// Translation fault (invalid descriptor, block at level 0, 0b01 at
    /// level 3).
    Translation,
    /// Address-size fault (output address beyond 48 bits).
    AddressSize,
    /// Access flag fault (a leaf without AF; the probe keeps TCR.HA = 0).
    AccessFlag,
    Permission,
    Other(u64),
}

/// A fault status code (DFSC / IFSC / PAR.FST) in those terms.
fn fsc(code: u64) -> Seen {
    match code >> 2 {
        0 => Seen::AddressSize,
        1 => Seen::Translation,
        2 => Seen::AccessFlag,
        3 => Seen::Permission,
        _ => Seen::Other(code),
    }
}

fn expect(tr: &Result<Translated, TranslateFault>, el0: bool, need: Access) -> Seen {
    match tr {
        Err(TranslateFault::NotPresent(_)) => Seen::Translation,
        Err(TranslateFault::Reserved { .. }) => Seen::Translation,
        Err(other) => Seen::Other(format!("{other}").len() as u64),
        // The access flag comes before permissions.
        Ok(t) if !t.flags.contains(Flags::ACCESSED) => Seen::AccessFlag,
        Ok(t) => {
            let rights = if el0 { t.rights.user } else { t.rights.kernel };
            if rights.contains(need) {
                Seen::Completes
            } else {
                Seen::Permission
            }
        }
    }
}

fn check(levels: usize, seed: u64) {
    if !qemu::available("qemu-system-aarch64") || !qemu::available("aarch64-linux-gnu-as") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmem-aarch64-{}-{levels}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = build_probe(&dir);
    let mut img = Image::filled(IMG, IMG_LEN, pattern);
    let mut rng = Rng(seed);
    let pages: Vec<u64> = (0..POOL_PAGES).map(|i| POOL + i * 0x1000).collect();
    let (low_pool, high_pool) = pages.split_at(pages.len() / 2);
    let lower = Space {
        fmt: Aarch64::new(levels, Half::Lower),
        root: generate(&mut img, &mut rng, low_pool, levels, true),
    };
    let upper = Space {
        fmt: Aarch64::new(levels, Half::Upper),
        root: generate(&mut img, &mut rng, high_pool, levels, false),
    };
    let mut vas = Vec::new();
    sample(&img, &mut rng, &lower, MAX_PROBES / 2, &mut vas);
    sample(&img, &mut rng, &upper, MAX_PROBES / 2, &mut vas);
    for (i, va) in vas.iter().enumerate() {
        img.write(PROBES + i as u64 * 8, *va, 8);
    }
    let txsz = 64 - lower.fmt.va_bits() as u64;
    for (off, v) in [
        (0, txsz),
        (8, lower.root),
        (16, upper.root),
        (24, vas.len() as u64),
    ] {
        img.write(CONFIG + off, v, 8);
    }
    let image = dir.join("ram.img");
    std::fs::write(&image, &img.bytes).unwrap();
    let out = dir.join("out.bin");
    let args: Vec<String> = [
        "-M",
        "virt",
        "-cpu",
        "max",
        "-accel",
        "tcg",
        "-m",
        "256M",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        elf.display().to_string(),
        "-device".into(),
        format!("loader,file={},addr={IMG:#x},force-raw=on", image.display()),
        "-serial".into(),
        format!("file:{}", out.display()),
    ])
    .collect();
    let bytes = qemu::run("qemu-system-aarch64", &args, &out);
    assert_eq!(bytes.len(), vas.len() * 7 * 16, "one outcome per probe");
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());

    let t = BufferTables::with_root(img.bytes.clone(), IMG, END..END, lower.root).unwrap();
    let mut disagreements = Vec::new();
    let mut cases = std::collections::BTreeMap::new();
    for (i, &va) in vas.iter().enumerate() {
        let space = if va >> 63 == 0 { &lower } else { &upper };
        let tr = vmem::translate_addr(&space.fmt, &t, space.root, va);
        let outcome = |k: usize| (word((i * 7 + k) * 2), word((i * 7 + k) * 2 + 1));
        let mut why = Vec::new();
        let mut seen_all: Vec<(usize, &str, Seen, Seen)> = Vec::new();
        // 0: load at EL1 (ESR data abort: EC 0x25).
        let (esr, value) = outcome(0);
        let seen = if esr == 0 {
            Seen::Completes
        } else if esr >> 26 == 0x25 {
            fsc(esr & 0x3f)
        } else {
            Seen::Other(esr)
        };
        seen_all.push((0, "load EL1", seen, expect(&tr, false, Access::READ)));
        if let (0, Ok(t)) = (esr, &tr) {
            if img.read(t.pa, 8) != Some(value) {
                why.push(format!(
                    "load read {value:#x}, RAM at {:#x} holds {:?}",
                    t.pa,
                    img.read(t.pa, 8)
                ));
            }
        }
        // 1-4: AT; PAR_EL1.F = bit 0, FST = bits 6:1, PA = bits 47:12.
        for (k, what, el0, need) in [
            (1, "AT S1E1R", false, Access::READ),
            (2, "AT S1E1W", false, Access::WRITE),
            (3, "AT S1E0R", true, Access::READ),
            (4, "AT S1E0W", true, Access::WRITE),
        ] {
            let (par, _) = outcome(k);
            let seen = if par & 1 == 0 {
                Seen::Completes
            } else {
                fsc((par >> 1) & 0x3f)
            };
            seen_all.push((k, what, seen, expect(&tr, el0, need)));
            if let (0, Ok(t)) = (par & 1, &tr) {
                if par & OA != t.pa & OA {
                    why.push(format!("{what}: PA {:#x}, walker {:#x}", par & OA, t.pa));
                }
            }
        }
        // 5, 6: execution (BRK: EC 0x3c at the VA; instruction abort: EC
        // 0x21 at EL1, 0x20 from EL0).
        for (k, what, el0) in [(5, "exec EL1", false), (6, "exec EL0", true)] {
            let (esr, value) = outcome(k);
            let seen = match esr >> 26 {
                0x3c if value == va => Seen::Completes,
                0x20 | 0x21 => fsc(esr & 0x3f),
                _ => Seen::Other(esr),
            };
            seen_all.push((k, what, seen, expect(&tr, el0, Access::EXEC)));
        }
        for (k, what, seen, want) in seen_all {
            *cases.entry((k, format!("{seen:?}"))).or_insert(0) += 1;
            if seen != want {
                why.push(format!("{what}: QEMU {seen:?}, walker {want:?}"));
            }
        }
        if !why.is_empty() {
            disagreements.push(format!("{va:#x}: {} [{tr:x?}]", why.join("; ")));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        disagreements.is_empty(),
        "{levels} levels: {} of {} VAs disagree:\n{}",
        disagreements.len(),
        vas.len(),
        disagreements[..disagreements.len().min(12)].join("\n")
    );
    eprintln!("AArch64 {levels} levels: {} VAs (TTBR0 and TTBR1) x 7 outcomes, 0 disagreements; {cases:?}", vas.len());
    for k in 0..7 {
        for case in ["Completes", "Translation", "AccessFlag"] {
            assert!(
                cases.contains_key(&(k, case.to_string())),
                "no {case} for outcome {k}"
            );
        }
    }
    for k in [2, 3, 4, 5, 6] {
        assert!(
            cases.contains_key(&(k, "Permission".to_string())),
            "no permission fault for outcome {k}"
        );
    }
}

#[test]
fn four_levels_48_bit_ttbr0_and_ttbr1() {
    check(4, 0xa64_0001);
}

#[test]
fn three_levels_39_bit_ttbr0_and_ttbr1() {
    check(3, 0xa64_0002);
}
