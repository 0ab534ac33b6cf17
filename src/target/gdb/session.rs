//! One gdb session: gdbstub's state machine, our target and the gdb
//! connection, as one object that can change threads.
//!
//! The session's home is the gdb thread ([`run`]). When gdb starts one
//! vCPU alone — a single step (`stepi`, `until`, gdb's step over a
//! breakpoint), or a continue while the others are held back for a grace
//! period (a conditional breakpoint gdb resumes from at each hit) — the
//! session is lent to that vCPU's thread: it runs and answers gdb itself,
//! stop after stop, until gdb resumes more than that vCPU. A step or a
//! breakpoint hit then costs no hand-off between threads (two wake-ups,
//! ~45 µs on this 2-core host). The vCPU sends the session home when gdb
//! resumes more than it, when its run outlasts [`STEP_GRACE`] (the
//! held-back vCPUs must start, and gdb's Ctrl-C must be heard), when it
//! halts, when its loop ends, or when the session does.

use std::any::Any;
use std::io;
use std::sync::{Arc, Mutex};

use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStubBuilder, GdbStubError};
use log::{info, warn};

use super::connection::{ConnRef, GdbConnection, Input, Stream, Wait, STUB_PACKET_SIZE};
use crate::target::error::StubError;
use crate::target::kvm::command::Command;
use crate::target::kvm::lending::{Driver, Lent, LentSession, Turn};
use crate::target::kvm::shared::Inner;
use crate::target::stub::KvmTarget;
use crate::target::sync::lock;

type Machine = GdbStubStateMachine<'static, KvmTarget, ConnRef>;

