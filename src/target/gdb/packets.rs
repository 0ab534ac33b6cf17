//! Which of gdb's packets the connection layer answers itself, and how:
//! [`route`], a pure function of the packet (no socket, no KVM), so every
//! decision is unit-tested here. The connection (`connection.rs`) keeps
//! the socket, framing and buffering and acts on the [`Route`]; the
//! packet families have their own files (`memory_packets.rs`: `m`/`x`/
//! `M`/`X`; `qemu_packets.rs`: `qqemu.*`); the rest goes to gdbstub.

use std::borrow::Cow;

use super::memory_packets::{self, ReadRequest, WriteRequest};
use super::qemu_packets;
use super::rsp;
use crate::target::kvm::qemu_flags::QemuFlags;

/// What to do with one packet from gdb.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A resume or step while a dump is served (its vCPUs never run):
    /// refused here, the session goes on.
    RefuseResume,
    /// `M`/`X`: a memory write for the target.
    Write(WriteRequest),
    /// lldb's `qMemoryRegionInfo:ADDR` (`None`: a malformed address,
    /// answered `E01`).
    Region(Option<u64>),
    /// `qRcmd,HEX` (`monitor …`): the command line (`None`: malformed
    /// hex, answered `E01`).
    Monitor(Option<String>),
    /// A `qqemu.*` query answered at once.
    Qemu(Cow<'static, str>),
    /// `m`/`x`: a memory read for the target.
    Read(ReadRequest),
    /// A bare `qSupported` (pwndbg's `maint packet qSupported`): handed to
    /// gdbstub as gdb's own query, which gdbstub parses.
    BareQSupported,
    /// Anything else (a bad checksum too: gdbstub asks for it again), for
    /// gdbstub, with what the connection learns from it.
    Forward {
        /// `QStartNoAckMode`: no more `+` from here on.
        no_ack: bool,
        /// `Hg`: the thread memory accesses go through from here on.
        mem_thread: Option<usize>,
    },
}

/// The route of `packet` (a whole `$…#xx`). `frozen`: a dump is served.
pub(crate) fn route(packet: &[u8], frozen: bool, qemu: &QemuFlags) -> Route {
    let forward = Route::Forward {
        no_ack: false,
        mem_thread: None,
    };
    let n = packet.len();
    if n < 4 {
        return forward;
    }
    let payload = &packet[1..n - 3];
    if rsp::parse_checksum(&packet[n - 2..]) != Some(rsp::checksum(payload)) {
        return forward;
    }
    if frozen && is_resume(payload) {
        return Route::RefuseResume;
    }
    if let Some(write) = memory_packets::parse_write(payload) {
        return Route::Write(write);
    }
    if let Some(addr) = payload.strip_prefix(b"qMemoryRegionInfo:") {
        let addr = std::str::from_utf8(addr)
            .ok()
            .and_then(|a| u64::from_str_radix(a, 16).ok());
        return Route::Region(addr);
    }
    if let Some(hex) = payload.strip_prefix(b"qRcmd,") {
        let line = memory_packets::parse_hex_bytes(hex)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        return Route::Monitor(line);
    }
    if let Some(reply) = qemu_packets::reply(payload, qemu) {
        return Route::Qemu(reply);
    }
    // `x0,0` (lldb's probe for its own `x`) stays with gdbstub, which says
    // "unsupported"; gdb learns of ours from `binary-upload+`.
    if let Some(read) = memory_packets::parse_read(payload) {
        return Route::Read(read);
    }
    if payload == b"qSupported" {
        return Route::BareQSupported;
    }
    Route::Forward {
        no_ack: payload == b"QStartNoAckMode",
        mem_thread: payload.strip_prefix(b"Hg").and_then(memory_thread),
    }
}

/// Whether `payload` asks to resume or step (`c`, `s`, `C`, `S`, `vCont;…`).
fn is_resume(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(b'c' | b's' | b'C' | b'S')) || payload.starts_with(b"vCont;")
}

