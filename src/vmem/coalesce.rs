//! Coalescing walker output into [`Mapping`]s, and `virt_to_phys`.

use alloc::boxed::Box;

use crate::arch::PageTableFormat;

use super::error::WalkError;
use super::mapping::{Mapping, MappingKind};
use super::ops::TableReadOps;
use super::translate::{walk_one, TranslateFault};
use super::walk::{Leaf, WalkEvent, Walker};
use super::PhysAddr;
use crate::arch::{Flags, PageSize, Perms};

impl From<Leaf> for Mapping {
    #[inline]
    fn from(leaf: Leaf) -> Mapping {
        Mapping {
            phys_base: leaf.pa,
            virt_base: leaf.va,
            len: leaf.size,
            kind: MappingKind::from_perms(leaf.perms, leaf.flags.contains(Flags::COW)),
            user_accessible: leaf.perms.contains(Perms::USER),
            flags: leaf.flags.difference(Flags::COW),
            page_size: PageSize(1 << leaf.page_shift),
            rights: leaf.rights,
        }
    }
}

/// A coalesced item: a run of leaves, or a table the alias hook claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coalesced {
    Mapping(Mapping),
    Shared {
        depth: usize,
        table: PhysAddr,
        va: u64,
    },
}

/// Merges neighbouring leaves that continue each other into one mapping.
/// Anything else (errors, shared tables) ends the current run and is passed
/// through in address order.
pub(crate) struct Coalesce<I> {
    inner: I,
    /// The run being built: its first leaf, grown to the run's length
    /// (every leaf of a run has the first one's attributes).
    pending: Option<Leaf>,
    stashed: Option<Result<WalkEvent, WalkError>>,
}

/// Whether `next` continues `run`.
#[inline]
fn continues(run: &Leaf, next: &Leaf) -> bool {
    run.va.checked_add(run.size) == Some(next.va)
        && run.pa.checked_add(run.size) == Some(next.pa)
        && (run.page_shift, run.perms, run.flags, run.rights)
            == (next.page_shift, next.perms, next.flags, next.rights)
}

impl<I> Coalesce<I> {
    pub(crate) fn new(inner: I) -> Self {
        Coalesce {
            inner,
            pending: None,
            stashed: None,
        }
    }
}

impl<I: Iterator<Item = Result<WalkEvent, WalkError>>> Iterator for Coalesce<I> {
    type Item = Result<Coalesced, WalkError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(event) = self.stashed.take().or_else(|| self.inner.next()) else {
                return self
                    .pending
                    .take()
                    .map(|run| Ok(Coalesced::Mapping(run.into())));
            };
            match event {
                Ok(WalkEvent::Leaf(leaf)) => match &mut self.pending {
                    Some(run) if continues(run, &leaf) => run.size += leaf.size,
                    Some(run) => {
                        let done = core::mem::replace(run, leaf);
                        return Some(Ok(Coalesced::Mapping(done.into())));
                    }
                    None => self.pending = Some(leaf),
                },
                other => {
                    if let Some(run) = self.pending.take() {
                        self.stashed = Some(other);
                        return Some(Ok(Coalesced::Mapping(run.into())));
                    }
                    return Some(other.map(|event| match event {
                        WalkEvent::Leaf(leaf) => Coalesced::Mapping(leaf.into()),
                        WalkEvent::Shared { depth, table, va } => {
                            Coalesced::Shared { depth, table, va }
                        }
                    }));
                }
            }
        }
    }
}

type NoAliases = fn(usize, PhysAddr, u64) -> bool;

fn no_aliases(_depth: usize, _table: PhysAddr, _va: u64) -> bool {
    false
}

/// The iterator returned by [`virt_to_phys`].
pub struct VirtToPhys<'a, F: ?Sized, O: TableReadOps> {
    source: Source<'a, F, O>,
}

enum Source<'a, F: ?Sized, O: TableReadOps> {
    /// The walker, for ranges of more than one page (boxed: it is large,
    /// and a one-page query should not carry it around).
    Walk(Box<Coalesce<Walker<'a, F, O, NoAliases>>>),
    /// A range inside one smallest page: it meets at most one leaf, found
    /// by translating its address (what the walker would read, without
    /// its set-up).
    Page {
        fmt: &'a F,
        op: &'a O,
        root: O::TableAddr,
        va: u64,
        budget: u64,
        visited: u64,
        done: bool,
    },
}

impl<F: PageTableFormat + ?Sized, O: TableReadOps> VirtToPhys<'_, F, O> {
    /// Stop with [`WalkError::BudgetExhausted`] after reading `entries`
    /// table entries.
    pub fn with_budget(mut self, entries: u64) -> Self {
        match &mut self.source {
            Source::Walk(walk) => walk.inner.set_budget(entries),
            Source::Page { budget, .. } => *budget = entries,
        }
        self
    }

    /// Table entries read so far.
    pub fn entries_visited(&self) -> u64 {
        match &self.source {
            Source::Walk(walk) => walk.inner.visited(),
            Source::Page { visited, .. } => *visited,
        }
    }
}

