//! The one table walker every architecture and operation shares.
//!
//! It visits the entries covering a linear range depth-first, in address
//! order, keeping an explicit stack of at most [`MAX_LEVELS`] frames. Work is
//! bounded by the entries it reads (plus an optional budget); it never
//! iterates over address-space sizes. An entry that points back to a table
//! on its own path (a recursive self-map) is followed as the MMU follows
//! it: depth is bounded by the levels, and what lies below is marked
//! [`Flags::SELF_MAP`]. A table outside memory is reported once and
//! skipped.

use crate::arch::{Descriptor, Flags, PageTableFormat, Perms, Rights, MAX_LEVELS};

use super::error::{EntryLocation, MemoryError, WalkError};
use super::ops::TableReadOps;
use super::PhysAddr;

/// Read entry `index` of `table` (4- or 8-byte entries; a 4-byte entry
/// is read as the aligned `u64` holding it).
pub(crate) fn read_raw<F, O>(
    fmt: &F,
    op: &O,
    table: O::TableAddr,
    index: u64,
) -> Result<u64, MemoryError>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    let offset = index * fmt.entry_size();
    let word = op.read_entry(O::entry_addr(table, offset & !7))?;
    Ok(if fmt.entry_size() == 8 {
        word
    } else {
        (word >> ((offset & 7) * 8)) & 0xffff_ffff
    })
}

/// Where to write entry `index` of `table` and the `u64` to write there
/// so that it holds `value` (merged with its neighbour for 4-byte entries).
pub(crate) fn entry_word<F, O>(
    fmt: &F,
    op: &O,
    table: O::TableAddr,
    index: u64,
    value: u64,
) -> Result<(O::TableAddr, u64), MemoryError>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
{
    let offset = index * fmt.entry_size();
    let addr = O::entry_addr(table, offset & !7);
    if fmt.entry_size() == 8 {
        return Ok((addr, value));
    }
    let shift = (offset & 7) * 8;
    let word = op.read_entry(addr)?;
    Ok((
        addr,
        (word & !(0xffff_ffff << shift)) | ((value & 0xffff_ffff) << shift),
    ))
}

/// A run of leaves the walker found (neighbours in one table, alike but
/// for their addresses, which continue each other), with rights made
/// effective across levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub va: u64,
    pub pa: PhysAddr,
    /// Bytes in the run.
    pub size: u64,
    /// Bytes one leaf maps, as a power of two.
    pub page_shift: u8,
    pub perms: Perms,
    pub flags: Flags,
    pub rights: Rights,
}

/// What the walker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalkEvent {
    Leaf(Leaf),
    /// The alias hook claimed the table at `depth` reached for `va`; it was
    /// not walked.
    Shared {
        depth: usize,
        table: PhysAddr,
        va: u64,
    },
}

#[derive(Clone, Copy)]
struct Frame<A> {
    table: A,
    base: u64,
    next: u64,
    last: u64,
    allowed: Perms,
    /// Reached through an entry pointing back to a table on its path.
    self_map: bool,
}

/// The indices of a table at `level` whose entries (covering `base ..`)
/// intersect the linear range `lo ..= hi`.
pub(crate) fn index_range<F: PageTableFormat + ?Sized>(
    fmt: &F,
    level: usize,
    base: u64,
    lo: u64,
    hi: u64,
) -> (u64, u64) {
    let shift = fmt.shift(level);
    let entries = fmt.entries(level);
    // `wrapping_sub` makes a table spanning all 2^64 bytes end at u64::MAX.
    let table_last = base.wrapping_add((entries << shift).wrapping_sub(1));
    let first = if lo > base { (lo - base) >> shift } else { 0 };
    let last = if hi < table_last {
        (hi - base) >> shift
    } else {
        entries - 1
    };
    (first, last)
}

