//! Architecture descriptions.
//!
//! Each paging mode describes its levels (which virtual-address bits index
//! each table, which levels may hold leaves) and how one entry encodes and
//! decodes. The walker, `map`, `unmap`, `protect` and the multi-space walk in
//! [`crate::vmem`] are written once against [`PageTableFormat`].
//!
//! Levels count from the root: level 0 is the root table (PML4 or PML5 on
//! amd64), level `levels() - 1` holds the smallest pages.
//!
//! Virtual addresses are handled as *linear* offsets: the canonical address
//! with its sign-extension bits removed, so that the two halves of an x86
//! address space form one contiguous range `0 .. 2^va_bits`.

pub mod aarch64;
pub mod amd64;
mod attributes;
pub mod controls;
pub mod i686;
mod x86;

pub use aarch64::{Aarch64, Half};
pub use amd64::Amd64;
pub use i686::I686;
pub use x86::X86Cpu;

pub use attributes::{Access, Flags, HumanBytes, PageSize, Perms, PhysAddr, Rights};

/// Deepest supported table hierarchy (amd64 LA57).
pub const MAX_LEVELS: usize = 5;

/// One decoded entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// Not present: accesses through it fault.
    Invalid,
    /// Present, but with bits set that are reserved at this level: an
    /// access through it faults (x86: #PF with the RSVD flag).
    Reserved {
        /// The offending bits.
        bits: u64,
    },
    /// Points to a next-level table.
    Table {
        /// Physical address of the table.
        addr: PhysAddr,
        /// Rights this entry lets through to everything below it.
        allowed: Perms,
    },
    /// Maps a page (or a huge page / block).
    Leaf {
        /// Physical address of the page.
        addr: PhysAddr,
        /// The entry's own rights.
        perms: Perms,
        /// Its other attributes, including [`Flags::COW`].
        flags: Flags,
    },
}

/// A paging mode: the shape of its tables and the meaning of their bits.
pub trait PageTableFormat {
    /// Number of table levels.
    fn levels(&self) -> usize;

    /// Number of significant virtual-address bits.
    fn va_bits(&self) -> u32;

    /// Whether addresses are sign-extended from bit `va_bits - 1` (x86-64).
    fn sign_extended(&self) -> bool;

    /// Lowest virtual-address bit that indexes a table at `level`; one entry
    /// there covers `1 << shift(level)` bytes.
    fn shift(&self, level: usize) -> u32;

    /// Number of virtual-address bits that index a table at `level`.
    fn index_bits(&self, level: usize) -> u32;

    /// Whether an entry at `level` may map a page directly.
    fn leaf_allowed(&self, level: usize) -> bool;

    /// The largest physical address (exclusive) an entry can encode.
    fn phys_limit(&self) -> u64;

    /// Bytes per entry (8, or 4 for 32-bit paging without PAE).
    fn entry_size(&self) -> u64 {
        8
    }

    /// Attributes this mode can store in an entry; `map` drops the rest.
    fn supported_flags(&self) -> Flags;

    /// The rights an entry ends up granting when `perms` are asked for
    /// (x86 pages are always readable; without XD always executable).
    fn representable(&self, perms: Perms) -> Perms {
        perms | Perms::READ
    }

    /// What the privileged level (x86 CPL 0, Arm EL1) and the user level
    /// (CPL 3, EL0) may do with a page whose entries grant `perms` (the
    /// leaf's rights with every table's limits applied), mapped by the
    /// leaf entry `leaf`. The default: the user level needs
    /// [`Perms::USER`] and executes where [`Perms::USER_EXEC`] allows.
    fn rights(&self, perms: Perms, leaf: u64) -> Rights {
        let _ = leaf;
        let mut kernel = Access::READ;
        kernel.set(Access::WRITE, perms.contains(Perms::WRITE));
        kernel.set(Access::EXEC, perms.contains(Perms::EXEC));
        let mut user = Access::empty();
        if perms.contains(Perms::USER) {
            user = Access::READ;
            user.set(Access::WRITE, perms.contains(Perms::WRITE));
            user.set(Access::EXEC, perms.contains(Perms::USER_EXEC));
        }
        Rights { kernel, user }
    }

