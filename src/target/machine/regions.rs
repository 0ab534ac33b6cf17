//! lldb's memory map (`qMemoryRegionInfo`) from the page tables: a region
//! is a run of virtual addresses mapped with the same rights, or the gap
//! between two runs, so `memory region ADDR` and `memory region --all`
//! show what the guest's MMU allows.

use crate::arch::PageTableFormat;
use crate::vmem::{self, Perms, TableReadOps};

use super::paging::WALK_BUDGET;
use crate::target::machine::memory::RamRange;

/// A run of addresses with the same rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub start: u64,
    /// One past the last address (2^64 at the top).
    pub end: u128,
    pub perms: Perms,
}

/// The mapped regions of the space at `tables`' root, in address order.
pub(crate) fn mapped<O: TableReadOps>(fmt: &dyn PageTableFormat, tables: &O) -> Vec<Region> {
    let mut out: Vec<Region> = Vec::new();
    for m in vmem::virt_to_phys(fmt, tables, 0, u64::MAX)
        .with_budget(WALK_BUDGET)
        .flatten()
    {
        let perms = m.perms() & (Perms::READ | Perms::WRITE | Perms::EXEC);
        let start = m.virt_base;
        let end = u128::from(start) + u128::from(m.len);
        match out.last_mut() {
            Some(last) if last.end == u128::from(start) && last.perms == perms => last.end = end,
            _ => out.push(Region { start, end, perms }),
        }
    }
    out
}

/// Guest RAM as regions (paging off, or gdb reading physical memory).
pub(crate) fn physical(ranges: &[RamRange]) -> Vec<Region> {
    let mut out: Vec<Region> = ranges
        .iter()
        .map(|r| Region {
            start: r.gpa,
            end: u128::from(r.gpa) + u128::from(r.size),
            perms: Perms::READ | Perms::WRITE | Perms::EXEC,
        })
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

/// lldb's answer for `addr`: the region holding it (`start`, `size`,
/// `permissions`), or the unmapped gap around it (no permissions).
pub(crate) fn describe(regions: &[Region], addr: u64) -> String {
    let i = regions.partition_point(|r| r.end <= u128::from(addr));
    let (start, end, perms) = match regions.get(i) {
        Some(r) if r.start <= addr => (u128::from(r.start), r.end, Some(r.perms)),
        next => {
            let start = i.checked_sub(1).map_or(0, |p| regions[p].end);
            let end = next.map_or(1u128 << 64, |r| u128::from(r.start));
            (start, end, None)
        }
    };
    // A size of 2^64 (nothing mapped at all) is said as 2^64 - 1.
    let size = (end - start).min(u128::from(u64::MAX)) as u64;
    let mut text = format!("start:{start:x};size:{size:x};");
    if let Some(perms) = perms {
        text.push_str("permissions:r");
        if perms.contains(Perms::WRITE) {
            text.push('w');
        }
        if perms.contains(Perms::EXEC) {
            text.push('x');
        }
        text.push(';');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, end: u128, perms: Perms) -> Region {
        Region { start, end, perms }
    }

    #[test]
    fn regions_and_the_gaps_between_them() {
        let rw = Perms::READ | Perms::WRITE;
        let rx = Perms::READ | Perms::EXEC;
        let map = [
            region(0x40_0000, 0x40_1000, rw),
            region(0xffff_ffff_8000_0000, 1 << 64, rx),
        ];
        assert_eq!(describe(&map, 0), "start:0;size:400000;");
        assert_eq!(
            describe(&map, 0x40_0fff),
            "start:400000;size:1000;permissions:rw;"
        );
        assert_eq!(
            describe(&map, 0x40_1000),
            "start:401000;size:ffffffff7fbff000;"
        );
        assert_eq!(
            describe(&map, u64::MAX),
            "start:ffffffff80000000;size:80000000;permissions:rx;"
        );
        assert_eq!(describe(&[], 0x1234), "start:0;size:ffffffffffffffff;");
    }
}
