//! Questions across walks: which mappings reach a physical range (the
//! reverse map), and what changed between two walks of one space.
//!
//! Both work on the coalesced [`Mapping`]s of [`crate::vmem::virt_to_phys`],
//! so their cost follows the number of mappings, not the size of the
//! address space.

use alloc::borrow::Cow;
use alloc::vec::Vec;

use super::mapping::Mapping;

/// The part of `m` that maps the physical range `start .. end`, if any.
pub fn phys_overlap(m: &Mapping, start: u64, end: u64) -> Option<Mapping> {
    let m_end = u128::from(m.phys_base) + u128::from(m.len);
    let lo = m.phys_base.max(start);
    let hi = m_end.min(u128::from(end));
    (u128::from(lo) < hi).then(|| Mapping {
        phys_base: lo,
        virt_base: m.virt_base.wrapping_add(lo - m.phys_base),
        len: (hi - u128::from(lo)) as u64,
        ..*m
    })
}

/// The reverse map: every part of `mappings` that maps physical memory in
/// `start .. end`, cut to that range, in the order given.
pub fn reverse_map<I>(mappings: I, start: u64, end: u64) -> impl Iterator<Item = Mapping>
where
    I: IntoIterator<Item = Mapping>,
{
    mappings
        .into_iter()
        .filter_map(move |m| phys_overlap(&m, start, end))
}

/// How one run of virtual addresses differs between two walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// Mapped now, not before.
    Added,
    /// Mapped before, not now.
    Removed,
    /// Mapped both times, to other physical memory.
    Repointed,
    /// Mapped both times to the same memory, with other rights or
    /// attributes.
    Rights,
}

impl ChangeKind {
    /// A short lower-case name.
    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Repointed => "re-pointed",
            ChangeKind::Rights => "rights",
        }
    }
}

/// One run of virtual addresses that changed: the same range in `old` and
/// `new` (whichever exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingChange {
    /// What changed.
    pub kind: ChangeKind,
    /// First virtual address of the run.
    pub virt_base: u64,
    /// Length of the run in bytes.
    pub len: u64,
    /// The range as it was mapped (`None`: it was not).
    pub old: Option<Mapping>,
    /// The range as it is mapped now (`None`: it is not).
    pub new: Option<Mapping>,
}

/// `m` cut to `start .. start + len` (a range inside it).
fn cut(m: &Mapping, start: u64, len: u64) -> Mapping {
    Mapping {
        phys_base: m.phys_base.wrapping_add(start - m.virt_base),
        virt_base: start,
        len,
        ..*m
    }
}

/// Extend `a` by `b` if `b` continues it exactly (or both are absent).
fn join(a: &mut Option<Mapping>, b: Option<Mapping>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) if a.continues_with(&b) => {
            a.len += b.len;
            true
        }
        (None, None) => true,
        _ => false,
    }
}

/// What changed from `old` to `new`, two walks of one space: runs added,
/// removed, re-pointed or with other rights (rights, user access, the
/// CPU's rights per level, attributes; the leaf size alone is not a
/// change). Neighbouring runs of one kind that continue each other are one
/// change. Attributes are compared as given: remove
/// [`crate::vmem::Flags::ACCESSED`] / `DIRTY` first to ignore the CPU's
/// bookkeeping. Cost: linear in the number of mappings (walks
/// come sorted; other input is sorted first).
pub fn diff_mappings(old: &[Mapping], new: &[Mapping]) -> Vec<MappingChange> {
    let (old, new) = without_common(&sorted(old), &sorted(new));
    // Every address where a mapping starts or ends in either walk, merged
    // from the two sorted lists (u128: a mapping may end at 2^64).
    let bounds = |list: &[Mapping]| {
        list.iter()
            .flat_map(|m| [u128::from(m.virt_base), end(m)])
            .collect::<Vec<u128>>()
    };
    let cuts = merge(&bounds(&old), &bounds(&new));
    let (mut i, mut j) = (0, 0);
    let mut changes: Vec<MappingChange> = Vec::new();
    for pair in cuts.windows(2) {
        let (start, len) = (pair[0] as u64, (pair[1] - pair[0]) as u64);
        // Both lists are sorted: the mapping holding `start`, if any, is at
        // or after the one the last window looked at.
        let at = |list: &[Mapping], k: &mut usize| {
            while list.get(*k).is_some_and(|m| end(m) <= pair[0]) {
                *k += 1;
            }
            list.get(*k)
                .filter(|m| m.virt_base <= start)
                .map(|m| cut(m, start, len))
        };
        let (o, n) = (at(&old, &mut i), at(&new, &mut j));
        let kind = match (&o, &n) {
            (None, None) => continue,
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            (Some(o), Some(n)) if o.phys_base != n.phys_base => ChangeKind::Repointed,
            (Some(o), Some(n))
                if (o.kind, o.user_accessible, o.rights, o.flags)
                    != (n.kind, n.user_accessible, n.rights, n.flags) =>
            {
                ChangeKind::Rights
            }
            _ => continue,
        };
        if let Some(last) = changes.last_mut() {
            let mut joined = *last;
            let next = last.virt_base.checked_add(last.len) == Some(start);
            if next && last.kind == kind && join(&mut joined.old, o) && join(&mut joined.new, n) {
                joined.len += len;
                *last = joined;
                continue;
            }
        }
        changes.push(MappingChange {
            kind,
            virt_base: start,
            len,
            old: o,
            new: n,
        });
    }
    changes
}

