//! Property tests: random map / unmap / protect sequences against a simple
//! reference model, and random garbage tables (never a panic, always an end).

mod support;

use proptest::prelude::*;
use support::*;
use vmem_gdbstub::arch::{Aarch64, Amd64, PageTableFormat, I686};
use vmem_gdbstub::vmem::{
    self, BufferTables, Flags, MapError, MapRequest, MappingKind, PageSize, TableOps, TableReadOps,
    WalkError,
};

const K4: u64 = 1 << 12;
const G1: u64 = 1 << 30;

/// Every paging mode, by name.
fn modes() -> Vec<(&'static str, Box<dyn PageTableFormat>)> {
    vec![
        ("amd64 4-level", Box::new(Amd64::FOUR_LEVEL)),
        ("amd64 5-level", Box::new(Amd64::FIVE_LEVEL)),
        ("i686", Box::new(I686::LEGACY)),
        ("i686 PSE", Box::new(I686::PSE)),
        ("i686 PAE", Box::new(I686::PAE)),
        ("aarch64 48-bit TTBR0", Box::new(Aarch64::LOWER_48)),
        ("aarch64 48-bit TTBR1", Box::new(Aarch64::UPPER_48)),
        ("aarch64 39-bit TTBR0", Box::new(Aarch64::LOWER_39)),
    ]
}

/// Each case works inside at most 8 GiB of linear addresses.
fn window(fmt: &dyn PageTableFormat) -> u64 {
    (8 * G1).min(fmt.linear_mask() + 1)
}

/// The leaf sizes of a mode (up to 1 GiB).
fn granules(fmt: &dyn PageTableFormat) -> Vec<u64> {
    (0..fmt.levels())
        .filter(|&l| fmt.leaf_allowed(l))
        .map(|l| fmt.entry_span(l))
        .filter(|&s| s <= G1)
        .collect()
}

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

/// An aligned sub-range of the window: (offset, length).
fn range(granules: Vec<u64>, window: u64) -> impl Strategy<Value = (u64, u64)> {
    prop::sample::select(granules).prop_flat_map(move |g| {
        let slots = window / g;
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

/// Ops for mode number `mode`.
fn ops(mode: usize) -> impl Strategy<Value = Vec<Op>> {
    let fmt = &modes()[mode].1;
    let (g, w, limit) = (
        granules(fmt.as_ref()),
        window(fmt.as_ref()),
        // Half the physical space: pa + len (at most 6 GiB) stays encodable.
        fmt.phys_limit().min(1 << 46) / 2,
    );
    let supported = fmt.supported_flags();
    let flag_sets: Vec<Flags> = [
        Flags::empty(),
        Flags::GLOBAL,
        Flags::ACCESSED | Flags::DIRTY,
        Flags::ACCESSED,
    ]
    .into_iter()
    .map(|f| f & supported)
    .collect();
    let sizes: Vec<PageSize> = g
        .iter()
        .map(|&s| PageSize(s))
        .chain([PageSize::LARGEST])
        .collect();
    let map = (
        range(g.clone(), w),
        prop::sample::select(g.clone()),
        0u64..1 << 20,
        kind(),
        any::<bool>(),
        prop::sample::select(flag_sets),
        prop::sample::select(sizes),
    )
        .prop_map(
            move |((off, len), pa_gran, pa_slot, kind, user, flags, max)| Op::Map {
                off,
                len,
                pa: (pa_slot * pa_gran) % limit,
                kind,
                user,
                flags,
                max,
            },
        );
    let op = prop_oneof![
        3 => map,
        1 => range(g.clone(), w).prop_map(|(off, len)| Op::Unmap { off, len }),
        1 => (range(g, w), kind(), any::<bool>())
            .prop_map(|((off, len), kind, user)| Op::Protect { off, len, kind, user }),
    ];
    prop::collection::vec(op, 1..24)
}

/// Window bases in linear addresses: the bottom, across a top-level
/// boundary, and the top of the space.
fn bases(fmt: &dyn PageTableFormat) -> Vec<u64> {
    let space = fmt.linear_mask();
    let w = window(fmt);
    let top_span = fmt.entry_span(0);
    let mut bases = vec![0, space - w + 1];
    if top_span > 3 * G1 && space > top_span + w {
        bases.push(top_span - 3 * G1);
    }
    if fmt.sign_extended() {
        bases.push((space >> 1) + 1);
    }
    bases
}

/// What the tables will say for asked-for rights.
fn expected_kind(fmt: &dyn PageTableFormat, kind: MappingKind) -> MappingKind {
    let (perms, cow) = kind.perms();
    MappingKind::from_perms(fmt.representable(perms), cow)
}

fn run_case(
    fmt: &dyn PageTableFormat,
    base: u64,
    ops: &[Op],
    probes: &[u64],
) -> Result<(), TestCaseError> {
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
                let mut m = MapRequest::new(fmt.canonical(base + off), pa, len, kind)
                    .with_flags(flags)
                    .max_page_size(max);
                m.user_accessible = user;
                vmem::map(fmt, &t, m).unwrap();
                let kind = expected_kind(fmt, kind);
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
                vmem::unmap(fmt, &t, fmt.canonical(base + off), len).unwrap();
                model.unmap(base + off, len);
            }
            Op::Protect {
                off,
                len,
                kind,
                user,
            } => {
                vmem::protect(fmt, &t, fmt.canonical(base + off), len, kind, user).unwrap();
                model.protect(base + off, len, expected_kind(fmt, kind), user);
            }
        }
    }
    let walked = walk_all(fmt, &t);
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
    prop_assert_eq!(as_runs(fmt, &walked), model.coalesced());
    let w = window(fmt);
    for &probe in probes {
        let lin = base + probe % w;
        let va = fmt.canonical(lin);
        let got = vmem::translate(fmt, &t, va).result.ok();
        let want = model.lookup(lin);
        prop_assert_eq!(got.map(|g| g.pa), want.map(|(pa, _)| pa), "va {:#x}", va);
        if let (Some(g), Some((_, seg))) = (got, want) {
            let mut perms = seg.kind.perms().0;
            perms.set(vmem::Perms::USER, seg.user);
            prop_assert_eq!(g.perms, fmt.representable(perms));
        }
    }
    Ok(())
}

