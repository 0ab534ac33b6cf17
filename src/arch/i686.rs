//! 32-bit x86 paging: 2-level with 4-byte entries (CR4.PSE adds 4 MiB
//! pages) and PAE 3-level with 8-byte entries, XD and 2 MiB pages.
//!
//! Entry layouts: Intel SDM vol. 3A §4.3 ("32-bit paging", tables 4-4 to
//! 4-6) and §4.4 ("PAE paging", tables 4-8 to 4-11). With PSE-36, a 4 MiB
//! page reaches physical addresses up to 2^40 through bits 20:13 of its PDE.

use super::x86::{Codec, LevelBits, X86Cpu, FLAGS, PAGE_PRESENT, PAGE_PS, PAGE_RW, PAGE_USER};
use super::{Descriptor, PageTableFormat};
use super::{Flags, Perms, PhysAddr, Rights};

/// Address bits of a 32-bit entry.
const ADDR_32: u64 = 0xffff_f000;
/// Address bits of a PAE entry (MAXPHYADDR = 52).
const ADDR_PAE: u64 = 0x000f_ffff_ffff_f000;
/// Bits of a PAE PDPTE that must be zero besides its high bits (SDM
/// table 4-8): 1, 2, 5-8.
const PDPTE_RESERVED: u64 = 0x1e6;
/// Bits 62:52 of a PAE PDE or PTE (reserved, unlike in IA-32e paging).
const PAE_HIGH_RESERVED: u64 = 0x7ff0_0000_0000_0000;

/// A 32-bit paging mode, chosen at run time from CR4.PAE and CR4.PSE, on
/// a CPU ([`X86Cpu`]: MAXPHYADDR, PSE-36, EFER.NXE, CR0.WP, SMEP, SMAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct I686 {
    pae: bool,
    pse: bool,
    cpu: X86Cpu,
}

impl I686 {
    /// 2-level paging, 4 KiB pages only (CR4.PSE = 0).
    pub const LEGACY: I686 = I686::with_cpu(false, false, X86Cpu::ASSUMED);
    /// 2-level paging with 4 MiB pages (CR4.PSE = 1), PSE-36.
    pub const PSE: I686 = I686::with_cpu(false, true, X86Cpu::ASSUMED);
    /// PAE paging: 3 levels, XD, 2 MiB pages.
    pub const PAE: I686 = I686::with_cpu(true, true, X86Cpu::ASSUMED);

    /// The mode for CR4.PAE and CR4.PSE on [`X86Cpu::ASSUMED`].
    pub const fn new(pae: bool, pse: bool) -> I686 {
        I686::with_cpu(pae, pse, X86Cpu::ASSUMED)
    }

    /// The mode for CR4.PAE and CR4.PSE on `cpu`.
    pub const fn with_cpu(pae: bool, pse: bool, cpu: X86Cpu) -> I686 {
        I686 { pae, pse, cpu }
    }

    /// The bits of a PDE or PTE (not a PAE PDPTE).
    fn level_bits(&self, level: usize) -> LevelBits {
        let last = level + 1 == self.levels();
        if self.pae {
            let span = if last { 4096 } else { 2 << 20 };
            let cpu = &self.cpu;
            let reserved = cpu.above_phys() | cpu.xd_reserved() | PAE_HIGH_RESERVED;
            return LevelBits::wide(cpu.addr_mask(), reserved, last, true, span);
        }
        if last {
            return LevelBits {
                last,
                huge: true,
                addr: ADDR_32,
                huge_addr: ADDR_32,
                reserved_table: 0,
                reserved_leaf: 0,
                pse36: false,
            };
        }
        // 4 MiB pages: PA bits 39:32 in bits 20:13, up to M = MAXPHYADDR
        // (at most 40) with PSE-36, else M = 32; bits 21:(M - 19) are
        // reserved.
        let m = if self.cpu.pse36 {
            u32::from(self.cpu.phys_bits).clamp(32, 40)
        } else {
            32
        };
        LevelBits {
            last,
            huge: self.pse,
            addr: ADDR_32,
            huge_addr: 0xffc0_0000,
            reserved_table: 0,
            reserved_leaf: (1u64 << 22) - (1u64 << (m - 19)),
            pse36: m > 32,
        }
    }

    /// The CPU this mode decodes entries for.
    pub const fn cpu(&self) -> &X86Cpu {
        &self.cpu
    }

    /// Whether this is PAE paging.
    pub const fn pae(&self) -> bool {
        self.pae
    }