    /// The protection key of the leaf entry `leaf`, where the mode checks
    /// one (x86 CR4.PKE).
    fn protection_key(&self, leaf: u64) -> Option<u8> {
        let _ = leaf;
        None
    }

    /// The bits of a leaf at `level` that hold its output address, such
    /// that two leaves differing only there decode alike (the walker then
    /// reads a run of leaves without decoding each one); 0 where the mode
    /// cannot say, and every entry is decoded.
    fn leaf_address_mask(&self, level: usize) -> u64 {
        let _ = level;
        0
    }

    /// Decode a raw entry found at `level`.
    fn decode(&self, level: usize, raw: u64) -> Descriptor;

    /// Encode a leaf at `level` (which must allow leaves).
    fn encode_leaf(&self, level: usize, addr: PhysAddr, perms: Perms, flags: Flags) -> u64;

    /// Encode an entry pointing to a table, letting every right through.
    fn encode_table(&self, level: usize, addr: PhysAddr) -> u64;

    /// A table entry at `level` changed so that it lets every right through.
    fn relax_table(&self, level: usize, raw: u64) -> u64;

    /// A present entry at `level` (leaf or table) changed so that it lets
    /// through no more than `allowed`.
    fn restrict(&self, level: usize, raw: u64, allowed: Perms) -> u64;

    /// A table entry at `level` changed to point to `addr`, all else kept.
    fn with_table_addr(&self, level: usize, raw: u64, addr: PhysAddr) -> u64;

    /// Short name of the table at `level` (e.g. `PML4`), for people.
    fn level_name(&self, level: usize) -> &'static str;

    /// Bytes covered by one entry at `level`.
    #[inline]
    fn entry_span(&self, level: usize) -> u64 {
        1u64 << self.shift(level)
    }

    /// Number of entries in a table at `level`.
    #[inline]
    fn entries(&self, level: usize) -> u64 {
        1u64 << self.index_bits(level)
    }

    /// The mask of linear addresses.
    #[inline]
    fn linear_mask(&self) -> u64 {
        if self.va_bits() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.va_bits()) - 1
        }
    }

    /// The canonical virtual address of a linear offset.
    fn canonical(&self, lin: u64) -> u64 {
        let bits = self.va_bits();
        if self.sign_extended() && bits < 64 {
            let unused = 64 - bits;
            (((lin << unused) as i64) >> unused) as u64
        } else {
            lin
        }
    }

    /// The linear offset of a canonical virtual address, `None` when `va` is
    /// not canonical (outside the address space).
    #[inline]
    fn linear(&self, va: u64) -> Option<u64> {
        let lin = va & self.linear_mask();
        (self.canonical(lin) == va).then_some(lin)
    }

    /// The linear offsets of the canonical addresses in `first ..= last`,
    /// as one inclusive range, or `None` when there are none.
    fn linear_range(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        if first > last {
            return None;
        }
        let mask = self.linear_mask();
        let lo = match self.linear(first) {
            Some(lin) => lin,
            // In the hole (or above a 32-bit space): the next canonical
            // address, if the range reaches it, is the upper half's start.
            None if self.sign_extended() => {
                let upper = self.canonical((mask >> 1) + 1);
                if first > upper || last < upper {
                    return None;
                }
                (mask >> 1) + 1
            }
            None => return None,
        };
        let hi = match self.linear(last) {
            Some(lin) => lin,
            None if self.sign_extended() && last < self.canonical((mask >> 1) + 1) => mask >> 1,
            None => mask,
        };
        (lo <= hi).then_some((lo, hi))
    }
}
