//! Hostile gdb peers: a raw RSP client sends malformed, truncated,
//! oversized and absurd packets. The stub answers or drops the connection;
//! the guest keeps running, its code is unchanged, and a real gdb can
//! attach afterwards. VMEM_GDBSTUB_LONG=1 sends ten times as many.

mod demo;
mod support;

use demo::rsp::{Reply, Rsp};
use demo::{number_after, DemoVm};
use support::Rng;

const ADDRS: [u64; 8] = [
    0,
    0x1000,
    0x0000_8000_0000_0000,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_ffff_fff0,
    0x7fff_ffff_ffff_f000,
    0xffff_8880_4000_0000, // just past the direct map's RAM
    0x8000_0000_0000_0000,
];
const LENS: [u64; 6] = [0, 1, 0x1000, 0x10_0000, 0xffff_ffff, 0xffff_ffff_ffff_ffff];

/// A packet with correct framing and hostile content. Never a valid
/// resume or kill: those are exercised separately.
fn hostile_payload(rng: &mut Rng) -> Vec<u8> {
    let addr = *rng.pick(&ADDRS) ^ (rng.below(4) * 0x1000);
    let len = *rng.pick(&LENS);
    let tid = *rng.pick(&["0", "-1", "99", "7fffffff", "p1.99", "p99.1", "zz", ""]);
    let text = match rng.below(16) {
        // Hex and binary reads (answered by our packet layer).
        0 => format!("{}{addr:x},{len:x}", rng.pick(&["m", "x"])),
        1 => format!("M{addr:x},4:deadbeef"),
        2 => format!("M{addr:x},{len:x}:00"),
        3 => format!("X{addr:x},4:\u{1}\u{2}\u{3}\u{4}"),
        4 => format!("Hg{tid}"),
        5 => format!("Hc{tid}"),
        6 => format!("T{tid}"),
        7 => format!("p{:x}", rng.below(1 << 20)),
        8 => format!("P{:x}=00", rng.below(300)),
        9 => format!("Z{},{addr:x},{:x}", rng.below(6), rng.below(1 << 16)),
        10 => format!("z{},{addr:x},{:x}", rng.below(6), rng.below(16)),
        // Resumes only ever name threads that do not exist (gdbstub
        // ignores the pid, so `p99.1` would be thread 1).
        11 => format!(
            "vCont;{}:{}",
            rng.pick(&["s", "c", "x", "S05", "t", ""]),
            rng.pick(&["99", "7fffffff", "p1.99", "p1.63", "zz", ""])
        ),
        12 => format!("qRcmd,{:x}", rng.next()),
        13 => format!("qXfer:features:read:target.xml:{addr:x},{len:x}"),
        14 => format!("g{tid}"),
        _ => {
            let n = rng.below(40) as usize;
            let text: String = (0..n)
                .map(|_| (b'!' + rng.below(90) as u8) as char)
                .filter(|c| !"$#}*".contains(*c))
                .collect();
            // Never a valid resume (c, s, C, S, i, I with any argument).
            if text.starts_with(['c', 's', 'C', 'S', 'i', 'I']) {
                format!("Y{text}")
            } else {
                text
            }
        }
    };
    text.into_bytes()
}

fn fingerprint(rsp: &mut Rsp) -> Vec<u8> {
    // The guest's code and read-only data (the first 4 KiB of the image).
    match rsp.request(b"mffffffff80400000,1000") {
        Reply::Packet(p) => p,
        other => panic!("cannot read the guest's code: {other:?}"),
    }
}

#[test]
fn hostile_packets_never_hurt_the_guest_or_the_next_session() {
    let Some(vm) = DemoVm::start() else { return };
    let long = std::env::var("VMEM_GDBSTUB_LONG").is_ok_and(|v| v == "1");
    let total: u64 = if long { 1_000_000 } else { 100_000 };
    let before = vm.gdb(&["print counter"]);
    let counter_before = number_after(&before, "$1 = ").unwrap();

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut rsp = Rsp::connect(vm.port);
    let code = fingerprint(&mut rsp);
    let (mut sent, mut replies, mut drops, mut timeouts) = (0u64, 0u64, 0u64, 0u64);
    while sent < total {
        sent += 1;
        let kind = rng.below(100);
        let ok = match kind {
            // Well-framed hostile packets: each must be answered.
            0..=79 => {
                let payload = hostile_payload(&mut rng);
                match rsp.request(&payload) {
                    Reply::Packet(_) => {
                        replies += 1;
                        true
                    }
                    Reply::Timeout => {
                        eprintln!("unanswered: {:?}", String::from_utf8_lossy(&payload));
                        timeouts += 1;
                        rsp.resync()
                    }
                    Reply::Closed => false,
                }
            }
            // Bad checksum.
            80..=84 => rsp.raw(b"$m0,1#00") && rsp.resync(),
            // Truncated, then a new packet.
            85..=89 => rsp.raw(b"$mffffffff80400000,") && rsp.resync(),
            // Random bytes.
            90..=94 => {
                let junk: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
                rsp.raw(&junk) && rsp.resync()
            }
            // Oversized (larger than the advertised packet size).
            95..=96 => {
                let big = vec![b'A'; 200_000 + rng.below(100_000) as usize];
                rsp.send(&big) && rsp.resync()
            }
            // A peer that disconnects mid-packet.
            _ => {
                rsp.raw(b"$m4000");
                false
            }
        };
        if !ok {
            drops += 1;
            drop(rsp);
            rsp = Rsp::connect(vm.port);
        }
    }
    // A fresh session (the fuzzed one may have selected absurd threads).
    drop(rsp);
    let mut rsp = Rsp::connect(vm.port);
    assert_eq!(fingerprint(&mut rsp), code, "guest code changed");
    drop(rsp);
    eprintln!(
        "sent {sent} hostile inputs: {replies} answered, {timeouts} unanswered, {drops} connections dropped or closed"
    );
    assert!(replies > total / 2, "most framed packets get an answer");
    assert_eq!(timeouts, 0, "every well-framed packet is answered");

    // The guest ran on, and a real gdb works.
    let after = vm.gdb(&["print counter", "info threads", "x/s &greeting"]);
    let counter_after = number_after(&after, "$1 = ").unwrap();
    assert!(
        counter_after > counter_before,
        "guest kept running: {counter_before} -> {counter_after}"
    );
    assert!(
        after.contains("Thread 1.2") && after.contains("Hello from the higher half!"),
        "{after}"
    );
}