/// `list` sorted by address, without empty runs (borrowed if it is so).
fn sorted(list: &[Mapping]) -> Cow<'_, [Mapping]> {
    if list.is_sorted_by_key(|m| m.virt_base) && list.iter().all(|m| m.len > 0) {
        return Cow::Borrowed(list);
    }
    let mut list: Vec<Mapping> = list.iter().filter(|m| m.len > 0).copied().collect();
    list.sort_unstable_by_key(|m| m.virt_base);
    Cow::Owned(list)
}

/// What a diff compares of a run (the leaf size alone is no change).
fn same(a: &Mapping, b: &Mapping) -> bool {
    (
        a.virt_base,
        a.len,
        a.phys_base,
        a.kind,
        a.user_accessible,
        a.rights,
        a.flags,
    ) == (
        b.virt_base,
        b.len,
        b.phys_base,
        b.kind,
        b.user_accessible,
        b.rights,
        b.flags,
    )
}

/// Both sorted lists without the mappings they have exactly in common:
/// nothing else covers those addresses in either list, so they cannot
/// take part in a change (an unchanged walk is a linear pass).
fn without_common(old: &[Mapping], new: &[Mapping]) -> (Vec<Mapping>, Vec<Mapping>) {
    let (mut old_rest, mut new_rest) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        let (o, n) = (&old[i], &new[j]);
        if same(o, n) {
            i += 1;
            j += 1;
        } else if o.virt_base < n.virt_base {
            old_rest.push(*o);
            i += 1;
        } else if n.virt_base < o.virt_base {
            new_rest.push(*n);
            j += 1;
        } else {
            old_rest.push(*o);
            new_rest.push(*n);
            i += 1;
            j += 1;
        }
    }
    old_rest.extend_from_slice(&old[i..]);
    new_rest.extend_from_slice(&new[j..]);
    (old_rest, new_rest)
}

/// The first address after `m`.
fn end(m: &Mapping) -> u128 {
    u128::from(m.virt_base) + u128::from(m.len)
}

/// Two sorted lists as one, without repeats.
fn merge(a: &[u128], b: &[u128]) -> Vec<u128> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x <= y => {
                i += 1;
                x
            }
            (_, Some(&y)) => {
                j += 1;
                y
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (None, None) => break,
        };
        if out.last() != Some(&next) {
            out.push(next);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmem::{BasicMapping, MappingKind};

    const RW: MappingKind = MappingKind::Basic(BasicMapping {
        readable: true,
        writable: true,
        executable: false,
    });
    const RO: MappingKind = MappingKind::Basic(BasicMapping {
        readable: true,
        writable: false,
        executable: false,
    });

    #[test]
    fn only_the_overlapping_part_is_kept() {
        let m = Mapping::new(0xffff_8000_0000_0000, 0x10_0000, 0x20_0000, RW);
        let part = phys_overlap(&m, 0x18_0000, 0x18_1000).unwrap();
        assert_eq!(
            (part.virt_base, part.phys_base, part.len),
            (0xffff_8000_0008_0000, 0x18_0000, 0x1000)
        );
        assert!(phys_overlap(&m, 0, 0x10_0000).is_none());
        assert!(phys_overlap(&m, 0x30_0000, 0x40_0000).is_none());
        assert_eq!(phys_overlap(&m, 0, u64::MAX).unwrap().len, 0x20_0000);
        let top = Mapping::new(0, u64::MAX - 0xfff, 0x1000, RW);
        assert_eq!(phys_overlap(&top, u64::MAX - 1, u64::MAX).unwrap().len, 1);
    }

    #[test]
    fn changes_are_cut_to_what_changed() {
        let old = [Mapping::new(0x1000, 0x10_0000, 0x4000, RW)];
        let new = [
            Mapping::new(0x1000, 0x10_0000, 0x1000, RW),
            Mapping::new(0x2000, 0x10_1000, 0x1000, RO),
            Mapping::new(0x3000, 0x20_0000, 0x1000, RW),
            Mapping::new(0x8000, 0x30_0000, 0x1000, RW),
        ];
        let kinds: Vec<(ChangeKind, (u64, u64))> = diff_mappings(&old, &new)
            .iter()
            .map(|c| (c.kind, (c.virt_base, c.len)))
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Rights, (0x2000, 0x1000)),
                (ChangeKind::Repointed, (0x3000, 0x1000)),
                (ChangeKind::Removed, (0x4000, 0x1000)),
                (ChangeKind::Added, (0x8000, 0x1000)),
            ]
        );
        assert!(diff_mappings(&old, &old).is_empty());
    }

    #[test]
    fn a_mapping_at_the_top_of_the_space_is_compared() {
        let top = u64::MAX - 0x1f_ffff;
        let old = [Mapping::new(top, 0x20_0000, 0x20_0000, RW)];
        let new = [Mapping::new(top, 0x20_0000, 0x20_0000, RO)];
        let changes = diff_mappings(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].virt_base, changes[0].len), (top, 0x20_0000));
    }
}
