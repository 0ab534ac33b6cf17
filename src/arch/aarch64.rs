//! AArch64 stage-1 translation, 4 KiB granule: 4 levels (48-bit VA) or 3
//! levels (39-bit VA). TTBR0 (lower half) and TTBR1 (upper half) are two
//! roots: walk each with its own [`Aarch64`] value ([`Half`]).
//!
//! Descriptor layout: Arm ARM (DDI 0487) D8.3 "Translation table descriptor
//! formats": bits\[1:0\] = 0b11 table (levels 0-2) or page (level 3), 0b01
//! block (levels 1-2); output address 47:12; AttrIndx 4:2, AP\[2:1\] 7:6,
//! SH 9:8, AF 10, nG 11, Contiguous 52, PXN 53, UXN 54, software 58:55
//! (bit 55: our copy-on-write marker); table descriptors: PXNTable 59,
//! UXNTable 60, APTable 62:61.
//!
//! Rights follow the Arm ARM's stage-1 permission model for the EL1&0
//! regime (pseudocode `AArch64.S1DirectBasePermissions`): APTable limits
//! the leaf's AP first; PXN and PXNTable remove execution at EL1 only,
//! UXN and UXNTable at EL0 only; memory writable at EL0 is never
//! executable at EL1; EL0 may execute a page it cannot read (AP\[1\] = 0,
//! UXN = 0: execute-only). SCTLR_EL1.WXN and PSTATE.PAN are taken as 0.
//! Output-address bits below a block's alignment are ignored (bit 16 of a
//! block is nT under FEAT_BBM), and so are bits 51:48 (RES0 with a 4 KiB
//! granule without FEAT_LPA2: DBM, GP and RES0 bits; QEMU masks them
//! too); a level-0 block is a translation fault. The access flag is
//! reported ([`Flags::ACCESSED`]), not enforced: with TCR_EL1.HA = 0 the
//! CPU takes an Access flag fault on a leaf without it.

use super::{Access, Flags, Perms, PhysAddr, Rights};
use super::{Descriptor, PageTableFormat};

const ADDR: u64 = 0x0000_ffff_ffff_f000;
const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AP_EL0: u64 = 1 << 6;
const AP_RO: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const CONTIGUOUS: u64 = 1 << 52;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const COW: u64 = 1 << 55;
const PXN_TABLE: u64 = 1 << 59;
const UXN_TABLE: u64 = 1 << 60;
const AP_TABLE_NO_EL0: u64 = 1 << 61;
const AP_TABLE_RO: u64 = 1 << 62;
const RIGHTS: u64 = AP_EL0 | AP_RO | PXN | UXN;
const TABLE_LIMITS: u64 = PXN_TABLE | UXN_TABLE | AP_TABLE_NO_EL0 | AP_TABLE_RO;
/// What each table-descriptor limit withholds.
const TABLE_LIMIT_RIGHTS: [(u64, Perms); 4] = [
    (AP_TABLE_RO, Perms::WRITE),
    (AP_TABLE_NO_EL0, Perms::USER),
    (PXN_TABLE, Perms::EXEC),
    (UXN_TABLE, Perms::USER_EXEC),
];

/// Which translation table base register a walk starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    /// TTBR0_EL1: addresses from 0 up.
    Lower,
    /// TTBR1_EL1: addresses from the top down (all upper bits set).
    Upper,
}

/// An AArch64 4 KiB-granule translation regime half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aarch64 {
    levels: usize,
    half: Half,
}

impl Aarch64 {
    /// 48-bit VA (4 levels, start at level 0), lower half.
    pub const LOWER_48: Aarch64 = Aarch64::new(4, Half::Lower);
    /// 48-bit VA, upper half.
    pub const UPPER_48: Aarch64 = Aarch64::new(4, Half::Upper);
    /// 39-bit VA (3 levels, start at level 1), lower half.
    pub const LOWER_39: Aarch64 = Aarch64::new(3, Half::Lower);
    /// 39-bit VA, upper half.
    pub const UPPER_39: Aarch64 = Aarch64::new(3, Half::Upper);

