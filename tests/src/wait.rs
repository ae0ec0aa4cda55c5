//! Bounded waits: every wait in a test has a deadline, so a failure cannot hang the suite.

use crossbeam_channel::RecvTimeoutError;
use fastchat_client::{Client, Event};
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it is true, or panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    wait_for(what, timeout, || check().then_some(()))
}

/// The next event that `pick` accepts, skipping others; panics after `timeout`.
pub fn wait_event<T>(
    client: &Client,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.events().recv_timeout(left) {
            Ok(event) => {
                if let Some(v) = pick(event) {
                    return v;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("timed out after {timeout:?} waiting for {what}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("event channel closed waiting for {what}")
            }
        }
    }
}

/// The next direct message: (from, text).
pub fn next_message(client: &Client, timeout: Duration) -> (String, String) {
    wait_event(client, timeout, "a message", |e| match e {
        Event::Message { from, text, .. } => Some((from, text)),
        _ => None,
    })
}

/// Whether a send's answer says "stored" (the recipient was not reachable) rather than
/// delivered; panics on an error or another answer.
pub fn sent_stored(reply: fastchat_client::Reply) -> bool {
    match reply.expect("send ok") {
        Some(fastchat_client::OkResult::Sent { stored, .. }) => stored,
        other => panic!("unexpected ok payload {other:?}"),
    }
}
