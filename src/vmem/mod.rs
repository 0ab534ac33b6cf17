//! The architecture-independent page-table core.
//!
//! Read tables with [`virt_to_phys`] (coalesced [`Mapping`]s),
//! [`translate`] (the chain of entries for one address) and
//! [`walk_va_spaces`] (several spaces, shared sub-tables found); compare
//! walks with [`reverse_map`] (who maps a physical range) and
//! [`diff_mappings`] (what changed); write them
//! with [`map`], [`unmap`], [`protect`] and [`space_aware_map`]. Tables are
//! reached only through [`TableReadOps`] / [`TableOps`]; the paging mode is
//! a [`crate::arch::PageTableFormat`] value chosen at run time.
//!
//! Nothing here panics on table contents: bad entries are errors that name
//! the level, table and index, and every walk is bounded by the entries it
//! reads.

mod buffer;
mod coalesce;
mod compare;
mod error;
mod mapping;
mod modify;
mod ops;
mod spaces;
mod translate;
mod walk;

pub use crate::arch::{Access, Flags, HumanBytes, PageSize, Perms, PhysAddr, Rights};
pub use buffer::{BufferError, BufferTables};
#[allow(deprecated)]
pub use coalesce::{virt_to_phys, virt_to_phys_in, VirtToPhys};
pub use compare::{diff_mappings, phys_overlap, reverse_map, ChangeKind, MappingChange};
pub use error::{AllocError, EntryLocation, MapError, MemoryError, WalkError};
pub use mapping::{BasicMapping, CowMapping, MapRequest, Mapping, MappingKind};
pub use modify::{map, protect, unmap};
pub use ops::{
    MayMoveTable, MayNotMoveTable, MoveInfo, RootedAt, TableMovability, TableOps, TableReadOps,
    Void,
};
#[allow(deprecated)]
pub use spaces::{
    space_aware_map, walk_va_spaces, walk_va_spaces_bounded, SpaceAwareMapping, SpaceId,
    SpaceReferenceMapping, SpaceWalk, SpaceWalks,
};
#[allow(deprecated)]
pub use translate::{
    translate, translate_addr, translate_in, translate_pa, TranslateFault, Translated, Translation,
    TranslationStep,
};

/// A raw page-table entry (4-byte formats zero-extend theirs).
pub type PageTableEntry = u64;
/// The size of the smallest page every supported format maps.
pub const PAGE_SIZE: usize = 4096;
/// The size of one page table in every supported format (4 KiB granule).
pub const PAGE_TABLE_SIZE: usize = 4096;
