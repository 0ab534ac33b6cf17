//! What monitor commands keep between commands and sessions: the address
//! spaces made known, QEMU's chardevs, and the settings the VMM gave
//! (host files allowed, the pool new tables come from, progress reports).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Mutex;

use crate::target::dump::vmcoreinfo::VmcoreInfo;
use crate::target::machine::memory::TablePool;
use crate::target::progress::{self, ProgressFn};
use crate::target::sync::lock;

/// What the monitor says of a dump being served (`info dump`).
#[derive(Debug, Clone)]
pub(crate) struct DumpFacts {
    /// What the file is, in a few words.
    pub(crate) format: String,
    /// The VMCOREINFO the guest left, if any.
    pub(crate) vmcoreinfo: Option<VmcoreInfo>,
}

/// The monitor's lasting state.
#[derive(Default)]
pub(crate) struct MonitorState {
    /// Address spaces known to `monitor vmem spaces` (CR3 values, or
    /// roots), with how they are known.
    spaces: Mutex<BTreeMap<u64, &'static str>>,
    /// Files opened by `monitor chardev-add`, by id (kept across sessions,
    /// as QEMU keeps chardevs).
    chardevs: Mutex<BTreeMap<String, File>>,
    /// Whether monitor commands may open host files the client names.
    host_files: bool,
    table_pool: Option<TablePool>,
    /// Told how long monitor commands are getting on.
    progress: Option<Box<ProgressFn>>,
    /// The dump being served (`None`: a live VM).
    dump: Option<DumpFacts>,
}

impl std::fmt::Debug for MonitorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorState")
            .field("spaces", &lock(&self.spaces).len())
            .field("host_files", &self.host_files)
            .finish_non_exhaustive()
    }
}

impl MonitorState {
    /// Nothing known yet; host files allowed.
    pub(crate) fn new() -> MonitorState {
        MonitorState {
            host_files: true,
            ..MonitorState::default()
        }
    }

    /// Make `cr3` known, saying how (replacing how it was known).
    pub(crate) fn add_space(&self, cr3: u64, how: &'static str) {
        lock(&self.spaces).insert(cr3, how);
    }

    /// Make `cr3` known unless it is already.
    pub(crate) fn note_space(&self, cr3: u64, how: &'static str) {
        lock(&self.spaces).entry(cr3).or_insert(how);
    }

    /// The known spaces, by CR3 value.
    pub(crate) fn spaces(&self) -> Vec<(u64, &'static str)> {
        lock(&self.spaces).iter().map(|(&k, &v)| (k, v)).collect()
    }

    /// `chardev-add`: keep the file `open` gives under `id`; the error
    /// line if `id` is taken or the file cannot be opened.
    pub(crate) fn add_chardev(
        &self,
        id: String,
        open: impl FnOnce() -> Result<File, String>,
    ) -> Result<(), String> {
        match lock(&self.chardevs).entry(id) {
            Entry::Occupied(e) => Err(format!("chardev '{}' already exists", e.key())),
            Entry::Vacant(slot) => {
                slot.insert(open()?);
                Ok(())
            }
        }
    }

    /// `chardev-remove`: whether there was one.
    pub(crate) fn remove_chardev(&self, id: &str) -> bool {
        lock(&self.chardevs).remove(id).is_some()
    }

    /// Whether commands may open host files the client names.
    pub(crate) fn host_files(&self) -> bool {
        self.host_files
    }

    /// Set [`Self::host_files`].
    pub(crate) fn set_host_files(&mut self, allowed: bool) {
        self.host_files = allowed;
    }

    /// Where `vmem map` takes new tables from.
    pub(crate) fn table_pool(&self) -> Option<&TablePool> {
        self.table_pool.as_ref()
    }

    /// Set [`Self::table_pool`].
    pub(crate) fn set_table_pool(&mut self, pool: TablePool) {
        self.table_pool = Some(pool);
    }

    /// The dump being served, if it is one.
    pub(crate) fn dump(&self) -> Option<&DumpFacts> {
        self.dump.as_ref()
    }

    /// Set [`Self::dump`].
    pub(crate) fn set_dump(&mut self, facts: DumpFacts) {
        self.dump = Some(facts);
    }

    /// Where long commands report their progress.
    pub(crate) fn progress(&self) -> &ProgressFn {
        self.progress.as_deref().unwrap_or(&progress::ignore)
    }

    /// Set [`Self::progress`].
    pub(crate) fn set_progress(&mut self, report: Box<ProgressFn>) {
        self.progress = Some(report);
    }
}
