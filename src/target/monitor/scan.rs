//! `monitor vmem spaces --scan shared|any`: find the address spaces no
//! vCPU has loaded (other processes) by scanning guest RAM for root tables.
//!
//! `shared` (what Linux and most kernels do: every root copies the kernel's
//! top-level entries): a page whose kernel half equals a known root's and
//! whose user half holds only well-formed table entries inside RAM. KPTI's
//! user copy of a root (the next 4 KiB page of an 8 KiB pair, same user
//! half, its own small kernel half) is recognised as its pair.
//!
//! `any` (guests with no shared kernel half): a page whose every entry is
//! zero or a well-formed table entry inside RAM, with at least one, that is
//! not a table of a known space, nor a lower table of another candidate,
//! and whose walk maps something.
//!
//! Every candidate is confirmed by a bounded walk without bad entries; all
//! confirming walks together are bounded too (a message says when the
//! scan was cut).

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::Instant;

use super::context::Context;
use super::errors::{usage, CmdError};
use super::recorder::Recorder;
use crate::arch::{Descriptor, PageTableFormat};
use crate::target::machine::memory::{GuestRam, GuestTables};
use crate::target::machine::paging::WALK_BUDGET;
use crate::target::progress::{Progress, ProgressFn, ProgressUnit};
use crate::vmem::{self, HumanBytes, PhysAddr};

/// The x86 accessed and dirty bits of a table entry.
const A_D_BITS: u64 = 0x60;
/// The x86 execute-disable bit: Linux sets it on the user half of a KPTI
/// pair's kernel copy only (the kernel must not run user code).
const NX_BIT: u64 = 1 << 63;
/// Entries a confirming walk may read.
const CONFIRM_BUDGET: u64 = WALK_BUDGET >> 4;
/// Entries all confirming walks of one scan may read.
const SCAN_BUDGET: u64 = WALK_BUDGET;
const ENTRIES: usize = 512;
const PAGE: u64 = 0x1000;
/// Pages scanned between two progress reports (64 MiB).
const REPORT_EVERY: u64 = 1 << 14;

/// How roots are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// By the kernel half they share with the current space.
    Shared,
    /// By their structure alone.
    Any,
}

impl ScanMode {
    pub(crate) fn parse(word: &str) -> Result<ScanMode, CmdError> {
        match word {
            "" | "shared" => Ok(ScanMode::Shared),
            "any" => Ok(ScanMode::Any),
            other => Err(usage(format!(
                "--scan takes shared (roots sharing the kernel half) or any, not '{other}'"
            ))),
        }
    }
}

/// A root table page, as 512 entries.
type Page = [u64; ENTRIES];

/// What a confirming walk saw.
struct Confirmed {
    mappings: usize,
    bytes: u64,
    /// The table pages below the root.
    tables: BTreeSet<PhysAddr>,
}

/// The scan's shared state: the guest's RAM and the walk budget left.
struct Scanner<'c> {
    fmt: &'c dyn PageTableFormat,
    memory: &'c GuestRam,
    progress: &'c ProgressFn,
    budget: u64,
    cut: bool,
}

impl Scanner<'_> {
    fn in_ram(&self, pa: PhysAddr) -> bool {
        self.memory.ranges().iter().any(|r| r.contains(pa))
    }

    /// Whether `raw` is a root-level table entry pointing into RAM.
    fn table_in_ram(&self, raw: u64) -> bool {
        matches!(self.fmt.decode(0, raw), Descriptor::Table { addr, .. } if self.in_ram(addr))
    }

    fn read(&self, pa: PhysAddr, page: &mut Page) -> bool {
        let mut bytes = [0u8; PAGE as usize];
        if self.memory.read(pa, &mut bytes).is_err() {
            return false;
        }
        for (entry, raw) in page.iter_mut().zip(bytes.chunks_exact(8)) {
            *entry = u64::from_le_bytes(raw.try_into().unwrap_or_default());
        }
        true
    }

    /// Walk `root` over `start .. start + len`; `None` if an entry is bad
    /// or the scan's budget is spent.
    fn confirm(&mut self, root: PhysAddr, start: u64, len: u64) -> Option<Confirmed> {
        self.confirm_in(self.fmt, root, start, len)
    }

    /// [`Scanner::confirm`] for tables in `fmt` (a known space's own
    /// format, on arm64 the kernel's half).
    fn confirm_in(
        &mut self,
        fmt: &dyn PageTableFormat,
        root: PhysAddr,
        start: u64,
        len: u64,
    ) -> Option<Confirmed> {
        if self.budget == 0 {
            self.cut = true;
            return None;
        }
        let recorder = Recorder::new(GuestTables::new(self.memory, root, None));
        let mut walk = vmem::virt_to_phys(fmt, &recorder, start, len)
            .with_budget(CONFIRM_BUDGET.min(self.budget));
        let (mut mappings, mut bytes) = (0, 0);
        for item in walk.by_ref() {
            match item {
                Ok(m) => {
                    mappings += 1;
                    bytes += m.len;
                }
                Err(vmem::WalkError::BudgetExhausted { .. }) => {}
                Err(_) => return None,
            }
        }
        self.budget = self.budget.saturating_sub(walk.entries_visited());
        let mut tables = recorder.into_pages();
        tables.remove(&root);
        Some(Confirmed {
            mappings,
            bytes,
            tables,
        })
    }

    /// Every page of RAM (but `skip`) that passes `worth_reading` (a cheap
    /// look at a word or two, before the page is read whole) and
    /// `looks_like_root`.
    fn candidates(
        &self,
        skip: &BTreeSet<PhysAddr>,
        worth_reading: impl Fn(PhysAddr) -> bool,
        looks_like_root: impl Fn(&Page) -> bool,
    ) -> (Vec<PhysAddr>, u64) {
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut page = [0u64; ENTRIES];
        let total = self.memory.total_size();
        let report = |done| {
            (self.progress)(Progress {
                task: "scanning RAM",
                done,
                total,
                unit: ProgressUnit::Bytes,
            })
        };
        for range in self.memory.ranges() {
            let first = range.gpa.next_multiple_of(PAGE);
            let pages = (range.gpa + range.size).saturating_sub(first) / PAGE;
            for i in 0..pages {
                let pa = first + i * PAGE;
                if i % REPORT_EVERY == 0 {
                    report(scanned + i * PAGE);
                }
                if worth_reading(pa)
                    && !skip.contains(&pa)
                    && self.read(pa, &mut page)
                    && looks_like_root(&page)
                {
                    found.push(pa);
                }
            }
            scanned += pages * PAGE;
        }
        report(total);
        (found, scanned)
    }
}

