//! Translating one virtual address, with the whole chain of entries.

use core::fmt;

use crate::arch::{Descriptor, Flags, PageSize, PageTableFormat, Perms, Rights, MAX_LEVELS};

use super::error::EntryLocation;
use super::ops::TableReadOps;
use super::walk::read_raw;
use super::PhysAddr;

/// One level of a translation: the entry read and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslationStep {
    /// Where the entry is (level, table PA, index).
    pub at: EntryLocation,
    /// Its raw value.
    pub raw: u64,
    /// Its meaning at this level.
    pub descriptor: Descriptor,
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translated {
    /// The physical address.
    pub pa: PhysAddr,
    /// Level of the leaf entry.
    pub level: usize,
    /// Size of the page holding the address.
    pub page_size: PageSize,
    /// Rights across all levels, as the entries grant them.
    pub perms: Perms,
    /// What each privilege level may do, with the CPU's controls (x86
    /// CR0.WP, SMEP, SMAP, protection keys; Arm's EL0-writable rule).
    pub rights: Rights,
    /// The leaf's protection key, where the mode checks one.
    pub protection_key: Option<u8>,
    /// The leaf's other attributes ([`Flags::SELF_MAP`] when a table
    /// entry on the way pointed back to a table on the path).
    pub flags: Flags,
}

/// Why a translation stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranslateFault {
    /// The address is outside the canonical address space.
    NonCanonical {
        /// The address.
        va: u64,
    },
    /// This entry is not present.
    NotPresent(EntryLocation),
    /// This entry has reserved bits set (x86: #PF with RSVD).
    Reserved {
        /// The entry.
        at: EntryLocation,
        /// Its raw value.
        raw: u64,
        /// The offending bits.
        bits: u64,
    },
    /// This entry's table is outside memory.
    Unreadable(EntryLocation),
}

impl fmt::Display for TranslateFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateFault::NonCanonical { va } => write!(f, "{va:#x} is not canonical"),
            TranslateFault::NotPresent(at) => write!(f, "{at}: not present"),
            TranslateFault::Reserved { at, raw, bits } => {
                write!(f, "{at}: reserved bits {bits:#x} set in entry {raw:#018x}")
            }
            TranslateFault::Unreadable(at) => write!(f, "{at}: table is outside memory"),
        }
    }
}

impl core::error::Error for TranslateFault {}

/// A translation with every entry read on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    steps: [TranslationStep; MAX_LEVELS],
    len: usize,
    /// The outcome.
    pub result: Result<Translated, TranslateFault>,
}

impl Translation {
    /// The entries read, root first.
    pub fn steps(&self) -> &[TranslationStep] {
        &self.steps[..self.len]
    }
}

/// Walks one address, handing every entry read to `on_step`.
#[inline(always)]
pub(crate) fn walk_one<F, O>(
    fmt: &F,
    op: &O,
    root: O::TableAddr,
    va: u64,
    on_step: impl FnMut(TranslationStep),
) -> Result<Translated, TranslateFault>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    // The common depth as a constant, so that the compiler unrolls the
    // walk and folds each level's shifts and masks.
    match fmt.levels() {
        4 => walk_levels(fmt, op, root, va, 4, on_step),
        levels => walk_levels(fmt, op, root, va, levels.min(MAX_LEVELS), on_step),
    }
}

#[inline(always)]
fn walk_levels<F, O>(
    fmt: &F,
    op: &O,
    root: O::TableAddr,
    va: u64,
    levels: usize,
    mut on_step: impl FnMut(TranslationStep),
) -> Result<Translated, TranslateFault>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    let lin = fmt.linear(va).ok_or(TranslateFault::NonCanonical { va })?;
    let mut table = root;
    let mut allowed = Perms::all();
    let mut path = [0 as PhysAddr; MAX_LEVELS];
    let mut self_map = false;
    for level in 0..levels {
        let index = (lin >> fmt.shift(level)) & (fmt.entries(level) - 1);
        let at = EntryLocation {
            level,
            table: O::to_phys(table),
            index,
        };
        path[level] = at.table;
        let raw = read_raw(fmt, op, table, index).map_err(|_| TranslateFault::Unreadable(at))?;
        let descriptor = fmt.decode(level, raw);
        on_step(TranslationStep {
            at,
            raw,
            descriptor,
        });
        match descriptor {
            Descriptor::Invalid => return Err(TranslateFault::NotPresent(at)),
            Descriptor::Leaf { addr, perms, flags } => {
                let span = fmt.entry_span(level);
                let perms = perms & allowed;
                let mut flags = flags;
                flags.set(Flags::SELF_MAP, self_map);
                return Ok(Translated {
                    pa: addr | (lin & (span - 1)),
                    level,
                    page_size: PageSize(span),
                    perms,
                    rights: fmt.rights(perms, raw),
                    protection_key: fmt.protection_key(raw),
                    flags,
                });
            }
            Descriptor::Table { addr, allowed: a } if level + 1 < levels => {
                allowed &= a;
                self_map |= path[..=level].contains(&addr);
                table = O::from_phys(addr);
            }
            Descriptor::Reserved { bits } => {
                return Err(TranslateFault::Reserved { at, raw, bits })
            }
            Descriptor::Table { .. } => {
                return Err(TranslateFault::Reserved { at, raw, bits: raw })
            }
        }
    }
    Err(TranslateFault::NonCanonical { va })
}

/// Where `va` goes in the space rooted at `root`, and in what size of
/// page: the leanest form of [`translate_addr`] (rights and attributes
/// are not decoded), for memory accesses.
pub fn translate_pa<F, O>(
    fmt: &F,
    op: &O,
    root: O::TableAddr,
    va: u64,
) -> Result<(PhysAddr, PageSize), TranslateFault>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    walk_one(fmt, op, root, va, |_| {}).map(|t| (t.pa, t.page_size))
}

/// Translate `va` in the space rooted at `root`, recording every level.
#[deprecated(
    since = "0.2.0",
    note = "use translate(fmt, &op.rooted_at(root), va): one root convention"
)]
pub fn translate_in<F, O>(fmt: &F, op: &O, root: O::TableAddr, va: u64) -> Translation
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    translate_from(fmt, op, root, va)
}

/// [`translate`] from an explicit root.
pub(crate) fn translate_from<F, O>(fmt: &F, op: &O, root: O::TableAddr, va: u64) -> Translation
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    let blank = TranslationStep {
        at: EntryLocation {
            level: 0,
            table: 0,
            index: 0,
        },
        raw: 0,
        descriptor: Descriptor::Invalid,
    };
    let mut steps = [blank; MAX_LEVELS];
    let mut len = 0;
    let result = walk_one(fmt, op, root, va, |step| {
        steps[len] = step;
        len += 1;
    });
    Translation { steps, len, result }
}

/// Translate `va` in the space rooted at `op.root_table()`, recording every
/// level (for people: `monitor vmem translate`).
pub fn translate<F, O>(fmt: &F, op: &O, va: u64) -> Translation
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    translate_from(fmt, op, op.root_table(), va)
}

/// Translate `va` in the space rooted at `root`, without recording the
/// chain (the fast path for memory accesses).
pub fn translate_addr<F, O>(
    fmt: &F,
    op: &O,
    root: O::TableAddr,
    va: u64,
) -> Result<Translated, TranslateFault>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    walk_one(fmt, op, root, va, |_| {})
}