/// Depth-first walker over one address space. `H` decides, for each table
/// about to be entered, whether to report it as shared instead.
pub(crate) struct Walker<'a, F: ?Sized, O: TableReadOps, H> {
    fmt: &'a F,
    op: &'a O,
    frames: [Frame<O::TableAddr>; MAX_LEVELS],
    depth: usize,
    lo: u64,
    hi: u64,
    visited: u64,
    budget: u64,
    hook: H,
    /// An entry `run` read but did not take: (table, index, raw), read
    /// again from here instead of from memory.
    peeked: Option<(PhysAddr, u64, u64)>,
    /// The last leaf decoded, for the next one that differs from it only
    /// in its address (scattered 4 KiB pages: every leaf of a table).
    memo: Option<LeafMemo>,
}

/// A decoded leaf and what decides its decoding: its level, its bits
/// outside the address, and what the tables above allow.
#[derive(Clone, Copy)]
struct LeafMemo {
    level: usize,
    /// The leaf address bits at `level` (never 0 here).
    mask: u64,
    /// The entry's bits outside `mask`.
    rest: u64,
    allowed: Perms,
    self_map: bool,
    /// The decoded address's bits outside `mask` (PSE-36's high bits).
    addr_rest: u64,
    perms: Perms,
    flags: Flags,
    rights: Rights,
}

impl<'a, F, O, H> Walker<'a, F, O, H>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
    H: FnMut(usize, PhysAddr, u64) -> bool,
{
    /// Walk the linear range `lo ..= hi` below `root`.
    pub(crate) fn new(
        fmt: &'a F,
        op: &'a O,
        root: O::TableAddr,
        range: Option<(u64, u64)>,
        hook: H,
    ) -> Self {
        let root_frame = Frame {
            table: root,
            base: 0,
            next: 1,
            last: 0,
            allowed: Perms::all(),
            self_map: false,
        };
        let (lo, hi) = range.unwrap_or((1, 0));
        let mut walker = Walker {
            fmt,
            op,
            frames: [root_frame; MAX_LEVELS],
            depth: 0,
            lo,
            hi,
            visited: 0,
            budget: u64::MAX,
            hook,
            peeked: None,
            memo: None,
        };
        if range.is_some() && fmt.levels() <= MAX_LEVELS && fmt.levels() > 0 {
            walker.push(0, root, 0, Perms::all(), false);
        }
        walker
    }

    /// Stop (with [`WalkError::BudgetExhausted`]) after reading `budget` entries.
    pub(crate) fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// Entries read so far.
    pub(crate) fn visited(&self) -> u64 {
        self.visited
    }

    /// The bytes of the run of leaves starting with `first` (just read
    /// at `level`): the entries after it in its table that differ from it
    /// only in an address continuing it are consumed without decoding.
    #[inline]
    fn run(&mut self, level: usize, first: u64, page: u64) -> u64 {
        let mask = self.fmt.leaf_address_mask(level);
        let mut size = page;
        if mask == 0 {
            return size;
        }
        let frame = self.frames[level];
        let mut index = frame.next;
        while index <= frame.last && self.visited < self.budget {
            let Ok(raw) = read_raw(self.fmt, self.op, frame.table, index) else {
                break;
            };
            let continues = (first & mask).checked_add(size) == Some(raw & mask);
            if (raw ^ first) & !mask != 0 || !continues {
                self.peeked = Some((O::to_phys(frame.table), index, raw));
                break;
            }
            self.visited += 1;
            size += page;
            index += 1;
        }
        self.frames[level].next = index;
        size
    }

    /// The leaf (and the run it starts) of entry `raw` at `level`, for
    /// linear address `lin`, decoded as `memo` says.
    #[inline]
    fn leaf(&mut self, level: usize, lin: u64, raw: u64, memo: &LeafMemo) -> WalkEvent {
        let page = self.fmt.entry_span(level);
        WalkEvent::Leaf(Leaf {
            va: self.fmt.canonical(lin),
            pa: memo.addr_rest | (raw & memo.mask),
            size: self.run(level, raw, page),
            page_shift: page.trailing_zeros() as u8,
            perms: memo.perms,
            flags: memo.flags,
            rights: memo.rights,
        })
    }

    fn push(
        &mut self,
        level: usize,
        table: O::TableAddr,
        base: u64,
        allowed: Perms,
        self_map: bool,
    ) {
        let (first, last) = index_range(self.fmt, level, base, self.lo, self.hi);
        self.frames[level] = Frame {
            table,
            base,
            next: first,
            last,
            allowed,
            self_map,
        };
        self.depth = level + 1;
    }
}

