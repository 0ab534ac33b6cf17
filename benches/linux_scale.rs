//! The offline commands at Linux scale, through `Debugger::monitor` as the
//! tool runs them, on tests/linux/make-scale-fixture.sh's dump (built into
//! target/linux-scale on first use): Debian's kernel with 4 GiB of RAM,
//! 13 processes each mapping a 256 MiB file page by page (~50 address
//! spaces with the KPTI copies and exited processes' roots, ~1.7 million
//! mappings).
//!
//! - `scan shared`: `vmem spaces --scan shared` finding the ~50 roots no
//!   vCPU had loaded (goal: under 0.5 s);
//! - `audit --all`: every space found, audited (goal: under 0.5 s);
//! - `info mem`, `info tlb` of the current space (`info tlb`: 65,000 lines;
//!   gdb's
//!   side of it, against QEMU's own stub, is `bench-e2e --linux-scale`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use vmem_gdbstub::target::{Debugger, Dump};

/// The fixture's dump, built if missing; `None` (with a message) when it
/// cannot be.
fn fixture() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/linux-scale");
    let built = Command::new("sh")
        .arg(root.join("tests/linux/make-scale-fixture.sh"))
        .arg(&dir)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: the Linux scale fixture could not be built (needs apt-get, gcc, python3, qemu-system-x86_64)");
        return None;
    }
    Some(dir.join("dump.elf"))
}

fn debugger(dump: &Path) -> Debugger {
    Debugger::from_dump(Dump::open(dump).unwrap()).build()
}

fn scanned(dump: &Path) -> Debugger {
    let dbg = debugger(dump);
    let out = dbg.monitor("vmem spaces --scan shared").unwrap();
    // At least the 13 processes with their KPTI copies.
    let mappings =
        |line: &str| -> Option<u64> { line.split_once(": ")?.1.split(' ').next()?.parse().ok() };
    let found = out
        .lines()
        .filter(|l| mappings(l).is_some_and(|n| n > 65_536))
        .count();
    assert!(found >= 13, "{out}");
    dbg
}

fn commands(c: &mut Criterion) {
    let Some(dump) = fixture() else { return };
    let mut group = c.benchmark_group("linux 4 GiB");
    group.sample_size(10);
    group.bench_function("scan shared", |b| {
        b.iter_batched_ref(
            || debugger(&dump),
            |dbg| black_box(dbg.monitor("vmem spaces --scan shared").unwrap()),
            BatchSize::PerIteration,
        )
    });
    let dbg = scanned(&dump);
    let out = dbg.monitor("vmem audit --all").unwrap();
    assert!(out.starts_with("audit of "), "{out}");
    group.bench_function("audit --all", |b| {
        b.iter(|| black_box(dbg.monitor("vmem audit --all").unwrap()))
    });
    // `info mem` merges neighbouring pages of the same rights (a few
    // dozen lines), `info tlb` prints each page.
    for (command, lines) in [("info mem", 10), ("info tlb", 60_000)] {
        let out = dbg.monitor(command).unwrap();
        assert!(out.lines().count() > lines, "{command}: {out}");
        group.bench_function(command, |b| {
            b.iter(|| black_box(dbg.monitor(command).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, commands);
criterion_main!(benches);
