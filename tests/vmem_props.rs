//! Property tests: random map / unmap / protect sequences against a simple
//! reference model, and random garbage tables (never a panic, always an end).

mod support;

use proptest::prelude::*;
use support::*;
use vmem_gdbstub::arch::{Amd64, PageTableFormat};
use vmem_gdbstub::vmem::{
    self, BufferTables, Flags, MapError, Mapping, MappingKind, PageSize, TableOps, TableReadOps,
    WalkError,
};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
/// Each case works inside 8 GiB of linear addresses.
const WINDOW: u64 = 8 * G1;

#[derive(Debug, Clone)]
enum Op {
    Map {
        off: u64,
        len: u64,
        pa: u64,
        kind: MappingKind,
        user: bool,
        flags: Flags,
        max: PageSize,
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

fn granule() -> impl Strategy<Value = u64> {
    prop_oneof![Just(K4), Just(M2), Just(G1)]
}

/// An aligned sub-range of the window: (offset, length).
fn range() -> impl Strategy<Value = (u64, u64)> {
    granule().prop_flat_map(|g| {
        let slots = WINDOW / g;
        let max_len = if g == K4 { 600 } else { 6 };
        (0..slots).prop_flat_map(move |start| {
            let room = (slots - start).min(max_len);
            (Just(start * g), (1..=room).prop_map(move |n| n * g))
        })
    })
}

fn kind() -> impl Strategy<Value = MappingKind> {
    prop_oneof![Just(RW), Just(RO), Just(RX), Just(RWX), Just(COW)]
}

fn op() -> impl Strategy<Value = Op> {
    let map = (
        range(),
        granule(),
        0u64..1 << 20,
        kind(),
        any::<bool>(),
        prop_oneof![
            Just(Flags::empty()),
            Just(Flags::GLOBAL),
            Just(Flags::ACCESSED | Flags::DIRTY)
        ],
        prop_oneof![
            Just(PageSize::SIZE_4K),
            Just(PageSize::SIZE_2M),
            Just(PageSize::SIZE_1G),
            Just(PageSize::LARGEST)
        ],
    )
        .prop_map(
            |((off, len), pa_gran, pa_slot, kind, user, flags, max)| Op::Map {
                off,
                len,
                pa: (pa_slot * pa_gran) % (1 << 46),
                kind,
                user,
                flags,
                max,
            },
        );
    prop_oneof![
        3 => map,
        1 => range().prop_map(|(off, len)| Op::Unmap { off, len }),
        1 => (range(), kind(), any::<bool>())
            .prop_map(|((off, len), kind, user)| Op::Protect { off, len, kind, user }),
    ]
}

/// Window bases in linear addresses: low, straddling a PML4 boundary, and
/// the start of the upper half.
fn base(fmt: Amd64) -> impl Strategy<Value = u64> {
    let top_bit = 1u64 << (fmt.va_bits() - 1);
    prop_oneof![
        Just(0u64),
        Just((1u64 << 39) - 3 * G1),
        Just(top_bit),
        Just(2 * top_bit - WINDOW),
    ]
}

fn run_case(fmt: Amd64, base: u64, ops: &[Op], probes: &[u64]) -> Result<(), TestCaseError> {
    let t = memory();
    let mut model = Model::default();
    for op in ops {
        match *op {
            Op::Map {
                off,
                len,
                pa,
                kind,
                user,
                flags,
                max,
            } => {
                let mut m = Mapping::new(fmt.canonical(base + off), pa, len, kind)
                    .with_flags(flags)
                    .max_page_size(max);
                m.user_accessible = user;
                vmem::map(&fmt, &t, &m).unwrap();
                model.map(
                    base + off,
                    Seg {
                        len,
                        pa,
                        kind,
                        user,
                        flags,
                    },
                );
            }
            Op::Unmap { off, len } => {
                vmem::unmap(&fmt, &t, fmt.canonical(base + off), len).unwrap();
                model.unmap(base + off, len);
            }
            Op::Protect {
                off,
                len,
                kind,
                user,
            } => {
                vmem::protect(&fmt, &t, fmt.canonical(base + off), len, kind, user).unwrap();
                model.protect(base + off, len, kind, user);
            }
        }
    }
    let walked = walk_all(&fmt, &t);
    for m in &walked {
        let size = m.page_size.bytes();
        prop_assert!(
            m.virt_base % size == 0 && m.phys_base % size == 0 && m.len % size == 0,
            "{m:x?} is not made of whole {size:#x} leaves"
        );
    }
    for pair in walked.windows(2) {
        prop_assert!(
            !pair[0].continues_with(&pair[1]),
            "not coalesced: {pair:x?}"
        );
    }
    prop_assert_eq!(as_runs(&fmt, &walked), model.coalesced());
    for &probe in probes {
        let lin = base + probe % WINDOW;
        let va = fmt.canonical(lin);
        let got = vmem::translate(&fmt, &t, va).result.ok();
        let want = model.lookup(lin);
        prop_assert_eq!(got.map(|g| g.pa), want.map(|(pa, _)| pa), "va {:#x}", va);
        if let (Some(g), Some((_, seg))) = (got, want) {
            let mut perms = seg.kind.perms().0;
            perms.set(vmem::Perms::USER, seg.user);
            prop_assert_eq!(g.perms, perms);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn four_level_matches_the_model(
        base in base(Amd64::FOUR_LEVEL),
        ops in prop::collection::vec(op(), 1..24),
        probes in prop::collection::vec(any::<u64>(), 64),
    ) {
        run_case(Amd64::FOUR_LEVEL, base, &ops, &probes)?;
    }

    #[test]
    fn five_level_matches_the_model(
        base in base(Amd64::FIVE_LEVEL),
        ops in prop::collection::vec(op(), 1..24),
        probes in prop::collection::vec(any::<u64>(), 64),
    ) {
        run_case(Amd64::FIVE_LEVEL, base, &ops, &probes)?;
    }
}

/// Size of a garbage image: 16 tables.
const GARBAGE_TABLES: usize = 16;

/// A memory whose every entry is random, biased to be present and to
/// point inside the image (so walks go deep), sometimes outside it.
fn garbage() -> impl Strategy<Value = Vec<u64>> {
    let entry = (any::<u64>(), 0u64..GARBAGE_TABLES as u64 + 2, 0u8..8).prop_map(
        |(noise, table, shape)| match shape {
            0 => 0,
            1 => noise,
            // In-image table pointer with random low flag bits, PS mostly
            // clear so walks descend.
            _ => (table << 12) | (noise & 0x8000_0000_0000_0f7f) | 1,
        },
    );
    prop::collection::vec(entry, GARBAGE_TABLES * 512)
}

fn image(words: &[u64]) -> BufferTables<Vec<u8>> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let len = bytes.len() as u64;
    // The pool is the last table only: a few writes fit, then allocation fails.
    BufferTables::with_root(bytes, 0, len - 4096..len, 0).unwrap()
}

const BUDGET: u64 = 200_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_tables_never_panic_and_always_end(
        words in garbage(),
        root in 0u64..GARBAGE_TABLES as u64,
        five in any::<bool>(),
        vas in prop::collection::vec(any::<u64>(), 16),
    ) {
        let fmt = Amd64::new(five);
        let t = image(&words);
        t.set_root(root << 12);
        let mut walk = vmem::virt_to_phys(&fmt, &t, 0, u64::MAX).with_budget(BUDGET);
        let mut items = 0u64;
        for item in walk.by_ref() {
            items += 1;
            if let Err(WalkError::BudgetExhausted { visited }) = item {
                prop_assert_eq!(visited, BUDGET);
            }
        }
        prop_assert!(walk.entries_visited() <= BUDGET);
        prop_assert!(items <= BUDGET + 1);
        for &va in &vas {
            let tr = vmem::translate(&fmt, &t, va);
            prop_assert!(tr.steps().len() <= fmt.levels());
        }
        let spaces = vmem::walk_va_spaces_bounded(&fmt, &t, &[root << 12, 0, 4096], BUDGET);
        prop_assert_eq!(spaces.len(), 3);
        // Writes over garbage: errors are fine, panics and hangs are not.
        let page = fmt.canonical(vas[0] & fmt.linear_mask() & !0xfff);
        let _ = vmem::map(&fmt, &t, &Mapping::new(page, 0x1000, 0x1000, RW));
        let _ = vmem::protect(&fmt, &t, page, 0x2000, RO, true);
        let result = vmem::unmap(&fmt, &t, page, 0x1000);
        let refused_as_empty = matches!(result, Err(MapError::Empty { .. }));
        prop_assert!(!refused_as_empty);
        let _ = t.alloc_table();
        let _ = t.read_entry(u64::MAX);
    }
}
