//! Shared helpers for the vmem tests: a `Vec`-backed physical memory and a
//! simple reference model of an address space.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;

use vmem_gdbstub::arch::PageTableFormat;
use vmem_gdbstub::vmem::{
    self, BasicMapping, BufferTables, CowMapping, Flags, Mapping, MappingKind, TableReadOps,
};

/// Physical memory size for tests: allocated lazily by the OS (calloc).
pub const MEM: usize = 1 << 30;

/// A fresh memory with a root table, tables from the whole of it.
pub fn memory() -> BufferTables<Vec<u8>> {
    memory_of(MEM)
}

/// A fresh memory of `size` bytes with a root table.
pub fn memory_of(size: usize) -> BufferTables<Vec<u8>> {
    BufferTables::new(vec![0u8; size], 0, 0..size as u64).unwrap()
}

pub const RW: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: false,
});
pub const RX: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: false,
    executable: true,
});
pub const RO: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: false,
    executable: false,
});
pub const RWX: MappingKind = MappingKind::Basic(BasicMapping {
    readable: true,
    writable: true,
    executable: true,
});
pub const COW: MappingKind = MappingKind::Cow(CowMapping {
    readable: true,
    executable: false,
});

/// Every mapping of the space, panicking on walk errors.
pub fn walk_all<F: PageTableFormat + ?Sized, O: TableReadOps>(fmt: &F, op: &O) -> Vec<Mapping> {
    vmem::virt_to_phys(fmt, op, 0, u64::MAX)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// What the model keeps per run of pages (linear addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub len: u64,
    pub pa: u64,
    pub kind: MappingKind,
    pub user: bool,
    pub flags: Flags,
}

/// A reference model: linear start -> run, no two runs overlapping.
#[derive(Debug, Default, Clone)]
pub struct Model {
    segs: BTreeMap<u64, Seg>,
}

impl Model {
    /// Split the run containing `at` (if any) so that a run starts at `at`.
    fn carve(&mut self, at: u64) {
        let Some((&start, &seg)) = self.segs.range(..at).next_back() else {
            return;
        };
        if start + seg.len > at {
            let head = at - start;
            self.segs.insert(start, Seg { len: head, ..seg });
            self.segs.insert(
                at,
                Seg {
                    len: seg.len - head,
                    pa: seg.pa + head,
                    ..seg
                },
            );
        }
    }

    fn keys_in(&self, start: u64, len: u64) -> Vec<u64> {
        self.segs
            .range(start..start + len)
            .map(|(&k, _)| k)
            .collect()
    }

    pub fn map(&mut self, start: u64, seg: Seg) {
        self.unmap(start, seg.len);
        self.segs.insert(start, seg);
    }

    pub fn unmap(&mut self, start: u64, len: u64) {
        self.carve(start);
        self.carve(start + len);
        for k in self.keys_in(start, len) {
            self.segs.remove(&k);
        }
    }

    pub fn protect(&mut self, start: u64, len: u64, kind: MappingKind, user: bool) {
        self.carve(start);
        self.carve(start + len);
        for k in self.keys_in(start, len) {
            let seg = self.segs.get_mut(&k).unwrap();
            seg.kind = kind;
            seg.user = user;
        }
    }

    /// The physical address and run of a linear address.
    pub fn lookup(&self, lin: u64) -> Option<(u64, Seg)> {
        let (&start, seg) = self.segs.range(..=lin).next_back()?;
        (lin < start + seg.len).then(|| (seg.pa + (lin - start), *seg))
    }

    /// Runs merged where contiguous with equal attributes.
    pub fn coalesced(&self) -> Vec<(u64, Seg)> {
        coalesce(self.segs.iter().map(|(&k, &s)| (k, s)))
    }
}

/// Merge `(linear start, run)` items that continue each other.
pub fn coalesce(items: impl IntoIterator<Item = (u64, Seg)>) -> Vec<(u64, Seg)> {
    let mut out: Vec<(u64, Seg)> = Vec::new();
    for (start, seg) in items {
        if let Some((last_start, last)) = out.last_mut() {
            if *last_start + last.len == start
                && last.pa + last.len == seg.pa
                && (last.kind, last.user, last.flags) == (seg.kind, seg.user, seg.flags)
            {
                last.len += seg.len;
                continue;
            }
        }
        out.push((start, seg));
    }
    out
}

/// The walk of a space as model runs (page sizes ignored).
pub fn as_runs<F: PageTableFormat + ?Sized>(fmt: &F, mappings: &[Mapping]) -> Vec<(u64, Seg)> {
    coalesce(mappings.iter().map(|m| {
        (
            fmt.linear(m.virt_base).unwrap(),
            Seg {
                len: m.len,
                pa: m.phys_base,
                kind: m.kind,
                user: m.user_accessible,
                flags: m.flags,
            },
        )
    }))
}

#[path = "../mmu/rng.rs"]
mod rng;
#[allow(unused_imports)]
pub use rng::Rng;
