//! Message traffic over any transport, for the `dm` and `group` scenarios: each client
//! sends to targets of its own (a partner, or its group), closed-loop (at most `window`
//! of its own unanswered) or open-loop at a fixed total rate (each message stamped with
//! its intended send time, so queueing shows in the latency). Each text received is
//! handed to the run's sink on the receiving client's own thread, which records its
//! latency in an HDR histogram and checks that every message reaches each of its
//! recipients once.

use crate::machine::CpuSample;
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

/// Takes the texts a client receives, on the thread that received them.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// One client as the scenario drives it.
pub trait Endpoint: Send + Sync {
    /// Sends `text` to target number `target` (a client in `dm`, a group in `group`).
    fn send(&self, target: usize, text: &str) -> Answer;
    /// Where the texts received from now on go (none: dropped).
    fn sinks(&self) -> &SinkSlot;
}

/// An endpoint's current sink, replaced at each run. Receiving hands each text over on
/// the receiving thread: a channel to a thread of the scenario's would cost a wake-up
/// per message, more than a FastChat client's own work on it.
#[derive(Default)]
pub struct SinkSlot(parking_lot::RwLock<Option<Sink>>);

impl SinkSlot {
    /// Hands `text` to the current sink.
    pub fn deliver(&self, text: &str) {
        if let Some(sink) = &*self.0.read() {
            sink(text);
        }
    }

    fn set(&self, sink: Option<Sink>) {
        *self.0.write() = sink;
    }
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
pub struct TrafficOptions {
    /// Measured time.
    pub duration: Duration,
    /// Time before measuring starts (messages sent then are not counted).
    pub warmup: Duration,
    /// Pacing.
    pub pace: Pace,
    /// Bytes of padding in each message.
    pub size: usize,
}

/// Who talks to whom.
#[derive(Debug, Clone)]
pub struct Plan {
    /// For each client, the targets it picks from at random.
    pub targets: Vec<Vec<usize>>,
    /// For each target, the clients a message to it reaches (its sender excepted).
    pub members: Vec<Vec<usize>>,
}

impl Plan {
    /// Direct messages: each client writes to `peers` others chosen at random (all
    /// others when 0). Each first message to a partner makes a conversation key (RSA),
    /// which the set-up pass does before the clock starts.
    pub fn direct(n: usize, peers: usize) -> Plan {
        Plan {
            targets: choose_partners(n, peers),
            members: (0..n).map(|i| vec![i]).collect(),
        }
    }

    /// Groups of `size` consecutive clients (the last one may be smaller); each client
    /// writes to its own group.
    pub fn groups(n: usize, size: usize) -> Plan {
        let size = size.max(2);
        let members: Vec<Vec<usize>> = (0..n)
            .step_by(size)
            .map(|first| (first..(first + size).min(n)).collect())
            .collect();
        Plan {
            targets: (0..n).map(|i| vec![i / size]).collect(),
            members,
        }
    }

    fn recipients(&self, sender: usize, target: usize) -> impl Iterator<Item = usize> + '_ {
        self.members[target]
            .iter()
            .copied()
            .filter(move |&m| m != sender)
    }
}

/// `RUN:SENDER:SEQ:MICROS:padding`: the run it belongs to (a late message of an earlier
/// run, or of an earlier rate of a sweep, is not counted), who sent it, its number, and
/// its (intended) send time in microseconds since the run's start.
fn encode(run: u64, sender: usize, seq: u64, micros: u64, pad: &str) -> String {
    format!("{run}:{sender}:{seq}:{micros}:{pad}")
}

