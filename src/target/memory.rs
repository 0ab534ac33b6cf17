//! Guest RAM: owned host mappings, and a bounds-checked view of all
//! regions that implements the vmem table traits.
//!
//! Every guest-physical access the stub makes (memory reads for gdb, page
//! table entries, breakpoint bytes) goes through [`GuestMemory`], so a
//! hostile address can only produce a [`MemoryError`], never a host access
//! outside guest RAM.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::vmem::{AllocError, PAGE_TABLE_SIZE};
use crate::vmem::{MayNotMoveTable, MemoryError, MoveInfo, PhysAddr, TableOps, TableReadOps};

/// Anonymous host memory that backs guest RAM; unmapped on drop.
#[derive(Debug)]
pub struct GuestRam {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through raw
// pointer copies in `GuestMemory`, which tolerate concurrent guest writes.
unsafe impl Send for GuestRam {}
// SAFETY: as above; `GuestRam` hands out no references into the mapping.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Map `size` bytes of zeroed anonymous memory.
    pub fn new(size: usize) -> io::Result<GuestRam> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(GuestRam { ptr, size })
    }

    /// Host address of the first byte (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`size` describe the mapping made in `new`, which
        // nothing uses after drop (regions hold an `Arc` to this owner).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.size);
        }
    }
}

/// One region of guest-physical address space backed by host memory.
#[derive(Debug, Clone)]
pub struct RamRegion {
    /// First guest-physical address.
    pub gpa: PhysAddr,
    ram: Arc<GuestRam>,
}

impl RamRegion {
    /// `ram` appears at guest-physical `gpa`.
    pub fn new(gpa: PhysAddr, ram: Arc<GuestRam>) -> RamRegion {
        RamRegion { gpa, ram }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.ram.size as u64
    }

    /// Host address of the region's first byte.
    pub fn host_addr(&self) -> u64 {
        self.ram.host_addr()
    }
}

/// Where one region's bytes are on the host, flattened for lookups (no
/// pointer chase through the `Arc` per access).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: PhysAddr,
    end: PhysAddr,
    host: NonNull<u8>,
}

// SAFETY: `host` points into a `GuestRam` that the same `GuestMemory` keeps
// alive (its `regions`); it is only used for raw copies, like `GuestRam`.
unsafe impl Send for Span {}
// SAFETY: as above.
unsafe impl Sync for Span {}

/// All guest RAM, bounds-checked.
#[derive(Debug, Clone, Default)]
pub struct GuestMemory {
    regions: Vec<RamRegion>,
    /// `regions` as address ranges and host pointers, in the same order.
    spans: Vec<Span>,
}

impl GuestMemory {
    /// Guest memory made of `regions` (which must not overlap; checked).
    pub fn new(mut regions: Vec<RamRegion>) -> Result<GuestMemory, MemoryError> {
        regions.sort_by_key(|r| r.gpa);
        let mut spans = Vec::with_capacity(regions.len());
        for r in &regions {
            spans.push(Span {
                start: r.gpa,
                end: r
                    .gpa
                    .checked_add(r.size())
                    .ok_or(MemoryError { addr: r.gpa })?,
                host: r.ram.ptr,
            });
        }
        if let Some(pair) = spans.windows(2).find(|pair| pair[0].end > pair[1].start) {
            return Err(MemoryError {
                addr: pair[1].start,
            });
        }
        Ok(GuestMemory { regions, spans })
    }

