//! Guest RAM as the stub sees it: the VMM's own `vm-memory` guest memory
//! (e.g. its `GuestMemoryMmap`), shared, behind one handle that also
//! implements the vmem table traits.
//!
//! Every guest-physical access the stub makes (memory reads for gdb, page
//! table entries, breakpoint bytes) goes through [`GuestRam`], and from
//! there through `vm-memory`'s bounds-checked, volatile accessors, so a
//! hostile address can only produce a [`MemoryError`], never a host access
//! outside guest RAM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::vmem::{AllocError, PAGE_TABLE_SIZE};
use crate::vmem::{MayNotMoveTable, MemoryError, MoveInfo, PhysAddr, TableOps, TableReadOps};

/// One contiguous range of guest RAM and where the host has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// First guest-physical address.
    pub gpa: PhysAddr,
    /// Size in bytes.
    pub size: u64,
    /// Host address of the first byte in this process (0: none), e.g. for
    /// `KVM_SET_USER_MEMORY_REGION` or `monitor gpa2hva`.
    pub host: u64,
}

impl RamRange {
    /// Whether `gpa` lies in this range.
    pub fn contains(&self, gpa: PhysAddr) -> bool {
        gpa >= self.gpa && gpa - self.gpa < self.size
    }
}

/// What the stub needs of a guest memory: `vm-memory`'s trait, made
/// object-safe so the debugger does not take a type parameter (and
/// implemented by memory dumps too).
pub(crate) trait RamAccess: Send + Sync {
    /// Copy from `gpa` into `buf` up to the first byte that is not RAM.
    fn read(&self, gpa: PhysAddr, buf: &mut [u8]) -> usize;
    /// Whether all of `gpa .. gpa + len` is writable RAM (by default none
    /// is: a dump is read-only, gdb's writes are refused).
    fn covers(&self, _gpa: PhysAddr, _len: usize) -> bool {
        false
    }
    /// Copy `data` to `gpa` up to the first byte that is not RAM (by
    /// default nothing is written).
    fn write(&self, _gpa: PhysAddr, _data: &[u8]) -> usize {
        0
    }
    /// An aligned little-endian word.
    fn load_u64(&self, gpa: PhysAddr) -> Option<u64>;
    /// The RAM ranges.
    fn ranges(&self) -> Vec<RamRange>;
    /// What holds range `index` of [`RamAccess::ranges`], in a word or
    /// two (`monitor info mtree`).
    fn describe(&self, index: usize) -> String {
        format!("ram{index} KVM")
    }
    /// Why `gpa`, inside a RAM range, cannot be read, where the memory
    /// knows (a page a dump left out); `None`: it can, or it is no RAM.
    fn missing(&self, _gpa: PhysAddr) -> Option<String> {
        None
    }
}

impl<M: GuestMemory + Send + Sync> RamAccess for M {
    fn read(&self, gpa: PhysAddr, buf: &mut [u8]) -> usize {
        Bytes::read(self, buf, GuestAddress(gpa)).unwrap_or(0)
    }

    fn covers(&self, gpa: PhysAddr, len: usize) -> bool {
        self.check_range(GuestAddress(gpa), len)
    }

    fn write(&self, gpa: PhysAddr, data: &[u8]) -> usize {
        Bytes::write(self, data, GuestAddress(gpa)).unwrap_or(0)
    }

    fn load_u64(&self, gpa: PhysAddr) -> Option<u64> {
        // An aligned entry is one atomic load, as the MMU reads it (the
        // region's own `load`: no slice iterator on this hot path).
        let (region, offset) = self.to_region_addr(GuestAddress(gpa))?;
        region
            .load::<u64>(offset, Ordering::Relaxed)
            .ok()
            .map(u64::from_le)
    }

    fn ranges(&self) -> Vec<RamRange> {
        self.iter()
            .map(|r| RamRange {
                gpa: r.start_addr().0,
                size: r.len(),
                host: r
                    .get_host_address(MemoryRegionAddress(0))
                    .map_or(0, |p| p as u64),
            })
            .collect()
    }
}

