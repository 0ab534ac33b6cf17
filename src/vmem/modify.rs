//! Writing tables: `map`, `unmap`, `protect` and the link written by
//! `space_aware_map`.
//!
//! All four are one recursive range operation ([`Editor::apply`]) that
//! differs only in what it does with each entry. Huge pages that are only
//! partly touched are split first (the untouched part keeps its
//! translation). When an accessor moves a table on write (copy-on-write),
//! [`Editor::write`] rewrites every ancestor up to the root.

use crate::arch::{Descriptor, Flags, PageTableFormat, Perms, MAX_LEVELS};

use super::error::{EntryLocation, MapError, WalkError};
use super::mapping::{MapRequest, MappingKind};
use super::ops::{MoveInfo, TableMovability, TableOps};
use super::walk::{entry_word, index_range, read_raw};
use super::PhysAddr;

/// Smallest page on every supported architecture.
const MIN_PAGE: u64 = 4096;

/// Rights that a table entry can withhold from what lies below it.
const TABLE_RIGHTS: Perms = Perms::WRITE
    .union(Perms::USER)
    .union(Perms::EXEC)
    .union(Perms::USER_EXEC);

/// What to do with the entries covering a range.
#[derive(Clone, Copy)]
enum Action {
    /// Map linear `lo` to `pa`, onward.
    Map {
        lo: u64,
        pa: PhysAddr,
        perms: Perms,
        flags: Flags,
        max_page: u64,
    },
    Unmap,
    Protect {
        perms: Perms,
        cow: bool,
    },
    /// Point the entry at `level` to the existing `table`.
    Link {
        level: usize,
        table: PhysAddr,
    },
}

/// The path from the root to the table being edited. `tables[l]` is the
/// table at level `l`, `indices[l]` the entry in it that leads to
/// `tables[l + 1]`; a write that moves a table walks this chain upward.
struct Editor<'a, F: ?Sized, O: TableOps> {
    fmt: &'a F,
    op: &'a O,
    tables: [O::TableAddr; MAX_LEVELS],
    indices: [u64; MAX_LEVELS],
}

impl<'a, F: PageTableFormat + ?Sized, O: TableOps> Editor<'a, F, O> {
    fn new(fmt: &'a F, op: &'a O) -> Self {
        Editor {
            fmt,
            op,
            tables: [op.root_table(); MAX_LEVELS],
            indices: [0; MAX_LEVELS],
        }
    }

    fn at(&self, level: usize, index: u64) -> EntryLocation {
        EntryLocation {
            level,
            table: O::to_phys(self.tables[level]),
            index,
        }
    }

    fn read(&self, level: usize, index: u64) -> Result<u64, MapError> {
        read_raw(self.fmt, self.op, self.tables[level], index)
            .map_err(|_| WalkError::Unreadable(self.at(level, index)).into())
    }

    /// Store `value` as entry `index` of `table`; the table's new address
    /// if the accessor moved it.
    fn store(
        &self,
        table: O::TableAddr,
        at: EntryLocation,
        value: u64,
    ) -> Result<Option<MoveInfo<O>>, MapError> {
        let (addr, word) = entry_word(self.fmt, self.op, table, at.index, value)
            .map_err(|_| MapError::Unwritable(at))?;
        self.op
            .write_entry(addr, word)
            .map_err(|_| MapError::Unwritable(at))
    }

    /// Write an entry of a linked table; if the table moves, relink it in
    /// its parent, and so on up to the root.
    fn write(&mut self, mut level: usize, mut index: u64, mut value: u64) -> Result<(), MapError> {
        loop {
            let at = self.at(level, index);
            let Some(info) = self.store(self.tables[level], at, value)? else {
                return Ok(());
            };
            let new_table = <O::TableMovability as TableMovability<O>>::new_table(info);
            self.tables[level] = new_table;
            if level == 0 {
                self.op.update_root(info);
                return Ok(());
            }
            level -= 1;
            index = self.indices[level];
            let parent = self.read(level, index)?;
            value = self
                .fmt
                .with_table_addr(level, parent, O::to_phys(new_table));
        }
    }

    /// Write an entry of a table not linked anywhere yet.
    fn write_unlinked(
        &self,
        table: &mut O::TableAddr,
        level: usize,
        index: u64,
        value: u64,
    ) -> Result<(), MapError> {
        let at = EntryLocation {
            level,
            table: O::to_phys(*table),
            index,
        };
        if let Some(info) = self.store(*table, at, value)? {
            *table = <O::TableMovability as TableMovability<O>>::new_table(info);
        }
        Ok(())
    }

    fn alloc(&self, level: usize) -> Result<O::TableAddr, MapError> {
        self.op
            .alloc_table()
            .map_err(|cause| MapError::Alloc { level, cause })
    }

