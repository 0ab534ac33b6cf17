//! Walking several address spaces at once, with shared sub-tables found
//! at every depth, and rebuilding them (`space_aware_map`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::arch::PageTableFormat;

use super::coalesce::{Coalesce, Coalesced};
use super::error::{MapError, WalkError};
use super::mapping::Mapping;
use super::modify::link_table;
use super::ops::{TableOps, TableReadOps};
use super::translate::translate_from;
use super::walk::Walker;
use super::PhysAddr;

/// Names an address space: the physical address of its root table.
pub type SpaceId = u64;

/// A sub-tree of our space that is the same table as one reached earlier
/// from another space.
///
/// The table at `depth` (1 = a child of the root) covering `our_va` in our
/// space is the table at `depth` covering `their_va` in `space`; everything
/// below it is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceReferenceMapping {
    /// Depth from the root of the shared table (1-based).
    pub depth: usize,
    /// The owning space: the first root that reached the table.
    pub space: SpaceId,
    /// Start of the shared region in our space.
    pub our_va: u64,
    /// Start of the shared region in the owning space.
    pub their_va: u64,
}

/// One item of a multi-space walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceAwareMapping {
    /// A mapping that belongs to this space.
    ThisSpace(Mapping),
    /// A sub-tree shared with an earlier space.
    AnotherSpace(SpaceReferenceMapping),
}

/// What [`walk_va_spaces`] found in one space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceWalk {
    /// The space.
    pub space: SpaceId,
    /// Its mappings and aliases, in address order.
    pub mappings: Vec<SpaceAwareMapping>,
    /// Bad entries met on the way (the walk went on after each).
    pub errors: Vec<WalkError>,
}

/// Walk `roots` in order, one [`SpaceWalk`] per root as the iterator is
/// advanced. A table (below the root) that an earlier root already reached
/// at the same depth is reported as [`SpaceAwareMapping::AnotherSpace`] and
/// not walked again, so the result is topologically ordered: every
/// reference points to an earlier space. A table reached twice within one
/// space is walked both times.
///
/// Bound the work with [`SpaceWalks::with_budget`], as for
/// [`crate::vmem::virt_to_phys`].
pub fn walk_va_spaces<'a, F, O>(fmt: &'a F, op: &'a O, roots: &'a [SpaceId]) -> SpaceWalks<'a, F, O>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    SpaceWalks {
        fmt,
        op,
        roots: roots.iter(),
        owners: BTreeMap::new(),
        budget: u64::MAX,
    }
}

/// [`walk_va_spaces`] reading at most `budget` entries per space.
#[deprecated(note = "use `walk_va_spaces(..).with_budget(budget).collect()`")]
pub fn walk_va_spaces_bounded<F, O>(
    fmt: &F,
    op: &O,
    roots: &[SpaceId],
    budget: u64,
) -> Vec<SpaceWalk>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    walk_va_spaces(fmt, op, roots).with_budget(budget).collect()
}

/// The iterator returned by [`walk_va_spaces`]: one [`SpaceWalk`] per root.
pub struct SpaceWalks<'a, F: ?Sized, O> {
    fmt: &'a F,
    op: &'a O,
    roots: core::slice::Iter<'a, SpaceId>,
    /// (table, depth) -> (owning space, VA where it was first reached).
    owners: BTreeMap<(PhysAddr, usize), (SpaceId, u64)>,
    budget: u64,
}

impl<F: PageTableFormat + ?Sized, O: TableReadOps> SpaceWalks<'_, F, O> {
    /// Read at most `entries` table entries per space (a
    /// [`WalkError::BudgetExhausted`] in [`SpaceWalk::errors`] says a space
    /// was cut short).
    pub fn with_budget(mut self, entries: u64) -> Self {
        self.budget = entries;
        self
    }

    fn walk(&mut self, space: SpaceId) -> SpaceWalk {
        let owners = &self.owners;
        let mut first_seen = Vec::new();
        let mut walk = SpaceWalk {
            space,
            mappings: Vec::new(),
            errors: Vec::new(),
        };
        let claim = |depth: usize, table: PhysAddr, va: u64| {
            let shared = owners.contains_key(&(table, depth));
            if !shared {
                first_seen.push(((table, depth), va));
            }
            shared
        };
        let range = Some((0, self.fmt.linear_mask()));
        let mut walker = Walker::new(self.fmt, self.op, O::from_phys(space), range, claim);
        walker.set_budget(self.budget);
        for item in Coalesce::new(walker) {
            match item {
                Ok(Coalesced::Mapping(m)) => walk.mappings.push(SpaceAwareMapping::ThisSpace(m)),
                Ok(Coalesced::Shared { depth, table, va }) => {
                    if let Some(&(owner, their_va)) = owners.get(&(table, depth)) {
                        walk.mappings.push(SpaceAwareMapping::AnotherSpace(
                            SpaceReferenceMapping {
                                depth,
                                space: owner,
                                our_va: va,
                                their_va,
                            },
                        ));
                    }
                }
                Err(e) => walk.errors.push(e),
            }
        }
        for (key, va) in first_seen {
            self.owners.entry(key).or_insert((space, va));
        }
        walk
    }
}

impl<F: PageTableFormat + ?Sized, O: TableReadOps> Iterator for SpaceWalks<'_, F, O> {
    type Item = SpaceWalk;

    fn next(&mut self) -> Option<SpaceWalk> {
        let &space = self.roots.next()?;
        Some(self.walk(space))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.roots.size_hint()
    }
}

impl<F: PageTableFormat + ?Sized, O: TableReadOps> ExactSizeIterator for SpaceWalks<'_, F, O> {}

/// Rebuild an alias: make our space (`op.root_table()`) use, at
/// `reference.our_va` and `reference.depth`, the very table the owning
/// space's rebuilt tables have at `reference.their_va`.
/// `built_roots` maps each already-rebuilt space to its new root.
pub fn space_aware_map<F, O>(
    fmt: &F,
    op: &O,
    reference: &SpaceReferenceMapping,
    built_roots: &BTreeMap<SpaceId, O::TableAddr>,
) -> Result<(), MapError>
where
    F: PageTableFormat + ?Sized,
    O: TableOps,
{
    let owner_root = *built_roots
        .get(&reference.space)
        .ok_or(MapError::UnknownSpace {
            space: reference.space,
        })?;
    let missing = MapError::MissingTable {
        depth: reference.depth,
        va: reference.their_va,
    };
    let owner = translate_from(fmt, op, owner_root, reference.their_va);
    let table = owner.steps().get(reference.depth).ok_or(missing)?.at.table;
    link_table(fmt, op, reference.our_va, reference.depth, table)
}
