//! Telling a frame that comes alone from one of a burst, by the time since the one
//! before it on the same connection; lock-free, for senders on several threads. Both
//! ends use it to choose between writing a frame at once and leaving it to a writer
//! thread that packs a burst into one record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the last frame on one connection was sent.
#[derive(Debug)]
pub struct SendGaps {
    /// When the connection was opened: `last` counts from it.
    opened: Instant,
    /// Microseconds from `opened` to the last [`SendGaps::alone`].
    last: AtomicU64,
}

impl SendGaps {
    /// For a connection opened now, on which nothing was sent yet.
    pub fn new() -> SendGaps {
        SendGaps {
            opened: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Records a frame sent now, and says whether it came `gap` or more after the one
    /// before it (the first one: after the opening).
    pub fn alone(&self, gap: Duration) -> bool {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let now = micros(self.opened.elapsed());
        let previous = self.last.swap(now, Ordering::AcqRel);
        now.saturating_sub(previous) >= micros(gap)
    }
}

impl Default for SendGaps {
    fn default() -> SendGaps {
        SendGaps::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_after_a_gap_is_alone_and_one_right_after_another_is_not() {
        const GAP: Duration = Duration::from_millis(30);
        let gaps = SendGaps::new();
        assert!(!gaps.alone(GAP), "right after the opening");
        std::thread::sleep(GAP * 2);
        assert!(gaps.alone(GAP));
        assert!(!gaps.alone(GAP), "right after the one before");
        std::thread::sleep(GAP * 2);
        assert!(gaps.alone(GAP));
    }
}
