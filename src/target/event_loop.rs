//! Accepting gdb, running one session, and the blocking event loop.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, GdbStubBuilder, GdbStubError};
use log::{info, warn};

use super::connection::{ConnRef, GdbConnection, Input, Stream, STUB_PACKET_SIZE};
use super::error::StubError;
use super::stub::KvmTarget;
use super::vcpu::Command;
use super::wait::{self, Ready};
use super::{lock, Inner};

/// Where gdb connects.
#[derive(Debug)]
pub enum GdbListener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A unix-domain socket (created with mode 0600), removed on drop.
    Unix(UnixListener, PathBuf),
}

impl GdbListener {
    /// Listen on a TCP address; a non-loopback address logs a warning.
    pub fn tcp(addr: impl ToSocketAddrs) -> io::Result<GdbListener> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() {
            warn!("gdb stub listening on non-loopback {local}: anyone who can reach it controls the guest");
        }
        Ok(GdbListener::Tcp(listener))
    }

    /// Listen on a unix socket at `path`, usable by the owner only (mode
    /// 0600). A stale socket there (nobody listening) is replaced;
    /// anything else at `path` is left alone and is an error.
    pub fn unix(path: impl AsRef<Path>) -> io::Result<GdbListener> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path)?;
        // Bound inside a fresh directory only we can enter, made 0600, then
        // moved into place: never reachable with other modes, and no
        // process-wide umask change.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let private = parent.join(format!(".vmem-gdbstub-{}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let staged = private.join("gdb.sock");
        let bound = UnixListener::bind(&staged).and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, &path)?;
            Ok(listener)
        });
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&private);
        Ok(GdbListener::Unix(bound?, path))
    }

    /// The TCP address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            GdbListener::Tcp(l) => l.local_addr().ok(),
            GdbListener::Unix(..) => None,
        }
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            GdbListener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            GdbListener::Unix(_, path) => path.display().to_string(),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            GdbListener::Tcp(l) => l.as_raw_fd(),
            GdbListener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            GdbListener::Tcp(l) => {
                let (stream, peer) = l.accept()?;
                info!("gdb connected from {peer}");
                Ok(Stream::Tcp(stream))
            }
            GdbListener::Unix(l, path) => {
                let (stream, _) = l.accept()?;
                info!("gdb connected on {}", path.display());
                Ok(Stream::Unix(stream))
            }
        }
    }
}