    /// Make `tables[level + 1]` the table below entry `index` at `level`:
    /// allocate it if the entry is empty, split a huge page into it, and
    /// widen a table entry that withholds rights in `need` (pushing its
    /// restrictions down to its children, so nothing else gains rights).
    fn descend(
        &mut self,
        level: usize,
        index: u64,
        raw: u64,
        descriptor: Descriptor,
        need: Perms,
    ) -> Result<(), MapError> {
        let child = level + 1;
        if child >= self.fmt.levels() {
            let at = self.at(level, index);
            return Err(WalkError::Reserved { at, raw, bits: raw }.into());
        }
        self.indices[level] = index;
        match descriptor {
            Descriptor::Invalid => {
                let table = self.alloc(child)?;
                self.tables[child] = table;
                let value = self.fmt.encode_table(level, O::to_phys(table));
                self.write(level, index, value)?;
            }
            Descriptor::Reserved { bits } => {
                let at = self.at(level, index);
                return Err(WalkError::Reserved { at, raw, bits }.into());
            }
            Descriptor::Leaf { addr, perms, flags } => {
                let mut table = self.alloc(child)?;
                let span = self.fmt.entry_span(child);
                for i in 0..self.fmt.entries(child) {
                    let value = self.fmt.encode_leaf(child, addr + i * span, perms, flags);
                    self.write_unlinked(&mut table, child, i, value)?;
                }
                self.tables[child] = table;
                let value = self.fmt.encode_table(level, O::to_phys(table));
                self.write(level, index, value)?;
            }
            Descriptor::Table { addr, allowed } => {
                self.tables[child] = O::from_phys(addr);
                if !(need & TABLE_RIGHTS).difference(allowed).is_empty() {
                    for i in 0..self.fmt.entries(child) {
                        let raw_child = self.read(child, i)?;
                        if self.fmt.decode(child, raw_child) != Descriptor::Invalid {
                            let value = self.fmt.restrict(child, raw_child, allowed);
                            self.write(child, i, value)?;
                        }
                    }
                    // Re-read: a child table that moved rewrote this entry.
                    let raw = self.read(level, index)?;
                    self.write(level, index, self.fmt.relax_table(level, raw))?;
                }
            }
        }
        Ok(())
    }

    /// Apply `action` to the linear range `lo ..= hi` inside the table at
    /// `level` that covers linear addresses from `base`.
    fn apply(
        &mut self,
        level: usize,
        base: u64,
        lo: u64,
        hi: u64,
        action: Action,
    ) -> Result<(), MapError> {
        let shift = self.fmt.shift(level);
        let span = self.fmt.entry_span(level);
        let (first, last) = index_range(self.fmt, level, base, lo, hi);
        for index in first..=last {
            let entry_base = base + (index << shift);
            let start = lo.max(entry_base);
            let end = hi.min(entry_base + (span - 1));
            let whole = start == entry_base && end == entry_base + (span - 1);
            let raw = self.read(level, index)?;
            let descriptor = self.fmt.decode(level, raw);
            let need = match action {
                Action::Map {
                    lo: map_lo,
                    pa,
                    perms,
                    flags,
                    max_page,
                } => {
                    let pa_here = pa + (start - map_lo);
                    if whole
                        && self.fmt.leaf_allowed(level)
                        && span <= max_page
                        && pa_here.is_multiple_of(span)
                    {
                        let value = self.fmt.encode_leaf(level, pa_here, perms, flags);
                        self.write(level, index, value)?;
                        continue;
                    }
                    perms
                }
                Action::Unmap => match descriptor {
                    Descriptor::Invalid => continue,
                    _ if whole => {
                        self.write(level, index, 0)?;
                        continue;
                    }
                    _ => Perms::empty(),
                },
                Action::Protect { perms, cow } => match descriptor {
                    Descriptor::Invalid => continue,
                    Descriptor::Leaf {
                        addr, mut flags, ..
                    } if whole => {
                        flags.set(Flags::COW, cow);
                        let value = self.fmt.encode_leaf(level, addr, perms, flags);
                        self.write(level, index, value)?;
                        continue;
                    }
                    _ => perms,
                },
                Action::Link {
                    level: link_level,
                    table,
                } => {
                    if level == link_level {
                        let value = self.fmt.encode_table(level, table);
                        self.write(level, index, value)?;
                        continue;
                    }
                    Perms::empty()
                }
            };
            self.descend(level, index, raw, descriptor, need)?;
            self.apply(level + 1, entry_base, start, end, action)?;
        }
        Ok(())
    }
}

