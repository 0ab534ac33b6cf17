//! The gdbstub `Target` over the debugger's vCPUs, one file per gdbstub
//! extension (as gdbstub's own examples lay it out): registers and memory
//! (`base.rs`), resuming and stepping (`resume.rs`), the stops reported to
//! gdb (`stops.rs`), breakpoints and watchpoints (`breakpoints.rs`),
//! `vFile` (`host_io.rs`) and `monitor` commands (`monitor_cmd.rs`,
//! gdbstub's `MonitorCmd`). `target.rs` has the session's state and the
//! register cache all of them use; this file only names the files.

mod arm_dump;
mod base;
mod breakpoints;
mod host_io;
mod monitor_cmd;
mod monitor_effects;
mod resume;
mod stops;
mod target;

pub(crate) use arm_dump::ArmDumpTarget;
pub(crate) use monitor_cmd::run_monitor;
pub(crate) use target::{tid, KvmTarget};
