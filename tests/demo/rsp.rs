//! A minimal raw RSP client for hostile-input tests (no gdb in between).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use vmem_gdbstub::target::rsp;

/// One connection to the stub, in no-ack mode.
pub struct Rsp {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What came back for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Packet(Vec<u8>),
    Timeout,
    Closed,
}

impl Rsp {
    pub fn connect(port: u16) -> Rsp {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut rsp = Rsp {
            stream,
            buf: Vec::new(),
        };
        rsp.raw(b"+");
        assert!(matches!(rsp.request(b"QStartNoAckMode"), Reply::Packet(p) if p == b"OK"));
        rsp
    }

    /// Send bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Frame and send `payload`.
    pub fn send(&mut self, payload: &[u8]) -> bool {
        self.raw(&rsp::frame(payload))
    }

    /// The next reply packet (acks and junk before `$` are skipped).
    pub fn reply(&mut self) -> Reply {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$') {
                if let Some(hash) = self.buf[start..].iter().position(|&b| b == b'#') {
                    let end = start + hash + 3;
                    if self.buf.len() >= end {
                        let payload = self.buf[start + 1..start + hash].to_vec();
                        self.buf.drain(..end);
                        return Reply::Packet(payload);
                    }
                }
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Reply::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Reply::Timeout
                }
                Err(_) => return Reply::Closed,
            }
        }
    }

    /// Send `payload` and wait (up to 5 s, generous for a loaded machine)
    /// for its reply.
    pub fn request(&mut self, payload: &[u8]) -> Reply {
        if !self.send(payload) {
            return Reply::Closed;
        }
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(5)));
        let reply = self.reply();
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(300)));
        reply
    }

    /// Get the stream back in step: ask for a known reply until it comes.
    /// False if the connection is gone.
    pub fn resync(&mut self) -> bool {
        for _ in 0..20 {
            // Close any half-sent packet, then ask.
            if !self.raw(b"#00") || !self.send(b"qqemu.sstepbits") {
                return false;
            }
            loop {
                match self.reply() {
                    Reply::Packet(p) if p.starts_with(b"ENABLE=") => return true,
                    Reply::Packet(_) => continue,
                    Reply::Timeout => {
                        // Perhaps the guest is running: stop it.
                        self.raw(&[0x03]);
                        break;
                    }
                    Reply::Closed => return false,
                }
            }
        }
        false
    }
}