/// The roots found, with a line of text each (or why nothing can be found).
pub(crate) fn scan(
    ctx: &Context<'_>,
    mode: ScanMode,
    out: &mut String,
) -> Result<Vec<u64>, CmdError> {
    let reference = ctx.root.ok_or("paging is off on this vCPU")?;
    // arm64: processes' roots are TTBR0 tables (the lower half), sharing
    // nothing with the kernel's (TTBR1): only their structure tells them.
    let (fmt, mode) = match ctx.lower_half {
        Some(lower) => {
            let _ = writeln!(
                out,
                "arm64: processes' tables (TTBR0) share nothing with the kernel's (TTBR1): found by their structure"
            );
            (lower, ScanMode::Any)
        }
        None => (ctx.format_of(reference)?, mode),
    };
    if fmt.entry_size() != 8 || 1usize << fmt.index_bits(0) != ENTRIES {
        return Err("scanning needs 64-bit tables of 512 entries (x86-64)".into());
    }
    let mut scanner = Scanner {
        fmt,
        memory: ctx.memory,
        progress: ctx.progress,
        budget: SCAN_BUDGET,
        cut: false,
    };
    let known = ctx.with_formats(ctx.roots())?;
    let started = Instant::now();
    let half = fmt.linear_mask() / 2 + 1;
    let found = match mode {
        ScanMode::Shared => {
            let known = known.iter().map(|&(root, _)| root).collect();
            scan_shared(&mut scanner, reference, &known, half, out)?
        }
        ScanMode::Any => scan_any(&mut scanner, &known, out),
    };
    let scanned = found.1;
    let found = found.0;
    if scanner.cut {
        let _ = writeln!(
            out,
            "(scan cut short: confirming walks read {SCAN_BUDGET} entries; some candidates were not checked)"
        );
    }
    let _ = writeln!(
        out,
        "scanned {} of RAM in {} ms: {} new address spaces",
        HumanBytes(scanned),
        started.elapsed().as_millis(),
        found.len()
    );
    Ok(found)
}