impl<F, O, H> Iterator for Walker<'_, F, O, H>
where
    F: PageTableFormat + ?Sized,
    O: TableReadOps,
    H: FnMut(usize, PhysAddr, u64) -> bool,
{
    type Item = Result<WalkEvent, WalkError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while self.depth > 0 {
            let level = self.depth - 1;
            let frame = self.frames[level];
            if frame.next > frame.last {
                self.depth -= 1;
                continue;
            }
            self.frames[level].next += 1;
            if self.visited >= self.budget {
                self.depth = 0;
                return Some(Err(WalkError::BudgetExhausted {
                    visited: self.visited,
                }));
            }
            self.visited += 1;
            let index = frame.next;
            let at = EntryLocation {
                level,
                table: O::to_phys(frame.table),
                index,
            };
            let read = match self.peeked.take() {
                Some((t, i, raw)) if (t, i) == (O::to_phys(frame.table), index) => Ok(raw),
                _ => read_raw(self.fmt, self.op, frame.table, index),
            };
            let raw = match read {
                Ok(raw) => raw,
                Err(_) => {
                    // The whole table is unreachable: one error, not 512.
                    self.depth -= 1;
                    return Some(Err(WalkError::Unreadable(at)));
                }
            };
            let lin = frame.base + (index << self.fmt.shift(level));
            if let Some(m) = self.memo.filter(|m| {
                m.level == level
                    && m.rest == raw & !m.mask
                    && m.allowed == frame.allowed
                    && m.self_map == frame.self_map
            }) {
                return Some(Ok(self.leaf(level, lin, raw, &m)));
            }
            match self.fmt.decode(level, raw) {
                Descriptor::Invalid => {}
                Descriptor::Leaf { addr, perms, flags } => {
                    let perms = perms & frame.allowed;
                    let mut flags = flags;
                    flags.set(Flags::SELF_MAP, frame.self_map);
                    let mask = self.fmt.leaf_address_mask(level);
                    let memo = LeafMemo {
                        level,
                        mask,
                        rest: raw & !mask,
                        allowed: frame.allowed,
                        self_map: frame.self_map,
                        addr_rest: addr & !mask,
                        perms,
                        flags,
                        rights: self.fmt.rights(perms, raw),
                    };
                    self.memo = (mask != 0).then_some(memo);
                    return Some(Ok(self.leaf(level, lin, raw, &memo)));
                }
                Descriptor::Table { addr, allowed } if level + 1 < self.fmt.levels() => {
                    let self_map = frame.self_map
                        || self.frames[..self.depth]
                            .iter()
                            .any(|f| O::to_phys(f.table) == addr);
                    let va = self.fmt.canonical(lin);
                    if !self_map && (self.hook)(level + 1, addr, va) {
                        return Some(Ok(WalkEvent::Shared {
                            depth: level + 1,
                            table: addr,
                            va,
                        }));
                    }
                    self.push(
                        level + 1,
                        O::from_phys(addr),
                        lin,
                        frame.allowed & allowed,
                        self_map,
                    );
                }
                Descriptor::Reserved { bits } => {
                    return Some(Err(WalkError::Reserved { at, raw, bits }));
                }
                Descriptor::Table { .. } => {
                    // A table where the mode has no next level.
                    return Some(Err(WalkError::Reserved { at, raw, bits: raw }));
                }
            }
        }
        None
    }
}
