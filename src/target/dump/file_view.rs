//! The bytes of a dump file as its format reader sees them: the mapped
//! file itself, or a file in makedumpfile's *flattened* form put back
//! together. A flattened file (`makedumpfile -F`, QEMU's
//! `dump-guest-memory -z/-l/-s`, `virsh dump --format=kdump-*`) is a
//! 4 KiB header (`makedumpfile`, type and version, big-endian) then
//! records of (offset, size, bytes) saying where in the plain file each
//! piece goes, ended by (-1, -1); `makedumpfile -R` rebuilds the plain file
//! from it. Here it is not rebuilt: each read is served from the records.

use std::borrow::Cow;
use std::collections::BTreeMap;

use memmap2::Mmap;

use crate::target::dump::error::DumpError;

/// The signature a flattened file starts with.
pub(crate) const FLATTENED_SIGNATURE: &[u8] = b"makedumpfile\0";
/// Its header's length.
const FLATTENED_HEADER: usize = 4096;
/// The only type and version of flattened header there is.
const FLATTENED_TYPE: i64 = 1;
const FLATTENED_VERSION: i64 = 1;

/// No plain dump file is longer (1 PiB): a record past it lies.
const MAX_PLAIN: u64 = 1 << 50;

/// Where a run of the plain file's bytes is in the flattened one.
#[derive(Debug, Clone, Copy)]
struct Extent {
    /// Its length.
    len: u64,
    /// Where it starts in the mapped file.
    source: u64,
}

/// A dump file's bytes.
#[derive(Debug)]
pub(crate) struct FileView {
    map: Mmap,
    /// Flattened: the plain file's runs by offset, none overlapping (later
    /// records win, as when the file is rebuilt); `None`: plain.
    extents: Option<BTreeMap<u64, Extent>>,
    /// The plain file's length.
    len: u64,
}

impl FileView {
    /// The mapped file as it is.
    pub(crate) fn plain(map: Mmap) -> FileView {
        let len = map.len() as u64;
        FileView {
            map,
            extents: None,
            len,
        }
    }

    /// The plain file a flattened one describes (every record checked to
    /// lie inside the file; a file that ends before its end marker is
    /// truncated).
    pub(crate) fn flattened(map: Mmap) -> Result<FileView, DumpError> {
        let bad = |why: String| DumpError::Flattened(why);
        let be = |at: usize| -> Option<i64> {
            Some(i64::from_be_bytes(map.get(at..at + 8)?.try_into().ok()?))
        };
        if !map.starts_with(FLATTENED_SIGNATURE) || map.len() < FLATTENED_HEADER {
            return Err(bad("no 4 KiB flattened header".into()));
        }
        if be(16) != Some(FLATTENED_TYPE) || be(24) != Some(FLATTENED_VERSION) {
            return Err(bad(format!(
                "header type {:?} version {:?}, 1 and 1 expected",
                be(16),
                be(24)
            )));
        }
        let mut extents = BTreeMap::new();
        let mut at = FLATTENED_HEADER;
        loop {
            let (Some(offset), Some(size)) = (be(at), be(at + 8)) else {
                return Err(bad(format!(
                    "the records end at byte {at:#x} without the end marker (truncated?)"
                )));
            };
            if (offset, size) == (-1, -1) {
                break;
            }
            let data = at + 16;
            let fits = u64::try_from(size)
                .ok()
                .and_then(|s| (data as u64).checked_add(s))
                .is_some_and(|end| end <= map.len() as u64);
            if offset < 0 || size < 0 || !fits {
                return Err(bad(format!(
                    "a record at byte {at:#x} claims offset {offset:#x}, {size:#x} bytes (truncated?)"
                )));
            }
            let (offset, size) = (offset as u64, size as u64);
            if offset.checked_add(size).is_none_or(|end| end > MAX_PLAIN) {
                return Err(bad(format!(
                    "a record at byte {at:#x} puts bytes at {offset:#x}, past any dump"
                )));
            }
            if size > 0 {
                place(&mut extents, offset, size, data as u64);
            }
            at = data + size as usize;
        }
        let len = extents
            .iter()
            .next_back()
            .map_or(0, |(&start, e)| start + e.len);
        Ok(FileView {
            map,
            extents: Some(extents),
            len,
        })
    }

    /// Whether the file is in the flattened form.
    pub(crate) fn is_flattened(&self) -> bool {
        self.extents.is_some()
    }

