//! `monitor vmem spaces --scan 1`: find the address spaces no vCPU has
//! loaded (other processes) by scanning guest RAM for root tables: a page
//! whose kernel half equals a known root's (what Linux and most kernels do:
//! every root copies the kernel's top-level entries) and whose user half
//! holds only well-formed table entries inside RAM, confirmed by a bounded
//! walk.

use std::fmt::Write;
use std::time::Instant;

use super::vmem::WALK_BUDGET;
use super::Context;
use crate::arch::Descriptor;
use crate::target::memory::GuestTables;
use crate::vmem::{self, HumanBytes, PhysAddr};

/// The x86 accessed and dirty bits of a table entry.
const A_D_BITS: u64 = 0x60;

/// Entries a confirming walk may read.
const CONFIRM_BUDGET: u64 = WALK_BUDGET >> 4;

/// The roots found, with a line of text each (or why nothing can be found).
pub(crate) fn scan(ctx: &Context<'_>, out: &mut String) -> Result<Vec<u64>, String> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    let reference = ctx.root.ok_or("paging is off on this vCPU")?;
    let top = 0; // the root level
    let entries = 1u64 << fmt.index_bits(top);
    let size = fmt.entry_size();
    if size != 8 || entries != 512 {
        return Err("scanning needs 64-bit tables of 512 entries (x86-64)".into());
    }
    let read = |pa: PhysAddr| ctx.memory.read_u64(pa).ok();
    // The kernel half of the current space, present entries only.
    let kernel: Vec<(u64, u64)> = (entries / 2..entries)
        .filter_map(|i| read(reference + i * size).map(|raw| (i, raw)))
        .filter(|&(_, raw)| matches!(fmt.decode(top, raw), Descriptor::Table { .. }))
        .collect();
    if kernel.is_empty() {
        return Err("the current space has no kernel half to recognise other roots by".into());
    }
    let in_ram = |pa: PhysAddr| {
        ctx.memory
            .ranges()
            .iter()
            .any(|r| pa >= r.gpa && pa - r.gpa < r.size)
    };
    let known: Vec<u64> = ctx.spaces.iter().map(|(root, _)| *root).collect();
    let started = Instant::now();
    let mut scanned = 0u64;
    let mut found = Vec::new();
    for range in ctx.memory.ranges() {
        let first = range.gpa.next_multiple_of(0x1000);
        let pages = (range.gpa + range.size).saturating_sub(first) / 0x1000;
        scanned += pages * 0x1000;
        let mut buf = [0u8; 0x1000];
        for page in (0..pages).map(|i| first + i * 0x1000) {
            // One copy per page, then plain loads: most pages fail at the
            // first kernel entry compared.
            if known.contains(&page) || ctx.memory.read(page, &mut buf).is_err() {
                continue;
            }
            let entry = |i: u64| {
                let at = (i * size) as usize;
                u64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or_default())
            };
            // Accessed (and dirty) bits differ between copies: the CPU sets
            // them only in the roots it walks.
            if !kernel
                .iter()
                .all(|&(i, raw)| (entry(i) ^ raw) & !A_D_BITS == 0)
            {
                continue;
            }
            let user_ok = (0..entries / 2).all(|i| match fmt.decode(top, entry(i)) {
                Descriptor::Invalid => true,
                Descriptor::Table { addr, .. } => in_ram(addr),
                _ => false,
            });
            if !user_ok {
                continue;
            }
            let tables = GuestTables::new(ctx.memory, page, None);
            let mut user_bytes = 0u64;
            let mut mappings = 0usize;
            let mut broken = false;
            for item in vmem::virt_to_phys(fmt, &tables, 0, 1 << 47).with_budget(CONFIRM_BUDGET) {
                match item {
                    Ok(m) => {
                        mappings += 1;
                        user_bytes += m.len;
                    }
                    Err(vmem::WalkError::BudgetExhausted { .. }) => {}
                    Err(_) => broken = true,
                }
            }
            if broken {
                continue;
            }
            let what = if mappings == 0 {
                "nothing in the user half (kernel-only, or a freed root)".to_string()
            } else {
                format!(
                    "{mappings} mappings, {} in the user half",
                    HumanBytes(user_bytes)
                )
            };
            let _ = writeln!(
                out,
                "space {page:#x}: {what}; kernel half as in {reference:#x}"
            );
            found.push(page);
        }
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
