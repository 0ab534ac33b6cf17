//! Property tests for the reverse map and the diff of two walks, against
//! brute force: every 4 KiB page of a small window translated one by one,
//! before and after random edits.

mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use support::*;
use vmem_gdbstub::arch::{Amd64, PageTableFormat, I686};
use vmem_gdbstub::vmem::{
    self, BufferTables, ChangeKind, Flags, MapRequest, MappingKind, PageSize, Perms, Rights,
};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
/// Each case edits this much of the address space…
const WINDOW: u64 = 16 << 20;
/// …mapping it to physical addresses below this.
const PHYS: u64 = 32 << 20;

fn modes() -> Vec<Box<dyn PageTableFormat>> {
    vec![Box::new(Amd64::FOUR_LEVEL), Box::new(I686::PAE)]
}

/// Where the window lies: the bottom, the top of the space (a mapping
/// there ends at 2^64 on x86-64) or just below the sign boundary.
fn bases(fmt: &dyn PageTableFormat) -> Vec<u64> {
    let space = fmt.linear_mask();
    let mut bases = vec![0, space - WINDOW + 1];
    if fmt.sign_extended() {
        bases.push((space >> 1) + 1 - WINDOW);
    }
    bases
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        off: u64,
        len: u64,
        pa: u64,
        kind: MappingKind,
        user: bool,
        global: bool,
    },
    Unmap {
        off: u64,
        len: u64,
    },
    Protect {
        off: u64,
        len: u64,
        kind: MappingKind,
        user: bool,
    },
}

/// (offset, length) of an aligned run inside the window.
fn run() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![Just(K4), Just(M2)].prop_flat_map(|g| {
        let slots = WINDOW / g;
        (0..slots).prop_flat_map(move |start| {
            let room = (slots - start).min(if g == K4 { 300 } else { 4 });
            (Just(start * g), (1..=room).prop_map(move |n| n * g))
        })
    })
}

fn kind() -> impl Strategy<Value = MappingKind> {
    prop_oneof![Just(RW), Just(RO), Just(RX), Just(RWX)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (run(), 0..PHYS / M2, kind(), any::<bool>(), any::<bool>()).prop_map(
            |((off, len), slot, kind, user, global)| Op::Map { off, len, pa: slot * M2, kind, user, global }
        ),
        1 => run().prop_map(|(off, len)| Op::Unmap { off, len }),
        1 => (run(), kind(), any::<bool>())
            .prop_map(|((off, len), kind, user)| Op::Protect { off, len, kind, user }),
    ]
}

fn apply(fmt: &dyn PageTableFormat, t: &BufferTables<Vec<u8>>, base: u64, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Map {
                off,
                len,
                pa,
                kind,
                user,
                global,
            } => {
                let flags = if global {
                    Flags::GLOBAL & fmt.supported_flags()
                } else {
                    Flags::empty()
                };
                let mut m = MapRequest::new(fmt.canonical(base + off), pa, len, kind)
                    .with_flags(flags)
                    .max_page_size(PageSize::LARGEST);
                m.user_accessible = user;
                vmem::map(fmt, t, m).unwrap();
            }
            Op::Unmap { off, len } => vmem::unmap(fmt, t, fmt.canonical(base + off), len).unwrap(),
            Op::Protect {
                off,
                len,
                kind,
                user,
            } => vmem::protect(fmt, t, fmt.canonical(base + off), len, kind, user).unwrap(),
        }
    }
}

/// Tables with `ops` applied in window number `base`; the window's base.
fn tables(fmt: &dyn PageTableFormat, base: usize, ops: &[Op]) -> (u64, BufferTables<Vec<u8>>) {
    let bases = bases(fmt);
    let base = bases[base % bases.len()];
    let t = memory_of(64 << 20);
    apply(fmt, &t, base, ops);
    (base, t)
}

/// What one page translates to: (physical page, rights, attributes).
type Page = (u64, Perms, Rights, Flags);

/// Every page of the window, translated one at a time.
fn brute(fmt: &dyn PageTableFormat, t: &BufferTables<Vec<u8>>, base: u64) -> Vec<Option<Page>> {
    (0..WINDOW / K4)
        .map(|i| {
            let va = fmt.canonical(base + i * K4);
            vmem::translate(fmt, t, va)
                .result
                .ok()
                .map(|g| (g.pa, g.perms, g.rights, g.flags))
        })
        .collect()
}