    /// The regions, by address.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Total bytes of RAM.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(RamRegion::size).sum()
    }

    /// The host pointer and the bytes available from `gpa` to the end of
    /// its region.
    #[inline]
    fn locate(&self, gpa: PhysAddr) -> Result<(*mut u8, u64), MemoryError> {
        // A few regions (the usual case): a scan whose branches the CPU
        // predicts, so the page-table walk's chain of loads does not also
        // wait on a binary search's data dependency.
        let span = if self.spans.len() <= 4 {
            self.spans.iter().find(|r| gpa < r.end)
        } else {
            self.spans.get(self.spans.partition_point(|r| r.end <= gpa))
        };
        match span {
            Some(r) if r.start <= gpa => {
                let offset = gpa - r.start;
                // In bounds: offset < size of this mapping.
                let ptr = r.host.as_ptr().wrapping_add(offset as usize);
                Ok((ptr, r.end - gpa))
            }
            _ => Err(MemoryError { addr: gpa }),
        }
    }

    /// Copy guest memory at `gpa` into `buf`; fails, copying nothing past
    /// the gap, if any byte is not RAM.
    pub fn read(&self, gpa: PhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        Self::whole(gpa, len, self.read_prefix(gpa, buf))
    }

    /// Copy guest memory at `gpa` into `buf` up to the first byte that is
    /// not RAM; returns how many bytes were copied.
    pub fn read_prefix(&self, gpa: PhysAddr, buf: &mut [u8]) -> usize {
        self.access(gpa, buf.len(), |host, done, n| {
            // SAFETY: `locate` checked that `host .. host + n` lies inside a
            // live mapping; `buf[done..done + n]` is in bounds. Guest vCPUs
            // may write concurrently; a byte copy only sees torn values.
            unsafe { std::ptr::copy_nonoverlapping(host, buf[done..].as_mut_ptr(), n) }
        })
    }

    /// Copy `data` into guest memory at `gpa` (checked first: nothing is
    /// written unless all of it is RAM).
    pub fn write(&self, gpa: PhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        Self::whole(gpa, data.len(), self.access(gpa, data.len(), |_, _, _| {}))?;
        self.access(gpa, data.len(), |host, done, n| {
            // SAFETY: as in `read_prefix`, with the roles of the buffers swapped.
            unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), host, n) }
        });
        Ok(())
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
        let (host, avail) = self.locate(gpa)?;
        if avail >= 8 && host.cast::<u64>().is_aligned() {
            // SAFETY: `locate` checked that the 8 bytes from `host` lie in a
            // live mapping, and `host` is 8-byte aligned (page-table entries
            // always are): one volatile load of plain memory the guest may
            // be writing sees an old or new value, never UB in Rust.
            let raw = unsafe { std::ptr::read_volatile(host.cast::<u64>()) };
            return Ok(u64::from_le(raw));
        }
        let mut bytes = [0u8; 8];
        self.read(gpa, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Walk `gpa .. gpa + len` region by region, calling `copy(host,
    /// offset, n)` for each piece, up to the first byte that is not RAM;
    /// returns the bytes covered.
    fn access(
        &self,
        gpa: PhysAddr,
        len: usize,
        mut copy: impl FnMut(*mut u8, usize, usize),
    ) -> usize {
        let mut done = 0usize;
        while done < len {
            let Some(at) = gpa.checked_add(done as u64) else {
                break;
            };
            let Ok((host, avail)) = self.locate(at) else {
                break;
            };
            let n = (len - done).min(usize::try_from(avail).unwrap_or(usize::MAX));
            copy(host, done, n);
            done += n;
        }
        done
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
    mem: &'a GuestMemory,
    root: PhysAddr,
    pool: Option<&'a TablePool>,
}

impl<'a> GuestTables<'a> {
    /// The space rooted at `root` (a CR3 value without flag bits), with new
    /// tables from `pool` when writing.
    pub fn new(mem: &'a GuestMemory, root: PhysAddr, pool: Option<&'a TablePool>) -> Self {
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

    fn two_regions() -> GuestMemory {
        let a = Arc::new(GuestRam::new(8192).unwrap());
        let b = Arc::new(GuestRam::new(4096).unwrap());
        GuestMemory::new(vec![RamRegion::new(0x1000, a), RamRegion::new(0x3000, b)]).unwrap()
    }

    #[test]
    fn accesses_are_bounds_checked_and_split_across_regions() {
        let mem = two_regions();
        mem.write(0x2ffc, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut buf = [0u8; 8];
        mem.read(0x2ffc, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
        for bad in [0, 0xfff, 0x4000, 0x3ffd, u64::MAX - 3, u64::MAX] {
            assert!(mem.read(bad, &mut buf).is_err(), "{bad:#x}");
        }
        // A write that would run off the end writes nothing.
        assert!(mem.write(0x3ffc, &[9; 8]).is_err());
        mem.read(0x3ff8, &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        assert!(GuestMemory::new(vec![
            RamRegion::new(0, Arc::new(GuestRam::new(8192).unwrap())),
            RamRegion::new(4096, Arc::new(GuestRam::new(4096).unwrap())),
        ])
        .is_err());
    }
}
