//! The gdb side of the debugger: everything between the socket and the
//! gdbstub `Target` (`crate::target::stub`).
//!
//! - `event_loop`: listeners and `serve` (one session at a time);
//! - `dump_session`: a session on an arm64 dump (its own target, nothing
//!   lent);
//! - `session`: one gdb session, the driver of gdbstub's state machine, lent
//!   to a vCPU thread while gdb starts that vCPU alone;
//! - `connection`: the socket, framing, buffering, and acting on each
//!   packet's route;
//! - `packets`: which packets are answered before gdbstub, and how (a pure
//!   function, unit-tested); `memory_packets` (`m`/`x`/`M`/`X`),
//!   `qemu_packets` (`qqemu.*`) their families;
//! - `rsp`: RSP framing, public (the null stub and the tests use it).

pub(crate) mod connection;
pub(crate) mod dump_session;
pub(crate) mod event_loop;
pub(crate) mod memory_packets;
pub(crate) mod packets;
pub(crate) mod qemu_packets;
pub mod rsp;
pub(crate) mod session;
