//! The vocabulary every architecture describes its entries in: rights
//! (`Perms`, `Access`, `Rights`), attributes (`Flags`), page sizes and
//! physical addresses. It sits at the bottom: the formats in this module's
//! siblings and the walker in `vmem` both build on it.

use core::fmt;

/// A guest-physical address.
pub type PhysAddr = u64;

bitflags::bitflags! {
    /// Access rights of a page (or the rights a table entry lets through),
    /// as its entries grant them.
    ///
    /// For a leaf these are the rights after combining every level of the
    /// walk: x86 ANDs writable and user and ORs no-execute; Arm applies
    /// APTable, PXNTable and UXNTable. What each privilege level may then
    /// do, with the CPU's controls (x86 WP, SMEP, SMAP, keys; Arm's rule
    /// that EL0-writable memory is never EL1-executable), is
    /// [`crate::arch::PageTableFormat::rights`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Perms: u8 {
        /// Data reads are allowed (always set for present x86 pages).
        const READ = 1 << 0;
        /// Data writes are allowed.
        const WRITE = 1 << 1;
        /// The privileged level (x86 CPL 0, Arm EL1) may fetch
        /// instructions (x86: no XD; Arm: no PXN / PXNTable).
        const EXEC = 1 << 2;
        /// The less privileged level (x86 CPL 3, Arm EL0) may access the page.
        const USER = 1 << 3;
        /// The less privileged level may fetch instructions (x86: no XD,
        /// and the page is [`Perms::USER`]; Arm: no UXN / UXNTable).
        const USER_EXEC = 1 << 4;
    }
}

bitflags::bitflags! {
    /// What one privilege level may do with a page.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Access: u8 {
        /// Data reads.
        const READ = 1 << 0;
        /// Data writes.
        const WRITE = 1 << 1;
        /// Instruction fetches.
        const EXEC = 1 << 2;
    }
}

/// The effective rights of a page at both privilege levels, as the MMU
/// checks them: entries, table limits and the CPU's controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights {
    /// x86 CPL 0 (supervisor), Arm EL1.
    pub kernel: Access,
    /// x86 CPL 3 (user), Arm EL0.
    pub user: Access,
}

impl fmt::Display for Access {
    /// `rwx`, with `-` for each missing right.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bit = |a: Access, c: char| if self.contains(a) { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            bit(Access::READ, 'r'),
            bit(Access::WRITE, 'w'),
            bit(Access::EXEC, 'x')
        )
    }
}

impl fmt::Display for Rights {
    /// `kernel rwx user r-x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel {} user {}", self.kernel, self.user)
    }
}

bitflags::bitflags! {
    /// Attributes of a leaf entry other than access rights.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Flags: u16 {
        /// The translation is global: not flushed on an address-space switch
        /// (x86 G; Arm without nG).
        const GLOBAL = 1 << 0;
        /// The CPU has used this entry (x86 A, Arm AF).
        const ACCESSED = 1 << 1;
        /// The CPU has written through this entry (x86 D).
        const DIRTY = 1 << 2;
        /// Write-through caching (x86 PWT).
        const WRITE_THROUGH = 1 << 3;
        /// Caching disabled (x86 PCD).
        const CACHE_DISABLE = 1 << 4;
        /// The PAT index bit (x86 PAT, bit 7 of a 4 KiB PTE, bit 12 of a huge page).
        const PAT = 1 << 5;
        /// Copy-on-write: read-only now, marked by a software-available bit.
        const COW = 1 << 6;
        /// Arm contiguous hint.
        const CONTIGUOUS = 1 << 7;
        /// The leaf was reached through a table entry that points back to
        /// a table on its own path (a recursive "self-map"): what it maps
        /// are page tables.
        const SELF_MAP = 1 << 8;
    }
}

/// The size of the region one leaf entry maps, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageSize(pub u64);

impl PageSize {
    /// A 4 KiB page.
    pub const SIZE_4K: PageSize = PageSize(1 << 12);
    /// A 2 MiB huge page (x86 PD leaf, Arm level-2 block).
    pub const SIZE_2M: PageSize = PageSize(1 << 21);
    /// A 4 MiB huge page (i686 PSE).
    pub const SIZE_4M: PageSize = PageSize(1 << 22);
    /// A 1 GiB huge page (x86 PDPT leaf, Arm level-1 block).
    pub const SIZE_1G: PageSize = PageSize(1 << 30);
    /// As an upper bound for [`crate::vmem::map`]: any size the architecture offers.
    pub const LARGEST: PageSize = PageSize(u64::MAX);

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PageSize::LARGEST {
            return f.write_str("any");
        }
        fmt::Display::fmt(&HumanBytes(self.0), f)
    }
}

/// Formats a byte count in the largest binary unit that divides it (`4K`,
/// `2M`, `1G`, `1.5G` is printed as `1536M`).
#[derive(Debug, Clone, Copy)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 6] = [
            (60, "E"),
            (50, "P"),
            (40, "T"),
            (30, "G"),
            (20, "M"),
            (10, "K"),
        ];
        for (shift, unit) in UNITS {
            let unit_bytes = 1u64 << shift;
            if self.0 >= unit_bytes && self.0.is_multiple_of(unit_bytes) {
                return write!(f, "{}{}", self.0 >> shift, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Perms {
    /// Whether the level that owns the page may execute it: the user level
    /// ([`Perms::USER_EXEC`]) for user pages, else the privileged level
    /// ([`Perms::EXEC`]).
    #[inline]
    pub fn owner_executable(self) -> bool {
        if self.contains(Perms::USER) {
            self.contains(Perms::USER_EXEC)
        } else {
            self.contains(Perms::EXEC)
        }
    }
}

impl fmt::Display for Perms {
    /// `rwxu`, with `-` for each missing right (`x`: executable by the
    /// level that owns the page, see [`Perms::owner_executable`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bit = |p: Perms, c: char| if self.contains(p) { c } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            bit(Perms::READ, 'r'),
            bit(Perms::WRITE, 'w'),
            if self.owner_executable() { 'x' } else { '-' },
            bit(Perms::USER, 'u')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn human_units() {
        assert_eq!(HumanBytes(4096).to_string(), "4K");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1536M");
        assert_eq!(HumanBytes(1 << 39).to_string(), "512G");
        assert_eq!(HumanBytes(100).to_string(), "100");
        assert_eq!(PageSize::SIZE_1G.to_string(), "1G");
    }

    #[test]
    fn perms_display() {
        assert_eq!((Perms::READ | Perms::USER).to_string(), "r--u");
    }
}
