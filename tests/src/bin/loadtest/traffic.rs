//! The `dm` scenario, over any transport: each client sends direct messages to random
//! other clients, closed-loop (at most `window` of its own unanswered) or open-loop at
//! a fixed total rate (each message stamped with its intended send time, so queueing
//! shows in the latency). Receivers record latency in HDR histograms and check every
//! message arrives once.

use crate::report::{Progress, Report};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Waits (at most the given time) for a message's answer; `Err(code)` if refused.
pub type Answer = Box<dyn FnOnce(Duration) -> Result<(), String> + Send>;

/// One client as the scenario drives it.
pub trait Endpoint: Send + Sync {
    /// Sends `text` to client `to`.
    fn send(&self, to: usize, text: &str) -> Answer;
    /// The next message received, `(sender index, text)`, within `timeout`.
    fn receive(&self, timeout: Duration) -> Option<(usize, String)>;
}

/// How the scenario paces its senders.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each client keeps at most this many of its messages unanswered.
    Window(usize),
    /// This many messages per second in total, spread evenly over the clients.
    Rate(f64),
}

/// Scenario settings.
#[derive(Debug, Clone)]
pub struct DmOptions {
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring starts (messages sent then are not counted).
    pub warmup: Duration,
    /// Pacing.
    pub pace: Pace,
    /// Bytes of padding in each message.
    pub size: usize,
    /// How many partners each client writes to (chosen at random at the start; 0: any
    /// other client). Each first message to a partner makes a conversation key (RSA),
    /// which the set-up pass does before the clock starts.
    pub peers: usize,
}

/// `SENDER:SEQ:MICROS:padding`: who sent it, its number, and its (intended) send time in
/// microseconds since the run's start.
fn encode(sender: usize, seq: u64, micros: u64, pad: &str) -> String {
    format!("{sender}:{seq}:{micros}:{pad}")
}

fn decode(text: &str) -> Option<(usize, u64, u64)> {
    let mut parts = text.splitn(4, ':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

struct Shared {
    start: Instant,
    measuring_from: u64,
    measuring_until: u64,
    stop: AtomicBool,
    /// Every sender has its answers: what was acknowledged is in the receivers' queues.
    drained: AtomicBool,
    delivered: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
    /// (sender, seq) acknowledged to the sender and sent in the measured window.
    acked: Mutex<HashSet<(usize, u64)>>,
    clients: usize,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn error(&self, code: String) {
        *self.errors.lock().entry(code).or_default() += 1;
    }
}

/// Runs the `dm` scenario over `endpoints`; returns the report.
pub fn run_dm(endpoints: Vec<Arc<dyn Endpoint>>, opts: &DmOptions, scenario: &str) -> Report {
    let n = endpoints.len();
    assert!(n >= 2, "the dm scenario needs at least two clients");
    let pad = "x".repeat(opts.size);
    let partners = Arc::new(choose_partners(n, opts.peers));
    set_up_conversations(&endpoints, &partners);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        measuring_from: opts.warmup.as_micros() as u64,
        measuring_until: (opts.warmup + opts.duration).as_micros() as u64,
        stop: AtomicBool::new(false),
        drained: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        errors: Mutex::new(HashMap::new()),
        acked: Mutex::new(HashSet::new()),
        clients: n,
    });

    let receivers: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let (e, shared) = (e.clone(), shared.clone());
            thread::spawn(move || receive_loop(&*e, &shared))
        })
        .collect();
    let senders: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (e, shared, pad, opts) = (e.clone(), shared.clone(), pad.clone(), opts.clone());
            let partners = partners.clone();
            thread::spawn(move || send_loop(i, &partners[i], &*e, &shared, &opts, &pad))
        })
        .collect();
    let progress = Progress::start(scenario);
    let end = opts.warmup + opts.duration;
    while start.elapsed() < end {
        thread::sleep(Duration::from_millis(250));
        progress.show(
            start.elapsed().min(end).as_secs_f64(),
            end.as_secs_f64(),
            shared.delivered.load(Ordering::Relaxed),
        );
    }
    shared.stop.store(true, Ordering::Release);
    let sent: u64 = senders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    shared.drained.store(true, Ordering::Release);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    let mut duplicated = 0;
    for r in receivers {
        let (h, got, dups) = r.join().expect("receiver");
        histogram.add(&h).expect("same bounds");
        duplicated += dups;
        seen.extend(got);
    }
    progress.finish();
    let acked = shared.acked.lock();
    let lost = acked.iter().filter(|k| !seen.contains(k)).count() as u64;
    let delivered = histogram.len();
    let errors = shared.errors.lock().clone();
    Report::new(
        scenario,
        n,
        opts.duration.as_secs_f64(),
        delivered,
        delivered as f64 * opts.size as f64,
        &histogram,
        lost,
        duplicated,
        errors,
        sent,
    )
}

