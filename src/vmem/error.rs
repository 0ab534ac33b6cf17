//! Error types. Every variant names the address, level or entry at fault.

use core::fmt;

use super::PhysAddr;

/// An accessor could not reach memory at a physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError {
    /// The physical address that is not backed by memory.
    pub addr: PhysAddr,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no memory at physical address {:#x}", self.addr)
    }
}

/// An accessor could not allocate a page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// The pool tables come from is used up.
    PoolExhausted,
    /// There is no pool to allocate tables from.
    NoPool,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::PoolExhausted => f.write_str("the page-table pool is exhausted"),
            AllocError::NoPool => f.write_str("no page-table pool is configured"),
        }
    }
}

/// Where in the tables something went wrong: the level (0 = root), the
/// table's physical address and the entry index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLocation {
    /// Level of the table, 0 being the root.
    pub level: usize,
    /// Physical address of the table.
    pub table: PhysAddr,
    /// Index of the entry in the table.
    pub index: u64,
}

impl fmt::Display for EntryLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {} table {:#x} entry {}",
            self.level, self.table, self.index
        )
    }
}

/// A problem met while walking tables. A walk reports it and goes on with
/// the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalkError {
    /// The entry could not be read: its table is outside memory.
    Unreadable(EntryLocation),
    /// The entry sets bits that are reserved at this level (e.g. a huge
    /// page where the CPU offers none, an address beyond MAXPHYADDR, XD
    /// without EFER.NXE): the MMU faults on it.
    Reserved {
        /// The entry.
        at: EntryLocation,
        /// Its raw value.
        raw: u64,
        /// The offending bits.
        bits: u64,
    },
    /// The walk read as many entries as it was allowed to and stopped.
    BudgetExhausted {
        /// Entries read.
        visited: u64,
    },
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Unreadable(at) => write!(f, "{at}: table is outside memory"),
            WalkError::Reserved { at, raw, bits } => {
                write!(f, "{at}: reserved bits {bits:#x} set in entry {raw:#018x}")
            }
            WalkError::BudgetExhausted { visited } => {
                write!(f, "walk stopped after reading {visited} entries")
            }
        }
    }
}

/// Why `map`, `unmap`, `protect` or `space_aware_map` refused or failed.
///
/// Input errors are found before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapError {
    /// Length zero.
    Empty {
        /// Start of the range.
        va: u64,
    },
    /// An address or length is not a multiple of the smallest page.
    Misaligned {
        /// Virtual start.
        va: u64,
        /// Physical start (0 for operations without one).
        pa: u64,
        /// Length.
        len: u64,
    },
    /// `va + len` or `pa + len` passes the end of the address space.
    Overflow {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The virtual range is not canonical or crosses the non-canonical hole.
    NonCanonical {
        /// The offending virtual address.
        va: u64,
    },
    /// The physical range is beyond what entries can encode.
    PhysTooLarge {
        /// The offending physical address.
        pa: u64,
    },
    /// The requested kind cannot be written by this operation (e.g.
    /// `protect` to `Unmapped`).
    BadKind,
    /// The architecture has no leaf size at or below the requested limit
    /// that fits.
    PageSizeUnsupported {
        /// The requested limit.
        size: u64,
    },
    /// An existing entry could not be read or is invalid.
    Walk(WalkError),
    /// An entry could not be written.
    Unwritable(EntryLocation),
    /// A new table was needed but none could be allocated.
    Alloc {
        /// Level the table was needed for.
        level: usize,
        /// Why allocation failed.
        cause: AllocError,
    },
    /// `space_aware_map`: the referenced space was not rebuilt yet.
    UnknownSpace {
        /// The space.
        space: u64,
    },
    /// `space_aware_map`: the owner has no table at that depth and VA.
    MissingTable {
        /// Depth asked for.
        depth: usize,
        /// VA in the owner's space.
        va: u64,
    },
}

impl From<WalkError> for MapError {
    fn from(e: WalkError) -> Self {
        MapError::Walk(e)
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Empty { va } => write!(f, "empty range at {va:#x}"),
            MapError::Misaligned { va, pa, len } => write!(
                f,
                "va {va:#x}, pa {pa:#x} and length {len:#x} must be multiples of 4 KiB"
            ),
            MapError::Overflow { base, len } => {
                write!(f, "{base:#x} + {len:#x} overflows the address space")
            }
            MapError::NonCanonical { va } => {
                write!(f, "{va:#x} is not canonical or the range crosses the hole")
            }
            MapError::PhysTooLarge { pa } => {
                write!(f, "physical address {pa:#x} cannot be encoded in an entry")
            }
            MapError::BadKind => f.write_str("this operation cannot write that kind"),
            MapError::PageSizeUnsupported { size } => {
                write!(f, "no leaf page size up to {size:#x} fits")
            }
            MapError::Walk(e) => write!(f, "{e}"),
            MapError::Unwritable(at) => write!(f, "{at}: cannot write the entry"),
            MapError::Alloc { level, cause } => {
                write!(f, "cannot allocate a level-{level} table: {cause}")
            }
            MapError::UnknownSpace { space } => write!(f, "space {space:#x} was not built yet"),
            MapError::MissingTable { depth, va } => {
                write!(f, "owner has no depth-{depth} table at {va:#x}")
            }
        }
    }
}

impl core::error::Error for MemoryError {}
impl core::error::Error for AllocError {}
impl core::error::Error for WalkError {}

/// A `MapError` prints its cause in its own message (a walk's fault, an
/// allocator's refusal), so `source()` returns none: an error chain
/// prints each cause once.
impl core::error::Error for MapError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use core::error::Error;

    #[test]
    fn a_map_error_prints_its_cause_once() {
        let at = EntryLocation {
            level: 1,
            table: 0x5000,
            index: 7,
        };
        let err = MapError::from(WalkError::Unreadable(at));
        assert_eq!(err.to_string(), WalkError::Unreadable(at).to_string());
        assert!(err.source().is_none());
        let alloc = MapError::Alloc {
            level: 2,
            cause: AllocError::PoolExhausted,
        };
        assert!(alloc
            .to_string()
            .contains(&AllocError::PoolExhausted.to_string()));
        assert!(alloc.source().is_none());
    }
}