#[test]
fn a_packet_that_never_ends_is_dropped_not_buffered() {
    let Some(vm) = DemoVm::start() else { return };
    let mut rsp = Rsp::connect(vm.port);
    assert!(matches!(rsp.request(b"qqemu.sstepbits"), Reply::Packet(_)));
    let before = vm.rss_kib();
    // 64 MiB after a `$` and no `#`: far beyond the advertised size.
    let chunk = vec![b'A'; 1 << 20];
    assert!(rsp.raw(b"$m"));
    for _ in 0..64 {
        assert!(rsp.raw(&chunk), "the stub reads on");
    }
    assert!(rsp.resync(), "the session goes on after the packet ends");
    let grown = vm.rss_kib().saturating_sub(before);
    eprintln!("resident memory grew by {grown} KiB for a 64 MiB packet");
    assert!(grown < 8 << 10, "{grown} KiB kept for a dropped packet");
    assert!(matches!(rsp.request(b"mffffffff80400000,4"), Reply::Packet(p) if p.len() == 8));
}

#[test]
fn a_second_client_is_refused_while_one_is_attached() {
    let Some(vm) = DemoVm::start() else { return };
    let mut first = Rsp::connect(vm.port);
    let second = vm.gdb(&["print counter"]);
    assert!(
        second.contains("another gdb session is already attached"),
        "{second}"
    );
    // The first session is unaffected.
    assert!(
        matches!(first.request(b"qqemu.sstepbits"), Reply::Packet(p) if p.starts_with(b"ENABLE="))
    );
    assert!(matches!(first.request(b"mffffffff80400000,4"), Reply::Packet(p) if p.len() == 8));
    drop(first);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let third = vm.gdb(&["print counter"]);
    assert!(number_after(&third, "$1 = ").is_some(), "{third}");
}

/// `monitor` output longer than one `O` packet, to a client that never
/// asked for no-ack mode: one `+` for its packet, then the `O` packets and
/// `OK` with no stray acks between them; what they carry is what the same
/// command prints to a no-ack client.
#[test]
fn monitor_output_in_ack_mode() {
    use std::io::{Read, Write};
    use vmem_gdbstub::target::rsp;

    let Some(vm) = DemoVm::start() else { return };
    let command = b"info tlb";
    let hex: String = command.iter().map(|b| format!("{b:02x}")).collect();
    let request = rsp::frame(format!("qRcmd,{hex}").as_bytes());

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", vm.port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    while !got.ends_with(b"$OK#9a") {
        let n = stream.read(&mut chunk).expect("the reply");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
        // gdb acks every packet it gets.
        for _ in chunk[..n].iter().filter(|&&b| b == b'#') {
            stream.write_all(b"+").unwrap();
        }
    }
    assert_eq!(got[0], b'+', "{:?}", String::from_utf8_lossy(&got[..64]));
    let packets: Vec<&[u8]> = got[1..].split(|&b| b == b'$').skip(1).collect();
    assert!(
        got[1] == b'$' && packets.len() > 2,
        "{} packets",
        packets.len()
    );
    let mut text = Vec::new();
    for packet in &packets[..packets.len() - 1] {
        let (payload, sum) = packet.split_at(packet.len() - 3);
        assert_eq!(sum[0], b'#', "one packet after another, nothing between");
        assert_eq!(
            format!("{:02x}", rsp::checksum(payload)).as_bytes(),
            &sum[1..]
        );
        decode_output(payload, &mut text);
    }
    drop(stream);

    let mut no_ack = Rsp::connect(vm.port);
    assert!(no_ack.send(format!("qRcmd,{hex}").as_bytes()));
    let mut expected = Vec::new();
    loop {
        match no_ack.reply() {
            Reply::Packet(p) if p == b"OK" => break,
            Reply::Packet(p) => decode_output(&p, &mut expected),
            other => panic!("{other:?}"),
        }
    }
    assert!(text.len() > 8 << 10, "{} bytes", text.len());
    // The guest runs between the two sessions: accessed and dirty bits may
    // differ, the mappings (`VA: PA`) may not.
    let mappings = |text: Vec<u8>| -> Vec<String> {
        String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|l| l.chars().take(35).collect())
            .collect()
    };
    let (got, expected) = (mappings(text), mappings(expected));
    assert_eq!(got, expected);
    assert!(
        got.iter().all(|l| l.len() == 35 && l.contains(": ")),
        "{got:?}"
    );
}

/// Append what an `O` packet's hex digits say to `text`.
fn decode_output(packet: &[u8], text: &mut Vec<u8>) {
    let digits = packet.strip_prefix(b"O").expect("an O packet");
    for pair in digits.chunks(2) {
        text.push(u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap());
    }
}
