//! The `monitor` effects every target applies alike, whatever it serves
//! (a live VM, an x86 dump, an arm64 dump): the CPU the commands use,
//! what gdb reads through, snapshots, spaces added, chardevs.

use std::collections::BTreeMap;
use std::path::Path;

use log::debug;

use crate::target::dump::host_file::open_client_named;
use crate::target::kvm::shared::Inner;
use crate::target::monitor::{Effect, Snapshot, View};

/// What a session's monitor commands choose: the vCPU they use, what gdb
/// reads through, the snapshots taken.
pub(super) struct Picks<'s> {
    pub monitor_cpu: &'s mut Option<usize>,
    pub view: &'s mut View,
    pub snapshots: &'s mut BTreeMap<String, Snapshot>,
}

/// Apply the effects every target applies alike (the vCPU chosen, gdb's
/// view, snapshots, spaces added, chardevs); the others come back.
pub(super) fn apply_shared(
    effect: Effect,
    inner: &Inner,
    picks: Picks<'_>,
    text: &mut String,
) -> Option<Effect> {
    match effect {
        Effect::None => {}
        Effect::SelectCpu(index) => {
            *picks.monitor_cpu = Some(index);
            text.push_str(&format!(
                "monitor commands now use CPU #{index} (until the VM next stops)\n"
            ));
        }
        Effect::Use(view) => *picks.view = view,
        Effect::Snapshot(name, snapshot) => {
            picks.snapshots.insert(name, snapshot);
        }
        Effect::AddSpaces(roots) => {
            for root in roots {
                inner.monitor.add_space(root, "added");
            }
        }
        Effect::ChardevAdd { id, path } => {
            let allowed = inner.monitor.host_files();
            let open = || open_client_named(allowed, Path::new(&path));
            match inner.monitor.add_chardev(id.clone(), open) {
                Ok(()) => debug!("chardev {id}: {path} opened read-only"),
                Err(why) => text.push_str(&format!("error: {why}\n")),
            }
        }
        Effect::ChardevRemove(id) => {
            if !inner.monitor.remove_chardev(&id) {
                text.push_str(&format!("error: no chardev '{id}'\n"));
            }
        }
        other => return Some(other),
    }
    None
}
