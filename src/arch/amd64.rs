//! x86-64 paging: 4-level (48-bit) and 5-level LA57 (57-bit).
//!
//! Entry layout: Intel SDM vol. 3A §4.5 ("4-level paging and 5-level
//! paging"), tables 4-15 to 4-20; shared with the other x86 modes in
//! `arch::x86`. EFER.NXE is assumed set (bit 63 decoded as XD).

use super::x86::{Codec, FLAGS};
use super::{Descriptor, PageTableFormat};
use crate::vmem::{Flags, Perms, PhysAddr};

pub use super::x86::{
    PAGE_ACCESSED, PAGE_COW, PAGE_DIRTY, PAGE_GLOBAL, PAGE_NX, PAGE_PAT_4K, PAGE_PAT_LARGE,
    PAGE_PCD, PAGE_PRESENT, PAGE_PS, PAGE_PWT, PAGE_RW, PAGE_USER,
};

/// Physical-address bits of an entry (MAXPHYADDR = 52).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Smallest page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes in one table.
pub const PAGE_TABLE_SIZE: usize = 4096;

const CODEC: Codec = Codec { nx: true };
const NAMES_4: [&str; 4] = ["PML4", "PDPT", "PD", "PT"];
const NAMES_5: [&str; 5] = ["PML5", "PML4", "PDPT", "PD", "PT"];

/// The x86-64 paging mode, chosen at run time (a debugger reads the guest's
/// CR4.LA57).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amd64 {
    la57: bool,
}

impl Amd64 {
    /// 4-level paging, 48-bit virtual addresses.
    pub const FOUR_LEVEL: Amd64 = Amd64 { la57: false };
    /// 5-level paging (CR4.LA57), 57-bit virtual addresses.
    pub const FIVE_LEVEL: Amd64 = Amd64 { la57: true };

    /// The mode for a given CR4.LA57.
    pub const fn new(la57: bool) -> Amd64 {
        Amd64 { la57 }
    }

    #[inline]
    fn last_level(&self) -> usize {
        self.levels() - 1
    }
}

impl PageTableFormat for Amd64 {
    #[inline]
    fn levels(&self) -> usize {
        if self.la57 {
            5
        } else {
            4
        }
    }

    #[inline]
    fn va_bits(&self) -> u32 {
        if self.la57 {
            57
        } else {
            48
        }
    }

    #[inline]
    fn sign_extended(&self) -> bool {
        true
    }

    #[inline]
    fn shift(&self, level: usize) -> u32 {
        12 + 9 * (self.last_level() - level) as u32
    }

    fn index_bits(&self, _level: usize) -> u32 {
        9
    }

    #[inline]
    fn leaf_allowed(&self, level: usize) -> bool {
        // PT (4 KiB), PD (2 MiB) and PDPT (1 GiB).
        level + 3 > self.last_level()
    }

    fn phys_limit(&self) -> u64 {
        1 << 52
    }

    fn supported_flags(&self) -> Flags {
        FLAGS
    }

    fn representable(&self, perms: Perms) -> Perms {
        CODEC.representable(perms)
    }

    #[inline]
    fn decode(&self, level: usize, raw: u64) -> Descriptor {
        let last = level == self.last_level();
        CODEC.decode(
            raw,
            last,
            self.leaf_allowed(level),
            self.entry_span(level),
            PTE_ADDR_MASK,
        )
    }

    fn encode_leaf(&self, level: usize, addr: PhysAddr, perms: Perms, flags: Flags) -> u64 {
        CODEC.encode(
            level == self.last_level(),
            addr,
            PTE_ADDR_MASK,
            perms,
            flags,
        )
    }

    fn encode_table(&self, _level: usize, addr: PhysAddr) -> u64 {
        PAGE_PRESENT | PAGE_RW | PAGE_USER | (addr & PTE_ADDR_MASK)
    }