    /// How many bytes the file itself holds (a flattened one's plain file
    /// may claim more).
    pub(crate) fn stored_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// The plain file's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// `len` bytes at `offset` of the plain file (`None`: past its end);
    /// borrowed where they are contiguous in the mapped file. A flattened
    /// file's unwritten gaps read as zeros, as in the rebuilt file.
    pub(crate) fn bytes(&self, offset: u64, len: usize) -> Option<Cow<'_, [u8]>> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.len)?;
        let Some(extents) = &self.extents else {
            return Some(Cow::Borrowed(&self.map[offset as usize..end as usize]));
        };
        if let Some((&start, e)) = extents.range(..=offset).next_back() {
            if end <= start + e.len {
                let from = (e.source + offset - start) as usize;
                return Some(Cow::Borrowed(&self.map[from..from + len]));
            }
        }
        let mut out = vec![0u8; len];
        let first = extents.range(..=offset).next_back().map(|(&s, _)| s);
        let from = first.unwrap_or(offset);
        for (&start, e) in extents.range(from..end) {
            let lo = start.max(offset);
            let hi = (start + e.len).min(end);
            if lo >= hi {
                continue;
            }
            let src = (e.source + lo - start) as usize;
            let dst = (lo - offset) as usize;
            out[dst..dst + (hi - lo) as usize]
                .copy_from_slice(&self.map[src..src + (hi - lo) as usize]);
        }
        Some(Cow::Owned(out))
    }
}

/// Put the run `offset .. offset + len` (at `source` in the mapped file)
/// into `extents`, over whatever earlier runs it covers.
fn place(extents: &mut BTreeMap<u64, Extent>, offset: u64, len: u64, source: u64) {
    let end = offset + len;
    // A run that starts before and reaches into the new one keeps its head
    // (and its tail past the new one, if it goes beyond).
    if let Some((&start, &e)) = extents.range(..offset).next_back() {
        if start + e.len > offset {
            let head = Extent {
                len: offset - start,
                source: e.source,
            };
            extents.insert(start, head);
            keep_tail(extents, start, e, end);
        }
    }
    let covered: Vec<u64> = extents.range(offset..end).map(|(&s, _)| s).collect();
    for start in covered {
        if let Some(e) = extents.remove(&start) {
            keep_tail(extents, start, e, end);
        }
    }
    extents.insert(offset, Extent { len, source });
}

/// What of the run `e` at `start` lies past `end` stays, from `end`.
fn keep_tail(extents: &mut BTreeMap<u64, Extent>, start: u64, e: Extent, end: u64) {
    if start + e.len > end {
        let skip = end - start;
        let tail = Extent {
            len: e.len - skip,
            source: e.source + skip,
        };
        extents.insert(end, tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flattened file of `records` (offset, bytes), ended (or not).
    fn flattened(records: &[(i64, &[u8])], ended: bool) -> Mmap {
        let mut f = FLATTENED_SIGNATURE.to_vec();
        f.resize(16, 0);
        f.extend(FLATTENED_TYPE.to_be_bytes());
        f.extend(FLATTENED_VERSION.to_be_bytes());
        f.resize(FLATTENED_HEADER, 0);
        for (offset, bytes) in records {
            f.extend(offset.to_be_bytes());
            f.extend((bytes.len() as i64).to_be_bytes());
            f.extend(*bytes);
        }
        if ended {
            f.extend((-1i64).to_be_bytes());
            f.extend((-1i64).to_be_bytes());
        }
        let mut map = memmap2::MmapMut::map_anon(f.len()).expect("anon map");
        map.copy_from_slice(&f);
        map.make_read_only().expect("read-only")
    }

    #[test]
    fn records_rebuild_the_plain_file() {
        let map = flattened(
            &[(4, b"world"), (0, b"helo"), (3, b"lo, "), (20, b"!")],
            true,
        );
        let view = FileView::flattened(map).expect("flattened");
        assert_eq!(view.len(), 21);
        let all = view.bytes(0, 21).expect("bytes");
        assert_eq!(&all[..], b"hello, ld\0\0\0\0\0\0\0\0\0\0\0!");
        // Across two records: copied; inside one: borrowed.
        assert!(matches!(view.bytes(5, 3), Some(Cow::Owned(v)) if v == b", l"));
        assert!(matches!(view.bytes(7, 2), Some(Cow::Borrowed(b"ld"))));
        assert!(view.bytes(20, 2).is_none());
        assert!(view.bytes(u64::MAX, 2).is_none());
    }

    #[test]
    fn lying_records_are_refused() {
        let cut = |f: Mmap, n: usize| {
            let mut m = memmap2::MmapMut::map_anon(n).expect("anon");
            m.copy_from_slice(&f[..n]);
            m.make_read_only().expect("ro")
        };
        let whole = flattened(&[(0, b"abcdef")], true);
        for n in [
            FLATTENED_HEADER - 1,
            FLATTENED_HEADER + 8,
            FLATTENED_HEADER + 20,
            whole.len() - 1,
        ] {
            let e = FileView::flattened(cut(flattened(&[(0, b"abcdef")], true), n));
            assert!(
                matches!(e, Err(DumpError::Flattened(_))),
                "cut at {n}: {e:?}"
            );
        }
        assert!(FileView::flattened(flattened(&[(-5, b"x")], true)).is_err());
        assert!(FileView::flattened(flattened(&[(i64::MAX, b"xy")], true)).is_err());
        assert!(FileView::flattened(flattened(&[(0, b"x")], false)).is_err());
    }
}