/// Each client's partners: `peers` others at random (all others when 0 or more).
fn choose_partners(n: usize, peers: usize) -> Vec<Vec<usize>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|me| {
            let mut others: Vec<usize> = (0..n).filter(|&o| o != me).collect();
            if peers == 0 || peers >= others.len() {
                return others;
            }
            // Partial Fisher-Yates with xorshift.
            for i in 0..peers {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let j = i + (state % (others.len() - i) as u64) as usize;
                others.swap(i, j);
            }
            others.truncate(peers);
            others
        })
        .collect()
}

/// One message from each client to each of its partners, answered, before the clock
/// starts: conversation keys (RSA) are made then, not during the measurement.
fn set_up_conversations(endpoints: &[Arc<dyn Endpoint>], partners: &[Vec<usize>]) {
    let threads: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (e, mine) = (e.clone(), partners[i].clone());
            thread::spawn(move || {
                let answers: Vec<Answer> = mine.iter().map(|&p| e.send(p, "setup")).collect();
                for a in answers {
                    let _ = a(Duration::from_secs(120));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    // Drain the set-up messages from every inbox.
    for e in endpoints {
        while e.receive(Duration::from_millis(20)).is_some() {}
    }
}

/// Sends until told to stop; returns how many messages it sent.
fn send_loop(
    me: usize,
    partners: &[usize],
    endpoint: &dyn Endpoint,
    shared: &Shared,
    opts: &DmOptions,
    pad: &str,
) -> u64 {
    let mut seq = 0u64;
    let mut outstanding: VecDeque<(u64, bool, Answer)> = VecDeque::new();
    let mut rng_state = (me as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next_peer = || {
        // xorshift: cheap, and enough to spread the destinations.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        partners[(rng_state % partners.len() as u64) as usize]
    };
    let clients = shared.clients as f64;
    let interval = match opts.pace {
        Pace::Rate(total) => Some(Duration::from_secs_f64(clients / total.max(0.001))),
        Pace::Window(_) => None,
    };
    let window = match opts.pace {
        Pace::Window(w) => w.max(1),
        Pace::Rate(_) => usize::MAX,
    };
    let settle = |item: (u64, bool, Answer), shared: &Shared| {
        let (seq, measured, answer) = item;
        match answer(Duration::from_secs(60)) {
            Ok(()) if measured => {
                shared.acked.lock().insert((me, seq));
            }
            Ok(()) => {}
            Err(code) => shared.error(code),
        }
    };
    let mut intended = shared.micros();
    while !shared.stop.load(Ordering::Acquire) {
        let stamp = match interval {
            Some(iv) => {
                intended += iv.as_micros() as u64;
                let now = shared.micros();
                if intended > now {
                    thread::sleep(Duration::from_micros(intended - now));
                }
                intended
            }
            None => shared.micros(),
        };
        let measured = stamp >= shared.measuring_from && stamp < shared.measuring_until;
        let answer = endpoint.send(next_peer(), &encode(me, seq, stamp, pad));
        outstanding.push_back((seq, measured, answer));
        seq += 1;
        while outstanding.len() >= window {
            let item = outstanding.pop_front().expect("not empty");
            settle(item, shared);
        }
        if interval.is_some() {
            // Open loop: collect answers that are already in, without waiting.
            while outstanding.len() > 4096 {
                let item = outstanding.pop_front().expect("not empty");
                settle(item, shared);
            }
        }
    }
    for item in outstanding {
        settle(item, shared);
    }
    seq
}

/// Receives until stopped and idle; returns the latency histogram (measured messages
/// only), the (sender, seq) pairs seen, and the duplicates.
fn receive_loop(
    endpoint: &dyn Endpoint,
    shared: &Shared,
) -> (Histogram<u64>, Vec<(usize, u64)>, u64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut seen = HashSet::new();
    let mut duplicated = 0;
    loop {
        match endpoint.receive(Duration::from_millis(200)) {
            Some((_, text)) => {
                let Some((sender, seq, stamp)) = decode(&text) else {
                    shared.error("unreadable_message".into());
                    continue;
                };
                if !seen.insert((sender, seq)) {
                    duplicated += 1;
                    continue;
                }
                if stamp >= shared.measuring_from && stamp < shared.measuring_until {
                    let latency = shared.micros().saturating_sub(stamp).max(1);
                    let _ = h.record(latency.min(60_000_000));
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            None if shared.drained.load(Ordering::Acquire) => break,
            None => {}
        }
    }
    // Only the measured messages count towards `lost`.
    let seen: Vec<_> = seen.into_iter().collect();
    (h, seen, duplicated)
}
