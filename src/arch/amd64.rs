//! x86-64 paging: 4-level (48-bit) and 5-level LA57 (57-bit).
//!
//! Bit layout from the Intel SDM vol. 3A §4.5 ("4-level paging and 5-level
//! paging"), tables 4-15 to 4-20: bit 0 P, 1 R/W, 2 U/S, 3 PWT, 4 PCD,
//! 5 A, 6 D (leaves), 7 PS (PAT in a 4 KiB PTE), 8 G (leaves), 9-11 ignored
//! (we use bit 11 as the copy-on-write marker), 12 PAT in huge pages,
//! 51:12 address, 63 XD. EFER.NXE is assumed set (bit 63 decoded as XD).

use super::{Descriptor, PageTableFormat};
use crate::vmem::{Flags, Perms, PhysAddr};

/// Entry present.
pub const PAGE_PRESENT: u64 = 1 << 0;
/// Writes allowed.
pub const PAGE_RW: u64 = 1 << 1;
/// User-mode accesses allowed.
pub const PAGE_USER: u64 = 1 << 2;
/// Write-through caching.
pub const PAGE_PWT: u64 = 1 << 3;
/// Cache disable.
pub const PAGE_PCD: u64 = 1 << 4;
/// Accessed.
pub const PAGE_ACCESSED: u64 = 1 << 5;
/// Dirty (leaves only).
pub const PAGE_DIRTY: u64 = 1 << 6;
/// Page size: this PDPTE/PDE maps a huge page. In a PTE this bit is PAT.
pub const PAGE_PS: u64 = 1 << 7;
/// PAT bit of a 4 KiB PTE.
pub const PAGE_PAT_4K: u64 = 1 << 7;
/// Global (leaves only).
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// Software-available bit 11: copy-on-write marker.
pub const PAGE_COW: u64 = 1 << 11;
/// PAT bit of a 2 MiB or 1 GiB page.
pub const PAGE_PAT_LARGE: u64 = 1 << 12;
/// Execute disable.
pub const PAGE_NX: u64 = 1 << 63;
/// Physical-address bits of an entry (MAXPHYADDR = 52).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Smallest page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes in one table.
pub const PAGE_TABLE_SIZE: usize = 4096;

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

    fn last_level(&self) -> usize {
        self.levels() - 1
    }

    fn pat_bit(&self, level: usize) -> u64 {
        if level == self.last_level() {
            PAGE_PAT_4K
        } else {
            PAGE_PAT_LARGE
        }
    }
}

fn perms_of(raw: u64) -> Perms {
    let mut perms = Perms::READ;
    perms.set(Perms::WRITE, raw & PAGE_RW != 0);
    perms.set(Perms::USER, raw & PAGE_USER != 0);
    perms.set(Perms::EXEC, raw & PAGE_NX == 0);
    perms
}

impl PageTableFormat for Amd64 {
    fn levels(&self) -> usize {
        if self.la57 {
            5
        } else {
            4
        }
    }

    fn va_bits(&self) -> u32 {
        if self.la57 {
            57
        } else {
            48
        }
    }

    fn sign_extended(&self) -> bool {
        true
    }

    fn shift(&self, level: usize) -> u32 {
        12 + 9 * (self.last_level() - level) as u32
    }

    fn index_bits(&self, _level: usize) -> u32 {
        9
    }

    fn leaf_allowed(&self, level: usize) -> bool {
        // PT (4 KiB), PD (2 MiB) and PDPT (1 GiB).
        level + 3 > self.last_level()
    }

    fn phys_limit(&self) -> u64 {
        1 << 52
    }

    fn decode(&self, level: usize, raw: u64) -> Descriptor {
        if raw & PAGE_PRESENT == 0 {
            return Descriptor::Invalid;
        }
        let is_leaf = level == self.last_level() || raw & PAGE_PS != 0;
        if !is_leaf {
            return Descriptor::Table {
                addr: raw & PTE_ADDR_MASK,
                allowed: perms_of(raw),
            };
        }
        if !self.leaf_allowed(level) {
            return Descriptor::Reserved;
        }
        let span = self.entry_span(level);
        let pat = self.pat_bit(level);
        if raw & PTE_ADDR_MASK & (span - 1) & !pat != 0 {
            // Address bits below the huge page's alignment are reserved.
            return Descriptor::Reserved;
        }
        let mut flags = Flags::empty();
        for (bit, flag) in [
            (PAGE_GLOBAL, Flags::GLOBAL),
            (PAGE_ACCESSED, Flags::ACCESSED),
            (PAGE_DIRTY, Flags::DIRTY),
            (PAGE_PWT, Flags::WRITE_THROUGH),
            (PAGE_PCD, Flags::CACHE_DISABLE),
            (pat, Flags::PAT),
            (PAGE_COW, Flags::COW),
        ] {
            flags.set(flag, raw & bit != 0);
        }
        Descriptor::Leaf {
            addr: raw & PTE_ADDR_MASK & !(span - 1),
            perms: perms_of(raw),
            flags,
        }
    }

    fn encode_leaf(&self, level: usize, addr: PhysAddr, perms: Perms, flags: Flags) -> u64 {
        let mut raw = PAGE_PRESENT | (addr & PTE_ADDR_MASK);
        if level != self.last_level() {
            raw |= PAGE_PS;
        }
        for (on, bit) in [
            (perms.contains(Perms::WRITE), PAGE_RW),
            (perms.contains(Perms::USER), PAGE_USER),
            (!perms.contains(Perms::EXEC), PAGE_NX),
            (flags.contains(Flags::GLOBAL), PAGE_GLOBAL),
            (flags.contains(Flags::ACCESSED), PAGE_ACCESSED),
            (flags.contains(Flags::DIRTY), PAGE_DIRTY),
            (flags.contains(Flags::WRITE_THROUGH), PAGE_PWT),
            (flags.contains(Flags::CACHE_DISABLE), PAGE_PCD),
            (flags.contains(Flags::PAT), self.pat_bit(level)),
            (flags.contains(Flags::COW), PAGE_COW),
        ] {
            if on {
                raw |= bit;
            }
        }
        raw
    }

    fn encode_table(&self, _level: usize, addr: PhysAddr) -> u64 {
        PAGE_PRESENT | PAGE_RW | PAGE_USER | (addr & PTE_ADDR_MASK)
    }

    fn relax_table(&self, _level: usize, raw: u64) -> u64 {
        (raw | PAGE_RW | PAGE_USER) & !PAGE_NX
    }

    fn restrict(&self, _level: usize, mut raw: u64, allowed: Perms) -> u64 {
        if !allowed.contains(Perms::WRITE) {
            raw &= !PAGE_RW;
        }
        if !allowed.contains(Perms::USER) {
            raw &= !PAGE_USER;
        }
        if !allowed.contains(Perms::EXEC) {
            raw |= PAGE_NX;
        }
        raw
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
        assert_eq!(
            m.encode_leaf(
                2,
                0x4020_0000,
                Perms::READ | Perms::WRITE | Perms::USER,
                Flags::PAT
            ),
            raw
        );
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
