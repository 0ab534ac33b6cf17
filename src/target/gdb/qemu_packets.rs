//! QEMU's own packets, answered before gdbstub sees them (it has no hook
//! for unknown packets). GEF and pwndbg use `Qqemu.sstepbits` to recognise
//! a system-mode target; `qqemu.PhyMemMode` switches memory accesses to
//! physical addresses.

use std::borrow::Cow;
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
    pub(crate) phys_mode: AtomicBool,
    /// `Qqemu.sstep`: how single steps treat interrupts (kept across
    /// sessions, as QEMU does).
    pub(crate) sstep: AtomicU8,
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
    /// Whether a single step keeps interrupts out (NOIRQ).
    pub(crate) fn step_blocks_irqs(&self) -> bool {
        self.sstep.load(Ordering::Relaxed) & SSTEP_NOIRQ != 0
    }
}

/// Our reply to `payload`, or `None` to hand it to gdbstub.
pub(crate) fn reply(payload: &[u8], flags: &QemuFlags) -> Option<Cow<'static, str>> {
    let text = match payload {
        b"qqemu.sstepbits" | b"Qqemu.sstepbits" => "ENABLE=1,NOIRQ=2,NOTIMER=4",
        b"qqemu.sstep" => {
            let bits = flags.sstep.load(Ordering::Relaxed);
            return Some(Cow::Owned(format!("{bits:#x}")));
        }
        p if p.starts_with(b"Qqemu.sstep=") => {
            let value = std::str::from_utf8(&p[12..]).ok();
            let bits = value.and_then(|v| {
                let v = v.trim_start_matches("0x");
                u8::from_str_radix(v, 16).ok()
            });
            match bits {
                Some(bits) if bits & !(SSTEP_ENABLE | SSTEP_NOIRQ | SSTEP_NOTIMER) == 0 => {
                    flags.sstep.store(bits, Ordering::Relaxed);
                    "OK"
                }
                _ => "E22",
            }
        }
        b"qqemu.PhyMemMode" => {
            if flags.phys_mode.load(Ordering::Relaxed) {
                "1"
            } else {
                "0"
            }
        }
        b"Qqemu.PhyMemMode:1" | b"Qqemu.PhyMemMode:0" => {
            flags
                .phys_mode
                .store(payload.ends_with(b"1"), Ordering::Relaxed);
            "OK"
        }
        _ => return None,
    };
    Some(Cow::Borrowed(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_qemu_queries_and_passes_the_rest() {
        let flags = QemuFlags::default();
        let reply = |p: &[u8]| reply(p, &flags).map(|r| r.into_owned());
        assert_eq!(
            reply(b"Qqemu.sstepbits").as_deref(),
            Some("ENABLE=1,NOIRQ=2,NOTIMER=4")
        );
        assert_eq!(reply(b"qqemu.PhyMemMode").as_deref(), Some("0"));
        assert_eq!(reply(b"Qqemu.PhyMemMode:1").as_deref(), Some("OK"));
        assert!(flags.phys_mode.load(Ordering::Relaxed));
        assert_eq!(reply(b"qqemu.PhyMemMode").as_deref(), Some("1"));
        assert_eq!(reply(b"qqemu.sstep").as_deref(), Some("0x7"));
        assert!(flags.step_blocks_irqs());
        assert_eq!(reply(b"Qqemu.sstep=5").as_deref(), Some("OK"));
        assert_eq!(reply(b"qqemu.sstep").as_deref(), Some("0x5"));
        assert!(!flags.step_blocks_irqs());
        assert_eq!(reply(b"Qqemu.sstep=zz").as_deref(), Some("E22"));
        assert_eq!(reply(b"Qqemu.sstep=ff").as_deref(), Some("E22"));
        assert_eq!(reply(b"qqemu.sstep").as_deref(), Some("0x5"));
        assert_eq!(reply(b"qOffsets"), None);
        assert_eq!(reply(b"m1000,4"), None);
    }
}
