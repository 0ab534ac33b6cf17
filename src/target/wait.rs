//! Blocking without polling: the gdb thread sleeps in `poll(2)` on the gdb
//! socket and on a wake-up socket that vCPU threads write a byte to when
//! they stop by themselves. One thread, no hand-off per packet.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The vCPU side: wakes the gdb thread.
#[derive(Debug)]
pub(crate) struct Waker(UnixStream);

/// The gdb thread side of the wake-up socket.
#[derive(Debug)]
pub(crate) struct WakeReceiver(UnixStream);

/// A connected waker and receiver (both non-blocking).
pub(crate) fn wake_pair() -> io::Result<(Waker, WakeReceiver)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((Waker(tx), WakeReceiver(rx)))
}

impl Waker {
    /// Wake the gdb thread (a full socket means a wake-up is pending
    /// anyway).
    pub(crate) fn wake(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

impl WakeReceiver {
    /// Consume every pending wake-up.
    fn drain(&self) {
        let mut buf = [0u8; 64];
        // One read takes them all unless 64 or more piled up.
        while matches!((&self.0).read(&mut buf), Ok(n) if n == buf.len()) {}
    }
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// gdb sent bytes (or closed the connection).
    Gdb,
    /// A vCPU woke us (the wake-ups are consumed).
    Wake,
    /// The timeout passed.
    Timeout,
}

/// Sleep until `gdb` is readable, a wake-up arrives, or `timeout` passes.
pub(crate) fn wait(
    gdb: RawFd,
    wake: &WakeReceiver,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: wake.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: gdb,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let millis = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
    });
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of
        // the call, and its length is passed with it.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    if fds[0].revents != 0 {
        wake.drain();
        return Ok(Ready::Wake);
    }
    if fds[1].revents != 0 {
        return Ok(Ready::Gdb);
    }
    Ok(Ready::Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_on_either_socket_and_times_out() {
        let (waker, receiver) = wake_pair().unwrap();
        let (mut gdb_peer, gdb) = UnixStream::pair().unwrap();
        let fd = gdb.as_raw_fd();
        let short = Some(Duration::from_millis(5));
        assert_eq!(wait(fd, &receiver, short).unwrap(), Ready::Timeout);
        waker.wake();
        waker.wake();
        assert_eq!(wait(fd, &receiver, short).unwrap(), Ready::Wake);
        assert_eq!(
            wait(fd, &receiver, short).unwrap(),
            Ready::Timeout,
            "drained"
        );
        gdb_peer.write_all(b"$").unwrap();
        assert_eq!(wait(fd, &receiver, None).unwrap(), Ready::Gdb);
    }
}
