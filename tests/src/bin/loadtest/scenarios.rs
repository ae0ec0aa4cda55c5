//! The scenarios that are not a steady stream of messages: `file` (files between pairs),
//! `offline` (a queue drained at login), `connections` (many idle clients: memory per
//! connection, and a message still going through) and `login` (logins per second).

use crate::fastchat::{log_in_all, log_in_one, memory_kib, password_of, Target};
use crate::report::{Progress, Report};
use crate::traffic::new_histogram;
use fastchat_client::{Client, Conversation, Event, ReplyHandle};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// What every scenario here is given.
pub struct Setup<'a> {
    pub target: &'a Target,
    /// The users' names (the scenario decides how many it uses).
    pub names: &'a [String],
    pub duration: Duration,
    /// Sign-up and login threads.
    pub workers: usize,
    /// Where the users' `HOME`s are (`--homes`).
    pub homes: Option<&'a Path>,
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

fn count(errors: &Mutex<HashMap<String, u64>>, code: &str) {
    *errors.lock().entry(code.to_string()).or_default() += 1;
}

/// Peak resident memory (`VmHWM`) of the servers and of this process, KiB.
fn peak_memory(target: &Target) -> serde_json::Value {
    json!({
        "servers": target.servers_memory("VmHWM:"),
        "load_tester": memory_kib(std::process::id(), "VmHWM:"),
    })
}

