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

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStubBuilder, GdbStubError};
use log::{debug, info, warn};

use super::connection::{ConnRef, GdbConnection, Input, Stream, Wait, STUB_PACKET_SIZE};
use super::wait;
use crate::target::error::StubError;
use crate::target::kvm::vcpu::Command;
use crate::target::stub::KvmTarget;
use crate::target::{lock, Inner};

/// How long a lent step may run before the session goes home.
pub(crate) const STEP_GRACE: Duration = Duration::from_millis(1);

type Machine = GdbStubStateMachine<'static, KvmTarget, ConnRef>;

/// A gdb session, driven by one thread at a time.
pub(crate) struct Session {
    /// `None` only while [`Session::drive`] runs it.
    machine: Option<Machine>,
    target: KvmTarget,
    conn: Arc<Mutex<GdbConnection>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// Which thread drives the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// The gdb thread.
    Home,
    /// The thread of the vCPU with this index (the session is lent).
    Vcpu(usize),
}

/// Why [`Session::drive`] returned.
#[derive(Debug)]
pub(crate) enum Turn {
    /// This vCPU alone starts (a step, or a run with the others held
    /// back): its thread runs it with the session.
    Start(usize, Command),
    /// gdb resumed more than the lent vCPU's step (or the step outlasted
    /// its grace): the gdb thread drives on.
    Home,
    /// The session is over.
    Ended(Ended),
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

/// Where a lent session comes back to the gdb thread.
#[derive(Debug, Default)]
pub(crate) struct HomeSlot {
    slot: Mutex<Option<(Box<Session>, Turn)>>,
    cv: Condvar,
    /// The session's socket, to end the reads of a vCPU thread answering
    /// gdb (it waits for gdb's bytes alone), and whether one is.
    socket: Mutex<Option<Stream>>,
    away: AtomicBool,
}

impl HomeSlot {
    /// The VMM stops serving gdb or shuts the VM down: a vCPU thread
    /// blocked reading gdb's socket gets end-of-file and sends the
    /// session home, where it ends.
    pub(crate) fn end_lent_reads(&self) {
        if self.away.load(Ordering::Acquire) {
            if let Some(socket) = lock(&self.socket).as_ref() {
                debug!("ending the gdb socket's reads of the vCPU thread answering gdb");
                socket.shutdown_read();
            }
        }
    }

    /// Send the session home (from a vCPU thread).
    pub(crate) fn send(&self, session: Box<Session>, turn: Turn) {
        debug!("session back to the gdb thread: {turn:?}");
        *lock(&self.slot) = Some((session, turn));
        self.cv.notify_all();
    }