    fn relax_table(&self, _level: usize, raw: u64) -> u64 {
        CODEC.relax(raw)
    }

    fn restrict(&self, _level: usize, raw: u64, allowed: Perms) -> u64 {
        CODEC.restrict(raw, allowed)
    }

    fn with_table_addr(&self, _level: usize, raw: u64, addr: PhysAddr) -> u64 {
        (raw & !PTE_ADDR_MASK) | (addr & PTE_ADDR_MASK)
    }

    fn level_name(&self, level: usize) -> &'static str {
        let names: &[&'static str] = if self.la57 { &NAMES_5 } else { &NAMES_4 };
        names.get(level).copied().unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_and_leaves() {
        let m = Amd64::FOUR_LEVEL;
        assert_eq!(
            [m.shift(0), m.shift(1), m.shift(2), m.shift(3)],
            [39, 30, 21, 12]
        );
        assert_eq!(
            [0, 1, 2, 3].map(|l| m.leaf_allowed(l)),
            [false, true, true, true]
        );
        let m5 = Amd64::FIVE_LEVEL;
        assert_eq!(m5.shift(0), 48);
        assert!(!m5.leaf_allowed(1));
        assert!(m5.leaf_allowed(2));
    }

    #[test]
    fn canonical_addresses() {
        let m = Amd64::FOUR_LEVEL;
        assert_eq!(m.linear(0x0000_7fff_ffff_f000), Some(0x7fff_ffff_f000));
        assert_eq!(m.linear(0xffff_8000_0000_0000), Some(0x8000_0000_0000));
        assert_eq!(m.linear(0x0000_8000_0000_0000), None);
        assert_eq!(m.canonical(0xffff_ffff_ffff), u64::MAX);
        assert_eq!(m.linear_range(0, u64::MAX), Some((0, (1 << 48) - 1)));
        assert_eq!(
            m.linear_range(0x1_0000_0000_0000, u64::MAX),
            Some((1 << 47, (1 << 48) - 1))
        );
        assert_eq!(m.linear_range(0x1_0000_0000_0000, 0x2_0000_0000_0000), None);
        assert_eq!(
            m.linear_range(0, 0x1_0000_0000_0000),
            Some((0, (1 << 47) - 1))
        );
        assert_eq!(
            Amd64::FIVE_LEVEL.linear(0xff00_0000_0000_0000),
            Some(1 << 56)
        );
    }

    /// SDM vol. 3A table 4-18 (PDE mapping a 2 MiB page): PS = bit 7,
    /// PAT = bit 12, address in 51:21, bits 20:13 reserved.
    #[test]
    fn huge_page_bits() {
        let m = Amd64::FOUR_LEVEL;
        let raw = 0x8000_0000_4020_1087u64; // P RW US PS, PAT, XD, PA 0x40200000
        match m.decode(2, raw) {
            Descriptor::Leaf { addr, perms, flags } => {
                assert_eq!(addr, 0x4020_0000);
                assert_eq!(perms, Perms::READ | Perms::WRITE | Perms::USER);
                assert_eq!(flags, Flags::PAT);
            }
            other => panic!("{other:?}"),
        }
        let rwu = Perms::READ | Perms::WRITE | Perms::USER;
        assert_eq!(m.encode_leaf(2, 0x4020_0000, rwu, Flags::PAT), raw);
        // Bit 13 set in a 2 MiB leaf is reserved.
        assert_eq!(m.decode(2, raw | 1 << 13), Descriptor::Reserved);
        // PS in a PML4E is reserved.
        assert_eq!(m.decode(0, 0x1083), Descriptor::Reserved);
        // In a PTE bit 7 is PAT, not PS (table 4-20).
        match m.decode(3, 0x5083) {
            Descriptor::Leaf { addr, flags, .. } => {
                assert_eq!(addr, 0x5000);
                assert_eq!(flags, Flags::PAT);
            }
            other => panic!("{other:?}"),
        }
    }
}