/// How a page changed, by brute force.
fn page_change(old: Option<Page>, new: Option<Page>) -> Option<ChangeKind> {
    match (old, new) {
        (None, None) => None,
        (None, Some(_)) => Some(ChangeKind::Added),
        (Some(_), None) => Some(ChangeKind::Removed),
        (Some(o), Some(n)) if o.0 != n.0 => Some(ChangeKind::Repointed),
        (Some(o), Some(n)) if o != n => Some(ChangeKind::Rights),
        _ => None,
    }
}

/// The window's page index of a virtual address, if it is in the window.
fn page_index(fmt: &dyn PageTableFormat, base: u64, va: u64) -> Option<u64> {
    let lin = va & fmt.linear_mask();
    (lin >= base && lin - base < WINDOW).then(|| (lin - base) / K4)
}

fn case() -> impl Strategy<Value = (usize, usize, Vec<Op>, Vec<Op>, u64, u64)> {
    (0usize..2, 0usize..3).prop_flat_map(|(mode, base)| {
        (
            Just(mode),
            Just(base),
            prop::collection::vec(op(), 1..12),
            prop::collection::vec(op(), 0..8),
            0..PHYS,
            1..4 * M2,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every page the diff names changed exactly that way, and every page
    /// that changed is named; the runs are cut where the change is.
    #[test]
    fn diff_matches_page_by_page_translation(
        (mode, base, before, after, _, _) in case()
    ) {
        let modes = modes();
        let fmt = modes[mode].as_ref();
        let (base, t) = tables(fmt, base, &before);
        let (old, old_pages) = (walk_all(fmt, &t), brute(fmt, &t, base));
        apply(fmt, &t, base, &after);
        let (new, new_pages) = (walk_all(fmt, &t), brute(fmt, &t, base));

        let mut said: BTreeMap<u64, ChangeKind> = BTreeMap::new();
        for change in vmem::diff_mappings(&old, &new) {
            prop_assert!(change.len > 0 && change.len % K4 == 0, "{change:x?}");
            for side in [change.old, change.new].into_iter().flatten() {
                prop_assert_eq!((side.virt_base, side.len), (change.virt_base, change.len));
            }
            for p in 0..change.len / K4 {
                let va = change.virt_base + p * K4;
                let i = page_index(fmt, base, va);
                prop_assert!(i.is_some(), "change outside the window: {change:x?}");
                prop_assert!(said.insert(i.unwrap(), change.kind).is_none(), "page named twice");
            }
        }
        for (i, (o, n)) in old_pages.iter().zip(&new_pages).enumerate() {
            prop_assert_eq!(
                said.get(&(i as u64)).copied(),
                page_change(*o, *n),
                "page {:#x}: was {:x?}, now {:x?}", base + i as u64 * K4, o, n
            );
        }
        prop_assert!(vmem::diff_mappings(&new, &new).is_empty());
    }

    /// The reverse map names exactly the pages whose physical page
    /// overlaps the range, each cut to the overlap.
    #[test]
    fn reverse_map_matches_page_by_page_translation(
        (mode, base, before, _, pa, len) in case()
    ) {
        let modes = modes();
        let fmt = modes[mode].as_ref();
        let (base, t) = tables(fmt, base, &before);
        let pages = brute(fmt, &t, base);
        let (start, end) = (pa, pa + len);
        let mut found: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for m in vmem::reverse_map(walk_all(fmt, &t), start, end) {
            prop_assert!(m.phys_base >= start && m.phys_base + m.len <= end, "{m:x?}");
            let mut at = m.virt_base;
            while at <= m.virt_last() {
                let i = page_index(fmt, base, at).unwrap();
                let page_end = (at | (K4 - 1)).min(m.virt_last());
                let pa_here = m.phys_base + (at - m.virt_base);
                // The bytes of this page the reverse map names.
                let e = found.entry(i).or_insert((pa_here, 0));
                e.1 += page_end - at + 1;
                at = page_end.wrapping_add(1);
                if at == 0 {
                    break;
                }
            }
        }
        for (i, page) in pages.iter().enumerate() {
            let want = page.and_then(|(pa, ..)| {
                let (lo, hi) = (pa.max(start), (pa + K4).min(end));
                (lo < hi).then_some((lo, hi - lo))
            });
            prop_assert_eq!(found.get(&(i as u64)).copied(), want, "page {}", i);
        }
    }
}
