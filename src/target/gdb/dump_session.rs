//! A gdb session on an arm64 dump: gdbstub's state machine over
//! [`ArmDumpTarget`] and the same connection as a live VM's session
//! (memory reads, `monitor` and lldb's region queries answered beside
//! gdbstub, resumes refused). Nothing runs, so nothing is lent and no vCPU
//! wakes it: only gdb's bytes, and the VMM stopping the service.

use std::sync::{Arc, Mutex};

use gdbstub::common::Signal;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{GdbStubBuilder, MultiThreadStopReason};
use log::{info, warn};

use super::connection::{ConnRef, GdbConnection, Input, Stream, Wait, STUB_PACKET_SIZE};
use crate::target::error::StubError;
use crate::target::kvm::shared::Inner;
use crate::target::stub::ArmDumpTarget;
use crate::target::sync::lock;

type Machine = GdbStubStateMachine<'static, ArmDumpTarget, ConnRef>;

/// Serve one gdb session on `inner`'s arm64 dump; `gdb_gone` is called as
/// it ends.
pub(crate) fn run(inner: &Arc<Inner>, stream: Stream, gdb_gone: impl FnOnce()) {
    let _holder = inner.link.hold();
    let Some(mut target) = ArmDumpTarget::new(Arc::clone(inner)) else {
        warn!("no arm64 dump to serve");
        return;
    };
    let Some((waker, conn)) = GdbConnection::start(stream, &inner.qemu, true) else {
        return;
    };
    let socket = conn.stream().try_clone().ok();
    inner.link.set_session(Some(waker));
    let conn = Arc::new(Mutex::new(conn));
    // A packet gdbstub cannot handle is answered and a fresh state machine
    // goes on; anything else ends the session.
    while let Some(gdb) = start(&conn, &mut target) {
        match drive(gdb, &conn, &mut target, inner) {
            Ok(()) => break,
            Err(e) if e.is_connection_error() || e.is_target_error() => {
                info!("gdb session ended: {e}");
                break;
            }
            Err(e) => {
                warn!("rejected a packet from gdb: {e}");
                if lock(&conn).answer_rejected_packet().is_err() {
                    break;
                }
            }
        }
    }
    gdb_gone();
    inner.link.set_session(None);
    if let Some(stream) = socket {
        stream.shutdown();
    }
}

/// A fresh gdbstub state machine on the connection.
fn start(conn: &Arc<Mutex<GdbConnection>>, target: &mut ArmDumpTarget) -> Option<Machine> {
    let built = GdbStubBuilder::new(ConnRef::new(Arc::clone(conn)))
        .packet_buffer_size(STUB_PACKET_SIZE)
        .build();
    match built.map(|stub| stub.run_state_machine(target)) {
        Ok(Ok(machine)) => Some(machine),
        Ok(Err(e)) => {
            warn!("cannot start gdbstub: {e}");
            None
        }
        Err(e) => {
            warn!("cannot start gdbstub: {e}");
            None
        }
    }
}

type StubResult = Result<(), gdbstub::stub::GdbStubError<StubError, std::io::Error>>;

/// Feed gdb's packets to gdbstub and answer the ones the connection hands
/// us, until gdb leaves (`Ok`) or gdbstub fails.
fn drive(
    mut gdb: Machine,
    conn: &Arc<Mutex<GdbConnection>>,
    target: &mut ArmDumpTarget,
    inner: &Inner,
) -> StubResult {
    loop {
        gdb = match gdb {
            GdbStubStateMachine::Idle(idle) => {
                let input = lock(conn).next_input(Wait::AlsoForWakes(None));
                let answered = match input {
                    Ok(Input::Byte(b)) => {
                        gdb = idle.incoming_data(target, b)?;
                        continue;
                    }
                    Ok(Input::Read(read)) => lock(conn).serve_read(&read, |data, read, _| {
                        target.read_for_gdb(data, (read.addr, read.len))
                    }),
                    Ok(Input::Write(_)) => lock(conn).answer_write(Err(30)),
                    Ok(Input::Region(addr)) => {
                        let reply = target.region_info(addr);
                        lock(conn).answer_region(Some(&reply))
                    }
                    Ok(Input::Monitor(line)) => {
                        let text = target.monitor_text(&line);
                        lock(conn).answer_monitor(Some(&text))
                    }
                    Ok(Input::Wake | Input::Timeout) if inner.link.stopping() => {
                        info!("gdb session ended: the VMM stopped serving gdb");
                        return Ok(());
                    }
                    Ok(Input::Wake | Input::Timeout) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = answered {
                    info!("gdb session ended: {e}");
                    return Ok(());
                }
                idle.into()
            }
            // The connection refuses resumes: should one reach gdbstub, the
            // dump "stops" at once where it is.
            GdbStubStateMachine::Running(running) => {
                let stop = MultiThreadStopReason::SignalWithThread {
                    tid: crate::target::stub::tid(0),
                    signal: Signal::SIGTRAP,
                };
                running.report_stop(target, stop)?
            }
            GdbStubStateMachine::CtrlCInterrupt(interrupt) => interrupt
                .interrupt_handled(target, Some(MultiThreadStopReason::Signal(Signal::SIGINT)))?,
            GdbStubStateMachine::Disconnected(gone) => {
                info!("gdb session ended: {:?}", gone.get_reason());
                return Ok(());
            }
        };
    }
}
