//! The connection layer over a real socket pair, no KVM: what it answers
//! itself, what it queues for the target or gdbstub, and what it drops.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::{GdbConnection, Input, Stream, Wait, PACKET_SIZE};
use crate::target::gdb::rsp;
use crate::target::kvm::qemu_flags::QemuFlags;
use crate::target::wait::{self, Waker};

/// A connection and the peer playing gdb.
struct Pair {
    conn: GdbConnection,
    gdb: UnixStream,
    waker: Waker,
    flags: Arc<QemuFlags>,
}

fn pair(frozen: bool) -> Pair {
    let (ours, gdb) = UnixStream::pair().expect("socketpair");
    gdb.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (waker, wake) = wait::wake_pair().expect("wake pair");
    let flags = Arc::new(QemuFlags::default());
    let conn = GdbConnection::new(Stream::Unix(ours), wake, Arc::clone(&flags), frozen)
        .expect("connection");
    Pair {
        conn,
        gdb,
        waker,
        flags,
    }
}

impl Pair {
    fn send(&mut self, bytes: &[u8]) {
        self.gdb.write_all(bytes).expect("write");
    }

    fn send_packet(&mut self, payload: &[u8]) {
        self.send(&rsp::frame(payload));
    }

    /// Exactly `n` bytes from the connection.
    fn receive(&mut self, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        self.gdb.read_exact(&mut got).expect("reply");
        got
    }

    /// The bytes of the next `n` inputs, which must all be for gdbstub.
    fn bytes_for_gdbstub(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(
                |_| match self.conn.next_input(Wait::ForGdb).expect("input") {
                    Input::Byte(b) => b,
                    other => panic!("expected a byte for gdbstub, got {other:?}"),
                },
            )
            .collect()
    }
}

/// `+` and the framed `payload`: our reply to one packet in ack mode.
fn acked(payload: &[u8]) -> Vec<u8> {
    let mut out = b"+".to_vec();
    rsp::frame_into(&mut out, payload);
    out
}

#[test]
fn memory_reads_are_answered_here() {
    let mut p = pair(false);
    p.send_packet(b"m1000,4");
    let Input::Read(read) = p.conn.next_input(Wait::ForGdb).expect("input") else {
        panic!("not a read");
    };
    assert_eq!((read.addr, read.len, read.binary), (0x1000, 4, false));
    p.conn
        .answer_read(&read, Ok(&[0xde, 0xad, 0xbe, 0xef]))
        .expect("answer");
    assert_eq!(p.receive(acked(b"deadbeef").len()), acked(b"deadbeef"));
    p.send_packet(b"m2000,10");
    let Input::Read(read) = p.conn.next_input(Wait::ForGdb).expect("input") else {
        panic!("not a read");
    };
    p.conn.answer_read(&read, Err(14)).expect("answer");
    assert_eq!(p.receive(acked(b"E0e").len()), acked(b"E0e"));
}

#[test]
fn memory_writes_go_to_the_target() {
    let mut p = pair(false);
    p.send_packet(b"M3000,2:abcd");
    let Input::Write(write) = p.conn.next_input(Wait::ForGdb).expect("input") else {
        panic!("not a write");
    };
    assert_eq!(
        (write.addr, write.data.as_slice()),
        (0x3000, &[0xab, 0xcd][..])
    );
    p.conn.answer_write(Ok(())).expect("answer");
    assert_eq!(p.receive(acked(b"OK").len()), acked(b"OK"));
}

#[test]
fn qemu_packets_are_answered_before_gdbstub() {
    let mut p = pair(false);
    p.send_packet(b"qqemu.sstepbits");
    p.send_packet(b"Qqemu.sstep=5");
    p.send_packet(b"g");
    // Only `g` reaches gdbstub; the two answers are already out.
    assert_eq!(p.bytes_for_gdbstub(5), rsp::frame(b"g"));
    let mut want = acked(b"ENABLE=1,NOIRQ=2,NOTIMER=4");
    want.extend(acked(b"OK"));
    assert_eq!(p.receive(want.len()), want);
    assert!(!p.flags.step_blocks_irqs());
}

