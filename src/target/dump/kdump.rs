//! kdump-compressed dumps (makedumpfile's format, also QEMU's
//! `dump-guest-memory -z/-l/-s` and `virsh dump --format=kdump-*`), plain
//! or flattened (`file_view`).
//!
//! The layout, in blocks of the dump's page size: the `disk_dump_header`
//! ("KDUMP   ", version, utsname, block size, bitmap size, `max_mapnr`,
//! CPU count), the `kdump_sub_header` (`phys_base`, dump level, where the
//! VMCOREINFO and the ELF notes are, 64-bit `max_mapnr`), two bitmaps (the
//! pages that are RAM; the pages dumped), then one 24-byte `page_desc` per
//! dumped page in page order (file offset, size, compression flags), and
//! the pages, each compressed with zlib, LZO, snappy or zstd, or raw.
//!
//! Nothing is read ahead but the headers, bitmaps and notes: a page is
//! found by counting the dumped pages before it (a rank over the bitmap)
//! and decompressed when read, into a small cache. A page that is RAM but
//! was not dumped (makedumpfile's dump level excluded it: free, cache,
//! user or zero pages) is not RAM here — reads stop there and say why —,
//! never zeros. Every header field, descriptor and page is checked before
//! use: a lying file gives a [`DumpError`] or an unreadable page, never a
//! read outside the file or a panic.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex};

use log::{debug, warn};

use crate::target::dump::error::DumpError;
use crate::target::dump::file_view::FileView;
use crate::target::machine::memory::{RamAccess, RamRange};
use crate::target::sync::lock;
use crate::vmem::PhysAddr;

/// A kdump file's signature.
pub(crate) const KDUMP_SIGNATURE: &[u8] = b"KDUMP   ";

/// Page (and header status) flags: how a page is compressed.
const COMPRESSED_ZLIB: u32 = 0x1;
const COMPRESSED_LZO: u32 = 0x2;
const COMPRESSED_SNAPPY: u32 = 0x4;
const COMPRESSED_ZSTD: u32 = 0x20;
const COMPRESSED: u32 = COMPRESSED_ZLIB | COMPRESSED_LZO | COMPRESSED_SNAPPY | COMPRESSED_ZSTD;
/// Header status: the dump was cut short (the disk filled up); pages past
/// that point have no data.
const STATUS_INCOMPLETE: u32 = 0x8;

/// Header fields, by offset in `disk_dump_header` (64-bit layout).
const HEADER_VERSION: usize = 8;
const UTS_MACHINE: usize = 12 + 4 * 65;
const STATUS: usize = 424;
const BLOCK_SIZE: usize = 428;
const SUB_HDR_SIZE: usize = 432;
const BITMAP_BLOCKS: usize = 436;
const MAX_MAPNR: usize = 440;
const NR_CPUS: usize = 460;
/// `kdump_sub_header` fields, by offset in its block.
const DUMP_LEVEL: usize = 8;
const OFFSET_VMCOREINFO: usize = 32;
const SIZE_VMCOREINFO: usize = 40;
const OFFSET_NOTE: usize = 48;
const SIZE_NOTE: usize = 56;
const MAX_MAPNR_64: usize = 96;
/// A `page_desc`: offset (8), size (4), flags (4), page flags (8).
const DESC_SIZE: u64 = 24;
/// Notes or VMCOREINFO longer than this are refused as lies.
const MAX_NOTES: u64 = 16 << 20;
/// Pages kept decompressed.
const CACHED_PAGES: usize = 512;

/// What the headers of a kdump file say, beyond its RAM.
#[derive(Debug)]
pub(crate) struct KdumpHeaders {
    /// The ELF notes (per CPU: `NT_PRSTATUS`, QEMU's CPU state …).
    pub(crate) notes: Vec<u8>,
    /// The VMCOREINFO text, if the dump has one.
    pub(crate) vmcoreinfo: Option<Vec<u8>>,
    /// `utsname.machine`: `x86_64`, `aarch64` …
    pub(crate) machine: String,
    /// How the pages are compressed, e.g. `kdump-zlib`.
    pub(crate) format: String,
}

