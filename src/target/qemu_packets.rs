//! QEMU's own packets, answered before gdbstub sees them (it has no hook
//! for unknown packets). GEF and pwndbg use `Qqemu.sstepbits` to recognise
//! a system-mode target; `qqemu.PhyMemMode` switches memory accesses to
//! physical addresses.

use std::sync::atomic::{AtomicBool, Ordering};

/// Our reply to `payload`, or `None` to hand it to gdbstub.
pub(crate) fn reply(payload: &[u8], phys_mode: &AtomicBool) -> Option<&'static str> {
    match payload {
        b"qqemu.sstepbits" | b"Qqemu.sstepbits" => Some("ENABLE=1,NOIRQ=2,NOTIMER=4"),
        b"qqemu.sstep" => Some("0x7"),
        p if p.starts_with(b"Qqemu.sstep=") => Some("OK"),
        b"qqemu.PhyMemMode" => Some(if phys_mode.load(Ordering::Relaxed) {
            "1"
        } else {
            "0"
        }),
        b"Qqemu.PhyMemMode:1" | b"Qqemu.PhyMemMode:0" => {
            phys_mode.store(payload.ends_with(b"1"), Ordering::Relaxed);
            Some("OK")
        }
        _ => None,
    }
}

/// The RSP checksum of `payload`.
pub(crate) fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// `payload` as an RSP packet: `$payload#xx`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + 4);
    framed.push(b'$');
    framed.extend_from_slice(payload);
    framed.extend(format!("#{:02x}", checksum(payload)).bytes());
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_qemu_queries_and_passes_the_rest() {
        let phys = AtomicBool::new(false);
        assert_eq!(
            reply(b"Qqemu.sstepbits", &phys),
            Some("ENABLE=1,NOIRQ=2,NOTIMER=4")
        );
        assert_eq!(reply(b"qqemu.PhyMemMode", &phys), Some("0"));
        assert_eq!(reply(b"Qqemu.PhyMemMode:1", &phys), Some("OK"));
        assert!(phys.load(Ordering::Relaxed));
        assert_eq!(reply(b"qqemu.PhyMemMode", &phys), Some("1"));
        assert_eq!(reply(b"qOffsets", &phys), None);
        assert_eq!(reply(b"m1000,4", &phys), None);
        assert_eq!(checksum(b"OK"), 0x9a);
        assert_eq!(frame(b"OK"), b"$OK#9a");
    }
}