/// The thread an `Hg` packet selects, as gdbstub reads it: `0` (any) is
/// the first thread, `-1` (all) changes nothing; a `pPID.` prefix is skipped.
fn memory_thread(id: &[u8]) -> Option<usize> {
    let tid = match id.strip_prefix(b"p") {
        Some(rest) => &rest[rest.iter().position(|&b| b == b'.')? + 1..],
        None => id,
    };
    let tid = usize::from_str_radix(std::str::from_utf8(tid).ok()?, 16).ok()?;
    Some(tid.max(1))
}

/// The thread named in a `T` stop reply (`thread:p01.02;`).
pub(crate) fn stop_reply_thread(payload: &[u8]) -> Option<usize> {
    let at = payload.windows(7).position(|w| w == b"thread:")? + 7;
    let rest = &payload[at..];
    let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
    memory_thread(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(payload: &str, frozen: bool) -> Route {
        route(
            &rsp::frame(payload.as_bytes()),
            frozen,
            &QemuFlags::default(),
        )
    }

    const FORWARD: Route = Route::Forward {
        no_ack: false,
        mem_thread: None,
    };

    #[test]
    fn memory_packets_go_to_the_target() {
        assert!(matches!(routed("m1000,10", false), Route::Read(_)));
        assert!(matches!(routed("x1000,10", false), Route::Read(_)));
        assert!(matches!(routed("M1000,2:abcd", false), Route::Write(w) if w.data == [0xab, 0xcd]));
        // lldb's probe for `x` support, and malformed writes: gdbstub's.
        assert_eq!(routed("x0,0", false), FORWARD);
        assert_eq!(routed("M1000,2:abc", false), FORWARD);
    }

    #[test]
    fn a_dump_refuses_every_resume_and_nothing_else() {
        for resume in ["c", "s", "C05", "S05", "vCont;c", "vCont;s:1"] {
            assert_eq!(routed(resume, true), Route::RefuseResume, "{resume}");
            assert_eq!(routed(resume, false), FORWARD, "{resume}");
        }
        assert_eq!(routed("vCont?", true), FORWARD);
        assert!(matches!(routed("m0,4", true), Route::Read(_)));
    }

    #[test]
    fn queries_answered_here() {
        assert_eq!(
            routed("qMemoryRegionInfo:1000", false),
            Route::Region(Some(0x1000))
        );
        assert_eq!(routed("qMemoryRegionInfo:zz", false), Route::Region(None));
        // "info mem" in hex.
        assert_eq!(
            routed("qRcmd,696e666f206d656d", false),
            Route::Monitor(Some("info mem".into()))
        );
        assert_eq!(routed("qRcmd,696", false), Route::Monitor(None));
        assert!(
            matches!(routed("qqemu.sstepbits", false), Route::Qemu(r) if r.starts_with("ENABLE="))
        );
        assert_eq!(routed("qSupported", false), Route::BareQSupported);
        assert_eq!(routed("qSupported:multiprocess+", false), FORWARD);
    }

    #[test]
    fn what_the_connection_learns_from_forwarded_packets() {
        let learns = |payload, no_ack, mem_thread| {
            assert_eq!(
                routed(payload, false),
                Route::Forward { no_ack, mem_thread },
                "{payload}"
            );
        };
        learns("QStartNoAckMode", true, None);
        learns("Hg2", false, Some(2));
        learns("Hgp1.3", false, Some(3));
        learns("Hg0", false, Some(1));
        learns("Hg-1", false, None);
        learns("g", false, None);
    }

    #[test]
    fn bad_checksums_and_scraps_go_to_gdbstub() {
        assert_eq!(route(b"$m0,4#00", false, &QemuFlags::default()), FORWARD);
        assert_eq!(route(b"$#", false, &QemuFlags::default()), FORWARD);
        assert_eq!(route(b"", true, &QemuFlags::default()), FORWARD);
    }

    #[test]
    fn stop_replies_name_their_thread() {
        assert_eq!(stop_reply_thread(b"T05thread:p01.02;core:1;"), Some(2));
        assert_eq!(stop_reply_thread(b"T05thread:3"), Some(3));
        assert_eq!(stop_reply_thread(b"T05swbreak:;"), None);
    }
}
