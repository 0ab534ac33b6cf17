//! A space's mappings as monitor commands list them: the bounded walk
//! every command makes, and one text row per mapping.

use crate::arch::PageTableFormat;
use crate::target::machine::paging::WALK_BUDGET;
use crate::vmem::{self, Flags, HumanBytes, Mapping, Perms, TableReadOps, WalkError};

/// Mappings a monitor command keeps from one walk (~80 MiB of them).
const MAX_MAPPINGS: usize = 1 << 20;

/// What a command says of a walk [`walk_space`] cut short.
pub(crate) const CUT_SHORT: &str =
    "walk cut short at its bound (2^24 entries read or 2^20 mappings kept)";

/// Every mapping of the space at `tables`' root, within [`WALK_BUDGET`]
/// entries and [`MAX_MAPPINGS`] mappings (bad entries skipped); whether a
/// bound cut the walk short.
pub(crate) fn walk_space<O: TableReadOps>(
    fmt: &dyn PageTableFormat,
    tables: &O,
) -> (Vec<Mapping>, bool) {
    let mut cut = false;
    let mut mappings = Vec::new();
    for item in vmem::virt_to_phys(fmt, tables, 0, u64::MAX).with_budget(WALK_BUDGET) {
        match item {
            Ok(_) if mappings.len() == MAX_MAPPINGS => return (mappings, true),
            Ok(m) => mappings.push(m),
            Err(WalkError::BudgetExhausted { .. }) => cut = true,
            Err(_) => {}
        }
    }
    (mappings, cut)
}
/// Default number of rows `walk` prints.
/// The `rwxugadcs` letters of `perms` and `flags`.
pub(crate) fn flag_letters(perms: Perms, flags: Flags) -> String {
    let bits = [
        (perms.contains(Perms::READ), 'r'),
        (perms.contains(Perms::WRITE), 'w'),
        (perms.owner_executable(), 'x'),
        (perms.contains(Perms::USER), 'u'),
        (flags.contains(Flags::GLOBAL), 'g'),
        (flags.contains(Flags::ACCESSED), 'a'),
        (flags.contains(Flags::DIRTY), 'd'),
        (flags.contains(Flags::COW), 'c'),
        (flags.contains(Flags::SELF_MAP), 's'),
    ];
    bits.iter()
        .map(|&(on, c)| if on { c } else { '-' })
        .collect()
}

pub(crate) fn mapping_flags(m: &Mapping) -> String {
    let (_, cow) = m.kind.perms();
    let mut flags = m.flags;
    flags.set(Flags::COW, cow);
    flag_letters(m.perms(), flags)
}

/// One row of a walk.
pub(crate) fn row(m: &Mapping) -> String {
    format!(
        "{:016x}-{:016x}  {:016x}-{:016x}  {:>6}  {:>4}  {}",
        m.virt_base,
        m.virt_last(),
        m.phys_base,
        m.phys_base.wrapping_add(m.len - 1),
        HumanBytes(m.len).to_string(),
        m.page_size.to_string(),
        mapping_flags(m)
    )
}