/// All guest RAM, bounds-checked: a cheap, shared handle on the VMM's
/// `vm-memory` guest memory.
#[derive(Clone)]
pub struct GuestRam {
    mem: Arc<dyn RamAccess>,
    ranges: Arc<[RamRange]>,
    /// The ranges vm-memory gave a host address for, as raw spans: the
    /// page-table walker's 8-byte loads go straight there (vm-memory's own
    /// path costs 3.7x per translation; `benches/kvm.rs`).
    spans: Arc<[Span]>,
}

/// One range of guest RAM where the host has it, for the walker's loads.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: PhysAddr,
    end: PhysAddr,
    host: *const u8,
}

// SAFETY: `host` points into a mapping that the memory owns
// (`HostSpans::Trusted`: vm-memory's `GuestMemoryMmap` or a dump's file
// mapping) and that the same `GuestRam` keeps alive (`mem`); it is only
// used for atomic loads, which tolerate concurrent guest writes.
unsafe impl Send for Span {}
// SAFETY: as above.
unsafe impl Sync for Span {}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("ranges", &self.ranges)
            .finish()
    }
}

/// Whether a memory's host addresses may be loaded through directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostSpans {
    /// Yes: the regions are mappings the memory owns and keeps (vm-memory's
    /// `GuestMemoryMmap`, a dump's file mapping).
    Trusted,
    /// No: a `GuestMemory` of another type, whose `get_host_address` is a
    /// safe method it may implement any way; every access goes through its
    /// own bounds-checked accessors.
    Untrusted,
}

impl GuestRam {
    /// The stub's view of `memory` (e.g. a clone of the VMM's
    /// `GuestMemoryMmap`, which shares the mappings). Its regions are
    /// fixed from here on: a VMM that hot-plugs memory makes a new one.
    /// The page-table walker loads straight from the regions' mappings,
    /// which `memory` owns and this `GuestRam` keeps alive.
    pub fn new<B>(memory: GuestMemoryMmap<B>) -> GuestRam
    where
        B: 'static,
        GuestMemoryMmap<B>: GuestMemory + Send + Sync,
    {
        GuestRam::from_access(memory, HostSpans::Trusted)
    }

