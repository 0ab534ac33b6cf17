//! Random 4-level tables written as raw entries (not with the crate's own
//! encoder): 4 KiB / 2 MiB / 1 GiB leaves, random R/W, U/S and XD at every
//! level, tables shared at the same and at different levels, self-maps,
//! reserved and ignored bits; and VAs sampled along their present paths.

use vmem_gdbstub::target::GuestRam;

pub use super::rng::Rng;
use super::{read_u64, HV, RAM};

/// Tables come from here (PA 1 MiB up).
const POOL: u64 = 0x10_0000;
/// Data pages (PA 2 MiB up to the end of RAM).
const DATA: u64 = 0x20_0000;
const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;

/// The tables of one run.
pub struct RandomTables {
    pub root: u64,
}

impl RandomTables {
    /// Write `count` random tables into `mem`; `phys_bits` is the vCPU's
    /// MAXPHYADDR (address bits above it are reserved, and some entries
    /// set them).
    pub fn generate(mem: &GuestRam, rng: &mut Rng, count: u64, phys_bits: u32) -> Self {
        let tables: Vec<u64> = (0..count).map(|i| POOL + i * 0x1000).collect();
        let root = tables[0];
        // Which level each table is first meant for (sharing across
        // levels happens through random links anyway).
        for (n, &table) in tables.iter().enumerate() {
            let level = if n == 0 { 0 } else { 1 + (n as u64 % 3) };
            for index in 0..512u64 {
                let raw = Self::entry(rng, &tables, root, level, index, phys_bits, n == 0);
                mem.write(table + index * 8, &raw.to_le_bytes()).unwrap();
            }
        }
        RandomTables { root }
    }

    fn entry(
        rng: &mut Rng,
        tables: &[u64],
        root: u64,
        level: u64,
        index: u64,
        phys_bits: u32,
        is_root: bool,
    ) -> u64 {
        // Entry 511 of every table is absent with 0xcc in its low byte: a
        // fetch at offset 0xff8 of a table page meets int3 there.
        if index == 511 {
            return rng.next() & !0xff | 0xcc;
        }
        // Root slot 510 is the harness's; slot 256 is left empty (this
        // host faults CPL 3 accesses there whatever the tables say).
        if is_root && (index == 510 || index == 256) {
            return 0;
        }
        let density = if is_root { 6 } else { 20 };
        if !rng.chance(density) {
            // Absent, with random other bits (ignored by the MMU).
            return rng.next() & !PRESENT;
        }
        let mut raw = PRESENT;
        raw |= if rng.chance(70) { 2 } else { 0 }; // R/W
        raw |= if rng.chance(75) { 4 } else { 0 }; // U/S
        raw |= if rng.chance(25) { 1 << 63 } else { 0 }; // XD
        raw |= rng.next() & 0x0e00; // ignored 11:9
        raw |= rng.next() & 0x0078; // PWT PCD A D
        if rng.chance(20) {
            raw |= rng.next() & 0x007f_0000_0000_0000; // ignored 58:52
        }
        let leaf = match level {
            3 => true,
            2 => rng.chance(35),
            1 => rng.chance(10),
            _ => rng.chance(3),
        };
        if !leaf {
            let target = match rng.below(20) {
                0 => root,                                             // self-map
                1 => DATA + rng.below((RAM - DATA) / 0x1000) * 0x1000, // a data page as table
                _ => *rng.pick(tables),
            };
            raw |= target;
        } else {
            raw |= if level < 3 { PS } else { rng.next() & 0x80 }; // PAT in a PTE
            raw |= rng.next() & 0x100; // G
            raw |= match level {
                3 if rng.chance(20) => *rng.pick(tables),
                3 => DATA + rng.below((RAM - DATA) / 0x1000) * 0x1000,
                2 => (DATA + rng.below((RAM - DATA) >> 21) * (2 << 20)) | (rng.next() & 0x1000),
                _ => rng.next() & 0x1000, // 1 GiB at PA 0 (PAT bit random)
            };
        }
        if rng.chance(4) {
            // Reserved: an address bit above MAXPHYADDR, or below a huge
            // page's alignment.
            raw |= if phys_bits < 52 && rng.chance(60) {
                1 << (phys_bits as u64 + rng.below(52 - phys_bits as u64))
            } else if leaf && level == 2 {
                1 << (13 + rng.below(8))
            } else {
                1 << (phys_bits.min(51) as u64)
            };
        }
        raw
    }
}

/// `count` VAs along present paths of the tables (now and then a random
/// index), each at offset 0xff8 of a random 4 KiB page of its leaf.
pub fn sample_vas(mem: &GuestRam, rng: &mut Rng, root: u64, count: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut table = root;
        let mut lin = 0u64;
        for level in 0..4u64 {
            let shift = 39 - 9 * level;
            let present: Vec<u64> = (0..511)
                .filter(|&i| {
                    let raw = read_u64(mem, table + i * 8);
                    raw & PRESENT != 0 && !(level == 0 && (i == 256 || i == 510))
                })
                .collect();
            let index = if !present.is_empty() && rng.chance(92) {
                *rng.pick(&present)
            } else {
                let i = rng.below(510);
                if level == 0 && i == 256 {
                    255
                } else {
                    i
                }
            };
            lin |= index << shift;
            let raw = read_u64(mem, table + index * 8);
            let next = raw & 0x000f_ffff_ffff_f000;
            let descend = raw & PRESENT != 0 && (level == 3 || raw & PS == 0) && next < RAM;
            if !descend || level == 3 {
                // A random 4 KiB page below this entry (inside RAM for a
                // 1 GiB page at PA 0: its pages from DATA on).
                // A huge page at PA 0 (1 GiB, or a PTE with PAT set read as
                // a 2 MiB PDE) covers the harness: probe only its pages
                // from the table pool on, never the harness's own.
                let huge_at_0 = raw & 0x000f_ffff_ffe0_0000 == 0;
                let below = if level == 1 {
                    DATA + rng.below((RAM - DATA) / 0x1000) * 0x1000
                } else if level == 2 && huge_at_0 {
                    POOL + rng.below(256) * 0x1000
                } else if level < 3 {
                    rng.below(1 << (shift - 12)) << 12
                } else {
                    0
                };
                lin |= below;
                break;
            }
            table = next;
        }
        let va = (((lin | 0xff8) << 16) as i64 >> 16) as u64;
        if va >> 39 != HV >> 39 {
            out.push(va);
        }
    }
    out
}