#[test]
fn a_late_reply_nudge_is_dropped() {
    let mut p = pair(false);
    p.send(b"-");
    p.send_packet(b"g");
    assert_eq!(p.bytes_for_gdbstub(5), rsp::frame(b"g"));
}

#[test]
fn an_oversized_packet_is_dropped_up_to_its_checksum() {
    let mut p = pair(false);
    let mut huge = b"$M0,1:".to_vec();
    huge.resize(PACKET_SIZE + 64, b'a');
    huge.extend_from_slice(b"#00");
    let writer = {
        let mut gdb = p.gdb.try_clone().expect("clone");
        std::thread::spawn(move || {
            gdb.write_all(&huge).expect("write");
            gdb.write_all(&rsp::frame(b"g")).expect("write");
        })
    };
    assert_eq!(p.bytes_for_gdbstub(5), rsp::frame(b"g"));
    writer.join().expect("writer");
    assert_eq!(p.receive(acked(b"E01").len()), acked(b"E01"));
}

#[test]
fn a_dump_refuses_to_resume_and_stays_stopped() {
    let mut p = pair(true);
    p.send_packet(b"c");
    p.send_packet(b"g");
    assert_eq!(p.bytes_for_gdbstub(5), rsp::frame(b"g"));
    let mut console = b"O".to_vec();
    for b in b"this is a memory dump: it cannot run or step\n" {
        console.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    let mut want = acked(&console);
    rsp::frame_into(&mut want, b"T05thread:1;");
    assert_eq!(p.receive(want.len()), want);
}

#[test]
fn monitor_output_comes_in_o_packets_then_ok() {
    let mut p = pair(false);
    let command: String = b"info mem".iter().map(|b| format!("{b:02x}")).collect();
    p.send_packet(format!("qRcmd,{command}").as_bytes());
    let Input::Monitor(line) = p.conn.next_input(Wait::ForGdb).expect("input") else {
        panic!("not a monitor command");
    };
    assert_eq!(line, "info mem");
    let text: String = (0..2000).map(|i| format!("line {i:05}\n")).collect();
    p.conn.answer_monitor(Some(&text)).expect("answer");
    let mut want = b"+".to_vec();
    for chunk in text.as_bytes().chunks(8192) {
        let mut payload = b"O".to_vec();
        for b in chunk {
            payload.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        rsp::frame_into(&mut want, &payload);
    }
    rsp::frame_into(&mut want, b"OK");
    assert_eq!(p.receive(want.len()), want);
    // While the VM runs, a command gets an error at once.
    p.conn.answer_monitor(None).expect("answer");
    assert_eq!(p.receive(acked(b"E01").len()), acked(b"E01"));
}

#[test]
fn no_ack_mode_and_hg_are_learnt_on_the_way_to_gdbstub() {
    let mut p = pair(false);
    p.send_packet(b"QStartNoAckMode");
    p.send_packet(b"Hg2");
    let forwarded = p.bytes_for_gdbstub(rsp::frame(b"QStartNoAckMode").len() + 7);
    let mut want = rsp::frame(b"QStartNoAckMode");
    want.extend(rsp::frame(b"Hg2"));
    assert_eq!(forwarded, want);
    assert_eq!(p.conn.mem_thread(), 2);
    // Our own replies now come without a `+`.
    p.send_packet(b"qqemu.PhyMemMode");
    p.send_packet(b"g");
    p.bytes_for_gdbstub(5);
    assert_eq!(p.receive(rsp::frame(b"0").len()), rsp::frame(b"0"));
}

#[test]
fn a_vcpu_wake_up_and_a_timeout_end_the_wait() {
    let mut p = pair(false);
    p.waker.wake();
    assert!(matches!(
        p.conn.next_input(Wait::AlsoForWakes(None)).expect("input"),
        Input::Wake
    ));
    let limit = Some(Duration::from_millis(10));
    assert!(matches!(
        p.conn.next_input(Wait::AlsoForWakes(limit)).expect("input"),
        Input::Timeout
    ));
}

#[test]
fn gdb_hanging_up_ends_the_input() {
    let mut p = pair(false);
    drop(std::mem::replace(
        &mut p.gdb,
        UnixStream::pair().expect("pair").0,
    ));
    let err = p.conn.next_input(Wait::ForGdb).expect_err("end of input");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}
