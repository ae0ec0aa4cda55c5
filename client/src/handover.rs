//! The messages being handed over to the application, counted so that `Client::close`
//! and `Client::logout` can stop new ones and wait for those in progress: every message
//! handed over is then acknowledged before the session ends, and every other one stays
//! unacknowledged and comes again at the next login.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The gate: [`HandOvers::begin`] before a message is opened and handed over,
/// [`HandOvers::close`] to shut it for good, [`HandOvers::pause`] for a while.
#[derive(Default)]
pub(crate) struct HandOvers {
    state: Mutex<GateState>,
    /// Signalled when the last hand-over in progress ends.
    idle: Condvar,
    /// Whether the gate is shut (closed, or paused): no new hand-over begins.
    closing: AtomicBool,
}

#[derive(Default)]
struct GateState {
    /// Hand-overs in progress.
    active: usize,
    /// Pauses in progress.
    paused: usize,
    /// Closed for good.
    closed: bool,
}

impl GateState {
    fn shut(&self) -> bool {
        self.closed || self.paused > 0
    }
}

/// The gate held shut by [`HandOvers::pause`]; it opens again when this is dropped
/// (unless it was closed meanwhile).
pub(crate) struct Paused<'a> {
    gate: &'a HandOvers,
}

/// One hand-over in progress (or, for a link's reader, a run of them whose
/// acknowledgements it keeps): ends when dropped, once its acknowledgements are written
/// or queued for the link's writer.
pub(crate) struct HandOver<'a> {
    gate: &'a HandOvers,
}

thread_local! {
    /// Whether this thread is inside a hand-over (an event handler may run there).
    static HANDING_OVER: Cell<bool> = const { Cell::new(false) };
}

impl HandOvers {
    /// A hand-over, unless the gate is closing: then the message is to be left alone,
    /// unacknowledged.
    pub fn begin(&self) -> Option<HandOver<'_>> {
        if self.closing() {
            return None;
        }
        let mut state = self.state.lock();
        // Checked again under the lock, which `close` and `pause` set it under.
        if state.shut() {
            return None;
        }
        state.active += 1;
        HANDING_OVER.with(|h| h.set(true));
        Some(HandOver { gate: self })
    }

    /// Whether the gate is shut ([`HandOvers::close`], or a [`HandOvers::pause`] in
    /// progress).
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the calling thread is inside a hand-over (an event handler calling
    /// `close`: it cannot wait for itself).
    pub fn on_this_thread() -> bool {
        HANDING_OVER.with(Cell::get)
    }

    /// Stops new hand-overs for good and waits, until `deadline` at most, for those in
    /// progress. Returns whether none is left.
    pub fn close(&self, deadline: Instant) -> bool {
        let mut state = self.state.lock();
        state.closed = true;
        self.closing.store(true, Ordering::Release);
        self.wait_idle(state, deadline)
    }

    /// Stops new hand-overs until the returned guard is dropped, and waits, until
    /// `deadline` at most, for those in progress.
    pub fn pause(&self, deadline: Instant) -> Paused<'_> {
        let mut state = self.state.lock();
        state.paused += 1;
        self.closing.store(true, Ordering::Release);
        self.wait_idle(state, deadline);
        Paused { gate: self }
    }

    fn wait_idle(&self, mut state: MutexGuard<'_, GateState>, deadline: Instant) -> bool {
        while state.active > 0 {
            if self.idle.wait_until(&mut state, deadline).timed_out() {
                return state.active == 0;
            }
        }
        true
    }
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        HANDING_OVER.with(|h| h.set(false));
        let mut state = self.gate.state.lock();
        state.active -= 1;
        if state.active == 0 {
            self.gate.idle.notify_all();
        }
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock();
        state.paused -= 1;
        self.gate.closing.store(state.shut(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn close_waits_for_hand_overs_in_progress_and_stops_new_ones() {
        let gate = Arc::new(HandOvers::default());
        let (started, start_seen) = crossbeam_channel::bounded(0);
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        let handing = thread::spawn({
            let gate = gate.clone();
            move || {
                let over = gate.begin().expect("open");
                assert!(HandOvers::on_this_thread());
                started.send(()).unwrap();
                released.recv().unwrap();
                drop(over);
                assert!(!HandOvers::on_this_thread());
            }
        });
        start_seen.recv().unwrap();
        assert!(!HandOvers::on_this_thread(), "another thread's hand-over");
        let closer = thread::spawn({
            let gate = gate.clone();
            move || gate.close(Instant::now() + Duration::from_secs(30))
        });
        // The closer cannot finish while the hand-over lasts; it shuts the gate first.
        while !gate.closing() {
            thread::yield_now();
        }
        assert!(gate.begin().is_none(), "no new hand-over once closing");
        assert!(!closer.is_finished());
        release.send(()).unwrap();
        assert!(closer.join().unwrap(), "none left");
        handing.join().unwrap();
    }

    #[test]
    fn a_pause_ends_but_a_close_during_it_stays() {
        let gate = HandOvers::default();
        let paused = gate.pause(Instant::now());
        assert!(gate.begin().is_none(), "paused");
        drop(paused);
        assert!(gate.begin().is_some(), "open again");
        let paused = gate.pause(Instant::now());
        gate.close(Instant::now());
        drop(paused);
        assert!(gate.closing() && gate.begin().is_none(), "closed for good");
    }

    #[test]
    fn close_gives_up_at_its_deadline() {
        let gate = HandOvers::default();
        let over = gate.begin().expect("open");
        assert!(!gate.close(Instant::now() + Duration::from_millis(20)));
        drop(over);
        assert!(gate.close(Instant::now()), "none left now");
    }
}