/// Guest RAM in a kdump file.
pub(crate) struct KdumpMemory {
    view: FileView,
    block_size: u64,
    /// Pages covered by the bitmaps.
    max_pfn: u64,
    /// Bit per page: RAM (first bitmap) …
    present: Vec<u64>,
    /// … and dumped (second bitmap).
    dumped: Vec<u64>,
    /// Dumped pages before each word of `dumped` (the rank).
    dumped_before: Vec<u64>,
    /// Where the page descriptors start.
    descs: u64,
    /// makedumpfile's dump level (which kinds of page it left out).
    dump_level: i32,
    incomplete: bool,
    /// Decompressed pages by their data's file offset (zero pages share
    /// one), and the order they came in (the oldest goes first).
    cache: Mutex<PageCache>,
}

#[derive(Default)]
struct PageCache {
    pages: HashMap<u64, Option<Arc<[u8]>>>,
    order: VecDeque<u64>,
}

impl std::fmt::Debug for KdumpMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdumpMemory")
            .field("block_size", &self.block_size)
            .field("max_pfn", &self.max_pfn)
            .field("dump_level", &self.dump_level)
            .finish_non_exhaustive()
    }
}

/// Read the headers of the kdump file in `view`: its RAM, and what else it
/// holds.
pub(crate) fn open(view: FileView) -> Result<(KdumpMemory, KdumpHeaders), DumpError> {
    let bad = |why: String| DumpError::Kdump(why);
    let header = view
        .bytes(0, 464)
        .ok_or_else(|| bad("the header is cut short".into()))?;
    if !header.starts_with(KDUMP_SIGNATURE) {
        return Err(bad("no KDUMP signature".into()));
    }
    let i32_at =
        |b: &[u8], at: usize| i32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let version = i32_at(&header, HEADER_VERSION);
    let block_size = i32_at(&header, BLOCK_SIZE);
    if !(1024..=1 << 16).contains(&block_size) || block_size.count_ones() != 1 {
        return Err(bad(format!("block size {block_size}")));
    }
    let block_size = block_size as u64;
    let sub_blocks = i32_at(&header, SUB_HDR_SIZE);
    let bitmap_blocks = u32_at(&header, BITMAP_BLOCKS) as u64;
    let status = u32_at(&header, STATUS);
    let nr_cpus = i32_at(&header, NR_CPUS);
    if !(1..=1 << 20).contains(&sub_blocks) || !(0..=1 << 16).contains(&nr_cpus) {
        return Err(bad(format!(
            "{sub_blocks} sub-header blocks, {nr_cpus} CPUs"
        )));
    }
    let machine = cstr(&header[UTS_MACHINE..UTS_MACHINE + 65]);
    let sub = view
        .bytes(block_size, 104)
        .ok_or_else(|| bad("the sub-header is cut short".into()))?;
    let max_pfn = if version >= 6 {
        u64_at(&sub, MAX_MAPNR_64)
    } else {
        u32_at(&header, MAX_MAPNR) as u64
    };
    let bitmap_at = (1 + sub_blocks as u64) * block_size;
    let bitmap_len = bitmap_blocks
        .checked_mul(block_size)
        .ok_or_else(|| bad(format!("{bitmap_blocks} bitmap blocks")))?;
    let half = bitmap_len / 2;
    if half.checked_mul(8).is_none_or(|bits| bits < max_pfn) || max_pfn > 1 << 40 {
        return Err(bad(format!(
            "bitmaps of {bitmap_len:#x} bytes for {max_pfn:#x} pages"
        )));
    }
    let words = max_pfn.div_ceil(64) as usize;
    // Both bitmaps are read (and a rank kept per word): they must be in
    // the file, not only claimed (a flattened file's gaps read as zeros).
    if (words as u64) * 16 > view.stored_len() {
        return Err(DumpError::Cut {
            what: "bitmaps",
            end: bitmap_at.saturating_add(words as u64 * 16),
            file_len: view.stored_len(),
        });
    }
    let bitmap = |at: u64| -> Result<Vec<u64>, DumpError> {
        let bytes = view.bytes(at, words * 8).ok_or(DumpError::Cut {
            what: "bitmaps",
            end: at + words as u64 * 8,
            file_len: view.len(),
        })?;
        let mut out: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
            .collect();
        // Bits past the last page mean nothing.
        if max_pfn % 64 != 0 {
            if let Some(last) = out.last_mut() {
                *last &= (1u64 << (max_pfn % 64)) - 1;
            }
        }
        Ok(out)
    };
    let present = bitmap(bitmap_at)?;
    let dumped = bitmap(bitmap_at + half)?;
    let mut dumped_before = Vec::with_capacity(words);
    let mut count = 0u64;
    for w in &dumped {
        dumped_before.push(count);
        count += w.count_ones() as u64;
    }
    let descs = bitmap_at + bitmap_len;
    let descs_end = descs + count * DESC_SIZE;
    if descs_end > view.len() {
        return Err(DumpError::Cut {
            what: "page descriptors",
            end: descs_end,
            file_len: view.len(),
        });
    }
    let area = |offset: u64, size: u64, what: &'static str| -> Result<Option<Vec<u8>>, DumpError> {
        if size == 0 || version < 3 {
            return Ok(None);
        }
        if size > MAX_NOTES {
            return Err(bad(format!("{what} of {size:#x} bytes")));
        }
        let bytes = view.bytes(offset, size as usize).ok_or(DumpError::Cut {
            what,
            end: offset.saturating_add(size),
            file_len: view.len(),
        })?;
        Ok(Some(bytes.into_owned()))
    };
    let vmcoreinfo = area(
        u64_at(&sub, OFFSET_VMCOREINFO),
        u64_at(&sub, SIZE_VMCOREINFO),
        "VMCOREINFO",
    )?;
    let notes = if version >= 4 {
        area(u64_at(&sub, OFFSET_NOTE), u64_at(&sub, SIZE_NOTE), "notes")?
    } else {
        None
    };
    let codec = match status & COMPRESSED {
        COMPRESSED_ZLIB => "kdump-zlib",
        COMPRESSED_LZO => "kdump-lzo",
        COMPRESSED_SNAPPY => "kdump-snappy",
        COMPRESSED_ZSTD => "kdump-zstd",
        _ => "kdump (uncompressed)",
    };
    let incomplete = status & STATUS_INCOMPLETE != 0;
    let dump_level = i32_at(&sub, DUMP_LEVEL);
    let format = format!(
        "{codec}{}, dump level {dump_level}, {} of {} RAM pages dumped{}",
        if view.is_flattened() {
            " (flattened)"
        } else {
            ""
        },
        count,
        present.iter().map(|w| w.count_ones() as u64).sum::<u64>(),
        if incomplete { ", incomplete" } else { "" }
    );
    debug!("kdump: {format}, {max_pfn:#x} pages of {block_size} bytes, {nr_cpus} CPUs, {machine}");
    let memory = KdumpMemory {
        view,
        block_size,
        max_pfn,
        present,
        dumped,
        dumped_before,
        descs,
        dump_level,
        incomplete,
        cache: Mutex::default(),
    };
    Ok((
        memory,
        KdumpHeaders {
            notes: notes.unwrap_or_default(),
            vmcoreinfo,
            machine,
            format,
        },
    ))
}

