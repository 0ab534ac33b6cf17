//! `monitor` commands: the context they see (built when a command runs)
//! and the effects they ask for.

use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};

use super::arm_dump::ArmDumpTarget;
use super::monitor_effects::{apply_shared, Picks};
use super::target::KvmTarget;
use crate::target::error::StubError;
use crate::target::kvm::command::Command;
use crate::target::kvm::msrs::read_msr;
use crate::target::kvm::shared::Inner;
use crate::target::machine::paging::{GuestFormat, Paging, CR3_ADDR_MASK, CR4_PKE};
use crate::target::machine::regs::KvmState;
use crate::target::machine::x86_constants::{APIC_BASE_EXTD, MSR_APIC_BASE};
use crate::target::monitor::{self, Effect};

impl monitor::Registers for KvmTarget {
    fn all_registers(&self) -> Option<KvmState> {
        self.state(self.monitor_vcpu()).ok()
    }

    fn debug_registers(&self) -> Option<[u64; 6]> {
        // A dump's CPU notes hold no debug registers.
        if self.inner.frozen.is_some() {
            return None;
        }
        self.on_vcpu(self.monitor_vcpu(), "KVM_GET_DEBUGREGS", |fd| {
            fd.get_debug_regs()
        })
        .map(|d| [d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7])
        .ok()
    }

    fn run_state(&self) -> monitor::RunState {
        // A dump keeps no events.
        let events = match self.inner.frozen {
            Some(_) => None,
            None => self
                .on_vcpu(self.monitor_vcpu(), "KVM_GET_VCPU_EVENTS", |fd| {
                    fd.get_vcpu_events()
                })
                .ok(),
        };
        monitor::RunState {
            interrupt_shadow: events.is_some_and(|e| e.interrupt.shadow != 0),
            smm: events.is_some_and(|e| e.smi.smm != 0),
            halted: self.halted(self.monitor_vcpu()),
        }
    }

    fn vcpu_threads(&self) -> Vec<Option<i32>> {
        self.inner.vcpus.iter().map(|v| v.host_thread()).collect()
    }

    fn local_apic(&self, index: usize) -> Result<monitor::Lapic, String> {
        if self.inner.frozen.is_some() {
            return Err("a memory dump holds no local APIC state".into());
        }
        let (lapic, base) = self
            .on_vcpu(index, "KVM_GET_LAPIC", |fd| {
                Ok((fd.get_lapic()?, read_msr(fd, MSR_APIC_BASE)?))
            })
            .map_err(|e| {
                debug!("info lapic: {e}");
                format!(
                    "no local APIC for CPU {index} (KVM keeps one only with an in-kernel irqchip)"
                )
            })?;
        let mut page = [0u8; 1024];
        for (byte, &reg) in page.iter_mut().zip(lapic.regs.iter()) {
            *byte = reg as u8;
        }
        Ok(monitor::Lapic {
            cpu: index,
            page,
            x2apic: base & APIC_BASE_EXTD != 0,
        })
    }
}

impl KvmTarget {
    /// The vCPU the monitor commands use: `monitor cpu N`'s, else the one
    /// that stopped last.
    fn monitor_vcpu(&self) -> usize {
        self.monitor_cpu.unwrap_or(self.current)
    }

    /// Everything a monitor command may need about the current vCPU.
    fn monitor_context<'m>(&'m self, mode: &'m mut Option<GuestFormat>) -> monitor::Context<'m> {
        let limits = self.inner.vcpus.cpu_limits();
        let paging = self.core(self.monitor_vcpu()).ok().map(|(_, sregs)| {
            let paging = Paging::of(&sregs, &limits);
            if sregs.cr4 & CR4_PKE == 0 {
                return paging;
            }
            // Protection keys: the rights of user pages depend on PKRU.
            let xsave = self.on_vcpu(self.monitor_vcpu(), "KVM_GET_XSAVE", |fd| fd.get_xsave());
            match xsave.ok().and_then(|x| limits.pkru(&x)) {
                Some(pkru) => paging.with_pkru(pkru),
                None => paging,
            }
        });
        let root = match paging {
            Some(Paging::Paged { format, root }) => {
                *mode = Some(format);
                Some(root)
            }
            _ => None,
        };
        // Known spaces in walk order, each labelled with every way it is
        // known: `first` starts a label, `more` extends one.
        let mut spaces: Vec<(u64, String)> = Vec::new();
        let mut know = |root: u64, first: String, more: String| match spaces
            .iter_mut()
            .find(|(r, _)| *r == root)
        {
            Some((_, label)) => {
                label.push_str(", ");
                label.push_str(&more);
            }
            None => spaces.push((root, first)),
        };
        for i in 0..self.inner.vcpus.len() {
            if let Ok(Paging::Paged { root, .. }) = self.paging(i) {
                know(root, format!("current on vcpu {i}"), format!("vcpu {i}"));
            }
        }
        // Registered as CR3 values: the root is what the paging mode reads
        // from them (a PAE PDPT is 32-byte aligned, not page aligned).
        for (cr3, how) in self.inner.monitor.spaces() {
            let root = mode.map_or(cr3 & CR3_ADDR_MASK, |m| m.root(cr3));
            know(root, how.to_string(), how.to_string());
        }
        monitor::Context {
            memory: &self.inner.memory,
            pool: self.inner.monitor.table_pool(),
            format: mode.as_ref().map(GuestFormat::as_dyn),
            lower_half: None,
            root,
            root_mask: mode.map_or(u64::MAX, |m| m.root(u64::MAX)),
            spaces,
            cpu: self.monitor_vcpu(),
            cpu_count: self.inner.vcpus.len(),
            registers: self,
            snapshots: &self.snapshots,
            host_files: self.inner.monitor.host_files(),
            last_stop: self.last_stop.as_ref(),
            progress: self.inner.monitor.progress(),
            dump: self.inner.monitor.dump(),
        }
    }