fn case(mode: usize) -> impl Strategy<Value = (u64, Vec<Op>, Vec<u64>)> {
    let fmt = &modes()[mode].1;
    (
        prop::sample::select(bases(fmt.as_ref())),
        ops(mode),
        prop::collection::vec(any::<u64>(), 64),
    )
}

macro_rules! mode_matches_the_model {
    ($($name:ident => $mode:expr),* $(,)?) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]
            $(
                #[test]
                fn $name((base, ops, probes) in case($mode)) {
                    let (_, fmt) = &modes()[$mode];
                    run_case(fmt.as_ref(), base, &ops, &probes)?;
                }
            )*
        }
    };
}

mode_matches_the_model! {
    amd64_four_level_matches_the_model => 0,
    amd64_five_level_matches_the_model => 1,
    i686_matches_the_model => 2,
    i686_pse_matches_the_model => 3,
    i686_pae_matches_the_model => 4,
    aarch64_lower_48_matches_the_model => 5,
    aarch64_upper_48_matches_the_model => 6,
    aarch64_lower_39_matches_the_model => 7,
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
        mode in 0usize..8,
        vas in prop::collection::vec(any::<u64>(), 16),
    ) {
        let modes = modes();
        let fmt = modes[mode].1.as_ref();
        let t = image(&words);
        t.set_root(root << 12);
        let mut walk = vmem::virt_to_phys(fmt, &t, 0, u64::MAX).with_budget(BUDGET);
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
            let tr = vmem::translate(fmt, &t, va);
            prop_assert!(tr.steps().len() <= fmt.levels());
        }
        let spaces = vmem::walk_va_spaces(fmt, &t, &[root << 12, 0, 4096]).with_budget(BUDGET).collect::<Vec<_>>();
        prop_assert_eq!(spaces.len(), 3);
        // Writes over garbage: errors are fine, panics and hangs are not.
        let page = fmt.canonical(vas[0] & fmt.linear_mask() & !0xfff);
        let _ = vmem::map(fmt, &t, MapRequest::new(page, 0x1000, 0x1000, RW));
        let _ = vmem::protect(fmt, &t, page, 0x2000, RO, true);
        let result = vmem::unmap(fmt, &t, page, 0x1000);
        let refused_as_empty = matches!(result, Err(MapError::Empty { .. }));
        prop_assert!(!refused_as_empty);
        let _ = t.alloc_table();
        let _ = t.read_entry(u64::MAX);
    }
}
