//! Accepting gdb, running one session, and the blocking event loop.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use log::{info, warn};

use super::connection::Stream;
use crate::target::kvm::shared::Inner;
use crate::target::sync::lock;
use crate::target::wait::{self, Ready};

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
pub(crate) fn serve(inner: &Arc<Inner>, listener: GdbListener) -> io::Result<()> {
    info!("waiting for gdb on {}", listener.describe());
    let (waker, wake) = wait::wake_pair()?;
    inner.link.start_serving(waker);
    // Whether a session holds the VM. One whose gdb is gone (cleanup
    // running, however long that takes on a loaded host) is waited for;
    // one whose gdb is still connected makes a second client be refused.
    let busy = (Mutex::new(Attachment::None), Condvar::new());
    let served = std::thread::scope(|scope| loop {
        if inner.link.stopping() {
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
                *s == Attachment::Attached
            })
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
        let mut state_now = changed
            .wait_while(state_now, |s| *s == Attachment::Ending)
            .unwrap_or_else(|e| e.into_inner());
        if *state_now == Attachment::Attached {
            scope.spawn(move || refuse(stream));
            continue;
        }
        *state_now = Attachment::Attached;
        drop(state_now);
        let busy = &busy;
        let set = move |to: Attachment| {
            *lock(&busy.0) = to;
            busy.1.notify_all();
        };
        scope.spawn(move || {
            let gone = || set(Attachment::Ending);
            if inner.arm.is_some() {
                super::dump_session::run(inner, stream, gone);
            } else {
                super::session::run(inner, stream, gone);
            }
            set(Attachment::None);
        });
    });
    inner.link.stopped_serving();
    info!("stopped serving gdb on {}", listener.describe());
    served
}

/// Where the one session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attachment {
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