    fn codec(&self) -> Codec {
        Codec {
            nx: self.pae && self.cpu.nxe,
        }
    }

    fn addr_mask(&self) -> u64 {
        if self.pae {
            ADDR_PAE
        } else {
            ADDR_32
        }
    }

    /// A PAE PDPTE (level 0): no rights bits at all.
    fn is_pdpte(&self, level: usize) -> bool {
        self.pae && level == 0
    }
}

impl PageTableFormat for I686 {
    fn levels(&self) -> usize {
        if self.pae {
            3
        } else {
            2
        }
    }

    fn va_bits(&self) -> u32 {
        32
    }

    fn sign_extended(&self) -> bool {
        false
    }

    fn shift(&self, level: usize) -> u32 {
        match (self.pae, level) {
            (true, 0) => 30,
            (true, 1) => 21,
            (false, 0) => 22,
            _ => 12,
        }
    }

    fn index_bits(&self, level: usize) -> u32 {
        match (self.pae, level) {
            (true, 0) => 2,
            (true, _) => 9,
            (false, _) => 10,
        }
    }

    fn entry_size(&self) -> u64 {
        if self.pae {
            8
        } else {
            4
        }
    }

    fn leaf_allowed(&self, level: usize) -> bool {
        level + 1 == self.levels()
            || (self.pae && level == 1)
            || (!self.pae && self.pse && level == 0)
    }

    fn phys_limit(&self) -> u64 {
        if self.pae {
            1 << self.cpu.phys_bits.min(52)
        } else {
            1 << 32
        }
    }

    fn supported_flags(&self) -> Flags {
        FLAGS
    }

    fn representable(&self, perms: Perms) -> Perms {
        self.codec().representable(perms)
    }

    fn rights(&self, perms: Perms, _leaf: u64) -> Rights {
        self.cpu.rights(perms, None)
    }

    fn leaf_address_mask(&self, level: usize) -> u64 {
        if self.is_pdpte(level) {
            0
        } else {
            self.level_bits(level).leaf_address_mask()
        }
    }

    fn decode(&self, level: usize, raw: u64) -> Descriptor {
        if self.is_pdpte(level) {
            // Bits 63:MAXPHYADDR and 1, 2, 5-8 are reserved (table 4-8).
            let reserved = PDPTE_RESERVED | (!self.cpu.addr_mask() & !0xfff);
            return match raw {
                _ if raw & PAGE_PRESENT == 0 => Descriptor::Invalid,
                _ if raw & reserved != 0 => Descriptor::Reserved {
                    bits: raw & reserved,
                },
                _ => Descriptor::Table {
                    addr: raw & self.cpu.addr_mask(),
                    allowed: Perms::all(),
                },
            };
        }
        // Without CR4.PSE the PS bit of a PDE is ignored (SDM table 4-5).
        let raw = if !self.pae && !self.pse {
            raw & !PAGE_PS
        } else {
            raw
        };
        self.codec().decode(raw, &self.level_bits(level))
    }

    fn encode_leaf(&self, level: usize, addr: PhysAddr, perms: Perms, flags: Flags) -> u64 {
        let last = level + 1 == self.levels();
        self.codec()
            .encode(last, addr, self.addr_mask(), perms, flags)
    }

    fn encode_table(&self, level: usize, addr: PhysAddr) -> u64 {
        let rights = if self.is_pdpte(level) {
            0
        } else {
            PAGE_RW | PAGE_USER
        };
        PAGE_PRESENT | rights | (addr & self.addr_mask())
    }

    fn relax_table(&self, level: usize, raw: u64) -> u64 {
        if self.is_pdpte(level) {
            raw
        } else {
            self.codec().relax(raw)
        }
    }

    fn restrict(&self, level: usize, raw: u64, allowed: Perms) -> u64 {
        if self.is_pdpte(level) {
            raw
        } else {
            self.codec().restrict(raw, allowed)
        }
    }

    fn with_table_addr(&self, _level: usize, raw: u64, addr: PhysAddr) -> u64 {
        (raw & !self.addr_mask()) | (addr & self.addr_mask())
    }