/// Roots by the kernel half of `reference`, and KPTI user copies.
fn scan_shared(
    scanner: &mut Scanner<'_>,
    reference: PhysAddr,
    known: &BTreeSet<PhysAddr>,
    half: u64,
    out: &mut String,
) -> Result<(Vec<PhysAddr>, u64), CmdError> {
    // A CPU in user mode under KPTI holds the user copy, whose kernel half
    // is the entry code only: the others are recognised by the kernel
    // copy's half.
    let reference = match reference.checked_sub(PAGE) {
        Some(kernel)
            if reference % (2 * PAGE) == PAGE && is_user_copy(scanner, kernel, reference, half) =>
        {
            kernel
        }
        _ => reference,
    };
    let mut root = [0u64; ENTRIES];
    if !scanner.read(reference, &mut root) {
        return Err(format!("the current root {reference:#x} is not in RAM").into());
    }
    // The kernel half of the current space, present entries only.
    let kernel: Vec<(usize, u64)> = (ENTRIES / 2..ENTRIES)
        .map(|i| (i, root[i]))
        .filter(|&(_, raw)| scanner.table_in_ram(raw))
        .collect();
    if kernel.is_empty() {
        return Err(
            "the current space has no kernel half to recognise other roots by (try --scan any)"
                .into(),
        );
    }
    // Accessed (and dirty) bits differ between copies: the CPU sets them
    // only in the roots it walks. Nearly every page fails at the first
    // kernel entry, read alone.
    let (first, first_raw) = kernel[0];
    let memory = scanner.memory;
    let first_matches = |pa: PhysAddr| {
        memory
            .read_u64(pa + first as u64 * 8)
            .is_ok_and(|raw| (raw ^ first_raw) & !A_D_BITS == 0)
    };
    let (candidates, scanned) = scanner.candidates(known, first_matches, |page| {
        kernel
            .iter()
            .all(|&(i, raw)| (page[i] ^ raw) & !A_D_BITS == 0)
            && page[..ENTRIES / 2]
                .iter()
                .all(|&raw| raw & 1 == 0 || scanner.table_in_ram(raw))
    });
    let mut found = Vec::new();
    for pa in candidates {
        let Some(c) = scanner.confirm(pa, 0, half) else {
            continue;
        };
        let what = if c.mappings == 0 {
            "nothing in the user half (kernel-only, or a freed root)".to_string()
        } else {
            format!(
                "{} mappings, {} in the user half",
                c.mappings,
                HumanBytes(c.bytes)
            )
        };
        let _ = writeln!(
            out,
            "space {pa:#x}: {what}; kernel half as in {reference:#x}"
        );
        found.push(pa);
    }
    // KPTI: the user copy is the upper page of an 8 KiB pair.
    let mut pairs = Vec::new();
    for &kernel_root in known.iter().chain(&found) {
        let user = kernel_root + PAGE;
        if kernel_root % (2 * PAGE) != 0 || known.contains(&user) || found.contains(&user) {
            continue;
        }
        if is_user_copy(scanner, kernel_root, user, half) {
            let _ = writeln!(
                out,
                "space {user:#x}: KPTI user copy of {kernel_root:#x} (same user half, kernel half of entry code only)"
            );
            pairs.push(user);
        }
    }
    found.extend(pairs);
    Ok((found, scanned))
}

/// Whether `user` is `kernel`'s KPTI twin: the same user half (accessed,
/// dirty and execute-disable bits aside: the same tables below, which
/// `kernel`'s walk or its being known vouches for), a kernel half of
/// well-formed entries (at least one, others than `kernel`'s) that walks
/// without bad entries.
fn is_user_copy(scanner: &mut Scanner<'_>, kernel: PhysAddr, user: PhysAddr, half: u64) -> bool {
    let (mut k, mut u) = ([0u64; ENTRIES], [0u64; ENTRIES]);
    if !scanner.read(kernel, &mut k) || !scanner.read(user, &mut u) {
        return false;
    }
    let same_user_half = (0..ENTRIES / 2).all(|i| (k[i] ^ u[i]) & !(A_D_BITS | NX_BIT) == 0);
    let upper = &u[ENTRIES / 2..];
    let own_kernel_half = upper.iter().any(|&raw| raw & 1 != 0)
        && upper != &k[ENTRIES / 2..]
        && upper
            .iter()
            .all(|&raw| raw & 1 == 0 || scanner.table_in_ram(raw));
    same_user_half && own_kernel_half && scanner.confirm(user, half.wrapping_neg(), half).is_some()
}

/// Roots by structure: well-formed, not a table of a known space or of
/// another candidate, mapping something.
fn scan_any(
    scanner: &mut Scanner<'_>,
    known: &[(PhysAddr, &(dyn PageTableFormat + Sync))],
    out: &mut String,
) -> (Vec<PhysAddr>, u64) {
    // The known spaces' own tables are not roots.
    let mut skip: BTreeSet<PhysAddr> = known.iter().map(|&(root, _)| root).collect();
    for &(root, fmt) in known {
        if let Some(c) = scanner.confirm_in(fmt, root, 0, u64::MAX) {
            skip.extend(c.tables);
        }
    }
    let (candidates, scanned) = scanner.candidates(
        &skip,
        |_| true,
        |page| {
            page.iter()
                .all(|&raw| raw == 0 || scanner.table_in_ram(raw))
                && page.iter().any(|&raw| raw != 0)
        },
    );
    let mut confirmed = Vec::new();
    let mut lower = BTreeSet::new();
    for pa in candidates {
        if let Some(c) = scanner.confirm(pa, 0, u64::MAX).filter(|c| c.mappings > 0) {
            lower.extend(c.tables.iter().copied());
            confirmed.push((pa, c));
        }
    }
    let mut found = Vec::new();
    for (pa, c) in confirmed {
        // A lower table of another candidate (its PDPT, say) is not a root.
        if lower.contains(&pa) {
            continue;
        }
        let _ = writeln!(
            out,
            "space {pa:#x}: {} mappings, {} mapped; found by its structure",
            c.mappings,
            HumanBytes(c.bytes)
        );
        found.push(pa);
    }
    (found, scanned)
}
