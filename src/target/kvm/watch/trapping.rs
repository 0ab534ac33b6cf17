//! The page traps in force, as one component: the VMM's [`PageTraps`],
//! the pages it traps now, whether they are stale, and the gate memslot
//! changes pass (no vCPU inside `KVM_RUN` meanwhile).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::target::error::StubError;
use crate::target::kvm::watch::memslots::{PageTraps, Trap};
use crate::target::kvm::watch::run_gate::RunGate;
use crate::target::sync::lock;
use crate::vmem::PhysAddr;

/// How watched pages are trapped, and which are.
#[derive(Default)]
pub(crate) struct Trapping {
    page_traps: Option<Box<dyn PageTraps>>,
    /// The pages `page_traps` traps now.
    applied: Mutex<BTreeMap<PhysAddr, Trap>>,
    /// A watch was removed: the traps change before any vCPU runs next.
    stale: AtomicBool,
    /// Memslot changes wait for every vCPU to be out of `KVM_RUN`.
    run_gate: RunGate,
}

impl std::fmt::Debug for Trapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trapping")
            .field("page_traps", &self.page_traps.is_some())
            .finish_non_exhaustive()
    }
}

impl Trapping {
    /// Trap pages through `traps` (else watchpoints use debug registers).
    pub(crate) fn set_page_traps(&mut self, traps: Box<dyn PageTraps>) {
        self.page_traps = Some(traps);
    }

    /// Whether watchpoints trap pages.
    pub(crate) fn has_page_traps(&self) -> bool {
        self.page_traps.is_some()
    }

    /// The gate vCPU runs pass.
    pub(crate) fn run_gate(&self) -> &RunGate {
        &self.run_gate
    }

    /// Have the VMM trap exactly `pages` (unless it does already), with
    /// every vCPU out of `KVM_RUN` (`kick_all` gets them out).
    pub(crate) fn apply(
        &self,
        pages: BTreeMap<PhysAddr, Trap>,
        kick_all: impl Fn(),
    ) -> Result<(), StubError> {
        let Some(traps) = &self.page_traps else {
            return Ok(());
        };
        let mut applied = lock(&self.applied);
        self.stale.store(false, Ordering::Release);
        if *applied == pages {
            return Ok(());
        }
        self.run_gate
            .closed(kick_all, || traps.set_traps(&pages))
            .map_err(StubError::PageTraps)?;
        *applied = pages;
        Ok(())
    }

    /// A watch was removed: its pages stop trapping before any vCPU runs
    /// next. gdb lifts its watchpoints at every stop and puts them back
    /// when it resumes, which then changes nothing.
    pub(crate) fn untrap_later(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Whether the traps must be made again before a vCPU runs.
    pub(crate) fn stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }
}