impl<F: PageTableFormat + ?Sized, O: TableReadOps> Iterator for VirtToPhys<'_, F, O> {
    type Item = Result<Mapping, WalkError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (fmt, op, root, va, budget, visited, done) = match &mut self.source {
            Source::Walk(walk) => loop {
                return match walk.next()? {
                    Ok(Coalesced::Mapping(m)) => Some(Ok(m)),
                    // The hook never claims a table, so nothing is shared.
                    Ok(Coalesced::Shared { .. }) => continue,
                    Err(e) => Some(Err(e)),
                };
            },
            Source::Page {
                fmt,
                op,
                root,
                va,
                budget,
                visited,
                done,
            } => (*fmt, *op, *root, *va, *budget, visited, done),
        };
        if core::mem::replace(done, true) {
            return None;
        }
        let result = walk_one(fmt, op, root, va, |_| {});
        // Entries read: down to the leaf or the entry at fault.
        let steps = match &result {
            Ok(t) => t.level as u64 + 1,
            Err(
                TranslateFault::NotPresent(at)
                | TranslateFault::Reserved { at, .. }
                | TranslateFault::Unreadable(at),
            ) => at.level as u64 + 1,
            Err(TranslateFault::NonCanonical { .. }) => 0,
        };
        *visited = steps.min(budget);
        if steps > budget {
            return Some(Err(WalkError::BudgetExhausted { visited: budget }));
        }
        match result {
            Ok(t) => {
                let size = t.page_size.bytes();
                let offset = va & (size - 1);
                Some(Ok(Mapping::from(Leaf {
                    va: va - offset,
                    pa: t.pa - offset,
                    size,
                    page_shift: size.trailing_zeros() as u8,
                    perms: t.perms,
                    flags: t.flags,
                    rights: t.rights,
                })))
            }
            Err(TranslateFault::Reserved { at, raw, bits }) => {
                Some(Err(WalkError::Reserved { at, raw, bits }))
            }
            Err(TranslateFault::Unreadable(at)) => Some(Err(WalkError::Unreadable(at))),
            Err(TranslateFault::NotPresent(_) | TranslateFault::NonCanonical { .. }) => None,
        }
    }
}

/// The coalesced mappings covering `va .. va + len` in the space rooted at
/// `op.root_table()`, in address order.
///
/// Non-canonical parts of the range are skipped; a range running past
/// 2^64 is cut there. Bad entries come out as `Err` items and the walk goes
/// on after them. Mappings are whole leaves: the first and last may start
/// before `va` or end after `va + len`.
pub fn virt_to_phys<'a, F: PageTableFormat + ?Sized, O: TableReadOps>(
    fmt: &'a F,
    op: &'a O,
    va: u64,
    len: u64,
) -> VirtToPhys<'a, F, O> {
    virt_to_phys_from(fmt, op, op.root_table(), va, len)
}

/// [`virt_to_phys`] in the space rooted at `root`.
#[deprecated(
    since = "0.2.0",
    note = "use virt_to_phys(fmt, &op.rooted_at(root), va, len): one root convention"
)]
#[inline]
pub fn virt_to_phys_in<'a, F: PageTableFormat + ?Sized, O: TableReadOps>(
    fmt: &'a F,
    op: &'a O,
    root: O::TableAddr,
    va: u64,
    len: u64,
) -> VirtToPhys<'a, F, O> {
    virt_to_phys_from(fmt, op, root, va, len)
}

/// [`virt_to_phys`] from an explicit root (the walker's own entry point).
#[inline]
fn virt_to_phys_from<'a, F: PageTableFormat + ?Sized, O: TableReadOps>(
    fmt: &'a F,
    op: &'a O,
    root: O::TableAddr,
    va: u64,
    len: u64,
) -> VirtToPhys<'a, F, O> {
    let last = va.checked_add(len.wrapping_sub(1));
    let source = match last {
        Some(last) if len > 0 && va >> 12 == last >> 12 => Source::Page {
            fmt,
            op,
            root,
            va,
            budget: u64::MAX,
            visited: 0,
            done: false,
        },
        _ => {
            let range = match len {
                0 => None,
                _ => fmt.linear_range(va, va.saturating_add(len - 1)),
            };
            Source::Walk(Box::new(Coalesce::new(Walker::new(
                fmt,
                op,
                root,
                range,
                no_aliases as NoAliases,
            ))))
        }
    };
    VirtToPhys { source }
}
