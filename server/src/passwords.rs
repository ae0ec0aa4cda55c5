//! The server's password hashing, a few at a time: each scrypt takes 16 MiB and about a
//! tenth of a second of a core, and any connection may ask for one (a login for an
//! unknown user too), so without a bound a thousand connections logging in at once
//! would ask for 16 GB.

use crate::session::{refuse, Refusal};
use crossbeam_channel::{Receiver, Sender};
use fastchat_common::ErrorCode;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a request waits for its turn before it is refused `rate_limited`.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Hashes `password` for storing, when its turn comes.
pub fn hash(password: &str) -> Result<String, Refusal> {
    in_turn(TURN_WAIT, || {
        fastchat_common::password::hash_password(password)
    })
}

/// Whether `password` matches `stored`, when its turn comes.
pub fn verify(password: &str, stored: &str) -> Result<bool, Refusal> {
    in_turn(TURN_WAIT, || {
        fastchat_common::password::verify_password(password, stored)
    })
}

/// Turns: a channel holding one token per computation allowed at once, twice the cores
/// (at least 2): enough to keep every core busy while some threads wait on the database.
fn turns() -> &'static (Sender<()>, Receiver<()>) {
    static TURNS: OnceLock<(Sender<()>, Receiver<()>)> = OnceLock::new();
    TURNS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| (n.get() * 2).max(2));
        let (give, take) = crossbeam_channel::bounded(n);
        for _ in 0..n {
            give.send(()).expect("room for every token");
        }
        (give, take)
    })
}

/// Runs `work` once a turn is free, waiting at most `wait` for one.
fn in_turn<T>(wait: Duration, work: impl FnOnce() -> T) -> Result<T, Refusal> {
    let (give, take) = turns();
    if take.recv_timeout(wait).is_err() {
        return refuse(
            ErrorCode::RateLimited,
            "too many logins at once; try again shortly",
        );
    }
    /// Gives the token back however `work` ends.
    struct Turn<'a>(&'a Sender<()>);
    impl Drop for Turn<'_> {
        fn drop(&mut self) {
            let _ = self.0.try_send(());
        }
    }
    let _turn = Turn(give);
    Ok(work())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// One test for both, as they share the process's turns.
    #[test]
    fn no_more_run_at_once_than_there_are_turns_and_a_wait_too_long_is_refused() {
        let limit = turns().0.capacity().unwrap();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..limit * 3 {
                s.spawn(|| {
                    in_turn(TURN_WAIT, || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .unwrap();
                });
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!((2..=limit).contains(&most), "{most} at once, {limit} turns");
        // Every turn was given back.
        assert_eq!(turns().1.len(), limit);

        // With every turn taken, a request waits its time and is refused.
        let taken: Vec<()> = (0..limit).map(|_| turns().1.recv().unwrap()).collect();
        let refused = in_turn(Duration::from_millis(50), || ()).unwrap_err();
        assert_eq!(refused.0, ErrorCode::RateLimited);
        for token in taken {
            turns().0.send(token).unwrap();
        }
        assert_eq!(in_turn(Duration::from_millis(50), || 7), Ok(7));
    }
}
