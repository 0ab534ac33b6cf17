//! Random garbage page-table images, many of them: every operation ends,
//! within its budget, without a panic. 20,000 images normally;
//! VMEM_GDBSTUB_LONG=1 runs 1,000,000.

mod support;

use support::{Rng, RW};
use vmem_gdbstub::arch::{Amd64, PageTableFormat};
use vmem_gdbstub::vmem::{self, BufferTables, MapRequest, WalkError};

const TABLES: u64 = 8;
const BUDGET: u64 = 20_000;

/// Entries biased to be present and to point inside the image (so walks
/// go deep and loop), sometimes anywhere, sometimes at the top of memory.
fn entry(rng: &mut Rng) -> u64 {
    let noise = rng.next();
    match noise % 8 {
        0 => 0,
        1 => noise,
        2 => 0x000f_ffff_ffff_f000 | (noise & 0xfff) | 1,
        _ => ((noise >> 8) % (TABLES + 1)) << 12 | (noise & 0x8000_0000_0000_0f7f) | 1,
    }
}

#[test]
fn garbage_images_never_panic_and_always_end() {
    let long = std::env::var("VMEM_GDBSTUB_LONG").is_ok_and(|v| v == "1");
    let images: u64 = if long { 1_000_000 } else { 20_000 };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stats = [0u64; 4]; // mappings, errors, budget stops, map successes
    let mut bytes = vec![0u8; (TABLES as usize) * 4096];
    for image in 0..images {
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&entry(&mut rng).to_le_bytes());
        }
        let len = bytes.len() as u64;
        let t = BufferTables::with_root(std::mem::take(&mut bytes), 0, len - 4096..len, 0).unwrap();
        t.set_root((rng.next() % TABLES) << 12);
        let fmt = Amd64::new(image % 2 == 1);
        for item in vmem::virt_to_phys(&fmt, &t, 0, u64::MAX).with_budget(BUDGET) {
            match item {
                Ok(_) => stats[0] += 1,
                Err(WalkError::BudgetExhausted { visited }) => {
                    assert_eq!(visited, BUDGET);
                    stats[2] += 1;
                }
                Err(_) => stats[1] += 1,
            }
        }
        let va = fmt.canonical(rng.next() & fmt.linear_mask() & !0xfff);
        assert!(vmem::translate(&fmt, &t, va).steps().len() <= fmt.levels());
        if vmem::map(&fmt, &t, MapRequest::new(va, 0x2000, 0x1000, RW)).is_ok() {
            stats[3] += 1;
        }
        let _ = vmem::protect(&fmt, &t, va, 0x1000, RW, true);
        let _ = vmem::unmap(&fmt, &t, va, 0x1000);
        if image % 64 == 0 {
            let roots = [0, 0x1000, (rng.next() % TABLES) << 12];
            assert_eq!(
                vmem::walk_va_spaces(&fmt, &t, &roots)
                    .with_budget(BUDGET)
                    .count(),
                3
            );
        }
        bytes = t.into_inner();
    }
    eprintln!(
        "{images} images: {} mappings, {} bad entries, {} walks cut by the budget, {} maps succeeded",
        stats[0], stats[1], stats[2], stats[3]
    );
    assert!(
        stats[0] > 0 && stats[1] > 0 && stats[2] > 0,
        "the images exercise every path"
    );
}