    /// Remember the tables as the VM resumes, for `vmem diff` at the next
    /// stop: at the first resume of the session, then — once `vmem diff`
    /// has been used — at every continue. Not otherwise: a walk of every
    /// space (~170 µs on the demo) at each of gdb's internal continues
    /// (a conditional breakpoint) would cost more than the hit itself.
    /// Single steps never take them; the diff then says since which stop.
    pub(super) fn remember_tables(&mut self, stepping: bool) {
        if let Some((_, what)) = &mut self.last_stop {
            if stepping && what == "the last stop" {
                *what = "the last stop before the single steps (vmem snapshot NAME marks a point between steps)".into();
            }
            if stepping || !self.diff_armed {
                return;
            }
        }
        let started = Instant::now();
        let mut mode = None;
        let snapshot = monitor::take_snapshot(&self.monitor_context(&mut mode)).ok();
        debug!("tables taken for vmem diff in {:?}", started.elapsed());
        let what = if self.diff_armed {
            "the last stop"
        } else {
            "the session's first run (from now on: since the last stop)"
        };
        self.last_stop = snapshot.map(|s| (s, what.to_string()));
    }

    /// `vmem watch VA`: trap the tables on VA's walk; the text to print.
    fn watch(&self, va: u64, root: u64, mode: Option<GuestFormat>) -> String {
        let Some(format) = mode else {
            return "error: paging is off on this vCPU\n".into();
        };
        if self.inner.frozen.is_some() {
            return "error: a memory dump does not run: nothing can change\n".into();
        }
        if !self.inner.link.attached() {
            return "error: vmem watch reports its stop to gdb: attach gdb first\n".into();
        }
        if !self.inner.trapping.has_page_traps() {
            return "error: vmem watch needs page traps (memslots) from the VMM, and this one offers none\n".into();
        }
        let (now, pages) =
            self.inner
                .watches
                .table_watches_mut()
                .add(&self.inner.memory, va, root, format);
        if let Err(e) = self.inner.apply_traps() {
            self.inner.watches.table_watches_mut().remove(Some(va));
            return format!("error: cannot trap the tables: {e}\n");
        }
        let now = now.map_or("not mapped".to_string(), |t| t.to_string());
        format!("watching {va:#x} in space {root:#x}: now {now}; {pages} table page(s) trapped for writes\n")
    }

    /// Make every vCPU drop cached translations: reloading CR3 through
    /// KVM_SET_SREGS flushes KVM's (and a shadow-paging host's) TLB.
    fn reload_cr3(&self) {
        if self.inner.frozen.is_some() {
            return;
        }
        for i in 0..self.inner.vcpus.len() {
            let reloaded = self.on_vcpu(i, "KVM_GET/SET_SREGS", |fd| {
                fd.get_sregs().and_then(|s| fd.set_sregs(&s))
            });
            if let Err(e) = reloaded {
                warn!("cannot reload CR3: {e}");
            }
        }
    }
}

/// `Debugger::monitor`: one command with the vCPUs paused, outside any gdb
/// session.
pub(crate) fn run_monitor(inner: &Arc<Inner>, line: &str) -> Result<String, StubError> {
    let Some(_holder) = inner.link.try_hold() else {
        return Err(StubError::Attached);
    };
    if let Some(mut target) = ArmDumpTarget::new(Arc::clone(inner)) {
        return Ok(target.monitor_text(line));
    }
    let live = inner.frozen.is_none();
    if live {
        inner.vcpus.pause_all();
    }
    let text = KvmTarget::new(Arc::clone(inner)).monitor_text(line);
    if live {
        for v in inner.vcpus.iter().filter(|v| !v.has_stop()) {
            v.request(Command::Run);
        }
    }
    Ok(text)
}

impl KvmTarget {
    /// Run one monitor command line (`qRcmd`, answered by the connection
    /// layer; `Debugger::monitor`); what it prints.
    pub(crate) fn monitor_text(&mut self, line: &str) -> String {
        // A command may change tables or what gdb reads through.
        *self.regions.borrow_mut() = None;
        debug!("monitor: {line}");
        let mut mode = None;
        let (mut text, effect) = monitor::run(&self.monitor_context(&mut mode), line);
        let picks = Picks {
            monitor_cpu: &mut self.monitor_cpu,
            view: &mut self.view,
            snapshots: &mut self.snapshots,
        };
        match apply_shared(effect, &self.inner, picks, &mut text) {
            None => {}
            Some(Effect::TablesChanged) => self.reload_cr3(),
            Some(Effect::Watch { va, root }) => text.push_str(&self.watch(va, root, mode)),
            Some(Effect::DiffUsed) => self.diff_armed = true,
            Some(Effect::Unwatch(va)) => {
                let removed = self.inner.watches.table_watches_mut().remove(va);
                self.inner.trapping.untrap_later();
                text.push_str(&format!("{removed} watch(es) removed\n"));
            }
            Some(Effect::ListWatches) => {
                let list = self.inner.watches.table_watches().list();
                for (va, root, now) in &list {
                    let now = now.map_or("not mapped".to_string(), |t| t.to_string());
                    text.push_str(&format!("watching {va:#x} in space {root:#x}: {now}\n"));
                }
                text.push_str(&format!("{} watched translation(s)\n", list.len()));
            }
            Some(_) => {}
        }
        text
    }
}