/// A gdb session, driven by one thread at a time.
pub(crate) struct Session {
    /// `None` only while [`Session::drive`] runs it.
    machine: Option<Machine>,
    target: KvmTarget,
    conn: Arc<Mutex<GdbConnection>>,
    /// Why the session ended, once [`Turn::Over`] said it did.
    ended: Option<Ended>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum Ended {
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

impl LentSession for Session {
    fn drive_with(&mut self, at: Driver, ahead: &mut dyn FnMut(Command)) -> Turn {
        Session::drive_with(self, at, ahead)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The session is over, for `why`.
fn over(slot: &mut Option<Ended>, why: Ended) -> Turn {
    *slot = Some(why);
    Turn::Over
}

/// The session a vCPU thread sent home (only a [`Session`] is ever lent).
fn reclaim(lent: Lent) -> Option<Box<Session>> {
    let session = lent.into_any().downcast::<Session>().ok();
    if session.is_none() {
        warn!("a lent session came home as something else: ending the session");
    }
    session
}

/// Run one gdb session on the gdb thread; afterwards the guest runs on
/// without breakpoints.
pub(crate) fn run(inner: &Arc<Inner>, stream: Stream, gdb_gone: impl FnOnce()) {
    // A `Debugger::monitor` call in progress finishes first.
    let _holder = inner.link.hold();
    let frozen = inner.frozen.is_some();
    let Some((waker, conn)) = GdbConnection::start(stream, &inner.qemu, frozen) else {
        return;
    };
    // Kept to end a lent reader's reads, and to close the socket at the end.
    let socket = conn.stream().try_clone().ok();
    if let Some(reader) = socket.as_ref().and_then(|s| s.try_clone().ok()) {
        inner
            .link
            .home()
            .set_end_reads(Some(Box::new(move || reader.shutdown_read())));
    }
    inner.link.set_session(Some(waker));
    inner.vcpus.pause_all();
    let mut target = KvmTarget::new(Arc::clone(inner));
    target.collect_stops();
    target.choose_layout();
    for index in 0..inner.vcpus.len() {
        target.remember_space(index);
    }
    let mut session = Box::new(Session {
        machine: None,
        target,
        conn: Arc::new(Mutex::new(conn)),
        ended: None,
    });
    let mut turn = session.start();
    loop {
        turn = match turn {
            Turn::Start(index, command) => {
                let (lent, back) = match inner.lend(index, command, session) {
                    None => inner.link.home().wait(),
                    Some(kept) => (kept, Turn::Home),
                };
                let Some(home) = reclaim(lent) else { break };
                session = home;
                match back {
                    Turn::Home => session.drive(Driver::Home),
                    other => other,
                }
            }
            Turn::Home => session.drive(Driver::Home),
            Turn::Over => match session.ended() {
                Some(next) => next,
                None => break,
            },
        };
    }
    gdb_gone();
    inner.link.home().set_end_reads(None);
    // gdb may have gone with the guest running (killed mid-continue):
    // every vCPU parks first, so none hits a breakpoint being lifted or
    // stops for the session after its end, which would park it for good.
    inner.vcpus.pause_all();
    inner.clear_watches();
    inner.link.set_session(None);
    if let Some(stream) = socket {
        stream.shutdown();
    }
    for v in inner.vcpus.iter() {
        v.take_stop();
        v.request(Command::Run);
    }
}

impl Session {
    /// A fresh gdbstub state machine on the session's connection, driven
    /// from the gdb thread.
    fn start(&mut self) -> Turn {
        let built = GdbStubBuilder::new(ConnRef::new(Arc::clone(&self.conn)))
            .packet_buffer_size(STUB_PACKET_SIZE)
            .build();
        let stub = match built {
            Ok(stub) => stub,
            Err(e) => {
                warn!("cannot start gdbstub: {e}");
                return over(&mut self.ended, Ended::Stopped);
            }
        };
        match stub.run_state_machine(&mut self.target) {
            Ok(machine) => {
                self.machine = Some(machine);
                self.drive(Driver::Home)
            }
            Err(e) => over(&mut self.ended, e.into()),
        }
    }

    /// Log why the session ended; a packet gdbstub could not handle is
    /// answered and the session goes on (`Some`: what happened next).
    fn ended(&mut self) -> Option<Turn> {
        match self.ended.take().unwrap_or(Ended::Stopped) {
            Ended::Reason(DisconnectReason::Kill) => {
                info!("gdb sent kill: detaching, the guest keeps running")
            }
            Ended::Reason(reason) => info!("gdb session ended: {reason:?}"),
            Ended::Stub(e) if !e.is_connection_error() && !e.is_target_error() => {
                // A packet gdbstub cannot handle must not end the session.
                warn!("rejected a packet from gdb: {e}");
                if lock(&self.conn).answer_rejected_packet().is_ok() {
                    return Some(self.start());
                }
            }
            Ended::Stub(e) => info!("gdb session ended: {e}"),
            Ended::Connection(e) => info!("gdb session ended: {e}"),
            Ended::Stopped => info!("gdb session ended: the VMM stopped serving gdb"),
        }
        None
    }

    /// Drive gdbstub's state machine from `at` until gdb resumes in a way
    /// that belongs elsewhere: bytes go to gdbstub, memory reads and
    /// writes are answered here (faster than gdbstub's codec), vCPU stops
    /// are reported, and nothing polls — every wait sleeps in poll(2) on
    /// the gdb socket and the vCPUs' wake-up socket (with a timeout only
    /// while vCPUs are held back).
    pub(crate) fn drive(&mut self, at: Driver) -> Turn {
        self.drive_with(at, &mut |_| {})
    }

    /// [`Session::drive`]; `ahead` is given the command gdb will likely
    /// start the driving vCPU with next, each time the target guesses one,
    /// while gdb reads the reply that led to the guess.
    pub(crate) fn drive_with(&mut self, at: Driver, ahead: &mut dyn FnMut(Command)) -> Turn {
        let Some(mut gdb) = self.machine.take() else {
            return over(&mut self.ended, Ended::Stopped);
        };
        let target = &mut self.target;
        let conn = &self.conn;
        target.driver = at;
        if at == Driver::Home {
            target.resume_left_for_home();
        } else {
            // The lent vCPU's step ended: its stop is reported from here.
            target.collect_stops();
        }
        // A vCPU thread answering gdb waits for gdb's bytes alone.
        let wait = match at {
            Driver::Home => Wait::AlsoForWakes(None),
            Driver::Vcpu(_) => Wait::ForGdb,
        };
        loop {
            let next = match gdb {
                GdbStubStateMachine::Idle(idle) => {
                    if let Some(command) = target.take_guess() {
                        if !lock(conn).has_input() {
                            ahead(command);
                        }
                    }
                    // (The lock must not outlive this statement: gdbstub
                    // writes through it.)
                    let input = lock(conn).next_input(wait);
                    let answered = match input {
                        Ok(Input::Byte(b)) => {
                            gdb = match idle.incoming_data(target, b) {
                                Ok(gdb) => gdb,
                                Err(e) => return over(&mut self.ended, e.into()),
                            };
                            continue;
                        }
                        Ok(Input::Read(read)) => {
                            lock(conn).serve_read(&read, |data, read, thread| {
                                target.read_for_gdb(data, (read.addr, read.len), thread)
                            })
                        }
                        Ok(Input::Write(write)) => {
                            let thread = lock(conn).mem_thread();
                            let result = target.write_for_gdb(write.addr, &write.data, thread);
                            lock(conn).answer_write(result)
                        }
                        Ok(Input::Region(addr)) => {
                            let reply = target.region_info(addr);
                            lock(conn).answer_region(Some(&reply))
                        }
                        Ok(Input::Monitor(line)) => {
                            let text = target.monitor_text(&line);
                            lock(conn).answer_monitor(Some(&text))
                        }
                        Ok(Input::Wake) if target.stopping() => {
                            return over(&mut self.ended, Ended::Stopped)
                        }
                        // vCPUs are parked between packets; a late wake-up's
                        // stop is collected at the next resume.
                        Ok(Input::Wake | Input::Timeout) => Ok(()),
                        Err(_) if target.stopping() => {
                            return over(&mut self.ended, Ended::Stopped)
                        }
                        Err(e) => Err(e),
                    };
                    match answered {
                        Ok(()) => Ok(idle.into()),
                        Err(e) => return over(&mut self.ended, Ended::Connection(e)),
                    }
                }
                GdbStubStateMachine::Running(running) => {
                    if let Some(stop) = target.next_pending() {
                        lock(conn).expedite(target.take_stop_registers());
                        running.report_stop(target, stop)
                    } else if let Some((index, command)) = target.take_lone() {
                        self.machine = Some(running.into());
                        return Turn::Start(index, command);
                    } else if at != Driver::Home {
                        self.machine = Some(running.into());
                        return Turn::Home;
                    } else {
                        let deadline = target.start_deadline();
                        let input = lock(conn).next_input(Wait::AlsoForWakes(deadline));
                        let answered = match input {
                            Ok(Input::Byte(b)) => {
                                gdb = match running.incoming_data(target, b) {
                                    Ok(gdb) => gdb,
                                    Err(e) => return over(&mut self.ended, e.into()),
                                };
                                continue;
                            }
                            // All-stop gdb never reads or writes while the
                            // guest runs.
                            Ok(Input::Read(read)) => lock(conn).answer_read(&read, Err(1)),
                            Ok(Input::Write(_)) => lock(conn).answer_write(Err(1)),
                            Ok(Input::Region(_)) => lock(conn).answer_region(None),
                            Ok(Input::Monitor(_)) => lock(conn).answer_monitor(None),
                            Ok(Input::Wake) if target.stopping() => {
                                return over(&mut self.ended, Ended::Stopped)
                            }
                            Ok(Input::Wake) => {
                                target.collect_stops();
                                Ok(())
                            }
                            Ok(Input::Timeout) => {
                                target.start_deferred();
                                Ok(())
                            }
                            Err(e) => Err(e),
                        };
                        match answered {
                            Ok(()) => Ok(running.into()),
                            Err(e) => return over(&mut self.ended, Ended::Connection(e)),
                        }
                    }
                }
                GdbStubStateMachine::CtrlCInterrupt(interrupt) => {
                    let stop = target.interrupt();
                    lock(conn).expedite(target.take_stop_registers());
                    interrupt.interrupt_handled(target, Some(stop))
                }
                GdbStubStateMachine::Disconnected(gone) => {
                    return over(&mut self.ended, Ended::Reason(gone.get_reason()))
                }
            };
            gdb = match next {
                Ok(gdb) => gdb,
                Err(e) => return over(&mut self.ended, e.into()),
            };
        }
    }
}