    /// `levels` is 3 (39-bit) or 4 (48-bit); anything else means 4.
    pub const fn new(levels: usize, half: Half) -> Aarch64 {
        let levels = if levels == 3 { 3 } else { 4 };
        Aarch64 { levels, half }
    }

    /// The architectural level (0-3) of our level `level`.
    fn arm_level(&self, level: usize) -> usize {
        level + 4 - self.levels
    }

    /// AP and XN bits for `perms`. A user page is never executable at
    /// EL1 (PXN), as Linux maps them.
    fn rights_bits(perms: Perms) -> u64 {
        let mut raw = 0;
        if !perms.contains(Perms::WRITE) {
            raw |= AP_RO;
        }
        if perms.contains(Perms::USER) {
            raw |= AP_EL0 | PXN;
        } else if !perms.contains(Perms::EXEC) {
            raw |= PXN;
        }
        if !(perms.contains(Perms::USER) && perms.contains(Perms::USER_EXEC)) {
            raw |= UXN;
        }
        raw
    }

    fn leaf_perms(raw: u64) -> Perms {
        let mut perms = Perms::READ;
        perms.set(Perms::WRITE, raw & AP_RO == 0);
        perms.set(Perms::USER, raw & AP_EL0 != 0);
        perms.set(Perms::EXEC, raw & PXN == 0);
        perms.set(Perms::USER_EXEC, raw & UXN == 0);
        perms
    }
}

impl PageTableFormat for Aarch64 {
    fn levels(&self) -> usize {
        self.levels
    }

