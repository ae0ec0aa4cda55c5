//! The messages being handed over to the application, counted so that `Client::close`
//! can stop new ones and wait for those in progress: every message handed over is then
//! acknowledged before the connection closes, and every other one stays unacknowledged
//! and comes again at the next login.

use parking_lot::{Condvar, Mutex};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The gate: [`HandOvers::begin`] before a message is opened and handed over,
/// [`HandOvers::close`] to shut it.
#[derive(Default)]
pub(crate) struct HandOvers {
    /// Hand-overs in progress.
    active: Mutex<usize>,
    /// Signalled when the last one in progress ends.
    idle: Condvar,
    /// Set by [`HandOvers::close`]: no new hand-over begins.
    closing: AtomicBool,
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
        let mut active = self.active.lock();
        // Checked again under the lock, which `close` sets it under.
        if self.closing() {
            return None;
        }
        *active += 1;
        HANDING_OVER.with(|h| h.set(true));
        Some(HandOver { gate: self })
    }

    /// Whether [`HandOvers::close`] has been called.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the calling thread is inside a hand-over (an event handler calling
    /// `close`: it cannot wait for itself).
    pub fn on_this_thread() -> bool {
        HANDING_OVER.with(Cell::get)
    }

    /// Stops new hand-overs and waits, until `deadline` at most, for those in progress.
    /// Returns whether none is left.
    pub fn close(&self, deadline: Instant) -> bool {
        let mut active = self.active.lock();
        self.closing.store(true, Ordering::Release);
        while *active > 0 {
            if self.idle.wait_until(&mut active, deadline).timed_out() {
                return *active == 0;
            }
        }
        true
    }
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        HANDING_OVER.with(|h| h.set(false));
        let mut active = self.gate.active.lock();
        *active -= 1;
        if *active == 0 {
            self.gate.idle.notify_all();
        }
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
    fn close_gives_up_at_its_deadline() {
        let gate = HandOvers::default();
        let over = gate.begin().expect("open");
        assert!(!gate.close(Instant::now() + Duration::from_millis(20)));
        drop(over);
        assert!(gate.close(Instant::now()), "none left now");
    }
}