    /// Wait for the lent session (the gdb thread).
    fn wait(&self) -> (Box<Session>, Turn) {
        let mut slot = lock(&self.slot);
        loop {
            if let Some(back) = slot.take() {
                self.away.store(false, Ordering::Release);
                return back;
            }
            slot = self.cv.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Run one gdb session on the gdb thread; afterwards the guest runs on
/// without breakpoints.
pub(crate) fn run(dbg: &Arc<Inner>, stream: Stream, gdb_gone: impl FnOnce()) {
    // A `Debugger::monitor` call in progress finishes first.
    let _holder = lock(&dbg.holder);
    dbg.qemu.phys_mode.store(false, Ordering::Relaxed);
    let started = wait::wake_pair().and_then(|(waker, wake)| {
        let conn = GdbConnection::new(stream, wake, Arc::clone(&dbg.qemu), dbg.frozen.is_some())?;
        Ok((waker, conn))
    });
    let (waker, conn) = match started {
        Ok(started) => started,
        Err(e) => {
            warn!("cannot start the gdb session: {e}");
            return;
        }
    };
    // Kept to end a lent reader's reads, and to close the socket at the end.
    *lock(&dbg.home.socket) = conn.stream().try_clone().ok();
    *lock(&dbg.session) = Some(waker);
    dbg.pause_all();
    let mut target = KvmTarget::new(Arc::clone(dbg));
    target.collect_stops();
    target.choose_layout();
    for index in 0..dbg.vcpus.len() {
        target.remember_space(index);
    }
    let mut session = Box::new(Session {
        machine: None,
        target,
        conn: Arc::new(Mutex::new(conn)),
    });
    let mut turn = session.start();
    loop {
        turn = match turn {
            Turn::Start(index, command) => match lend(dbg, index, command, session) {
                None => {
                    let back;
                    (session, back) = dbg.home.wait();
                    match back {
                        Turn::Home => session.drive(Driver::Home),
                        other => other,
                    }
                }
                Some(kept) => {
                    session = kept;
                    session.drive(Driver::Home)
                }
            },
            Turn::Home => session.drive(Driver::Home),
            Turn::Ended(ended) => match session.ended(ended) {
                Some(next) => next,
                None => break,
            },
        };
    }
    gdb_gone();
    let socket = lock(&dbg.home.socket).take();
    // gdb may have gone with the guest running (killed mid-continue):
    // every vCPU parks first, so none hits a breakpoint being lifted or
    // stops for the session after its end, which would park it for good.
    dbg.pause_all();
    session.target.clear_debug_state();
    *lock(&dbg.session) = None;
    if let Some(stream) = socket {
        stream.shutdown();
    }
    for v in &dbg.vcpus {
        v.take_stop();
        v.request(Command::Run, dbg);
    }
}

/// Lend `session` to vCPU `index` to run `command` (a step or a run); if
/// the vCPU cannot take it (not parked, or its loop has ended), the
/// command is given the ordinary way and the session is given back.
pub(crate) fn lend(
    dbg: &Inner,
    index: usize,
    command: Command,
    session: Box<Session>,
) -> Option<Box<Session>> {
    dbg.home.away.store(true, Ordering::Release);
    let kept = dbg.vcpus[index].lend(command, session).err()?;
    dbg.home.away.store(false, Ordering::Release);
    dbg.vcpus[index].request(command, dbg);
    Some(kept)
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
                return Turn::Ended(Ended::Stopped);
            }
        };
        match stub.run_state_machine(&mut self.target) {
            Ok(machine) => {
                self.machine = Some(machine);
                self.drive(Driver::Home)
            }
            Err(e) => Turn::Ended(e.into()),
        }
    }

    /// Log why the session ended; a packet gdbstub could not handle is
    /// answered and the session goes on (`Some`: what happened next).
    fn ended(&mut self, ended: Ended) -> Option<Turn> {
        match ended {
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
            return Turn::Ended(Ended::Stopped);
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
                                Err(e) => return Turn::Ended(e.into()),
                            };
                            continue;
                        }
                        Ok(Input::Read(read)) => lock(conn)
                            .serve_read(&read, |data, read, thread| {
                                target.read_for_gdb(data, read, thread)
                            }),
                        Ok(Input::Write(write)) => {
                            let thread = lock(conn).mem_thread();
                            let result = target.write_for_gdb(&write, thread);
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
                        Ok(Input::Wake) if target.stopping() => return Turn::Ended(Ended::Stopped),
                        // vCPUs are parked between packets; a late wake-up's
                        // stop is collected at the next resume.
                        Ok(Input::Wake | Input::Timeout) => Ok(()),
                        Err(_) if target.stopping() => return Turn::Ended(Ended::Stopped),
                        Err(e) => Err(e),
                    };
                    match answered {
                        Ok(()) => Ok(idle.into()),
                        Err(e) => return Turn::Ended(Ended::Connection(e)),
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
                                    Err(e) => return Turn::Ended(e.into()),
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
                                return Turn::Ended(Ended::Stopped)
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
                            Err(e) => return Turn::Ended(Ended::Connection(e)),
                        }
                    }
                }
                GdbStubStateMachine::CtrlCInterrupt(interrupt) => {
                    let stop = target.interrupt();
                    lock(conn).expedite(target.take_stop_registers());
                    interrupt.interrupt_handled(target, Some(stop))
                }
                GdbStubStateMachine::Disconnected(gone) => {
                    return Turn::Ended(Ended::Reason(gone.get_reason()))
                }
            };
            gdb = match next {
                Ok(gdb) => gdb,
                Err(e) => return Turn::Ended(e.into()),
            };
        }
    }
}