    fn level_name(&self, level: usize) -> &'static str {
        let names: &[&'static str] = if self.pae {
            &["PDPT", "PD", "PT"]
        } else {
            &["PD", "PT"]
        };
        names.get(level).copied().unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDM vol. 3A table 4-4 (32-bit PDE mapping a 4 MiB page): PS = bit 7,
    /// PAT = bit 12, address 31:22; table 4-6 (PTE): PAT = bit 7.
    #[test]
    fn pse_and_legacy_bits() {
        let raw = 0xc040_1087u64; // P RW US PS PAT, PA 0xc0400000
        let rwxu = Perms::all();
        match I686::PSE.decode(0, raw) {
            Descriptor::Leaf { addr, perms, flags } => {
                assert_eq!((addr, perms, flags), (0xc040_0000, rwxu, Flags::PAT));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(I686::PSE.encode_leaf(0, 0xc040_0000, rwxu, Flags::PAT), raw);
        // Without CR4.PSE bit 7 is ignored: the entry points to a table.
        assert!(matches!(
            I686::LEGACY.decode(0, raw),
            Descriptor::Table {
                addr: 0xc040_1000,
                ..
            }
        ));
        // A 4 KiB PTE: bit 7 is PAT.
        assert!(matches!(
            I686::PSE.decode(1, 0x5083),
            Descriptor::Leaf {
                addr: 0x5000,
                flags: Flags::PAT,
                ..
            }
        ));
        // PSE-36: bits 20:13 of a 4 MiB PDE are PA bits 39:32 (up to
        // MAXPHYADDR); bit 21 is reserved; without PSE-36 all of 21:13 are.
        assert!(matches!(
            I686::PSE.decode(0, raw | 0x3 << 13),
            Descriptor::Leaf {
                addr: 0x3_c040_0000,
                ..
            }
        ));
        assert_eq!(
            I686::PSE.decode(0, raw | 1 << 21),
            Descriptor::Reserved { bits: 1 << 21 }
        );
        let cpu36 = X86Cpu {
            phys_bits: 36,
            ..X86Cpu::ASSUMED
        };
        assert_eq!(
            I686::with_cpu(false, true, cpu36).decode(0, raw | 1 << 17),
            Descriptor::Reserved { bits: 1 << 17 }
        );
        let no36 = X86Cpu {
            pse36: false,
            ..X86Cpu::ASSUMED
        };
        assert_eq!(
            I686::with_cpu(false, true, no36).decode(0, raw | 1 << 13),
            Descriptor::Reserved { bits: 1 << 13 }
        );
        assert_eq!(I686::PSE.entry_size(), 4);
        assert_eq!([I686::PSE.shift(0), I686::PSE.shift(1)], [22, 12]);
    }

    /// SDM vol. 3A table 4-8 (PAE PDPTE): only P, PWT, PCD and the
    /// address; tables 4-9/4-10: PS at bit 7 of a PDE maps 2 MiB, XD = 63.
    #[test]
    fn pae_bits() {
        let m = I686::PAE;
        assert!(
            matches!(m.decode(0, 0x1001), Descriptor::Table { addr: 0x1000, allowed } if allowed == Perms::all())
        );
        assert_eq!(
            m.decode(0, 0x1003),
            Descriptor::Reserved { bits: 2 },
            "R/W is reserved in a PDPTE"
        );
        // Bits 62:52 of PDEs and PTEs are reserved in PAE paging, and bit
        // 63 without EFER.NXE (tables 4-9 to 4-11).
        assert_eq!(
            m.decode(2, 1 << 55 | 0x5003),
            Descriptor::Reserved { bits: 1 << 55 }
        );
        let no_nx = I686::with_cpu(
            true,
            true,
            X86Cpu {
                nxe: false,
                ..X86Cpu::ASSUMED
            },
        );
        assert_eq!(
            no_nx.decode(1, 1 << 63 | 0x20_0083),
            Descriptor::Reserved { bits: 1 << 63 }
        );
        assert_eq!(
            m.decode(0, 1 << 63 | 0x1001),
            Descriptor::Reserved { bits: 1 << 63 }
        );
        assert_eq!(m.encode_table(0, 0x1000), 0x1001);
        let raw = 0x8000_0000_0020_0083u64; // P RW PS XD, PA 2 MiB
        assert!(matches!(
            m.decode(1, raw),
            Descriptor::Leaf { addr: 0x20_0000, perms, .. } if perms == Perms::READ | Perms::WRITE
        ));
        assert_eq!([m.shift(0), m.shift(1), m.shift(2)], [30, 21, 12]);
        assert_eq!([m.index_bits(0), m.index_bits(1)], [2, 9]);
        assert_eq!(m.linear_range(0, u64::MAX), Some((0, 0xffff_ffff)));
    }
}
