//! The entry layout all x86 paging modes share (Intel SDM vol. 3A §4.3,
//! §4.4, §4.5): bit 0 P, 1 R/W, 2 U/S, 3 PWT, 4 PCD, 5 A, 6 D (leaves),
//! 7 PS in directories / PAT in a 4 KiB PTE, 8 G (leaves), 9-11 ignored
//! (bit 11: our copy-on-write marker), 12 PAT in huge pages, 63 XD where
//! the mode has it. Only the address bits differ between modes.

use super::Descriptor;
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
/// Page size: this directory entry maps a huge page. In a PTE this bit is PAT.
pub const PAGE_PS: u64 = 1 << 7;
/// PAT bit of a 4 KiB PTE.
pub const PAGE_PAT_4K: u64 = 1 << 7;
/// Global (leaves only).
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// Software-available bit 11: copy-on-write marker.
pub const PAGE_COW: u64 = 1 << 11;
/// PAT bit of a huge page.
pub const PAGE_PAT_LARGE: u64 = 1 << 12;
/// Execute disable (PAE and IA-32e paging only).
pub const PAGE_NX: u64 = 1 << 63;

/// The attribute bits of an x86 mode: whether it has XD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Codec {
    pub nx: bool,
}

impl Codec {
    /// The rights one entry grants (READ always; EXEC unless XD).
    #[inline]
    pub(crate) fn perms(self, raw: u64) -> Perms {
        let mut perms = Perms::READ;
        perms.set(Perms::WRITE, raw & PAGE_RW != 0);
        perms.set(Perms::USER, raw & PAGE_USER != 0);
        perms.set(Perms::EXEC, !self.nx || raw & PAGE_NX == 0);
        perms
    }

    /// The attributes of a leaf whose PAT bit is `pat`.
    #[inline]
    pub(crate) fn flags(self, raw: u64, pat: u64) -> Flags {
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
        flags
    }

    /// Present bit, rights and attributes of a leaf (no address, no PS).
    pub(crate) fn leaf_bits(self, perms: Perms, flags: Flags, pat: u64) -> u64 {
        let mut raw = PAGE_PRESENT;
        for (on, bit) in [
            (perms.contains(Perms::WRITE), PAGE_RW),
            (perms.contains(Perms::USER), PAGE_USER),
            (self.nx && !perms.contains(Perms::EXEC), PAGE_NX),
            (flags.contains(Flags::GLOBAL), PAGE_GLOBAL),
            (flags.contains(Flags::ACCESSED), PAGE_ACCESSED),
            (flags.contains(Flags::DIRTY), PAGE_DIRTY),
            (flags.contains(Flags::WRITE_THROUGH), PAGE_PWT),
            (flags.contains(Flags::CACHE_DISABLE), PAGE_PCD),
            (flags.contains(Flags::PAT), pat),
            (flags.contains(Flags::COW), PAGE_COW),
        ] {
            if on {
                raw |= bit;
            }
        }
        raw
    }

    /// An entry that lets every right through.
    pub(crate) fn relax(self, raw: u64) -> u64 {
        let raw = raw | PAGE_RW | PAGE_USER;
        if self.nx {
            raw & !PAGE_NX
        } else {
            raw
        }
    }

    /// An entry that lets through no more than `allowed`.
    pub(crate) fn restrict(self, mut raw: u64, allowed: Perms) -> u64 {
        if !allowed.contains(Perms::WRITE) {
            raw &= !PAGE_RW;
        }
        if !allowed.contains(Perms::USER) {
            raw &= !PAGE_USER;
        }
        if self.nx && !allowed.contains(Perms::EXEC) {
            raw |= PAGE_NX;
        }
        raw
    }

    /// Decode an entry. `last`: the level maps 4 KiB pages; `huge`: a
    /// directory entry here may map a huge page of `span` bytes; `addr_mask`:
    /// the mode's physical-address bits.
    #[inline]
    pub(crate) fn decode(
        self,
        raw: u64,
        last: bool,
        huge: bool,
        span: u64,
        addr_mask: u64,
    ) -> Descriptor {
        if raw & PAGE_PRESENT == 0 {
            return Descriptor::Invalid;
        }
        let pat = if last { PAGE_PAT_4K } else { PAGE_PAT_LARGE };
        if !last && raw & PAGE_PS == 0 {
            return Descriptor::Table {
                addr: raw & addr_mask,
                allowed: self.perms(raw),
            };
        }
        if !huge && !last {
            return Descriptor::Reserved;
        }
        if raw & addr_mask & (span - 1) & !pat != 0 {
            // Address bits below the huge page's alignment are reserved.
            return Descriptor::Reserved;
        }
        Descriptor::Leaf {
            addr: raw & addr_mask & !(span - 1),
            perms: self.perms(raw),
            flags: self.flags(raw, pat),
        }
    }

    /// Encode a leaf (a huge page unless `last`).
    pub(crate) fn encode(
        self,
        last: bool,
        addr: PhysAddr,
        addr_mask: u64,
        perms: Perms,
        flags: Flags,
    ) -> u64 {
        let pat = if last { PAGE_PAT_4K } else { PAGE_PAT_LARGE };
        let ps = if last { 0 } else { PAGE_PS };
        self.leaf_bits(perms, flags, pat) | ps | (addr & addr_mask)
    }

    /// Rights a mode can express: READ always, EXEC always without XD.
    pub(crate) fn representable(self, perms: Perms) -> Perms {
        if self.nx {
            perms | Perms::READ
        } else {
            perms | Perms::READ | Perms::EXEC
        }
    }
}

/// Attributes every x86 mode can express.
pub(crate) const FLAGS: Flags = Flags::GLOBAL
    .union(Flags::ACCESSED)
    .union(Flags::DIRTY)
    .union(Flags::WRITE_THROUGH)
    .union(Flags::CACHE_DISABLE)
    .union(Flags::PAT)
    .union(Flags::COW);