impl Drop for GdbListener {
    fn drop(&mut self) {
        if let GdbListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accept gdb connections until `Debugger::stop_serving`: one session at
/// a time; while one is attached, another client is told so and
/// disconnected.
pub(crate) fn serve(dbg: &Inner, listener: GdbListener) -> io::Result<()> {
    info!("waiting for gdb on {}", listener.describe());
    let (waker, wake) = wait::wake_pair()?;
    *lock(&dbg.serving) = Some(waker);
    // Whether a session holds the VM. One whose gdb is gone (cleanup
    // running, however long that takes on a loaded host) is waited for;
    // one whose gdb is still connected makes a second client be refused.
    let busy = (Mutex::new(Session::None), Condvar::new());
    let served = std::thread::scope(|scope| loop {
        if dbg.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        if wait::wait(listener.raw_fd(), &wake, None)? != Ready::Gdb {
            continue;
        }
        let stream = listener.accept()?;
        let (state, changed) = &busy;
        // A gdb that just left may not have been noticed yet: give it a
        // second, then wait out its cleanup, however long.
        let state_now = changed
            .wait_timeout_while(lock(state), Duration::from_secs(1), |s| {
                *s == Session::Attached
            })
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
        let mut state_now = changed
            .wait_while(state_now, |s| *s == Session::Ending)
            .unwrap_or_else(|e| e.into_inner());
        if *state_now == Session::Attached {
            scope.spawn(move || refuse(stream));
            continue;
        }
        *state_now = Session::Attached;
        drop(state_now);
        let busy = &busy;
        let set = move |to: Session| {
            *lock(&busy.0) = to;
            busy.1.notify_all();
        };
        scope.spawn(move || {
            session(dbg, stream, || set(Session::Ending));
            set(Session::None);
        });
    });
    *lock(&dbg.serving) = None;
    dbg.stopping.store(false, Ordering::Release);
    info!("stopped serving gdb on {}", listener.describe());
    served
}

/// Where the one session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    None,
    /// gdb is connected.
    Attached,
    /// gdb is gone; breakpoints are being removed.
    Ending,
}

/// Tell a second client that a session is already attached, then close.
pub(crate) fn refuse(mut stream: Stream) {
    warn!("refusing a second gdb connection: a session is already attached");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    // Answer gdb's first packet (qSupported) with an error that says why.
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.contains(&b'#') && seen.len() < 4096 {
        match io::Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let reply = b"E.another gdb session is already attached to this VM";
    let mut framed = vec![b'+'];
    framed.extend(super::rsp::frame(reply));
    let _ = io::Write::write_all(&mut stream, &framed);
    stream.shutdown();
}

/// Why a gdbstub state machine stopped.
enum Ended {
    /// gdb detached, killed or disconnected cleanly.
    Reason(DisconnectReason),
    /// gdbstub failed: a packet it could not handle, the target, or the
    /// connection.
    Stub(GdbStubError<StubError, io::Error>),
    /// The connection failed while we were waiting or answering.
    Connection(io::Error),
    /// The VMM stopped serving gdb.
    Stopped,
}

impl From<GdbStubError<StubError, io::Error>> for Ended {
    fn from(e: GdbStubError<StubError, io::Error>) -> Ended {
        Ended::Stub(e)
    }
}

/// Run one gdb session; afterwards the guest runs on without breakpoints.
pub(crate) fn session(dbg: &Inner, stream: Stream, gdb_gone: impl FnOnce()) {
    // A `Debugger::monitor` call in progress finishes first.
    let _holder = lock(&dbg.holder);
    dbg.qemu.phys_mode.store(false, Ordering::Relaxed);
    let started = wait::wake_pair().and_then(|(waker, wake)| {
        let conn = GdbConnection::new(stream, wake, Arc::clone(&dbg.qemu), dbg.frozen.is_some())?;
        Ok((waker, conn))
    });
    let (waker, mut conn) = match started {
        Ok(started) => started,
        Err(e) => {
            warn!("cannot start the gdb session: {e}");
            return;
        }
    };
    *lock(&dbg.session) = Some(waker);
    dbg.pause_all();
    let mut target = KvmTarget::new(dbg);
    target.collect_stops();
    target.choose_layout();
    for index in 0..dbg.vcpus.len() {
        target.remember_space(index);
    }
    let shutdown_handle = conn.stream().try_clone().ok();
    loop {
        let stub = match GdbStubBuilder::new(ConnRef(&mut conn))
            .packet_buffer_size(STUB_PACKET_SIZE)
            .build()
        {
            Ok(stub) => stub,
            Err(e) => {
                warn!("cannot start gdbstub: {e}");
                break;
            }
        };
        match drive(stub, &mut target) {
            Ended::Reason(DisconnectReason::Kill) => {
                info!("gdb sent kill: detaching, the guest keeps running")
            }
            Ended::Reason(reason) => info!("gdb session ended: {reason:?}"),
            Ended::Stub(e) if !e.is_connection_error() && !e.is_target_error() => {
                // A packet gdbstub cannot handle must not end the session.
                warn!("rejected a packet from gdb: {e}");
                if conn.answer_rejected_packet().is_ok() {
                    continue;
                }
            }
            Ended::Stub(e) => info!("gdb session ended: {e}"),
            Ended::Connection(e) => info!("gdb session ended: {e}"),
            Ended::Stopped => info!("gdb session ended: the VMM stopped serving gdb"),
        }
        break;
    }
    gdb_gone();
    target.clear_debug_state();
    *lock(&dbg.session) = None;
    if let Some(stream) = shutdown_handle {
        stream.shutdown();
    }
    for v in &dbg.vcpus {
        v.take_stop();
        v.request(Command::Run, dbg);
    }
}

/// Drive gdbstub's state machine: bytes go to gdbstub, memory reads are
/// answered here (faster than gdbstub's encoder), vCPU stops are reported,
/// and nothing polls — every wait sleeps in poll(2) on the gdb socket and
/// the vCPUs' wake-up socket (with a timeout only while a step holds other
/// vCPUs back).
fn drive<'a>(stub: GdbStub<'_, KvmTarget<'a>, ConnRef<'_>>, target: &mut KvmTarget<'a>) -> Ended {
    let mut gdb = match stub.run_state_machine(target) {
        Ok(gdb) => gdb,
        Err(e) => return e.into(),
    };
    loop {
        let next = match gdb {
            GdbStubStateMachine::Idle(mut idle) => match idle.borrow_conn().0.next_input(None) {
                Ok(Input::Byte(b)) => idle.incoming_data(target, b),
                Ok(Input::Read(read)) => match idle
                    .borrow_conn()
                    .0
                    .serve_read(&read, |data, read, thread| {
                        target.read_for_gdb(data, read, thread)
                    }) {
                    Ok(()) => Ok(idle.into()),
                    Err(e) => return Ended::Connection(e),
                },
                Ok(Input::Write(write)) => {
                    let thread = idle.borrow_conn().0.mem_thread();
                    let result = target.write_for_gdb(&write, thread);
                    match idle.borrow_conn().0.answer_write(result) {
                        Ok(()) => Ok(idle.into()),
                        Err(e) => return Ended::Connection(e),
                    }
                }
                Ok(Input::Region(addr)) => {
                    let reply = target.region_info(addr);
                    match idle.borrow_conn().0.answer_region(Some(&reply)) {
                        Ok(()) => Ok(idle.into()),
                        Err(e) => return Ended::Connection(e),
                    }
                }
                Ok(Input::Wake) if target.stopping() => return Ended::Stopped,
                // vCPUs are parked between packets; a late wake-up's stop
                // is collected at the next resume.
                Ok(Input::Wake | Input::Timeout) => Ok(idle.into()),
                Err(e) => return Ended::Connection(e),
            },
            GdbStubStateMachine::Running(mut running) => {
                if let Some(stop) = target.next_pending() {
                    running
                        .borrow_conn()
                        .0
                        .expedite(target.take_stop_registers());
                    running.report_stop(target, stop)
                } else {
                    let deadline = target.start_deadline();
                    match running.borrow_conn().0.next_input(deadline) {
                        Ok(Input::Byte(b)) => running.incoming_data(target, b),
                        Ok(Input::Read(read)) => {
                            // All-stop gdb never reads while the guest runs.
                            if let Err(e) = running.borrow_conn().0.answer_read(&read, Err(1)) {
                                return Ended::Connection(e);
                            }
                            Ok(running.into())
                        }
                        Ok(Input::Write(_)) => {
                            if let Err(e) = running.borrow_conn().0.answer_write(Err(1)) {
                                return Ended::Connection(e);
                            }
                            Ok(running.into())
                        }
                        Ok(Input::Region(_)) => {
                            if let Err(e) = running.borrow_conn().0.answer_region(None) {
                                return Ended::Connection(e);
                            }
                            Ok(running.into())
                        }
                        Ok(Input::Wake) if target.stopping() => return Ended::Stopped,
                        Ok(Input::Wake) => {
                            target.collect_stops();
                            Ok(running.into())
                        }
                        Ok(Input::Timeout) => {
                            target.start_deferred();
                            Ok(running.into())
                        }
                        Err(e) => return Ended::Connection(e),
                    }
                }
            }
            GdbStubStateMachine::CtrlCInterrupt(mut interrupt) => {
                let stop = target.interrupt();
                interrupt
                    .borrow_conn()
                    .0
                    .expedite(target.take_stop_registers());
                interrupt.interrupt_handled(target, Some(stop))
            }
            GdbStubStateMachine::Disconnected(gone) => return Ended::Reason(gone.get_reason()),
        };
        gdb = match next {
            Ok(gdb) => gdb,
            Err(e) => return e.into(),
        };
    }
}

impl Drop for GdbConnection {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Remove a socket left at `path` by a process that is gone; refuse to
/// touch anything else (a file, a directory, a socket in use).
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: not replacing it",
                path.display()
            ),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: another process is listening there", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unix listener is 0600, replaces only a stale socket, and
    /// leaves a file or a live socket at its path alone.
    #[test]
    fn unix_listener_respects_what_is_at_its_path() {
        let dir = std::env::temp_dir().join(format!("vmem-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gdb.sock");

        std::fs::write(&path, b"precious").unwrap();
        assert!(GdbListener::unix(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();

        let live = GdbListener::unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = GdbListener::unix(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(live);

        // A socket nobody listens on any more is replaced.
        let stale = UnixListener::bind(dir.join("stale.sock")).unwrap();
        drop(stale);
        assert!(GdbListener::unix(dir.join("stale.sock")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