/// A NUL-padded C string.
fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Bit `pfn` of a bitmap.
fn bit(map: &[u64], pfn: u64) -> bool {
    map.get((pfn / 64) as usize)
        .is_some_and(|w| w >> (pfn % 64) & 1 == 1)
}

/// Decompress `input` (a page compressed as `flags` says) into `out`,
/// which it must fill exactly.
fn decompress(flags: u32, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let filled = match flags & COMPRESSED {
        COMPRESSED_ZLIB => {
            let mut z = flate2::Decompress::new(true);
            z.decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| format!("zlib: {e}"))?;
            z.total_out() as usize
        }
        COMPRESSED_LZO => {
            lzo1x::decompress(input, out).map_err(|e| format!("lzo: {e:?}"))?;
            out.len()
        }
        COMPRESSED_SNAPPY => snap::raw::Decoder::new()
            .decompress(input, out)
            .map_err(|e| format!("snappy: {e}"))?,
        COMPRESSED_ZSTD => {
            let mut decoder =
                ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| format!("zstd: {e}"))?;
            let mut n = 0;
            while n < out.len() {
                match decoder.read(&mut out[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("zstd: {e}")),
                }
            }
            n
        }
        other => return Err(format!("compression flags {other:#x}")),
    };
    if filled != out.len() {
        return Err(format!("{filled} bytes, not a page"));
    }
    Ok(())
}