    /// The stub's view of a guest memory of any `vm-memory` type: every
    /// access goes through its own accessors (no direct loads, so nothing
    /// rests on its `get_host_address`; the walker is ~3x slower than with
    /// [`GuestRam::new`]), and [`crate::target::KvmMemslots`] cannot lay
    /// out its memslots.
    pub fn from_memory<M: GuestMemory + Send + Sync + 'static>(memory: M) -> GuestRam {
        GuestRam::from_access(memory, HostSpans::Untrusted)
    }

    /// [`GuestRam::new`] for a guest memory of another `vm-memory` type
    /// whose regions are mappings all the same (Firecracker's
    /// `GuestRegionMmapExt`, say): the walker loads straight from them, and
    /// [`crate::target::KvmMemslots`] hands them to KVM.
    ///
    /// # Safety
    ///
    /// For every region, `get_host_address(MemoryRegionAddress(0))` must
    /// give the start of a host mapping of the region's whole length,
    /// readable and writable, that stays mapped at that address as long as
    /// `memory` lives (the returned `GuestRam` keeps it).
    pub unsafe fn with_host_mappings<M: GuestMemory + Send + Sync + 'static>(
        memory: M,
    ) -> GuestRam {
        GuestRam::from_access(memory, HostSpans::Trusted)
    }

    /// Guest RAM from any source of it (vm-memory, a dump).
    pub(crate) fn from_access(memory: impl RamAccess + 'static, host: HostSpans) -> GuestRam {
        let ranges: Arc<[RamRange]> = memory.ranges().into();
        let spans = ranges
            .iter()
            .filter(|r| r.host != 0 && host == HostSpans::Trusted)
            .filter_map(|r| {
                Some(Span {
                    start: r.gpa,
                    end: r.gpa.checked_add(r.size)?,
                    host: r.host as *const u8,
                })
            })
            .collect();
        GuestRam {
            mem: Arc::new(memory),
            ranges,
            spans,
        }
    }

    /// The RAM ranges whose host mapping this `GuestRam` trusts and keeps
    /// alive (what may be handed to KVM as memslots).
    pub(crate) fn host_ranges(&self) -> Vec<RamRange> {
        self.spans
            .iter()
            .map(|s| RamRange {
                gpa: s.start,
                size: s.end - s.start,
                host: s.host as u64,
            })
            .collect()
    }

    /// An aligned `u64` at `gpa` read straight from its span, if one has it.
    #[inline]
    fn load_from_span(&self, gpa: PhysAddr) -> Option<u64> {
        // A few spans (the usual case): a scan whose branches the CPU
        // predicts, so the walk's chain of loads does not also wait on a
        // binary search's data dependency.
        let span = if self.spans.len() <= 4 {
            self.spans.iter().find(|s| gpa < s.end)
        } else {
            self.spans.get(self.spans.partition_point(|s| s.end <= gpa))
        }?;
        if gpa < span.start || span.end - gpa < 8 || !gpa.is_multiple_of(8) {
            return None;
        }
        let offset = usize::try_from(gpa - span.start).ok()?;
        // SAFETY: `start <= gpa` and `gpa + 8 <= end`, so the 8 bytes lie in
        // the span's live mapping (see `Span`); `gpa` is 8-aligned and every
        // vm-memory region is page-aligned on the host, so the pointer is
        // aligned for an atomic load, which sees an old or a new value of a
        // word the guest may be writing, as the MMU would.
        let word = unsafe { AtomicU64::from_ptr(span.host.add(offset).cast::<u64>().cast_mut()) };
        Some(u64::from_le(word.load(Ordering::Relaxed)))
    }

    /// The RAM ranges, by address.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// What holds range `index` of [`GuestRam::ranges`] (a memslot, a
    /// piece of a dump file), in a word or two.
    pub fn describe(&self, index: usize) -> String {
        self.mem.describe(index)
    }

    /// Why `gpa` cannot be read, where the memory knows more than "not
    /// RAM" (a page a kdump file left out).
    pub fn why_unreadable(&self, gpa: PhysAddr) -> Option<String> {
        self.mem.missing(gpa)
    }

    /// Total bytes of RAM.
    pub fn total_size(&self) -> u64 {
        self.ranges.iter().map(|r| r.size).sum()
    }

    /// Copy guest memory at `gpa` into `buf`; fails if any byte is not RAM.
    pub fn read(&self, gpa: PhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let done = self.read_prefix(gpa, buf);
        Self::whole(gpa, buf.len(), done)
    }

    /// Copy guest memory at `gpa` into `buf` up to the first byte that is
    /// not RAM; returns how many bytes were copied.
    pub fn read_prefix(&self, gpa: PhysAddr, buf: &mut [u8]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        self.mem.read(gpa, buf)
    }

    /// Copy `data` into guest memory at `gpa` (checked first: nothing is
    /// written unless all of it is RAM).
    pub fn write(&self, gpa: PhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.mem.covers(gpa, data.len()) {
            let ok = self.mem.read(gpa, &mut vec![0; data.len()]);
            return Err(MemoryError {
                addr: gpa.wrapping_add(ok as u64),
            });
        }
        Self::whole(gpa, data.len(), self.mem.write(gpa, data))
    }

    /// `Ok` if an access of `len` bytes at `gpa` covered `done` = all of them.
    fn whole(gpa: PhysAddr, len: usize, done: usize) -> Result<(), MemoryError> {
        if done == len {
            Ok(())
        } else {
            Err(MemoryError {
                addr: gpa.wrapping_add(done as u64),
            })
        }
    }

    /// Read a little-endian `u64` (the page-table walker's hot path).
    #[inline]
    pub fn read_u64(&self, gpa: PhysAddr) -> Result<u64, MemoryError> {
        match self.load_from_span(gpa) {
            Some(entry) => Ok(entry),
            None => self.read_u64_elsewhere(gpa),
        }
    }

    /// `read_u64` where no span has the word: unaligned, across regions,
    /// or in memory vm-memory gives no host address for.
    #[cold]
    #[inline(never)]
    fn read_u64_elsewhere(&self, gpa: PhysAddr) -> Result<u64, MemoryError> {
        if gpa.is_multiple_of(8) {
            if let Some(entry) = self.mem.load_u64(gpa) {
                return Ok(entry);
            }
        }
        let mut bytes = [0u8; 8];
        self.read(gpa, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

/// A guest-physical range from which new page tables are taken.
#[derive(Debug)]
pub struct TablePool {
    next: std::sync::Mutex<std::ops::Range<PhysAddr>>,
}

impl TablePool {
    /// Tables from `range` (page-aligned guest-physical addresses).
    pub fn new(range: std::ops::Range<PhysAddr>) -> TablePool {
        TablePool {
            next: std::sync::Mutex::new(range),
        }
    }

    /// Bytes still free.
    pub fn remaining(&self) -> u64 {
        let range = self.next.lock().unwrap_or_else(|e| e.into_inner());
        range.end.saturating_sub(range.start)
    }

    fn take(&self) -> Result<PhysAddr, AllocError> {
        let mut range = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let size = PAGE_TABLE_SIZE as u64;
        if range.end.saturating_sub(range.start) < size {
            return Err(AllocError::PoolExhausted);
        }
        let table = range.start;
        range.start += size;
        Ok(table)
    }
}

/// The page tables of one address space in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct GuestTables<'a> {
    mem: &'a GuestRam,
    root: PhysAddr,
    pool: Option<&'a TablePool>,
}

impl<'a> GuestTables<'a> {
    /// The space rooted at `root` (a CR3 value without flag bits), with new
    /// tables from `pool` when writing.
    pub fn new(mem: &'a GuestRam, root: PhysAddr, pool: Option<&'a TablePool>) -> Self {
        GuestTables { mem, root, pool }
    }
}

impl TableReadOps for GuestTables<'_> {
    type TableAddr = PhysAddr;

    #[inline]
    fn entry_addr(addr: PhysAddr, entry_offset: u64) -> PhysAddr {
        addr.wrapping_add(entry_offset)
    }

    #[inline]
    fn read_entry(&self, addr: PhysAddr) -> Result<u64, MemoryError> {
        self.mem.read_u64(addr)
    }

    fn to_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn from_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn root_table(&self) -> PhysAddr {
        self.root
    }
}

