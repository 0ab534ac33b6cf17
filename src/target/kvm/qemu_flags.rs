//! What QEMU's own packets set (`gdb/qemu_packets.rs` answers them): how
//! single steps treat interrupts, and whether gdb's memory accesses are
//! physical. The KVM side applies the first to steps.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// QEMU's `Qqemu.sstep` bits: single-step at all, with interrupts
/// blocked, with timers stopped.
pub(crate) const SSTEP_ENABLE: u8 = 1;
pub(crate) const SSTEP_NOIRQ: u8 = 2;
pub(crate) const SSTEP_NOTIMER: u8 = 4;

/// The state QEMU's packets set.
#[derive(Debug)]
pub(crate) struct QemuFlags {
    /// `Qqemu.PhyMemMode`: gdb's memory accesses are physical (per session).
    phys_mode: AtomicBool,
    /// `Qqemu.sstep`: how single steps treat interrupts (kept across
    /// sessions, as QEMU does).
    sstep: AtomicU8,
}

impl Default for QemuFlags {
    fn default() -> Self {
        QemuFlags {
            phys_mode: AtomicBool::new(false),
            sstep: AtomicU8::new(SSTEP_ENABLE | SSTEP_NOIRQ | SSTEP_NOTIMER),
        }
    }
}

impl QemuFlags {
    /// Whether gdb's memory accesses are physical (`Qqemu.PhyMemMode:1`).
    pub(crate) fn phys_mode(&self) -> bool {
        self.phys_mode.load(Ordering::Relaxed)
    }

    /// Set [`Self::phys_mode`] (each session starts with it off).
    pub(crate) fn set_phys_mode(&self, on: bool) {
        self.phys_mode.store(on, Ordering::Relaxed);
    }

    /// The `Qqemu.sstep` bits.
    pub(crate) fn sstep(&self) -> u8 {
        self.sstep.load(Ordering::Relaxed)
    }

    /// Set the `Qqemu.sstep` bits, if they are ones QEMU knows; whether
    /// they were.
    pub(crate) fn set_sstep(&self, bits: u8) -> bool {
        let known = bits & !(SSTEP_ENABLE | SSTEP_NOIRQ | SSTEP_NOTIMER) == 0;
        if known {
            self.sstep.store(bits, Ordering::Relaxed);
        }
        known
    }

    /// Whether a single step keeps interrupts out (NOIRQ).
    pub(crate) fn step_blocks_irqs(&self) -> bool {
        self.sstep.load(Ordering::Relaxed) & SSTEP_NOIRQ != 0
    }
}