impl KdumpMemory {
    /// Run `f` on page `pfn`'s bytes, if the page was dumped and reads
    /// back whole.
    fn with_page<R>(&self, pfn: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if pfn >= self.max_pfn || !bit(&self.dumped, pfn) {
            return None;
        }
        let word = (pfn / 64) as usize;
        let below = self.dumped[word] & ((1u64 << (pfn % 64)) - 1);
        let index = self.dumped_before[word] + below.count_ones() as u64;
        let desc = self
            .view
            .bytes(self.descs + index * DESC_SIZE, DESC_SIZE as usize)?;
        let offset = u64::from_le_bytes(desc[0..8].try_into().ok()?);
        let size = u32::from_le_bytes(desc[8..12].try_into().ok()?) as u64;
        let flags = u32::from_le_bytes(desc[12..16].try_into().ok()?);
        let raw = flags & COMPRESSED == 0;
        if offset == 0 || size == 0 || size > self.block_size || (raw && size != self.block_size) {
            debug!("kdump: page {pfn:#x} has descriptor offset {offset:#x}, {size} bytes, flags {flags:#x}: unreadable");
            return None;
        }
        let data = self.view.bytes(offset, size as usize)?;
        if raw {
            return Some(f(&data));
        }
        if let Some(cached) = lock(&self.cache).pages.get(&offset) {
            return cached.as_deref().map(f);
        }
        let mut page = vec![0u8; self.block_size as usize];
        let page: Option<Arc<[u8]>> = match decompress(flags, &data, &mut page) {
            Ok(()) => Some(page.into()),
            Err(why) => {
                warn!("kdump: page {pfn:#x} (at byte {offset:#x} of the file) does not decompress: {why}");
                None
            }
        };
        let result = page.as_deref().map(f);
        let mut cache = lock(&self.cache);
        if cache.order.len() >= CACHED_PAGES {
            if let Some(old) = cache.order.pop_front() {
                cache.pages.remove(&old);
            }
        }
        cache.order.push_back(offset);
        cache.pages.insert(offset, page);
        result
    }
}

