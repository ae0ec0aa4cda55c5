//! `fastchat-loadtest`: many client threads driving a real cluster through the real
//! client library (balancer, TLS, end-to-end encryption), or the same scenario against
//! a minimal built-in relay (`baseline`), the machine's ceiling.

mod baseline;
mod report;
mod traffic;

use clap::Parser;
use fastchat_client::{Client, ClientConfig, ErrorCode, Event, OkResult};
use fastchat_tests::{Cluster, ClusterOptions, PrivatePostgres};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use traffic::{Answer, DmOptions, Endpoint, Pace};

/// FastChat load tester.
#[derive(Debug, Parser)]
#[command(name = "fastchat-loadtest", version)]
struct Cli {
    /// `[baseline] SCENARIO`: the scenario (`dm`), after `baseline` to run it against the
    /// built-in relay instead of FastChat.
    #[arg(required = true, num_args = 1..=2)]
    what: Vec<String>,
    /// Client threads.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Closed loop: each client keeps at most W of its messages unanswered.
    #[arg(long, conflicts_with = "rate")]
    window: Option<usize>,
    /// Open loop: messages per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// Partners per client in `dm` (0: every other client).
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// Start a cluster of N servers (with a PostgreSQL of its own).
    #[arg(long, conflicts_with = "balancer")]
    servers: Option<usize>,
    /// Use the cluster at this balancer (as run_cluster.sh started it).
    #[arg(long, requires = "ca")]
    balancer: Option<String>,
    /// The cluster CA (with --balancer).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A FastChat client as the scenario drives it.
struct FastChatEndpoint {
    client: Client,
    names: Arc<Vec<String>>,
    index: Arc<HashMap<String, usize>>,
    /// Refusals seen by the inbox (`undecryptable` ...), counted as errors.
    problems: Arc<Mutex<HashMap<String, u64>>>,
}

impl Endpoint for FastChatEndpoint {
    fn send(&self, to: usize, text: &str) -> Answer {
        let (_, handle) = self.client.send_text(&self.names[to], text);
        Box::new(move |timeout| match handle.wait(timeout) {
            Ok(Some(OkResult::Sent { .. })) => Ok(()),
            Ok(_) => Err("unexpected_reply".into()),
            Err(e) => Err(e.code.as_str().to_string()),
        })
    }

    fn receive(&self, timeout: Duration) -> Option<(usize, String)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.client.events().recv_timeout(left).ok()? {
                Event::Message { from, text, .. } => {
                    return Some((*self.index.get(&from)?, text));
                }
                Event::Undecryptable { error, .. } => {
                    *self
                        .problems
                        .lock()
                        .entry(error.code.as_str().into())
                        .or_default() += 1;
                }
                _ => {}
            }
        }
    }
}

fn run(cli: Cli) -> Result<report::Report, String> {
    let (baseline, scenario) = match cli.what.as_slice() {
        [s] => (false, s.clone()),
        [b, s] if b == "baseline" => (true, s.clone()),
        other => return Err(format!("expected `[baseline] SCENARIO`, got {other:?}")),
    };
    if scenario != "dm" {
        return Err(format!(
            "scenario {scenario:?} is not built yet; this version runs `dm`"
        ));
    }
    let opts = DmOptions {
        duration: Duration::from_secs_f64(cli.duration),
        warmup: Duration::from_secs_f64(cli.warmup),
        pace: match (cli.window, cli.rate) {
            (_, Some(rate)) => Pace::Rate(rate),
            (Some(w), None) => Pace::Window(w),
            (None, None) => Pace::Window(16),
        },
        size: cli.message_size,
        peers: cli.peers,
    };
    if baseline {
        let relay = baseline::start_relay();
        let endpoints: Vec<Arc<dyn Endpoint>> = (0..cli.clients)
            .map(|i| {
                Arc::new(baseline::RelayClient::connect(&relay, i as u32)) as Arc<dyn Endpoint>
            })
            .collect();
        let mut report = traffic::run_dm(endpoints, &opts, &scenario);
        report.system = "baseline".into();
        return Ok(report);
    }

    // A cluster of our own, or the one at --balancer.
    let mut _own: Option<(PrivatePostgres, Cluster)> = None;
    let config = match (&cli.balancer, cli.servers) {
        (Some(balancer), _) => {
            let ca = cli.ca.as_ref().ok_or("--balancer needs --ca")?;
            ClientConfig::with_ca_file(balancer.clone(), ca).map_err(|e| e.to_string())?
        }
        (None, servers) => {
            eprintln!("starting a cluster of {} servers", servers.unwrap_or(3));
            let postgres = PrivatePostgres::start();
            let cluster = Cluster::start_with(ClusterOptions {
                servers: servers.unwrap_or(3),
                postgres: Some(postgres.url.clone()),
                ..Default::default()
            });
            let config = cluster.config();
            _own = Some((postgres, cluster));
            config
        }
    };
    let run_id = fastchat_common::ids::new_message_id();
    let names: Vec<String> = (0..cli.clients)
        .map(|i| format!("lt{}-{i}", &run_id[..8]))
        .collect();
    eprintln!("signing up {} users (an RSA key each)", names.len());
    let index: HashMap<String, usize> = names
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let (names, index) = (Arc::new(names), Arc::new(index));
    let problems: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut endpoints: Vec<Arc<dyn Endpoint>> = Vec::new();
    for name in names.iter() {
        let client = Client::connect(&config).map_err(|e| e.to_string())?;
        match client.signup(name, &format!("{name}-pw")) {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::NameTaken => {
                client
                    .login(name, &format!("{name}-pw"))
                    .map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(format!("signup {name}: {e}")),
        }
        endpoints.push(Arc::new(FastChatEndpoint {
            client,
            names: names.clone(),
            index: index.clone(),
            problems: problems.clone(),
        }));
    }
    let mut report = traffic::run_dm(endpoints, &opts, &scenario);
    for (code, n) in problems.lock().iter() {
        *report.errors.entry(code.clone()).or_default() += n;
    }
    Ok(report)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = cli.out.clone();
    match run(cli) {
        Ok(report) => {
            report.print();
            if let Some(path) = out {
                let json = serde_json::to_string_pretty(&report).expect("report serializes");
                if let Err(e) = std::fs::write(&path, json) {
                    eprintln!("cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if report.lost > 0 || report.duplicated > 0 {
                eprintln!("lost or duplicated messages: the run failed");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fastchat-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