impl TableOps for GuestTables<'_> {
    type TableMovability = MayNotMoveTable;

    fn alloc_table(&self) -> Result<PhysAddr, AllocError> {
        let table = self.pool.ok_or(AllocError::NoPool)?.take()?;
        self.mem
            .write(table, &[0u8; PAGE_TABLE_SIZE])
            .map_err(|_| AllocError::PoolExhausted)?;
        Ok(table)
    }

    fn write_entry(
        &self,
        addr: PhysAddr,
        entry: u64,
    ) -> Result<Option<MoveInfo<Self>>, MemoryError> {
        self.mem.write(addr, &entry.to_le_bytes())?;
        Ok(None)
    }

    fn update_root(&self, new_root: MoveInfo<Self>) {
        match new_root {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn two_regions() -> GuestRam {
        let ranges = [(GuestAddress(0x1000), 8192), (GuestAddress(0x3000), 4096)];
        GuestRam::new(GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap())
    }

    #[test]
    fn accesses_are_bounds_checked_and_split_across_regions() {
        let mem = two_regions();
        mem.write(0x2ffc, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut buf = [0u8; 8];
        mem.read(0x2ffc, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(mem.read_u64(0x2ffc).unwrap(), 0x0807_0605_0403_0201);
        for bad in [0, 0xfff, 0x4000, 0x3ffd, u64::MAX - 3, u64::MAX] {
            assert!(mem.read(bad, &mut buf).is_err(), "{bad:#x}");
            assert!(mem.read_u64(bad).is_err(), "{bad:#x}");
        }
        // A write that would run off the end writes nothing.
        assert_eq!(
            mem.write(0x3ffc, &[9; 8]),
            Err(MemoryError { addr: 0x4000 })
        );
        mem.read(0x3ff8, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        assert_eq!(mem.read_prefix(0x3ffc, &mut buf), 4);
        assert_eq!(mem.total_size(), 12288);
    }
}