impl RamAccess for KdumpMemory {
    fn read(&self, gpa: PhysAddr, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = gpa.checked_add(done as u64) else {
                break;
            };
            let (pfn, off) = (at / self.block_size, (at % self.block_size) as usize);
            let n = (self.block_size as usize - off).min(buf.len() - done);
            let copied = self.with_page(pfn, |page| {
                buf[done..done + n].copy_from_slice(&page[off..off + n]);
            });
            if copied.is_none() {
                break;
            }
            done += n;
        }
        done
    }

    fn load_u64(&self, gpa: PhysAddr) -> Option<u64> {
        let mut word = [0u8; 8];
        (self.read(gpa, &mut word) == 8).then(|| u64::from_le_bytes(word))
    }

    fn ranges(&self) -> Vec<RamRange> {
        let mut ranges: Vec<RamRange> = Vec::new();
        let mut add = |pfn: u64, pages: u64| {
            let (gpa, size) = (pfn * self.block_size, pages * self.block_size);
            match ranges.last_mut() {
                Some(last) if last.gpa + last.size == gpa => last.size += size,
                _ => ranges.push(RamRange { gpa, size, host: 0 }),
            }
        };
        for (i, &word) in self.present.iter().enumerate() {
            let base = i as u64 * 64;
            match word {
                0 => {}
                u64::MAX => add(base, 64),
                _ => (0..64)
                    .filter(|b| word >> b & 1 == 1)
                    .for_each(|b| add(base + b, 1)),
            }
        }
        ranges
    }

    fn describe(&self, _index: usize) -> String {
        "kdump".into()
    }

    fn missing(&self, gpa: PhysAddr) -> Option<String> {
        let pfn = gpa / self.block_size;
        if pfn >= self.max_pfn || !bit(&self.present, pfn) {
            return None;
        }
        if !bit(&self.dumped, pfn) {
            return Some(format!(
                "page {:#x} was excluded from the dump (makedumpfile dump level {})",
                pfn * self.block_size,
                self.dump_level
            ));
        }
        let incomplete = if self.incomplete {
            " (the dump is marked incomplete)"
        } else {
            ""
        };
        Some(format!(
            "page {:#x} of the dump cannot be read back{incomplete}",
            pfn * self.block_size
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flattened file holding `records` (offset, bytes).
    fn flattened(records: &[(u64, Vec<u8>)]) -> FileView {
        let mut f = b"makedumpfile\0".to_vec();
        f.resize(16, 0);
        f.extend(1i64.to_be_bytes());
        f.extend(1i64.to_be_bytes());
        f.resize(4096, 0);
        for (offset, bytes) in records {
            f.extend((*offset as i64).to_be_bytes());
            f.extend((bytes.len() as i64).to_be_bytes());
            f.extend(bytes);
        }
        f.extend((-1i64).to_be_bytes());
        f.extend((-1i64).to_be_bytes());
        let mut map = memmap2::MmapMut::map_anon(f.len()).expect("anon map");
        map.copy_from_slice(&f);
        FileView::flattened(map.make_read_only().expect("read-only")).expect("flattened")
    }

    /// A kdump header for 4 KiB blocks claiming `max_pfn` pages and bitmaps
    /// to match, and its sub-header.
    fn header(max_pfn: u64) -> Vec<u8> {
        let mut h = vec![0u8; 2 * 4096];
        h[..8].copy_from_slice(KDUMP_SIGNATURE);
        h[HEADER_VERSION..HEADER_VERSION + 4].copy_from_slice(&6i32.to_le_bytes());
        h[BLOCK_SIZE..BLOCK_SIZE + 4].copy_from_slice(&4096i32.to_le_bytes());
        h[SUB_HDR_SIZE..SUB_HDR_SIZE + 4].copy_from_slice(&1i32.to_le_bytes());
        let bitmap_blocks = (max_pfn.div_ceil(8) * 2).div_ceil(4096) as u32;
        h[BITMAP_BLOCKS..BITMAP_BLOCKS + 4].copy_from_slice(&bitmap_blocks.to_le_bytes());
        h[NR_CPUS..NR_CPUS + 4].copy_from_slice(&1i32.to_le_bytes());
        let sub = 4096 + MAX_MAPNR_64;
        h[sub..sub + 8].copy_from_slice(&max_pfn.to_le_bytes());
        h
    }

    /// A file that claims bitmaps for 2^40 pages, far past the bytes it
    /// holds, is refused (it would otherwise be read into memory).
    #[test]
    fn claimed_bitmaps_must_be_in_the_file() {
        let view = flattened(&[(0, header(1 << 40)), (1 << 38, vec![1])]);
        match open(view) {
            Err(DumpError::Cut { what, .. }) => assert_eq!(what, "bitmaps"),
            other => panic!("{other:?}"),
        }
        // 64 pages, the first eight RAM, none dumped: RAM that says why
        // it cannot be read.
        let mut h = header(64);
        h.resize(3 * 4096, 0);
        h[2 * 4096] = 0xff;
        let (memory, headers) = open(flattened(&[(0, h)])).expect("opens");
        assert!(
            headers.format.contains("0 of 8 RAM pages dumped"),
            "{}",
            headers.format
        );
        let ranges = memory.ranges();
        assert_eq!(
            (ranges.len(), ranges[0].gpa, ranges[0].size),
            (1, 0, 0x8000)
        );
        assert_eq!(memory.read(0x1000, &mut [0u8; 8]), 0);
        let why = memory.missing(0x1000).expect("a reason");
        assert!(why.contains("excluded from the dump"), "{why}");
    }
}