/// Checks a page-aligned, non-empty, canonical range that does not cross
/// the hole; returns it as linear offsets.
fn check_range<F: PageTableFormat + ?Sized>(
    fmt: &F,
    va: u64,
    len: u64,
    pa: u64,
) -> Result<(u64, u64), MapError> {
    if len == 0 {
        return Err(MapError::Empty { va });
    }
    if !(va | len | pa).is_multiple_of(MIN_PAGE) {
        return Err(MapError::Misaligned { va, pa, len });
    }
    let last = va
        .checked_add(len - 1)
        .ok_or(MapError::Overflow { base: va, len })?;
    let lo = fmt.linear(va).ok_or(MapError::NonCanonical { va })?;
    let hi = fmt
        .linear(last)
        .ok_or(MapError::NonCanonical { va: last })?;
    if hi.checked_sub(lo) != Some(len - 1) {
        return Err(MapError::NonCanonical { va: last });
    }
    Ok((lo, hi))
}

fn rights(kind: MappingKind, user_accessible: bool) -> Result<(Perms, bool), MapError> {
    if kind == MappingKind::Unmapped {
        return Err(MapError::BadKind);
    }
    let (mut perms, cow) = kind.perms();
    perms.set(Perms::USER, user_accessible);
    Ok((perms, cow))
}

/// Map `request.virt_base .. + len` to `request.phys_base ..`, allocating
/// tables on demand.
///
/// Leaves are as large as alignment, length and `request.max_page_size`
/// allow. Existing translations in the range are replaced; a huge page that
/// is only partly covered is split and keeps the rest.
/// `MappingKind::Unmapped` unmaps the range. Input is checked before any
/// write: misaligned, empty, overflowing or non-canonical ranges are
/// errors. The caller flushes TLBs.
pub fn map<F: PageTableFormat + ?Sized, O: TableOps>(
    fmt: &F,
    op: &O,
    request: impl Into<MapRequest>,
) -> Result<(), MapError> {
    let r: MapRequest = request.into();
    if r.kind == MappingKind::Unmapped {
        return unmap(fmt, op, r.virt_base, r.len);
    }
    let (lo, hi) = check_range(fmt, r.virt_base, r.len, r.phys_base)?;
    let pa_last = r
        .phys_base
        .checked_add(r.len - 1)
        .ok_or(MapError::Overflow {
            base: r.phys_base,
            len: r.len,
        })?;
    if pa_last >= fmt.phys_limit() {
        return Err(MapError::PhysTooLarge { pa: pa_last });
    }
    if r.max_page_size.bytes() < MIN_PAGE {
        return Err(MapError::PageSizeUnsupported {
            size: r.max_page_size.bytes(),
        });
    }
    let (perms, cow) = rights(r.kind, r.user_accessible)?;
    let mut flags = r.flags & fmt.supported_flags();
    flags.set(Flags::COW, cow);
    let action = Action::Map {
        lo,
        pa: r.phys_base,
        perms,
        flags,
        max_page: r.max_page_size.bytes(),
    };
    Editor::new(fmt, op).apply(0, 0, lo, hi, action)
}

/// Remove every translation in `va .. va + len` (splitting huge pages that
/// stick out of the range). Tables that become unreachable are not freed.
pub fn unmap<F: PageTableFormat + ?Sized, O: TableOps>(
    fmt: &F,
    op: &O,
    va: u64,
    len: u64,
) -> Result<(), MapError> {
    let (lo, hi) = check_range(fmt, va, len, 0)?;
    Editor::new(fmt, op).apply(0, 0, lo, hi, Action::Unmap)
}

/// Change the rights of every mapped page in `va .. va + len` to `kind`
/// (and `user_accessible`), keeping addresses and other attributes; holes
/// stay holes. Huge pages sticking out of the range are split.
pub fn protect<F: PageTableFormat + ?Sized, O: TableOps>(
    fmt: &F,
    op: &O,
    va: u64,
    len: u64,
    kind: MappingKind,
    user_accessible: bool,
) -> Result<(), MapError> {
    let (lo, hi) = check_range(fmt, va, len, 0)?;
    let (perms, cow) = rights(kind, user_accessible)?;
    Editor::new(fmt, op).apply(0, 0, lo, hi, Action::Protect { perms, cow })
}

/// Make the entry at `depth - 1` covering `va` point to `table`, creating
/// the tables above it as needed.
pub(crate) fn link_table<F: PageTableFormat + ?Sized, O: TableOps>(
    fmt: &F,
    op: &O,
    va: u64,
    depth: usize,
    table: PhysAddr,
) -> Result<(), MapError> {
    let lin = fmt.linear(va).ok_or(MapError::NonCanonical { va })?;
    if depth == 0 || depth >= fmt.levels() {
        return Err(MapError::MissingTable { depth, va });
    }
    let action = Action::Link {
        level: depth - 1,
        table,
    };
    Editor::new(fmt, op).apply(0, 0, lin, lin, action)
}
