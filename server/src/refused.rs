//! Per sender, the messages refused for want of the database, per target, in the order
//! they were refused. Until they come again, in that order, later messages to the same
//! target are refused too, so none overtakes one the client will send again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Refused message ids per target (`u:USER`, `g:GROUP`), and when each queue last moved.
#[derive(Default)]
pub struct RefusedQueues {
    targets: HashMap<String, (VecDeque<String>, Instant)>,
}

impl RefusedQueues {
    /// Records that `id` to `target` was refused. An id already waiting keeps its place
    /// (a head refused again stays the head).
    pub fn mark(&mut self, target: &str, id: &str) {
        let (queue, at) = self
            .targets
            .entry(target.to_string())
            .or_insert_with(|| (VecDeque::new(), Instant::now()));
        if !queue.iter().any(|q| q == id) {
            queue.push_back(id.to_string());
        }
        *at = Instant::now();
    }

    /// Whether `id` to `target` may go now: yes when nothing refused waits for that
    /// target (or it has waited longer than `patience`: the client has given up
    /// re-sending by then), or when `id` is the first of those waiting; it stays first
    /// until [`RefusedQueues::done`]. Otherwise it joins the queue and must be refused.
    pub fn take_turn(&mut self, target: &str, id: &str, patience: Duration) -> bool {
        let Some((queue, at)) = self.targets.get_mut(target) else {
            return true;
        };
        if at.elapsed() > patience || queue.is_empty() {
            self.targets.remove(target);
            return true;
        }
        if queue.front().is_some_and(|head| head == id) {
            *at = Instant::now();
            return true;
        }
        if !queue.iter().any(|q| q == id) {
            queue.push_back(id.to_string());
        }
        false
    }

    /// `id` to `target` went through (or was refused for good): if it was the first
    /// waiting, the next one's turn comes.
    pub fn done(&mut self, target: &str, id: &str) {
        let Some((queue, at)) = self.targets.get_mut(target) else {
            return;
        };
        if queue.front().is_some_and(|head| head == id) {
            queue.pop_front();
            *at = Instant::now();
        }
        if queue.is_empty() {
            self.targets.remove(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(90);

    #[test]
    fn refused_messages_go_again_in_their_order_and_hold_back_later_ones() {
        let mut q = RefusedQueues::default();
        assert!(q.take_turn("u:bob", "m1", PATIENCE), "nothing waiting");
        q.mark("u:bob", "m1");
        // m2 and m3 came while m1 waited: refused, queued behind it.
        assert!(!q.take_turn("u:bob", "m2", PATIENCE));
        assert!(!q.take_turn("u:bob", "m3", PATIENCE));
        // Another target is not held back.
        assert!(q.take_turn("u:carol", "x1", PATIENCE));
        // m2 before m1: still refused.
        assert!(!q.take_turn("u:bob", "m2", PATIENCE));
        assert!(q.take_turn("u:bob", "m1", PATIENCE));
        q.done("u:bob", "m1");
        assert!(!q.take_turn("u:bob", "m3", PATIENCE));
        assert!(q.take_turn("u:bob", "m2", PATIENCE));
        q.done("u:bob", "m2");
        assert!(q.take_turn("u:bob", "m3", PATIENCE));
        q.done("u:bob", "m3");
        assert!(q.targets.is_empty(), "nothing left once all went");
        assert!(q.take_turn("u:bob", "m4", PATIENCE));
    }

    #[test]
    fn a_head_refused_again_keeps_its_place() {
        let mut q = RefusedQueues::default();
        q.mark("g:pals", "m1");
        assert!(!q.take_turn("g:pals", "m2", PATIENCE));
        // m1's turn, and the database refuses it again.
        assert!(q.take_turn("g:pals", "m1", PATIENCE));
        q.mark("g:pals", "m1");
        // m2 must still wait for m1.
        assert!(!q.take_turn("g:pals", "m2", PATIENCE));
        assert!(q.take_turn("g:pals", "m1", PATIENCE));
        q.done("g:pals", "m1");
        assert!(q.take_turn("g:pals", "m2", PATIENCE));
    }

    #[test]
    fn after_the_patience_nothing_is_held_back() {
        let mut q = RefusedQueues::default();
        q.mark("u:bob", "m1");
        assert!(!q.take_turn("u:bob", "m2", PATIENCE));
        assert!(q.take_turn("u:bob", "m2", Duration::ZERO));
        assert!(q.targets.is_empty());
    }
}