fn decode(text: &str) -> Option<(u64, usize, u64, u64)> {
    let mut parts = text.splitn(5, ':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// How long receivers go on listening, idle, once every sender has its answers.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// Width of a throughput-over-time bin.
const BIN: Duration = Duration::from_millis(250);

/// How often the progress line is redrawn.
const PROGRESS_STEP: Duration = Duration::from_millis(250);

struct Shared {
    /// This run's tag in every message.
    run: u64,
    /// Messages of other runs received (late ones), not counted.
    stale: AtomicU64,
    start: Instant,
    measuring_from: u64,
    measuring_until: u64,
    stop: AtomicBool,
    /// When the last text arrived, in microseconds since `start`.
    last_arrival: AtomicU64,
    delivered: AtomicU64,
    /// Deliveries (first copies) per `BIN` of arrival time since the start.
    bins: Vec<AtomicU64>,
    errors: Mutex<HashMap<String, u64>>,
    /// (sender, seq, target, sent in the measured window) acknowledged to the sender:
    /// every one counts for `lost`, warm-up and draining included.
    acked: Mutex<Vec<(usize, u64, usize, bool)>>,
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

/// One message from each client to each of its targets, answered, before the clock
/// starts: conversation and group keys (RSA) are made then, not during the measurement.
pub fn set_up(endpoints: &[Arc<dyn Endpoint>], plan: &Plan) {
    let threads: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (e, mine) = (e.clone(), plan.targets[i].clone());
            thread::spawn(move || {
                let answers: Vec<Answer> = mine.iter().map(|&t| e.send(t, "setup")).collect();
                for a in answers {
                    let _ = a(Duration::from_secs(120));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Runs traffic over `endpoints` as `plan` says (after [`set_up`]); returns the report.
pub fn run(
    endpoints: &[Arc<dyn Endpoint>],
    plan: &Plan,
    opts: &TrafficOptions,
    scenario: &str,
) -> Report {
    let n = endpoints.len();
    assert!(n >= 2, "traffic needs at least two clients");
    let pad = "x".repeat(opts.size);
    let start = Instant::now();
    let total = opts.warmup + opts.duration;
    // Bins for the run and a drain of up to a minute after it.
    let bins = (total + Duration::from_secs(60)).as_millis() / BIN.as_millis() + 1;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let shared = Arc::new(Shared {
        run,
        stale: AtomicU64::new(0),
        start,
        measuring_from: opts.warmup.as_micros() as u64,
        measuring_until: total.as_micros() as u64,
        stop: AtomicBool::new(false),
        last_arrival: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        bins: (0..bins).map(|_| AtomicU64::new(0)).collect(),
        errors: Mutex::new(HashMap::new()),
        acked: Mutex::new(Vec::new()),
        clients: n,
    });
    let plan = Arc::new(plan.clone());

    let received: Vec<Arc<Mutex<Received>>> = endpoints
        .iter()
        .map(|e| {
            let mine = Arc::new(Mutex::new(Received::default()));
            let (into, shared) = (mine.clone(), shared.clone());
            e.sinks().set(Some(Arc::new(move |text: &str| {
                into.lock().take(text, &shared)
            })));
            mine
        })
        .collect();
    let senders: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (e, shared, pad, opts) = (e.clone(), shared.clone(), pad.clone(), opts.clone());
            let plan = plan.clone();
            thread::spawn(move || send_loop(i, &plan.targets[i], &*e, &shared, &opts, &pad))
        })
        .collect();
    let progress = Progress::start(scenario);
    // The machine's CPU is sampled when measuring starts and when it ends.
    let (mut measuring, mut cpu_from) = (false, None);
    while start.elapsed() < total {
        let to_measuring = opts.warmup.saturating_sub(start.elapsed());
        if !measuring && to_measuring.is_zero() {
            measuring = true;
            cpu_from = CpuSample::now();
        }
        let step = if measuring {
            PROGRESS_STEP
        } else {
            to_measuring.min(PROGRESS_STEP)
        };
        thread::sleep(step.min(total.saturating_sub(start.elapsed())));
        progress.show(
            start.elapsed().min(total).as_secs_f64(),
            total.as_secs_f64(),
            shared.delivered.load(Ordering::Relaxed),
        );
    }
    let machine_cpu = cpu_from.and_then(|from| CpuSample::now()?.since(&from));
    shared.stop.store(true, Ordering::Release);
    let sent: u64 = senders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    // Every sender has its answers, so what was acknowledged is delivered or stored; a
    // stored message comes back with a fetch, which under overload takes a while: stop
    // after `DRAIN_IDLE` with nothing received, counted from the answers at the earliest.
    let answered = shared.micros();
    while shared
        .micros()
        .saturating_sub(shared.last_arrival.load(Ordering::Relaxed).max(answered))
        < DRAIN_IDLE.as_micros() as u64
    {
        thread::sleep(Duration::from_millis(50));
    }
    for e in endpoints {
        e.sinks().set(None);
    }
    let mut histogram = new_histogram();
    let mut seen: Vec<HashSet<(usize, u64)>> = Vec::with_capacity(n);
    let mut duplicated = 0;
    for r in received {
        let r = std::mem::take(&mut *r.lock());
        histogram.add(&r.latency).expect("same bounds");
        duplicated += r.duplicated;
        seen.push(r.seen);
    }
    progress.finish();
    let lost = shared
        .acked
        .lock()
        .iter()
        .map(|&(sender, seq, target, _)| {
            plan.recipients(sender, target)
                .filter(|&r| !seen[r].contains(&(sender, seq)))
                .count() as u64
        })
        .sum();
    let delivered = histogram.len();
    let errors = shared.errors.lock().clone();
    let acked = shared.acked.lock().iter().filter(|a| a.3).count();
    let first = (opts.warmup.as_millis() / BIN.as_millis()) as usize;
    let last = (total.as_millis() / BIN.as_millis()) as usize;
    // Throughput counts arrivals inside the measured window (whenever they were sent):
    // under overload that is what the system carried, not what was offered.
    let arrived: u64 = (first..last.min(shared.bins.len()))
        .map(|b| shared.bins[b].load(Ordering::Relaxed))
        .sum();
    let mut report = Report::new(
        scenario,
        n,
        opts.duration.as_secs_f64(),
        delivered,
        arrived as f64 * opts.size as f64,
        &histogram,
        lost,
        duplicated,
        errors,
        sent,
    );
    report.delivered_per_sec = arrived as f64 / opts.duration.as_secs_f64().max(1e-9);
    report
        .extra
        .insert("acked".into(), serde_json::json!(acked));
    report.machine_cpu = machine_cpu;
    report.extra.insert(
        "stale".into(),
        serde_json::json!(shared.stale.load(Ordering::Relaxed)),
    );
    report.throughput = (first..last.min(shared.bins.len()))
        .map(|b| {
            let t = (b - first) as f64 * BIN.as_secs_f64();
            let per_sec = shared.bins[b].load(Ordering::Relaxed) as f64 / BIN.as_secs_f64();
            (t, per_sec)
        })
        .collect();
    report
}

/// An HDR histogram of microseconds, 1 us to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
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

/// Sends until told to stop; returns how many messages it sent.
fn send_loop(
    me: usize,
    targets: &[usize],
    endpoint: &dyn Endpoint,
    shared: &Shared,
    opts: &TrafficOptions,
    pad: &str,
) -> u64 {
    let mut seq = 0u64;
    let mut outstanding: VecDeque<(u64, usize, bool, Answer)> = VecDeque::new();
    let mut rng_state = (me as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next_target = || {
        // xorshift: cheap, and enough to spread the destinations.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        targets[(rng_state % targets.len() as u64) as usize]
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
    let settle = |item: (u64, usize, bool, Answer), shared: &Shared| {
        let (seq, target, measured, answer) = item;
        match answer(Duration::from_secs(60)) {
            Ok(()) => shared.acked.lock().push((me, seq, target, measured)),
            Err(code) => shared.error(code),
        }
    };
    // Open loop: each client sends at its own offset into one interval shared by all,
    // on one clock, so that the total rate is even rather than in bursts. (Offsets
    // counted from each thread's own start spread the clients over more than one
    // interval, since the threads start one after another: where the ends overlapped,
    // twice the rate was offered, and those bursts made the latency's tail.)
    let mut intended = interval.map_or(0, |iv| {
        first_slot(shared.micros(), iv.as_micros() as u64, me, shared.clients)
    });
    while !shared.stop.load(Ordering::Acquire) {
        let stamp = match interval {
            Some(iv) => {
                let now = shared.micros();
                if intended > now {
                    thread::sleep(Duration::from_micros(intended - now));
                }
                let stamp = intended;
                intended += iv.as_micros() as u64;
                stamp
            }
            None => shared.micros(),
        };
        let measured = stamp >= shared.measuring_from && stamp < shared.measuring_until;
        let target = next_target();
        let answer = endpoint.send(target, &encode(shared.run, me, seq, stamp, pad));
        outstanding.push_back((seq, target, measured, answer));
        seq += 1;
        while outstanding.len() >= window {
            let item = outstanding.pop_front().expect("not empty");
            settle(item, shared);
        }
        // Open loop: bound the answers held, without waiting on them otherwise.
        while outstanding.len() > 4096 {
            let item = outstanding.pop_front().expect("not empty");
            settle(item, shared);
        }
    }
    for item in outstanding {
        settle(item, shared);
    }
    seq
}

/// The first send time at or after `now` of client `me` of `clients` in an open loop of
/// one message per `interval` each: client `me`'s slots are `interval * me / clients`
/// past every multiple of `interval` on the run's clock, so that together the clients
/// send evenly whenever each of them started.
fn first_slot(now: u64, interval: u64, me: usize, clients: usize) -> u64 {
    let interval = interval.max(1);
    let offset = interval * me as u64 / clients.max(1) as u64;
    let base = now - now % interval + offset;
    if base >= now {
        base
    } else {
        base + interval
    }
}

/// What one client received in a run.
struct Received {
    /// Latency of the measured messages.
    latency: Histogram<u64>,
    /// (sender, seq) of every message of this run.
    seen: HashSet<(usize, u64)>,
    duplicated: u64,
}

impl Default for Received {
    fn default() -> Received {
        Received {
            latency: new_histogram(),
            seen: HashSet::new(),
            duplicated: 0,
        }
    }
}

impl Received {
    /// Records one text received.
    fn take(&mut self, text: &str, shared: &Shared) {
        let now = shared.micros();
        shared.last_arrival.fetch_max(now, Ordering::Relaxed);
        if text == "setup" {
            return;
        }
        let Some((run, sender, seq, stamp)) = decode(text) else {
            shared.error("unreadable_message".into());
            return;
        };
        if run != shared.run {
            shared.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.seen.insert((sender, seq)) {
            self.duplicated += 1;
            return;
        }
        let bin = (now / BIN.as_micros() as u64) as usize;
        if let Some(b) = shared.bins.get(bin) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        if stamp >= shared.measuring_from && stamp < shared.measuring_until {
            let _ = self
                .latency
                .record(now.saturating_sub(stamp).clamp(1, 60_000_000));
            shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_slot;

    #[test]
    fn clients_that_start_at_different_times_still_send_evenly() {
        let (interval, clients) = (100_000, 1000);
        // Each thread starts 33 µs after the one before: 33 ms across the run.
        let mut phases: Vec<u64> = (0..clients)
            .map(|me| {
                let now = 5_000_000 + 33 * me as u64;
                let slot = first_slot(now, interval, me, clients);
                assert!(slot >= now && slot < now + interval, "client {me}");
                slot % interval
            })
            .collect();
        phases.sort_unstable();
        // One client every interval / clients (100 µs), none doubled up.
        for pair in phases.windows(2) {
            assert_eq!(pair[1] - pair[0], interval / clients as u64);
        }
    }
}
