//! Blocking receives that go to sleep at once. `Receiver::recv` spins and then calls
//! `sched_yield` four times before it sleeps; `Select::select` tries once and then
//! blocks. Which is better depends on the thread, so each hot wait was measured (`dm`,
//! 100 clients, window 16, 3 servers on 2 cores):
//!
//! - the client's writer, reply waits and inbox: sleeping at once took the run from
//!   28.6k to 32.9k messages/s (the yields had been 13% of the load tester's CPU);
//! - the server's connection writers: sleeping at once halved it (16.6k). A writer
//!   that yields lets more frames pile up and sends them in one write; one that sleeps
//!   is woken, and writes, for every frame. They keep `recv`, and so does the load
//!   tester's baseline relay (130k against 65k).

use crossbeam_channel::{Receiver, RecvError, RecvTimeoutError, Select};
use std::time::{Duration, Instant};

/// Like `rx.recv()`, without spinning before it sleeps.
pub fn recv<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    if let Ok(value) = rx.try_recv() {
        return Ok(value);
    }
    let mut select = Select::new_biased();
    select.recv(rx);
    select.select().recv(rx)
}

/// Like `rx.recv_deadline(deadline)`, without spinning before it sleeps.
pub fn recv_deadline<T>(rx: &Receiver<T>, deadline: Instant) -> Result<T, RecvTimeoutError> {
    if let Ok(value) = rx.try_recv() {
        return Ok(value);
    }
    let mut select = Select::new_biased();
    select.recv(rx);
    match select.select_deadline(deadline) {
        Ok(operation) => operation
            .recv(rx)
            .map_err(|_| RecvTimeoutError::Disconnected),
        Err(_) => Err(RecvTimeoutError::Timeout),
    }
}

/// Like `rx.recv_timeout(timeout)`, without spinning before it sleeps.
pub fn recv_timeout<T>(rx: &Receiver<T>, timeout: Duration) -> Result<T, RecvTimeoutError> {
    match Instant::now().checked_add(timeout) {
        Some(deadline) => recv_deadline(rx, deadline),
        // Beyond what an `Instant` can hold: no deadline at all.
        None => recv(rx).map_err(|_| RecvTimeoutError::Disconnected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_what_is_there_or_what_comes_and_reports_the_end() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(1).unwrap();
        assert_eq!(recv(&rx), Ok(1));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(2).unwrap();
        });
        assert_eq!(recv(&rx), Ok(2));
        sender.join().unwrap();
        assert_eq!(recv(&rx), Err(RecvError));
    }

    #[test]
    fn a_deadline_passes_and_an_ended_channel_says_so() {
        let (tx, rx) = crossbeam_channel::bounded::<u8>(1);
        let t = Instant::now();
        assert_eq!(
            recv_timeout(&rx, Duration::from_millis(30)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(t.elapsed() >= Duration::from_millis(30));
        tx.send(7).unwrap();
        assert_eq!(recv_timeout(&rx, Duration::from_secs(5)), Ok(7));
        tx.send(8).unwrap();
        assert_eq!(recv_timeout(&rx, Duration::MAX), Ok(8));
        drop(tx);
        assert_eq!(
            recv_timeout(&rx, Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }
}
