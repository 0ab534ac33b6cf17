//! Changing memslots with every vCPU out of `KVM_RUN`.
//!
//! Laying out the memslots again deletes slots before it adds their
//! replacements: in between, the guest-physical range is a hole. A vCPU
//! running then fetches code, IDT entries or page tables from nothing (a
//! triple fault, an emulation failure) or sees its data accesses as MMIO.
//! So a change closes the gate: vCPU threads wait at it before `KVM_RUN`,
//! the ones inside are kicked out, and the change is made once none is
//! inside. A thread handling an exit is outside, so a vCPU thread may
//! close the gate itself (a trapped table write that moved the tables)
//! without waiting for its own run.

use std::sync::{Condvar, Mutex};

use crate::target::sync::lock;

/// The vCPUs inside `KVM_RUN`, and whether a change waits for them.
#[derive(Debug, Default)]
pub(crate) struct RunGate {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// vCPU threads between [`RunGate::enter`] and [`RunGate::leave`].
    inside: usize,
    /// A change waits or is being made: nobody enters.
    closed: bool,
    /// How many times the gate closed so far.
    closings: u64,
}

/// One vCPU thread's way through the gate, from before its `KVM_RUN` to
/// the exit.
#[derive(Debug)]
#[must_use = "a pass must be given back with RunGate::leave"]
pub(crate) struct Pass {
    closings: u64,
}

impl RunGate {
    /// A vCPU thread is about to run `KVM_RUN`: wait while a change is
    /// made.
    pub(crate) fn enter(&self) -> Pass {
        let mut state = lock(&self.state);
        while state.closed {
            state = self.cv.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.inside += 1;
        Pass {
            closings: state.closings,
        }
    }

    /// The vCPU's `KVM_RUN` returned. Whether the gate closed meanwhile:
    /// an `EINTR` then may be the gate's kick, not anyone's request.
    pub(crate) fn leave(&self, pass: Pass) -> bool {
        let mut state = lock(&self.state);
        state.inside = state.inside.saturating_sub(1);
        // Only a change waits for the last run to leave (a notify is a
        // system call, ~7 µs on kvm_pvm: not one per run).
        if state.inside == 0 && state.closed {
            self.cv.notify_all();
        }
        state.closings != pass.closings
    }

    /// Whether a change waits for the vCPUs inside (a run about to start
    /// returns at once then).
    pub(crate) fn closing(&self) -> bool {
        lock(&self.state).closed
    }

    /// Run `change` with no vCPU inside `KVM_RUN`; `kick` makes the ones
    /// inside leave (it is called again while any stays inside, so a kick
    /// that came too early is repeated). One change at a time.
    pub(crate) fn closed<T>(&self, kick: impl Fn(), change: impl FnOnce() -> T) -> T {
        let mut state = lock(&self.state);
        while state.closed {
            state = self.cv.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.closed = true;
        state.closings += 1;
        while state.inside > 0 {
            drop(state);
            kick();
            state = lock(&self.state);
            if state.inside > 0 {
                (state, _) = self
                    .cv
                    .wait_timeout(state, KICK_AGAIN)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        drop(state);
        let result = change();
        lock(&self.state).closed = false;
        self.cv.notify_all();
        result
    }
}

/// How long a change waits for kicked vCPUs before it kicks again.
const KICK_AGAIN: std::time::Duration = std::time::Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_change_waits_for_the_runs_inside_and_holds_new_ones_back() {
        let gate = Arc::new(RunGate::default());
        let pass = gate.enter();
        let kicks = Arc::new(AtomicUsize::new(0));
        let changed = Arc::new(AtomicUsize::new(0));
        let changer = {
            let (gate, kicks, changed) = (gate.clone(), kicks.clone(), changed.clone());
            std::thread::spawn(move || {
                gate.closed(
                    || {
                        kicks.fetch_add(1, Ordering::SeqCst);
                    },
                    || changed.store(1, Ordering::SeqCst),
                )
            })
        };
        while kicks.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert!(gate.closing());
        assert_eq!(
            changed.load(Ordering::SeqCst),
            0,
            "changed with a run inside"
        );
        assert!(gate.leave(pass), "the gate closed during the run");
        changer.join().unwrap();
        assert_eq!(changed.load(Ordering::SeqCst), 1);
        assert!(!gate.closing());
        let pass = gate.enter();
        assert!(!gate.leave(pass), "no change during this run");
    }

    #[test]
    fn a_thread_outside_may_close_the_gate_itself() {
        let gate = RunGate::default();
        assert_eq!(gate.closed(|| panic!("nobody is inside"), || 7), 7);
        let pass = gate.enter();
        assert!(!gate.leave(pass));
    }
}
