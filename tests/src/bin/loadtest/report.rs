//! The run's results: on the terminal, and as one JSON object (`--out FILE`) with the
//! keys scripts rely on; and the progress line shown while it runs.

use crate::machine::MachineCpu;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Instant;

/// The percentiles charted.
const PERCENTILES: [f64; 9] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One run's figures (the JSON written by `--out`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub clients: usize,
    pub duration_s: f64,
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub bytes_per_sec: f64,
    pub latency_us: Latency,
    pub lost: u64,
    pub duplicated: u64,
    pub errors: HashMap<String, u64>,
    /// Messages sent in all (warm-up and drain included).
    pub sent: u64,
    /// What the run was measured against: `fastchat` or `baseline`.
    pub system: String,
    /// The machine's CPU over the measured time, where the scenario took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu: Option<MachineCpu>,
    /// What the scenario adds (`files`, `login_to_last_ms`, `rss_kib_per_connection`...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Delivered per second over the measured time, `(seconds, per second)`, for charts.
    #[serde(skip)]
    pub throughput: Vec<(f64, f64)>,
    /// Latency by percentile, `(percentile, microseconds)`, for charts.
    #[serde(skip)]
    pub percentiles: Vec<(f64, u64)>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &str,
        clients: usize,
        duration_s: f64,
        delivered: u64,
        bytes: f64,
        h: &Histogram<u64>,
        lost: u64,
        duplicated: u64,
        errors: HashMap<String, u64>,
        sent: u64,
    ) -> Report {
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Report {
            scenario: scenario.to_string(),
            clients,
            duration_s,
            delivered,
            delivered_per_sec: delivered as f64 / duration_s.max(1e-9),
            bytes_per_sec: bytes / duration_s.max(1e-9),
            latency_us: Latency {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: if h.is_empty() { 0 } else { h.max() },
            },
            lost,
            duplicated,
            errors,
            sent,
            system: "fastchat".into(),
            machine_cpu: None,
            extra: BTreeMap::new(),
            throughput: Vec::new(),
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, q(p / 100.0)))
                .filter(|_| !h.is_empty())
                .collect(),
        }
    }

    /// Prints the figures for people.
    pub fn print(&self) {
        let l = &self.latency_us;
        println!(
            "{} {} | {} clients, {:.1} s | delivered {} ({:.0}/s, {:.0} B/s) | latency us p50 {} p90 {} p99 {} p99.9 {} max {} | lost {} duplicated {} errors {:?}",
            self.system,
            self.scenario,
            self.clients,
            self.duration_s,
            self.delivered,
            self.delivered_per_sec,
            self.bytes_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.lost,
            self.duplicated,
            self.errors
        );
        if let Some(cpu) = &self.machine_cpu {
            println!(
                "  machine_cpu: busy {}%, idle {}%, steal {}%",
                cpu.busy_pct, cpu.idle_pct, cpu.steal_pct
            );
        }
        for (key, value) in &self.extra {
            println!("  {key}: {value}");
        }
    }
}

/// The progress line on standard error.
pub struct Progress {
    what: String,
    started: Instant,
}

impl Progress {
    pub fn start(what: &str) -> Progress {
        Progress {
            what: what.to_string(),
            started: Instant::now(),
        }
    }

    pub fn show(&self, done_s: f64, total_s: f64, delivered: u64) {
        let rate = delivered as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r{}: {:>5.1}/{:.0} s, {} delivered ({:.0}/s)   ",
            self.what, done_s, total_s, delivered, rate
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&self) {
        eprintln!();
    }
}
