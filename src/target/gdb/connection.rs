//! The gdb connection: the gdb thread reads the socket itself, sleeping in
//! [`wait::wait`] on the socket and the vCPUs' wake-up socket together, so
//! it never polls and no packet is handed between threads. Writes are
//! buffered and sent on flush.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gdbstub::conn::Connection;
use log::{debug, trace, warn};

use super::memory_packets::{self, ReadRequest, WriteRequest};
use super::packets::{self, Route};
use super::rsp;
use crate::target::kvm::qemu_flags::QemuFlags;
use crate::target::sync::lock;
use crate::target::wait::{self, Ready, WakeReceiver, Waker};

/// A stream gdb talks over.
#[derive(Debug)]
pub enum Stream {
    /// TCP (loopback by default).
    Tcp(TcpStream),
    /// A unix-domain socket.
    Unix(UnixStream),
}

impl Stream {
    /// Another handle on the same socket.
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Bound how long a read may block.
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        };
    }

    /// The socket's descriptor (to wait on it).
    fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Close both directions.
    pub(crate) fn shutdown(&self) {
        self.shut(std::net::Shutdown::Both);
    }

    /// End reading: a read blocked on it returns end-of-file.
    pub(crate) fn shutdown_read(&self) {
        self.shut(std::net::Shutdown::Read);
    }

    fn shut(&self, how: std::net::Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => Read::read(s, buf),
            Stream::Unix(s) => Read::read(s, buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => Write::write(s, buf),
            Stream::Unix(s) => Write::write(s, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The gdbstub side of a session.
#[derive(Debug)]
pub(crate) struct GdbConnection {
    stream: Stream,
    wake: WakeReceiver,
    /// Bytes read from the socket, before `absorb`.
    read_buf: Vec<u8>,
    input: VecDeque<Input>,
    output: Vec<u8>,
    /// Plain hex of the memory reply being encoded.
    hex: Vec<u8>,
    /// A read-ahead reply: the read it answers and its framed bytes.
    prepared: Option<(ReadRequest, Vec<u8>)>,
    /// Reused for the memory reads answered here.
    read_buffer: Vec<u8>,
    /// An incoming packet not complete yet (`$` … `#xx`).
    packet: Vec<u8>,
    /// Inside a packet longer than [`PACKET_SIZE`], being dropped.
    oversized: Option<Oversized>,
    /// gdb switched acknowledgements off (`QStartNoAckMode`).
    no_ack: bool,
    /// The thread (1-based) gdb's memory accesses refer to, mirrored from
    /// `Hg` packets and stop replies as gdbstub tracks it.
    mem_thread: usize,
    /// The last packet handed to gdbstub (answered here if it rejects it).
    last_packet: Vec<u8>,
    /// rip, rsp, rbp to add to the next stop reply.
    expedite: Option<[u64; 3]>,
    /// Reused while amending a reply: its new payload, and the buffer the
    /// whole output is rebuilt in (swapped with `output`).
    amended: Vec<u8>,
    spare_output: Vec<u8>,
    /// The buffer of the last reply of our own sent, reused for the next.
    spare_reply: Vec<u8>,
    /// A console line gdb prints before the next stop reply.
    stop_note: Option<String>,
    qemu: Arc<QemuFlags>,
    /// Serving a memory dump: resume requests are refused here.
    frozen: bool,
}

/// Reads at least this long are followed by a read-ahead of the next.
const READ_AHEAD_MIN: usize = 4096;

/// Largest packet payload we accept and advertise (gdb reads memory in
/// chunks of about half this).
pub(crate) const PACKET_SIZE: usize = 1 << 17;

/// gdbstub's packet buffer: every packet but memory reads and writes goes
/// through it, and gdbstub scans the whole buffer per packet, so it is
/// small (the largest of those packets, `G`, is 1,216 bytes).
pub(crate) const STUB_PACKET_SIZE: usize = 1 << 12;

/// Where we are in a packet too long to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oversized {
    /// Before its `#`.
    Body,
    /// This many checksum digits still to come.
    Checksum(u8),
}

impl Oversized {
    /// The state after byte `b`; `None` once the packet has ended.
    fn next(self, b: u8) -> Option<Oversized> {
        match (self, b) {
            (Oversized::Body, b'#') => Some(Oversized::Checksum(2)),
            (Oversized::Body, _) => Some(Oversized::Body),
            (Oversized::Checksum(1), _) => None,
            (Oversized::Checksum(n), _) => Some(Oversized::Checksum(n - 1)),
        }
    }
}

/// Bytes of monitor output per `O` packet.
const MONITOR_CHUNK: usize = 8 << 10;

/// The next thing the gdb thread has to handle.
#[derive(Debug)]
pub(crate) enum Input {
    /// A byte for gdbstub.
    Byte(u8),
    /// A memory read to answer with [`GdbConnection::answer_read`].
    Read(ReadRequest),
    /// A memory write (`M`/`X`), to answer with
    /// [`GdbConnection::answer_write`].
    Write(WriteRequest),
    /// lldb's `qMemoryRegionInfo:ADDR`, to answer with
    /// [`GdbConnection::answer_region`].
    Region(u64),
    /// `qRcmd,HEX` (`monitor …`): the command line, to answer with
    /// [`GdbConnection::answer_monitor`].
    Monitor(String),
    /// A vCPU stopped by itself.
    Wake,
    /// The wait's timeout passed.
    Timeout,
}

impl GdbConnection {
    /// A new session's connection over `stream` (QEMU's physical-memory
    /// mode off), with the waker that wakes its waits; `None`, logged,
    /// when the socket cannot be set up.
    pub(crate) fn start(
        stream: Stream,
        qemu: &Arc<QemuFlags>,
        frozen: bool,
    ) -> Option<(Waker, GdbConnection)> {
        qemu.set_phys_mode(false);
        let started = wait::wake_pair().and_then(|(waker, wake)| {
            let conn = GdbConnection::new(stream, wake, Arc::clone(qemu), frozen)?;
            Ok((waker, conn))
        });
        started
            .map_err(|e| warn!("cannot start the gdb session: {e}"))
            .ok()
    }

    /// A session's connection over `stream`; vCPUs wake it through the
    /// waker paired with `wake`.
    pub(crate) fn new(
        stream: Stream,
        wake: WakeReceiver,
        qemu: Arc<QemuFlags>,
        frozen: bool,
    ) -> io::Result<GdbConnection> {
        if let Stream::Tcp(s) = &stream {
            s.set_nodelay(true)?;
        }
        Ok(GdbConnection {
            stream,
            wake,
            read_buf: vec![0u8; 1 << 16],
            input: VecDeque::new(),
            output: Vec::with_capacity(1 << 17),
            hex: Vec::new(),
            prepared: None,
            read_buffer: Vec::new(),
            packet: Vec::new(),
            oversized: None,
            no_ack: false,
            mem_thread: 1,
            last_packet: Vec::new(),
            expedite: None,
            stop_note: None,
            amended: Vec::new(),
            spare_output: Vec::new(),
            spare_reply: Vec::new(),
            qemu,
            frozen,
        })
    }

    /// Take bytes from gdb: QEMU's own packets are answered here, memory
    /// reads are queued for [`Self::answer_read`], all else is queued for
    /// gdbstub unchanged.
    fn absorb(&mut self, data: &[u8]) -> io::Result<()> {
        for &b in data {
            if let Some(state) = self.oversized {
                self.oversized = state.next(b);
                if self.oversized.is_none() {
                    warn!("dropped a packet longer than {PACKET_SIZE} bytes");
                    self.send_reply(b"E01")?;
                }
                continue;
            }
            if self.packet.is_empty() && b != b'$' {
                match b {
                    b'+' => {}
                    b'-' => {
                        // gdb's nudge when a reply is late (past its
                        // remotetimeout, 2 s by default: a long monitor
                        // command, a loaded host), sent even without acks.
                        // Over a stream nothing is lost: the reply comes
                        // when it is ready. (gdbstub would end with
                        // ClientSentNack, and gdb get every later reply
                        // one late.)
                        debug!("gdb sent '-': a reply is late; it comes when ready");
                        continue;
                    }
                    _ => self.prepared = None,
                }
                self.input.push_back(Input::Byte(b));
                continue;
            }
            self.packet.push(b);
            if self.packet.len() > PACKET_SIZE + 4 {
                // More than gdb may send (we advertise PACKET_SIZE): drop
                // it up to its checksum instead of buffering without end.
                self.packet = Vec::new();
                self.prepared = None;
                self.oversized = Some(Oversized::Body);
                continue;
            }
            let n = self.packet.len();
            if n < 4 || self.packet[n - 3] != b'#' {
                continue;
            }
            let packet = std::mem::take(&mut self.packet);
            let routed = self.route(&packet);
            self.packet = packet;
            self.packet.clear();
            routed?;
        }
        Ok(())
    }

    /// A whole packet from gdb (`$…#xx`): answered here or queued, as
    /// [`packets::route`] decides.
    fn route(&mut self, packet: &[u8]) -> io::Result<()> {
        let route = packets::route(packet, self.frozen, &self.qemu);
        if !matches!(route, Route::Read(_)) {
            // Anything but a read may change what a read returns.
            self.prepared = None;
        }
        match route {
            Route::RefuseResume => {
                debug!("refused {}: a dump", String::from_utf8_lossy(packet));
                self.refuse_resume()?;
            }
            Route::Write(write) => self.input.push_back(Input::Write(write)),
            Route::Region(Some(addr)) => self.input.push_back(Input::Region(addr)),
            Route::Monitor(Some(line)) => self.input.push_back(Input::Monitor(line)),
            Route::Region(None) | Route::Monitor(None) => self.send_reply(b"E01")?,
            Route::Qemu(reply) => {
                debug!("answered {} with {reply}", String::from_utf8_lossy(packet));
                self.send_reply(reply.as_bytes())?;
            }
            Route::Read(read) => self.input.push_back(Input::Read(read)),
            Route::BareQSupported => self.forward(&rsp::frame(b"qSupported:xmlRegisters=i386")),
            Route::Forward { no_ack, mem_thread } => {
                self.no_ack |= no_ack;
                if let Some(thread) = mem_thread {
                    self.mem_thread = thread;
                }
                self.forward(packet);
            }
        }
        Ok(())
    }

    /// Queue a whole packet (`$…#xx`) for gdbstub.
    fn forward(&mut self, packet: &[u8]) {
        self.last_packet.clear();
        self.last_packet
            .extend_from_slice(&packet[1..packet.len() - 3]);
        self.input.extend(packet.iter().map(|&b| Input::Byte(b)));
    }

    /// rip, rsp and rbp to put in the next stop reply, and a line for
    /// gdb's console before it (why the VM stopped, when gdb cannot say).
    pub(crate) fn expedite(&mut self, (registers, note): (Option<[u64; 3]>, Option<String>)) {
        self.expedite = registers;
        self.stop_note = note;
    }

    /// Answer a memory read gdb sent, reading guest memory with
    /// `read_memory(buffer, request, thread)` for the thread gdb's memory
    /// accesses refer to (what gdbstub would have used). A large read is
    /// followed by the next one in line, encoded while gdb decodes this
    /// reply (gdb reads big ranges in order).
    pub(crate) fn serve_read(
        &mut self,
        read: &ReadRequest,
        mut read_memory: impl FnMut(&mut Vec<u8>, &ReadRequest, usize) -> Result<usize, u8>,
    ) -> io::Result<()> {
        let mut data = std::mem::take(&mut self.read_buffer);
        let thread = self.mem_thread;
        let whole = if self.send_prepared(read)? {
            true
        } else {
            let result = read_memory(&mut data, read, thread);
            let whole = result == Ok(read.len);
            self.answer_read(read, result.map(|n| &data[..n]))?;
            whole
        };
        if whole && read.len >= READ_AHEAD_MIN {
            let next = ReadRequest {
                addr: read.addr.wrapping_add(read.len as u64),
                ..*read
            };
            let result = read_memory(&mut data, &next, thread);
            self.prepare_read(next, result.map(|n| &data[..n]));
        }
        self.read_buffer = data;
        Ok(())
    }

    /// Answer a memory read with `data` (possibly shorter than asked), or
    /// with `E<errno>` when nothing could be read.
    pub(crate) fn answer_read(
        &mut self,
        read: &ReadRequest,
        data: Result<&[u8], u8>,
    ) -> io::Result<()> {
        self.prepare_read(*read, data);
        self.send_prepared(read).map(drop)
    }

    /// Encode the reply to a read gdb is expected to send next (read-ahead:
    /// done while gdb is still decoding the last reply). Any other input
    /// discards it.
    fn prepare_read(&mut self, read: ReadRequest, data: Result<&[u8], u8>) {
        let mut acked = self.acked_buffer();
        frame_read(&mut acked, &mut self.hex, &read, data);
        self.prepared = Some((read, acked));
    }

    /// Send the prepared reply if it answers `read`; false if there is none.
    fn send_prepared(&mut self, read: &ReadRequest) -> io::Result<bool> {
        let Some((prepared, acked)) = self.prepared.take() else {
            return Ok(false);
        };
        if prepared != *read {
            return Ok(false);
        }
        trace!("-> memory reply, {} bytes", acked.len());
        self.send_and_keep(acked).map(|()| true)
    }

    /// Rewrite the one reply packet in the output: stop replies get rip
    /// (16), rsp (7) and rbp (6), so gdb does not have to ask for all
    /// registers; gdbstub's `qSupported` reply gains `binary-upload+`.
    fn amend_reply(&mut self) {
        let Some(start) = self.output.iter().position(|&b| b == b'$') else {
            return;
        };
        let Some(hash) = self.output[start..].iter().position(|&b| b == b'#') else {
            return;
        };
        let payload = &self.output[start + 1..start + hash];
        let mut new = std::mem::take(&mut self.amended);
        new.clear();
        let mut note = None;
        if payload.first() == Some(&b'T') && payload.len() >= 3 {
            if let Some(thread) = packets::stop_reply_thread(payload) {
                self.mem_thread = thread;
            }
            note = self.stop_note.take();
            let Some([rip, rsp, rbp]) = self.expedite.take() else {
                self.amended = new;
                return;
            };
            new.extend_from_slice(&payload[..3]);
            for (number, value) in [(b"06", rbp), (b"07", rsp), (b"10", rip)] {
                new.extend_from_slice(number);
                new.push(b':');
                memory_packets::push_plain_hex(&mut new, &value.to_le_bytes());
                new.push(b';');
            }
            new.extend_from_slice(&payload[3..]);
        } else if let Some(features) = payload.strip_prefix(b"PacketSize=") {
            // gdbstub's own buffer is small (it scans all of it per
            // packet); the big packets, memory reads and writes, are ours.
            let rest = features
                .iter()
                .position(|&b| b == b';')
                .map_or(&[][..], |i| &features[i..]);
            new.extend_from_slice(format!("PacketSize={PACKET_SIZE:x}").as_bytes());
            new.extend_from_slice(rest);
            new.extend_from_slice(b";binary-upload+");
        } else {
            self.amended = new;
            return;
        }
        let mut framed = std::mem::take(&mut self.spare_output);
        framed.clear();
        framed.extend_from_slice(&self.output[..start]);
        if let Some(note) = note {
            self.frame_console(&mut framed, format!("{note}\n").as_bytes());
        }
        rsp::frame_into(&mut framed, &new);
        framed.extend_from_slice(&self.output[start + hash + 3..]);
        self.spare_output = std::mem::replace(&mut self.output, framed);
        self.amended = new;
    }

    /// Answer a resume of a memory dump: a console line saying why (gdb and
    /// lldb print it), then a SIGTRAP stop where the thread was, so either
    /// client simply stays stopped (lldb drops a session whose resume gets
    /// an error reply, and resumes again after a stop without a signal).
    fn refuse_resume(&mut self) -> io::Result<()> {
        let mut acked = self.acked_buffer();
        self.frame_console(
            &mut acked,
            b"this is a memory dump: it cannot run or step\n",
        );
        let stop = format!("T05thread:{:x};", self.mem_thread);
        rsp::frame_into(&mut acked, stop.as_bytes());
        self.send_and_keep(acked)
    }

    /// Append an `O` packet: `text` printed on gdb's console (before the
    /// stop reply it precedes).
    fn frame_console(&mut self, out: &mut Vec<u8>, text: &[u8]) {
        let mut console = b"O".to_vec();
        memory_packets::push_hex(&mut console, &mut self.hex, text);
        rsp::frame_into(out, &console);
    }

    /// The gdb thread id memory accesses refer to now.
    pub(crate) fn mem_thread(&self) -> usize {
        self.mem_thread
    }

    /// Answer a memory write: `OK`, or the errno of a refused one.
    pub(crate) fn answer_write(&mut self, result: Result<(), u8>) -> io::Result<()> {
        match result {
            Ok(()) => self.send_reply(b"OK"),
            Err(errno) => self.send_reply(format!("E{errno:02x}").as_bytes()),
        }
    }

    /// Answer `qMemoryRegionInfo` (`E01` while the VM runs).
    pub(crate) fn answer_region(&mut self, reply: Option<&str>) -> io::Result<()> {
        self.send_reply(reply.unwrap_or("E01").as_bytes())
    }

    /// Answer `qRcmd`: what the command printed as `O` packets of
    /// [`MONITOR_CHUNK`] bytes (gdb prints each as it comes; one
    /// megabyte-long packet takes it longer than many short ones), then
    /// `OK`; `E01` if the VM runs (`None`).
    pub(crate) fn answer_monitor(&mut self, text: Option<&str>) -> io::Result<()> {
        let Some(text) = text else {
            return self.send_reply(b"E01");
        };
        // Each packet sent as it is made (gdb decodes one while the next
        // is encoded); the `+` for gdb's packet goes before the first.
        let mut packet = self.acked_buffer();
        let mut acked = false;
        let mut payload = Vec::with_capacity(2 * MONITOR_CHUNK + 1);
        for chunk in text.as_bytes().chunks(MONITOR_CHUNK) {
            payload.clear();
            payload.push(b'O');
            memory_packets::push_plain_hex(&mut payload, chunk);
            rsp::frame_into(&mut packet, &payload);
            self.send_part(&packet, &mut acked)?;
            packet.clear();
        }
        rsp::frame_into(&mut packet, b"OK");
        self.send_part(&packet, &mut acked)?;
        self.spare_reply = packet;
        Ok(())
    }

    /// One of several packets of our own in a row: the first begins with
    /// the `+` for gdb's packet (`acked` says whether it went).
    fn send_part(&mut self, packet: &[u8], acked: &mut bool) -> io::Result<()> {
        if std::mem::replace(acked, true) {
            self.stream.write_all(packet)
        } else {
            self.send_own(packet)
        }
    }

    /// Send one reply packet of our own, `reply` unframed.
    fn send_reply(&mut self, reply: &[u8]) -> io::Result<()> {
        let mut acked = self.acked_buffer();
        rsp::frame_into(&mut acked, reply);
        self.send_and_keep(acked)
    }

    /// A buffer holding `+`, for a reply of our own (the last reply's
    /// buffer, reused).
    fn acked_buffer(&mut self) -> Vec<u8> {
        let mut acked = std::mem::take(&mut self.spare_reply);
        acked.clear();
        acked.push(b'+');
        acked
    }

    /// [`Self::send_own`], keeping the buffer for the next reply.
    fn send_and_keep(&mut self, acked: Vec<u8>) -> io::Result<()> {
        let sent = self.send_own(&acked);
        self.spare_reply = acked;
        sent
    }

    /// Send `acked` (`+` then a framed packet) after whatever gdbstub left
    /// buffered, in one write; the `+` only while gdb wants
    /// acknowledgements.
    fn send_own(&mut self, acked: &[u8]) -> io::Result<()> {
        self.flush()?;
        self.stream.write_all(&acked[usize::from(self.no_ack)..])
    }

    /// gdbstub rejected the last packet (and stopped): answer it so gdb is
    /// not left waiting — empty (unsupported) for queries, `E01` otherwise.
    pub(crate) fn answer_rejected_packet(&mut self) -> io::Result<()> {
        self.output.clear();
        let query = matches!(self.last_packet.first(), Some(b'q' | b'Q' | b'v'));
        debug!(
            "answering rejected packet {:?}",
            String::from_utf8_lossy(&self.last_packet[..self.last_packet.len().min(64)])
        );
        self.send_reply(if query { b"" } else { b"E01" })
    }

    /// Block for the next byte, memory read or vCPU wake-up, or until
    /// `timeout` passes. `Wait::ForGdb` reads gdb's socket without
    /// waiting for wake-ups too (one system call less per packet): for a
    /// vCPU thread answering gdb, reached by ending the socket's reads.
    pub(crate) fn next_input(&mut self, wait: Wait) -> io::Result<Input> {
        loop {
            if let Some(input) = self.input.pop_front() {
                return Ok(input);
            }
            if let Wait::AlsoForWakes(timeout) = wait {
                match wait::wait(self.stream.raw_fd(), &self.wake, timeout)? {
                    Ready::Wake => return Ok(Input::Wake),
                    Ready::Timeout => return Ok(Input::Timeout),
                    Ready::Gdb => {}
                }
            }
            let mut buf = std::mem::take(&mut self.read_buf);
            let read = self.stream.read(&mut buf);
            let absorbed = match read {
                Ok(0) => {
                    debug!("gdb connection closed");
                    Err(io::ErrorKind::UnexpectedEof.into())
                }
                Ok(n) => {
                    trace!("<- {:?}", String::from_utf8_lossy(&buf[..n]));
                    self.absorb(&buf[..n])
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                Err(e) => Err(e),
            };
            self.read_buf = buf;
            absorbed?;
        }
    }

    /// gdb's next input is here already (reading it would not wait).
    pub(crate) fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// The stream (to shut it down at the end of the session).
    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }
}

impl Drop for GdbConnection {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Append the framed reply (`$…#xx`) to a memory read: `data` as hex or
/// (`x`) binary, or `E<errno>`.
fn frame_read(out: &mut Vec<u8>, hex: &mut Vec<u8>, read: &ReadRequest, data: Result<&[u8], u8>) {
    out.push(b'$');
    let start = out.len();
    match data {
        Ok(data) if read.binary => {
            out.push(b'b');
            memory_packets::push_binary(out, data);
        }
        Ok(data) => memory_packets::push_hex(out, hex, data),
        Err(errno) => out.extend(format!("E{errno:02x}").bytes()),
    }
    let sum = rsp::checksum(&out[start..]);
    rsp::close_frame(out, sum);
}

impl Connection for GdbConnection {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.output.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.output.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.amend_reply();
        if !self.output.is_empty() {
            trace!("-> {:?}", String::from_utf8_lossy(&self.output));
            self.stream.write_all(&self.output)?;
            self.output.clear();
        }
        Ok(())
    }
}

/// What [`GdbConnection::next_input`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// gdb's next bytes only.
    ForGdb,
    /// gdb's next bytes, a vCPU's wake-up, or the timeout.
    AlsoForWakes(Option<Duration>),
}

/// The session's connection as gdbstub holds it: shared, so it outlives a
/// gdbstub state machine that stopped on a packet it could not parse, and
/// moves with the session between threads (one drives it at a time).
///
/// gdbstub writes a reply a byte at a time; a packet (from its `$` to the
/// flush that ends it) is gathered here and handed over under one lock, so
/// a 6 MB `O` packet of monitor output does not take the lock 6 million
/// times. Anything outside a packet (an ack) goes through at once, as
/// before.
pub(crate) struct ConnRef {
    shared: Arc<Mutex<GdbConnection>>,
    packet: Vec<u8>,
}

impl ConnRef {
    pub(crate) fn new(shared: Arc<Mutex<GdbConnection>>) -> ConnRef {
        ConnRef {
            shared,
            packet: Vec::new(),
        }
    }
}

impl Connection for ConnRef {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        if self.packet.is_empty() && byte != b'$' {
            return lock(&self.shared).write(byte);
        }
        self.packet.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.packet.is_empty() && buf.first() != Some(&b'$') {
            return lock(&self.shared).write_all(buf);
        }
        self.packet.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut conn = lock(&self.shared);
        conn.write_all(&self.packet)?;
        self.packet.clear();
        Connection::flush(&mut *conn)
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
