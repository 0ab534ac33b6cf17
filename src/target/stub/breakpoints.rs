//! Software and hardware breakpoints, and watchpoints (trapped pages, or
//! debug registers where the VMM offers no page traps).

use gdbstub::target::ext::breakpoints::{
    Breakpoints, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps, WatchKind,
};
use gdbstub::target::TargetResult;
use log::{debug, warn};

use super::target::{Action, KvmTarget};
use crate::target::kvm::command::Command;
use crate::target::kvm::lending::Driver;
use crate::target::kvm::watch::page_watchpoints::Watch;

impl KvmTarget {
    /// gdb removes (`lifted`) or puts back a breakpoint at `addr` while a
    /// vCPU thread answers it: a breakpoint lifted under that vCPU is
    /// stepped over next, and one put back after its step is left with a
    /// continue (gdb's step over a breakpoint: z0, step, Z0, continue).
    /// The guess only lets that thread set up KVM while gdb reads the
    /// reply; whatever gdb does next is done as asked.
    fn guess_after_breakpoint(&mut self, addr: u64, lifted: bool) {
        let Driver::Vcpu(own) = self.driver else {
            return;
        };
        self.guess = if lifted {
            let under = self.linear_pc(own) == Some(addr);
            under.then_some(Command::Step)
        } else {
            let stepped = self.resolved.get(own) == Some(&Action::Step);
            stepped.then_some(Command::Run)
        };
    }

    /// The guess of [`Self::guess_after_breakpoint`], taken.
    pub(crate) fn take_guess(&mut self) -> Option<Command> {
        self.guess.take()
    }
}

impl Breakpoints for KvmTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for KvmTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        // A dump's memory refuses the int3, so insert_sw says no there.
        let Some(gpa) = self.gpa_of(self.current, addr) else {
            return Ok(false);
        };
        self.guess_after_breakpoint(addr, false);
        Ok(self
            .inner
            .watches
            .breakpoints_mut()
            .insert_sw(&self.inner.memory, gpa))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(gpa) = self.gpa_of(self.current, addr) else {
            return Ok(false);
        };
        self.guess_after_breakpoint(addr, true);
        Ok(self
            .inner
            .watches
            .breakpoints_mut()
            .remove_sw(&self.inner.memory, gpa))
    }
}

impl HwBreakpoint for KvmTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.inner.frozen.is_some() {
            return Ok(false);
        }
        self.guess_after_breakpoint(addr, false);
        Ok(self.inner.watches.debug_regs_mut().insert_exec(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.guess_after_breakpoint(addr, true);
        Ok(self.inner.watches.debug_regs_mut().remove_exec(addr))
    }
}

impl HwWatchpoint for KvmTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Some(gpa) = self.gpa_of(self.current, addr) else {
            return Ok(false);
        };
        if len == 0 || len > 4096 || self.inner.frozen.is_some() {
            return Ok(false);
        }
        debug!("watch {kind:?} {len} bytes at {addr:#x} (gpa {gpa:#x})");
        let watch = Watch {
            va: addr,
            gpa,
            len,
            kind,
        };
        if !self.inner.trapping.has_page_traps() {
            // No memslot traps from the VMM: a debug register, if free.
            let set = self.inner.watches.debug_regs_mut().insert_watch(watch);
            if !set {
                warn!("watchpoint at {addr:#x} ({len} bytes) refused: the VMM offers no page traps and no debug register fits (4 at most, 1/2/4/8 aligned bytes)");
            }
            return Ok(set);
        }
        self.inner.watches.watchpoints_mut().insert(watch);
        if let Err(e) = self.inner.apply_traps() {
            warn!("{e}");
            self.inner.watches.watchpoints_mut().remove(addr, len, kind);
            return Ok(false);
        }
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if !self.inner.trapping.has_page_traps() {
            return Ok(self
                .inner
                .watches
                .debug_regs_mut()
                .remove_watch(addr, len, kind));
        }
        let removed = self.inner.watches.watchpoints_mut().remove(addr, len, kind);
        self.inner.trapping.untrap_later();
        Ok(removed)
    }
}
