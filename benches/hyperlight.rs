//! Single-page `virt_to_phys` against hyperlight-common 0.15's, on the
//! same tables read through the same accessor (a bounds-checked byte
//! slice), in one run; the ratio is printed at the end.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use hyperlight_common::vmem as hl;
use vmem_gdbstub::arch::Amd64;
use vmem_gdbstub::vmem::{
    self, BasicMapping, BufferTables, MapRequest, MappingKind, MemoryError, PageSize, TableReadOps,
};

const RW: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: false,
});
const VA: u64 = 0xffff_ff80_0012_3000;

/// Tables in a byte slice: one accessor shape for both libraries.
#[derive(Clone, Copy)]
struct Slice<'a> {
    bytes: &'a [u8],
    root: u64,
}

impl Slice<'_> {
    #[inline]
    fn word(&self, pa: u64) -> Option<u64> {
        let at = usize::try_from(pa).ok()?;
        let bytes = self.bytes.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl TableReadOps for Slice<'_> {
    type TableAddr = u64;
    fn entry_addr(addr: u64, offset: u64) -> u64 {
        addr + offset
    }
    #[inline]
    fn read_entry(&self, addr: u64) -> Result<u64, MemoryError> {
        self.word(addr).ok_or(MemoryError { addr })
    }
    fn to_phys(addr: u64) -> u64 {
        addr
    }
    fn from_phys(addr: u64) -> u64 {
        addr
    }
    fn root_table(&self) -> u64 {
        self.root
    }
}

impl hl::TableReadOps for Slice<'_> {
    type TableAddr = u64;
    fn entry_addr(addr: u64, offset: u64) -> u64 {
        addr + offset
    }
    #[inline]
    unsafe fn read_entry(&self, addr: u64) -> u64 {
        // Outside the slice reads as an absent entry.
        self.word(addr).unwrap_or(0)
    }
    fn to_phys(addr: u64) -> u64 {
        addr
    }
    fn from_phys(addr: u64) -> u64 {
        addr
    }
    fn root_table(&self) -> u64 {
        self.root
    }
}

impl<'a> AsRef<Slice<'a>> for Slice<'a> {
    fn as_ref(&self) -> &Slice<'a> {
        self
    }
}

/// The whole mapping each library gives (all of it is kept, so neither
/// can skip computing a part of it).
fn ours(s: &Slice<'_>, va: u64) -> Option<vmem::Mapping> {
    black_box(vmem::virt_to_phys(&Amd64::FOUR_LEVEL, s, va, 1).next())?.ok()
}

fn theirs(s: &Slice<'_>, va: u64) -> Option<hl::Mapping> {
    // SAFETY: the accessor reads only inside its slice.
    black_box(unsafe { hl::virt_to_phys::<Slice<'_>>(s, va, 1) }.next())
}

fn single_page(c: &mut Criterion) {
    let t = BufferTables::new(vec![0u8; 4 << 20], 0, 0..4 << 20).unwrap();
    let m =
        MapRequest::new(VA & !0x1f_ffff, 0x40_0000, 2 << 20, RW).max_page_size(PageSize::SIZE_4K);
    vmem::map(&Amd64::FOUR_LEVEL, &t, m).unwrap();
    let root = t.root_table();
    let bytes = t.into_inner();
    let s = Slice {
        bytes: &bytes,
        root,
    };
    assert_eq!(ours(&s, VA).map(|m| m.phys_base), Some(0x52_3000));
    assert_eq!(theirs(&s, VA).map(|m| m.phys_base), Some(0x52_3000));
    let mut group = c.benchmark_group("single-page virt_to_phys, 4-level, 4K leaf");
    // Each function keeps its whole mapping (black_box inside); the
    // harness then drops it, for both alike.
    group.bench_function("vmem-gdbstub", |b| {
        b.iter(|| {
            ours(&s, black_box(VA));
        })
    });
    group.bench_function("hyperlight-common 0.15", |b| {
        b.iter(|| {
            theirs(&s, black_box(VA));
        })
    });
    group.finish();
    // The ratio, measured back to back in this run (best of 5 rounds each).
    const N: u32 = 1_000_000;
    let time = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..N {
                    f();
                }
                start.elapsed().as_nanos() as f64 / f64::from(N)
            })
            .fold(f64::MAX, f64::min)
    };
    let ours_ns = time(&|| {
        ours(&s, black_box(VA));
    });
    let theirs_ns = time(&|| {
        theirs(&s, black_box(VA));
    });
    println!(
        "ratio: vmem-gdbstub {ours_ns:.1} ns, hyperlight-common {theirs_ns:.1} ns => {:.2}x faster",
        theirs_ns / ours_ns
    );
}

criterion_group!(benches, single_page);
criterion_main!(benches);