    fn va_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }

    fn sign_extended(&self) -> bool {
        false
    }

    fn shift(&self, level: usize) -> u32 {
        12 + 9 * (self.levels - 1 - level) as u32
    }

    fn index_bits(&self, _level: usize) -> u32 {
        9
    }

    fn leaf_allowed(&self, level: usize) -> bool {
        (1..=3).contains(&self.arm_level(level))
    }

    fn phys_limit(&self) -> u64 {
        1 << 48
    }

    fn supported_flags(&self) -> Flags {
        Flags::GLOBAL | Flags::ACCESSED | Flags::CONTIGUOUS | Flags::COW
    }

    fn representable(&self, perms: Perms) -> Perms {
        if perms.contains(Perms::USER) {
            (perms | Perms::READ) - Perms::EXEC
        } else {
            (perms | Perms::READ) - Perms::USER_EXEC
        }
    }

    fn rights(&self, perms: Perms, _leaf: u64) -> Rights {
        let user_writes = perms.contains(Perms::USER | Perms::WRITE);
        let mut kernel = Access::READ;
        kernel.set(Access::WRITE, perms.contains(Perms::WRITE));
        kernel.set(Access::EXEC, perms.contains(Perms::EXEC) && !user_writes);
        let mut user = Access::empty();
        user.set(Access::READ, perms.contains(Perms::USER));
        user.set(Access::WRITE, user_writes);
        user.set(Access::EXEC, perms.contains(Perms::USER_EXEC));
        Rights { kernel, user }
    }

    fn canonical(&self, lin: u64) -> u64 {
        match self.half {
            Half::Lower => lin,
            Half::Upper => lin | !self.linear_mask(),
        }
    }

    fn linear(&self, va: u64) -> Option<u64> {
        let mask = self.linear_mask();
        match self.half {
            Half::Lower => (va <= mask).then_some(va),
            Half::Upper => (va | mask == u64::MAX).then_some(va & mask),
        }
    }

    fn linear_range(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        let mask = self.linear_mask();
        if first > last {
            return None;
        }
        match self.half {
            Half::Lower => (first <= mask).then_some((first, last.min(mask))),
            Half::Upper => (last >= !mask).then_some((first.max(!mask) & mask, last & mask)),
        }
    }

    fn leaf_address_mask(&self, level: usize) -> u64 {
        ADDR & !(self.entry_span(level) - 1)
    }

    fn decode(&self, level: usize, raw: u64) -> Descriptor {
        if raw & VALID == 0 {
            return Descriptor::Invalid;
        }
        let arm = self.arm_level(level);
        let span = self.entry_span(level);
        let table_or_page = raw & TABLE_OR_PAGE != 0;
        if table_or_page && arm < 3 {
            let mut allowed = Perms::all();
            for (bit, right) in TABLE_LIMIT_RIGHTS {
                if raw & bit != 0 {
                    allowed.remove(right);
                }
            }
            return Descriptor::Table {
                addr: raw & ADDR,
                allowed,
            };
        }
        // A block at level 0, or 0b01 at level 3, is a translation fault.
        if !(table_or_page || arm == 1 || arm == 2) {
            return Descriptor::Reserved {
                bits: raw & (VALID | TABLE_OR_PAGE),
            };
        }
        let mut flags = Flags::empty();
        flags.set(Flags::ACCESSED, raw & AF != 0);
        flags.set(Flags::GLOBAL, raw & NG == 0);
        flags.set(Flags::CONTIGUOUS, raw & CONTIGUOUS != 0);
        flags.set(Flags::COW, raw & COW != 0);
        Descriptor::Leaf {
            addr: raw & ADDR & !(span - 1),
            perms: Self::leaf_perms(raw),
            flags,
        }
    }

    fn encode_leaf(&self, level: usize, addr: PhysAddr, perms: Perms, flags: Flags) -> u64 {
        let kind = if self.arm_level(level) == 3 {
            VALID | TABLE_OR_PAGE
        } else {
            VALID
        };
        let mut raw = kind | (addr & ADDR) | SH_INNER | Self::rights_bits(perms);
        for (on, bit) in [
            (flags.contains(Flags::ACCESSED), AF),
            (!flags.contains(Flags::GLOBAL), NG),
            (flags.contains(Flags::CONTIGUOUS), CONTIGUOUS),
            (flags.contains(Flags::COW), COW),
        ] {
            if on {
                raw |= bit;
            }
        }
        raw
    }

    fn encode_table(&self, _level: usize, addr: PhysAddr) -> u64 {
        VALID | TABLE_OR_PAGE | (addr & ADDR)
    }

    fn relax_table(&self, _level: usize, raw: u64) -> u64 {
        raw & !TABLE_LIMITS
    }

    fn restrict(&self, level: usize, raw: u64, allowed: Perms) -> u64 {
        match self.decode(level, raw) {
            Descriptor::Table { .. } => {
                let mut raw = raw;
                for (bit, right) in TABLE_LIMIT_RIGHTS {
                    if !allowed.contains(right) {
                        raw |= bit;
                    }
                }
                raw
            }
            Descriptor::Leaf { perms, .. } => (raw & !RIGHTS) | Self::rights_bits(perms & allowed),
            Descriptor::Invalid | Descriptor::Reserved { .. } => raw,
        }
    }

    fn with_table_addr(&self, _level: usize, raw: u64, addr: PhysAddr) -> u64 {
        (raw & !ADDR) | (addr & ADDR)
    }

    fn level_name(&self, level: usize) -> &'static str {
        ["L0", "L1", "L2", "L3"]
            .get(self.arm_level(level))
            .copied()
            .unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arm ARM D8.3: a level-2 block descriptor (bits 1:0 = 0b01) with
    /// AF, AP = 0b01 (EL1 and EL0 read/write), UXN clear, PXN set.
    #[test]
    fn block_page_and_table_descriptors() {
        let m = Aarch64::LOWER_48;
        let raw = 0x4020_0000u64 | VALID | AF | AP_EL0 | PXN | SH_INNER;
        match m.decode(2, raw) {
            Descriptor::Leaf { addr, perms, flags } => {
                assert_eq!(addr, 0x4020_0000);
                assert_eq!(perms, Perms::all() - Perms::EXEC);
                assert_eq!(flags, Flags::ACCESSED | Flags::GLOBAL);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.encode_leaf(
                2,
                0x4020_0000,
                Perms::all(),
                Flags::ACCESSED | Flags::GLOBAL
            ),
            raw
        );
        // A level-3 page uses 0b11; 0b01 there is reserved; no level-0 blocks.
        assert!(matches!(
            m.decode(3, 0x5000 | 3 | AF),
            Descriptor::Leaf { addr: 0x5000, .. }
        ));
        assert_eq!(m.decode(3, 0x5000 | 1), Descriptor::Reserved { bits: 1 });
        assert_eq!(
            m.decode(0, 0x40_0000_0000 | 1),
            Descriptor::Reserved { bits: 1 }
        );
        // Bits 51:48 (DBM, GP, RES0) and bits below a block's alignment
        // (bit 16: nT) are not part of the output address.
        assert!(matches!(
            m.decode(3, 0xf << 48 | 0x5000 | 3),
            Descriptor::Leaf { addr: 0x5000, .. }
        ));
        assert!(matches!(
            m.decode(2, 0x4020_0000 | 1 << 16 | 1),
            Descriptor::Leaf {
                addr: 0x4020_0000,
                ..
            }
        ));
        // Table limits: APTable[1] forbids writes below, UXNTable
        // execution at EL0 only, PXNTable at EL1 only.
        assert!(matches!(
            m.decode(1, 0x7000 | 3 | AP_TABLE_RO | UXN_TABLE),
            Descriptor::Table { addr: 0x7000, allowed } if allowed == Perms::READ | Perms::USER | Perms::EXEC
        ));
        assert!(matches!(
            m.decode(1, 0x7000 | 3 | PXN_TABLE),
            Descriptor::Table { allowed, .. } if allowed == Perms::all() - Perms::EXEC
        ));
        // Read-only kernel data: AP = 0b10, UXN and PXN.
        assert!(matches!(
            m.decode(3, 0x9000 | 3 | AF | AP_RO | UXN | PXN),
            Descriptor::Leaf {
                perms: Perms::READ,
                ..
            }
        ));
    }

    /// Arm ARM `AArch64.S1DirectBasePermissions`: EL0-writable memory is
    /// never EL1-executable, UXN = 0 without EL0 access is execute-only
    /// at EL0, and APTable applies before that rule.
    #[test]
    fn rights_per_exception_level() {
        let m = Aarch64::LOWER_48;
        let rights = |perms: Perms| m.rights(perms, 0);
        // AP = 0b01 (EL0 read/write), PXN = UXN = 0.
        let r = rights(Aarch64::leaf_perms(AP_EL0));
        assert_eq!(
            (r.kernel, r.user),
            (Access::READ | Access::WRITE, Access::all())
        );
        // The same under APTable[0] (no EL0): EL1 may now execute it; EL0
        // still may execute (UXN = 0) but not read.
        let r = rights(Aarch64::leaf_perms(AP_EL0) - Perms::USER);
        assert_eq!((r.kernel, r.user), (Access::all(), Access::EXEC));
        // Kernel page, UXN = 0: execute-only at EL0.
        let r = rights(Aarch64::leaf_perms(AP_RO));
        assert_eq!(
            (r.kernel, r.user),
            (Access::READ | Access::EXEC, Access::EXEC)
        );
    }

    #[test]
    fn halves_and_levels() {
        let (lo, hi) = (Aarch64::LOWER_48, Aarch64::UPPER_48);
        assert_eq!(lo.linear(0x0000_ffff_ffff_f000), Some(0xffff_ffff_f000));
        assert_eq!(lo.linear(0xffff_0000_0000_0000), None);
        assert_eq!(hi.linear(0xffff_0000_0000_1000), Some(0x1000));
        assert_eq!(hi.canonical(0x1000), 0xffff_0000_0000_1000);
        assert_eq!(hi.linear_range(0, u64::MAX), Some((0, 0xffff_ffff_ffff)));
        assert_eq!(lo.linear_range(0, u64::MAX), Some((0, 0xffff_ffff_ffff)));
        let l39 = Aarch64::LOWER_39;
        assert_eq!((l39.levels(), l39.va_bits(), l39.shift(0)), (3, 39, 30));
        assert!(
            l39.leaf_allowed(0),
            "a 1 GiB block at the start level (level 1)"
        );
        assert_eq!(l39.level_name(0), "L1");
        assert!(!Aarch64::LOWER_48.leaf_allowed(0));
    }
}
