//! [`Snapshot`]: every known space's mappings at one moment (`vmem
//! snapshot`, the tables at the last stop, an earlier dump's), without
//! accessed/dirty bits.

use std::collections::{BTreeMap, BTreeSet};

use super::listing::walk_space;
use crate::arch::PageTableFormat;
use crate::target::machine::memory::{GuestRam, GuestTables};
use crate::vmem::{Flags, Mapping};

/// Every known space's mappings at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(super) spaces: BTreeMap<u64, Vec<Mapping>>,
    /// The spaces whose walk the budget cut short.
    pub(super) cut: BTreeSet<u64>,
}

/// The mappings of `roots` (each with the format of its tables) in
/// `memory`.
pub(super) fn take_in<'f>(
    memory: &GuestRam,
    roots: impl IntoIterator<Item = (u64, &'f (dyn PageTableFormat + Sync))>,
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (root, fmt) in roots {
        let (mut mappings, cut) = walk_space(fmt, &GuestTables::new(memory, root, None));
        for m in &mut mappings {
            m.flags.remove(Flags::ACCESSED | Flags::DIRTY);
        }
        snapshot.spaces.insert(root, mappings);
        if cut {
            snapshot.cut.insert(root);
        }
    }
    snapshot
}