/// Writes `size` bytes of varied content to `path`, a block at a time.
fn write_file(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        for b in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// `file`: client 2i sends files of `file_size` bytes to client 2i+1, one after another
/// until `duration` has passed (at least one each). Latency is from the start of a
/// file's sending to its arrival whole and checked; throughput is bytes received over
/// the time from the first send to the last arrival.
pub fn file(setup: &Setup, file_size: u64) -> Result<Report, String> {
    let pairs = (setup.names.len() / 2).max(1);
    let names = &setup.names[..pairs * 2];
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let homes = dir.path().join("homes");
    let clients = log_in_all(
        &setup.target.config,
        names,
        Some(setup.homes.unwrap_or(&homes)),
        setup.workers,
        &[],
    )?;
    let clients: Vec<Arc<Client>> = clients.into_iter().map(Arc::new).collect();
    // One source file per sender, and the conversation keys made before the clock.
    for p in 0..pairs {
        write_file(&dir.path().join(format!("source-{p}")), file_size, p as u64)
            .map_err(|e| format!("cannot write the source file: {e}"))?;
        clients[2 * p]
            .send_text(&names[2 * p + 1], "setup")
            .1
            .wait(Duration::from_secs(60))
            .map_err(|e| format!("setup: {e}"))?;
    }
    let start = Instant::now();
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let last_arrival = Arc::new(AtomicU64::new(0));
    // Names of the files received whole (each once).
    let received: Arc<Mutex<HashSet<String>>> = Arc::default();
    let receivers: Vec<_> = (0..pairs)
        .map(|p| {
            let (client, errors, stop) = (clients[2 * p + 1].clone(), errors.clone(), stop.clone());
            let (last_arrival, received) = (last_arrival.clone(), received.clone());
            thread::spawn(move || {
                let mut h = new_histogram();
                let (mut dups, mut bytes) = (0u64, 0u64);
                loop {
                    match client.events().recv_timeout(Duration::from_millis(200)) {
                        Ok(Event::File {
                            name,
                            path,
                            bytes: n,
                            ..
                        }) => {
                            let _ = std::fs::remove_file(&path);
                            let now = micros_since(start);
                            last_arrival.fetch_max(now, Ordering::Relaxed);
                            // lt-SENDER-SEQ-MICROS.bin
                            let stamp: u64 = name
                                .trim_end_matches(".bin")
                                .rsplit('-')
                                .next()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(now);
                            if received.lock().insert(name) {
                                let _ = h.record(now.saturating_sub(stamp).clamp(1, 60_000_000));
                                bytes += n;
                            } else {
                                dups += 1;
                            }
                        }
                        Ok(Event::FileFailed { error, .. }) => {
                            count(&errors, error.code.as_str());
                        }
                        Ok(_) => {}
                        Err(_) if stop.load(Ordering::Acquire) => break,
                        Err(_) => {}
                    }
                }
                (h, dups, bytes)
            })
        })
        .collect();
    let deadline = start + setup.duration;
    let senders: Vec<_> = (0..pairs)
        .map(|p| {
            let (client, errors, sent) = (clients[2 * p].clone(), errors.clone(), sent.clone());
            let to = Conversation::User(names[2 * p + 1].clone());
            let source = dir.path().join(format!("source-{p}"));
            thread::spawn(move || {
                let mut seq = 0;
                while seq == 0 || Instant::now() < deadline {
                    let name = format!("lt-{p}-{seq}-{}.bin", micros_since(start));
                    match client.send_file_as(&to, &source, Some(&name), &mut |_, _| {}) {
                        Ok(_) => {
                            sent.lock().insert(name);
                        }
                        Err(e) => count(&errors, e.code.as_str()),
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    let progress = Progress::start("file");
    while senders.iter().any(|t| !t.is_finished()) {
        thread::sleep(Duration::from_millis(250));
        let secs = start.elapsed().as_secs_f64();
        progress.show(
            secs,
            setup.duration.as_secs_f64().max(secs),
            sent.lock().len() as u64,
        );
    }
    for t in senders {
        let _ = t.join();
    }
    // Every acknowledged file is at its receiver (or lost): wait for them, bounded.
    let wait_until = Instant::now() + Duration::from_secs(60);
    let expected = sent.lock().len() as u64;
    while !sent.lock().is_subset(&received.lock()) && Instant::now() < wait_until {
        thread::sleep(Duration::from_millis(20));
    }
    let mut histogram = new_histogram();
    let (mut duplicated, mut bytes) = (0, 0);
    stop.store(true, Ordering::Release);
    for r in receivers {
        let (h, dups, b) = r.join().map_err(|_| "a receiver panicked")?;
        histogram.add(&h).map_err(|e| e.to_string())?;
        duplicated += dups;
        bytes += b;
    }
    progress.finish();
    let lost = sent.lock().difference(&received.lock()).count() as u64;
    let elapsed = last_arrival.load(Ordering::Relaxed) as f64 / 1e6;
    let errors = errors.lock().clone();
    let mut report = Report::new(
        "file",
        names.len(),
        elapsed,
        histogram.len(),
        bytes as f64,
        &histogram,
        lost,
        duplicated,
        errors,
        expected,
    );
    report.extra.insert("file_size".into(), json!(file_size));
    report.extra.insert(
        "mb_per_sec".into(),
        json!(bytes as f64 / elapsed.max(1e-9) / 1e6),
    );
    report
        .extra
        .insert("peak_rss_kib".into(), peak_memory(setup.target));
    Ok(report)
}

/// `offline`: `messages` direct messages from the other clients are queued for the
/// first one while it is logged out; then it logs in, and the figure is the time from
/// its login to the last message received, each sender's messages in order.
pub fn offline(setup: &Setup, messages: u64, window: usize) -> Result<Report, String> {
    if setup.names.len() < 2 {
        return Err("offline needs at least 2 clients (1 recipient, senders)".into());
    }
    let recipient = setup.names[0].clone();
    let clients = log_in_all(
        &setup.target.config,
        setup.names,
        setup.homes,
        setup.workers,
        &[],
    )?;
    let mut clients = clients.into_iter();
    let reader = clients.next().expect("two clients");
    let senders: Vec<Arc<Client>> = clients.map(Arc::new).collect();
    // Conversation keys first, then the recipient leaves.
    for s in &senders {
        s.send_text(&recipient, "setup")
            .1
            .wait(Duration::from_secs(60))
            .map_err(|e| format!("setup: {e}"))?;
    }
    reader.logout().map_err(|e| format!("logout: {e}"))?;
    drop(reader);

    eprintln!(
        "queueing {messages} messages from {} senders",
        senders.len()
    );
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let queued_at = Instant::now();
    let per_sender = messages.div_ceil(senders.len() as u64);
    let threads: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, errors, recipient) = (s.clone(), errors.clone(), recipient.clone());
            let count_here = per_sender.min(messages.saturating_sub(i as u64 * per_sender));
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut window_q: std::collections::VecDeque<(u64, ReplyHandle)> =
                    std::collections::VecDeque::new();
                let mut settle =
                    |item: (u64, ReplyHandle)| match item.1.wait(Duration::from_secs(60)) {
                        Ok(_) => acked.push(item.0),
                        Err(e) => count(&errors, e.code.as_str()),
                    };
                for seq in 0..count_here {
                    let (_, h) = s.send_text(&recipient, &format!("{i}:{seq}"));
                    window_q.push_back((seq, h));
                    if window_q.len() >= window.max(1) {
                        settle(window_q.pop_front().expect("not empty"));
                    }
                }
                for item in window_q {
                    settle(item);
                }
                acked
            })
        })
        .collect();
    let acked: Vec<Vec<u64>> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    let queue_secs = queued_at.elapsed().as_secs_f64();
    let total_acked: usize = acked.iter().map(Vec::len).sum();
    eprintln!("{total_acked} queued in {queue_secs:.1} s; logging in");

    let login_at = Instant::now();
    let reader = log_in_one(&setup.target.config, &recipient)?;
    let mut histogram = new_histogram();
    let mut next_seq: Vec<u64> = vec![0; senders.len()];
    let (mut received, mut duplicated, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut seen: Vec<HashSet<u64>> = vec![HashSet::new(); senders.len()];
    let mut last = login_at;
    let deadline = login_at + Duration::from_secs(60).max(setup.duration);
    let progress = Progress::start("offline");
    // Until every acknowledged message is in (one refused but delivered anyway does not
    // stand in for an acknowledged one still missing).
    let expected: Vec<HashSet<u64>> = acked.iter().map(|s| s.iter().copied().collect()).collect();
    let mut missing = total_acked;
    while missing > 0 && Instant::now() < deadline {
        let Ok(event) = reader.events().recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let Event::Message { text, .. } = event else {
            if let Event::Undecryptable { error, .. } = event {
                count(&errors, error.code.as_str());
            }
            continue;
        };
        let Some((i, seq)) = text
            .split_once(':')
            .and_then(|(i, s)| Some((i.parse::<usize>().ok()?, s.parse::<u64>().ok()?)))
            .filter(|(i, _)| *i < senders.len())
        else {
            continue; // the set-up messages
        };
        if !seen[i].insert(seq) {
            duplicated += 1;
            continue;
        }
        if seq < next_seq[i] {
            out_of_order += 1;
        }
        next_seq[i] = next_seq[i].max(seq + 1);
        received += 1;
        if expected[i].contains(&seq) {
            missing -= 1;
        }
        last = Instant::now();
        let _ = histogram.record((last - login_at).as_micros().clamp(1, 60_000_000) as u64);
        if received.is_multiple_of(5000) {
            progress.show(
                login_at.elapsed().as_secs_f64(),
                deadline.duration_since(login_at).as_secs_f64(),
                received,
            );
        }
    }
    progress.finish();
    let lost = missing as u64;
    let drain_secs = (last - login_at).as_secs_f64();
    let errors = errors.lock().clone();
    let mut report = Report::new(
        "offline",
        setup.names.len(),
        drain_secs,
        received,
        0.0,
        &histogram,
        lost,
        duplicated,
        errors,
        total_acked as u64,
    );
    report
        .extra
        .insert("login_to_last_ms".into(), json!(drain_secs * 1000.0));
    report.extra.insert("queued".into(), json!(total_acked));
    report.extra.insert("queue_secs".into(), json!(queue_secs));
    report
        .extra
        .insert("out_of_order".into(), json!(out_of_order));
    if out_of_order > 0 {
        *report.errors.entry("out_of_order".into()).or_default() += out_of_order;
    }
    Ok(report)
}

/// `connections`: every client logs in and stays idle; the servers' memory growth per
/// connection, and the latency of messages between two of them, one at a time, at that
/// load.
pub fn connections(setup: &Setup, probes: u64) -> Result<Report, String> {
    if setup.names.len() < 2 {
        return Err("connections needs at least 2 clients".into());
    }
    // A first tenth logs in before the memory is read, so that what a login warms once
    // (pools, arenas, caches) is not counted per connection.
    let warm = (setup.names.len() / 10).clamp(1, 100);
    let login_at = Instant::now();
    let mut clients = log_in_all(
        &setup.target.config,
        &setup.names[..warm],
        setup.homes,
        setup.workers,
        &[],
    )?;
    thread::sleep(Duration::from_secs(1));
    let before = setup.target.servers_memory("VmRSS:");
    clients.extend(log_in_all(
        &setup.target.config,
        &setup.names[warm..],
        setup.homes,
        setup.workers,
        &[],
    )?);
    let login_secs = login_at.elapsed().as_secs_f64();
    // Let the servers settle (buffers grown, threads started) before reading memory.
    thread::sleep(Duration::from_secs(2));
    let after = setup.target.servers_memory("VmRSS:");
    let n = clients.len();
    let grown: u64 = after
        .iter()
        .sum::<u64>()
        .saturating_sub(before.iter().sum());
    let (a, b) = (&clients[0], &clients[n - 1]);
    let to = setup.names[n - 1].clone();
    a.send_text(&to, "setup")
        .1
        .wait(Duration::from_secs(60))
        .map_err(|e| format!("setup: {e}"))?;
    while b.events().recv_timeout(Duration::from_millis(200)).is_ok() {}
    let mut histogram = new_histogram();
    let (mut lost, mut duplicated, mut errors) = (0u64, 0u64, HashMap::new());
    let mut seen_probes = HashSet::new();
    for seq in 0..probes {
        let sent_at = Instant::now();
        let text = format!("probe {seq}");
        let (_, handle) = a.send_text(&to, &text);
        let mut got = false;
        let deadline = sent_at + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match b.events().recv_timeout(left) {
                Ok(Event::Message { text: t, .. }) if !seen_probes.insert(t.clone()) => {
                    duplicated += 1;
                }
                Ok(Event::Message { text: t, .. }) if t == text => {
                    let _ = histogram.record(sent_at.elapsed().as_micros().max(1) as u64);
                    got = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match handle.wait(Duration::from_secs(10)) {
            Ok(_) if !got => lost += 1,
            Ok(_) => {}
            Err(e) => *errors.entry(e.code.as_str().to_string()).or_default() += 1,
        }
    }
    let mut report = Report::new(
        "connections",
        n,
        login_secs,
        histogram.len(),
        0.0,
        &histogram,
        lost,
        duplicated,
        errors,
        probes,
    );
    report.extra.insert("connected".into(), json!(n));
    report.extra.insert("login_secs".into(), json!(login_secs));
    report
        .extra
        .insert("servers_rss_kib_before".into(), json!(before));
    report
        .extra
        .insert("servers_rss_kib_after".into(), json!(after));
    report.extra.insert(
        "rss_kib_per_connection".into(),
        if setup.target.server_pids.is_empty() {
            serde_json::Value::Null
        } else {
            json!(grown as f64 / (n - warm).max(1) as f64)
        },
    );
    report.extra.insert(
        "load_tester_rss_kib".into(),
        json!(memory_kib(std::process::id(), "VmRSS:")),
    );
    drop(clients);
    Ok(report)
}

/// `login`: each client's user logs in through the balancer, then out, again and
/// again for `duration`; logins per second, and the time of each (connect and login).
pub fn login(setup: &Setup) -> Result<Report, String> {
    // Make sure the users exist, then start from logged out.
    let clients = log_in_all(
        &setup.target.config,
        setup.names,
        setup.homes,
        setup.workers,
        &[],
    )?;
    for c in &clients {
        let _ = c.logout();
    }
    drop(clients);
    let start = Instant::now();
    let deadline = start + setup.duration;
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = setup
        .names
        .iter()
        .map(|name| {
            let (config, name) = (setup.target.config.clone(), name.clone());
            let (errors, done) = (errors.clone(), done.clone());
            thread::spawn(move || {
                let mut h = new_histogram();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let client = match Client::connect(&config) {
                        Ok(c) => c,
                        Err(e) => {
                            count(&errors, e.code.as_str());
                            continue;
                        }
                    };
                    match client.login(&name, &password_of(&name)) {
                        Ok(_) => {
                            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            let _ = client.logout();
                        }
                        Err(e) => count(&errors, e.code.as_str()),
                    }
                }
                h
            })
        })
        .collect();
    let progress = Progress::start("login");
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        progress.show(
            start.elapsed().as_secs_f64(),
            setup.duration.as_secs_f64(),
            done.load(Ordering::Relaxed),
        );
    }
    let mut histogram: Histogram<u64> = new_histogram();
    for t in threads {
        if let Ok(h) = t.join() {
            let _ = histogram.add(&h);
        }
    }
    progress.finish();
    let elapsed = start.elapsed().as_secs_f64();
    let logins = histogram.len();
    let errors = errors.lock().clone();
    let mut report = Report::new(
        "login",
        setup.names.len(),
        elapsed,
        logins,
        0.0,
        &histogram,
        0,
        0,
        errors,
        logins,
    );
    report
        .extra
        .insert("logins_per_sec".into(), json!(logins as f64 / elapsed));
    Ok(report)
}
