//! QEMU's own packets, answered before gdbstub sees them (it has no hook
//! for unknown packets). GEF and pwndbg use `Qqemu.sstepbits` to recognise
//! a system-mode target; `qqemu.PhyMemMode` switches memory accesses to
//! physical addresses.

use crate::target::kvm::qemu_flags::QemuFlags;
use std::borrow::Cow;

/// Our reply to `payload`, or `None` to hand it to gdbstub.
pub(crate) fn reply(payload: &[u8], flags: &QemuFlags) -> Option<Cow<'static, str>> {
    let text = match payload {
        b"qqemu.sstepbits" | b"Qqemu.sstepbits" => "ENABLE=1,NOIRQ=2,NOTIMER=4",
        b"qqemu.sstep" => return Some(Cow::Owned(format!("{:#x}", flags.sstep()))),
        p if p.starts_with(b"Qqemu.sstep=") => {
            let value = std::str::from_utf8(&p[12..]).ok();
            let bits = value.and_then(|v| u8::from_str_radix(v.trim_start_matches("0x"), 16).ok());
            match bits {
                Some(bits) if flags.set_sstep(bits) => "OK",
                _ => "E22",
            }
        }
        b"qqemu.PhyMemMode" if flags.phys_mode() => "1",
        b"qqemu.PhyMemMode" => "0",
        b"Qqemu.PhyMemMode:1" | b"Qqemu.PhyMemMode:0" => {
            flags.set_phys_mode(payload.ends_with(b"1"));
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
        assert!(flags.phys_mode());
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
