//! `monitor vmem audit`: what in the page tables is unsafe — mappings both
//! writable and executable, user pages in the kernel half, user pages the
//! kernel may execute (no SMEP), page-table pages mapped writable, and one
//! physical page writable in one place and executable in another (W^X
//! broken through an alias). Each finding names the VA range, the PA and
//! the leaf entry that grants it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write;

use super::args::{self, Args};
use super::vmem::{row, space_of, WALK_BUDGET};
use super::Context;
use crate::target::memory::GuestTables;
use crate::vmem::{self, Access, Mapping, MemoryError, PageTableEntry, PhysAddr, TableReadOps};

pub(crate) const USAGE: &str = "\
vmem audit [--space CR3|--all 1] [--limit N]
    writable+executable mappings, user pages in the kernel half, user pages
    the kernel may execute, page tables mapped writable, W^X broken
    through an alias (default: the current space; N findings per kind)
    e.g. monitor vmem audit --all 1
";

/// Findings shown per kind unless `--limit` says otherwise.
const DEFAULT_LIMIT: usize = 10;

/// The page tables' own pages, noted as the walk reads their entries.
pub(super) struct Recorder<'a> {
    tables: GuestTables<'a>,
    pages: RefCell<BTreeSet<PhysAddr>>,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(tables: GuestTables<'a>) -> Self {
        Recorder {
            tables,
            pages: RefCell::default(),
        }
    }

    /// The table pages read so far.
    pub(super) fn into_pages(self) -> BTreeSet<PhysAddr> {
        self.pages.into_inner()
    }
}

impl TableReadOps for Recorder<'_> {
    type TableAddr = PhysAddr;

    fn entry_addr(addr: PhysAddr, entry_offset: u64) -> PhysAddr {
        addr.wrapping_add(entry_offset)
    }

    fn read_entry(&self, addr: PhysAddr) -> Result<PageTableEntry, MemoryError> {
        self.pages.borrow_mut().insert(addr & !0xfff);
        self.tables.read_entry(addr)
    }

    fn to_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn from_phys(addr: PhysAddr) -> PhysAddr {
        addr
    }

    fn root_table(&self) -> PhysAddr {
        self.tables.root_table()
    }
}

/// One kind of finding, with what was found.
struct Kind {
    title: &'static str,
    found: Vec<(u64, Mapping, String)>,
}

pub(crate) fn run(ctx: &Context<'_>, args: &Args<'_>, out: &mut String) -> Result<(), String> {
    let fmt = ctx.format.ok_or("paging is off on this vCPU")?;
    let roots: Vec<u64> = if args.option("all").is_some() {
        ctx.spaces.iter().map(|(root, _)| *root).collect()
    } else {
        vec![space_of(ctx, args)?]
    };
    let limit = match args.option("limit") {
        Some(n) => usize::try_from(args::number(n)?).map_err(|_| "--limit is too large")?,
        None => DEFAULT_LIMIT,
    };
    let mut leaves: Vec<(u64, Mapping)> = Vec::new();
    let mut table_pages = BTreeSet::new();
    for &root in &roots {
        let recorder = Recorder::new(GuestTables::new(ctx.memory, root, None));
        for m in vmem::virt_to_phys(fmt, &recorder, 0, u64::MAX)
            .with_budget(WALK_BUDGET)
            .flatten()
        {
            leaves.push((root, m));
        }
        table_pages.append(&mut recorder.into_pages());
    }
    let mut kinds = [
        Kind {
            title: "writable and executable",
            found: Vec::new(),
        },
        Kind {
            title: "user-accessible in the kernel half",
            found: Vec::new(),
        },
        Kind {
            title: "user pages the kernel may execute (no SMEP)",
            found: Vec::new(),
        },
        Kind {
            title: "page-table pages mapped writable",
            found: Vec::new(),
        },
        Kind {
            title: "W^X broken through an alias",
            found: Vec::new(),
        },
    ];
    let exec = |m: &Mapping| (m.rights.kernel | m.rights.user).contains(Access::EXEC);
    let write = |m: &Mapping| (m.rights.kernel | m.rights.user).contains(Access::WRITE);
    for (root, m) in &leaves {
        if write(m) && exec(m) {
            kinds[0].found.push((*root, *m, String::new()));
        }
        if m.user_accessible && m.virt_base >> 63 == 1 {
            kinds[1].found.push((*root, *m, String::new()));
        }
        if m.user_accessible && m.rights.kernel.contains(Access::EXEC) {
            kinds[2].found.push((*root, *m, String::new()));
        }
        if write(m) {
            let end = m.phys_base.saturating_add(m.len);
            for &table in table_pages.range(m.phys_base..end) {
                let va = m.virt_base + (table - m.phys_base);
                kinds[3]
                    .found
                    .push((*root, *m, format!("table page {table:#x} at VA {va:#x}")));
            }
        }
    }
    // Aliases: sweep the leaves by physical address; a writable one that
    // overlaps an executable one (a different VA or space) breaks W^X.
    let mut by_pa: Vec<&(u64, Mapping)> =
        leaves.iter().filter(|(_, m)| write(m) || exec(m)).collect();
    by_pa.sort_by_key(|(_, m)| m.phys_base);
    let mut open: Vec<&(u64, Mapping)> = Vec::new();
    for item in by_pa {
        let (root, m) = item;
        open.retain(|(_, o)| o.phys_base.saturating_add(o.len) > m.phys_base);
        for (other_root, o) in &open {
            let same_place = other_root == root && o.virt_base == m.virt_base;
            if !same_place && ((write(m) && exec(o)) || (exec(m) && write(o))) {
                let (w, x) = if write(m) { (m, o) } else { (o, m) };
                if write(x) && exec(w) {
                    continue; // both W+X: already reported as such
                }
                let pa = m.phys_base.max(o.phys_base);
                kinds[4].found.push((
                    *root,
                    *w,
                    format!(
                        "PA {pa:#x} writable here, executable at {:#x} in space {other_root:#x}",
                        x.virt_base + (pa - x.phys_base)
                    ),
                ));
                break;
            }
        }
        open.push(item);
    }
    let _ = writeln!(
        out,
        "audit of {} space(s), {} mappings, {} page-table pages",
        roots.len(),
        leaves.len(),
        table_pages.len()
    );
    for kind in &kinds {
        let _ = writeln!(out, "{}: {}", kind.title, kind.found.len());
        for (root, m, note) in kind.found.iter().take(limit) {
            let tables = GuestTables::new(ctx.memory, *root, None);
            let grant = vmem::translate_in(fmt, &tables, *root, m.virt_base)
                .steps()
                .last()
                .map(|s| {
                    let entry = s.at.table + s.at.index * fmt.entry_size();
                    format!("entry {:#x} = {:#x}", entry, s.raw)
                })
                .unwrap_or_default();
            let _ = writeln!(out, "  space {root:#x}  {}", row(m));
            let _ = writeln!(
                out,
                "    granted by {grant}{}{note}",
                if note.is_empty() { "" } else { "; " }
            );
        }
        if kind.found.len() > limit {
            let _ = writeln!(
                out,
                "  ... {} more (raise --limit)",
                kind.found.len() - limit
            );
        }
    }
    Ok(())
}
