//! `fastchat-loadtest`: many client threads driving a real cluster through the real
//! client library (balancer, TLS, end-to-end encryption), or the same scenario against
//! a minimal built-in relay (`baseline`), the machine's ceiling.

mod baseline;
mod fastchat;
mod machine;
mod plot;
mod report;
mod scenarios;
mod summary;
mod traffic;

use clap::Parser;
use fastchat::{event_handler, log_in_all, FastChatEndpoint, Problems, Target};
use plot::{PlotData, SweepPoint};
use report::Report;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use traffic::{Endpoint, Pace, Plan, SinkSlot, TrafficOptions};

/// FastChat load tester.
#[derive(Debug, Parser)]
#[command(name = "fastchat-loadtest", version)]
struct Cli {
    /// `[baseline] SCENARIO`: `dm`, `group`, `file`, `offline`, `connections` or
    /// `login`; after `baseline` (for `dm` and `group`), against the built-in relay instead. Or
    /// `summary DIR`: the reports in DIR (as tests/bench.sh writes them) as a table.
    #[arg(required = true, num_args = 1..=2)]
    what: Vec<String>,
    /// Client threads (users).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Closed loop: each client keeps at most W of its messages unanswered (default 16).
    #[arg(long, conflicts_with = "rate")]
    window: Option<usize>,
    /// Open loop: messages per second in total (group messages in `group`).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop at each of these rates in turn (comma-separated), one report with a
    /// `sweep` list, and with --plot a chart of latency against offered load.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["rate", "window"])]
    sweep: Vec<f64>,
    /// Partners per client in `dm` (0: every other client).
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// Members per group in `group`.
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Bytes per file in `file` (suffixes K, M, G: KiB, MiB, GiB).
    #[arg(long, default_value = "10M", value_parser = parse_size)]
    file_size: u64,
    /// Messages queued in `offline`.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Messages sent one at a time at the end of `connections`.
    #[arg(long, default_value_t = 100)]
    probes: u64,
    /// Users are PREFIX-0, PREFIX-1...: signed up when new, logged in when they exist
    /// (reuse them across runs); default a fresh prefix per run.
    #[arg(long)]
    users: Option<String>,
    /// Threads that sign up and log in users at the start.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Keep each user's HOME in DIR/NAME (its private key cached there: logging in again
    /// skips an scrypt). Default: keys in memory only.
    #[arg(long)]
    homes: Option<PathBuf>,
    /// Start a cluster of N servers (with a PostgreSQL of its own).
    #[arg(long, conflicts_with = "balancer")]
    servers: Option<usize>,
    /// Use the cluster at this balancer (as run_cluster.sh started it).
    #[arg(long, requires = "ca")]
    balancer: Option<String>,
    /// The cluster CA (with --balancer).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// run_cluster.sh's --data-dir (with --balancer), to read the servers' memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw PNG charts into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// `100`, `64K`, `10M`, `1G` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (digits, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    n.checked_mul(scale).ok_or_else(|| "size too large".into())
}

impl Cli {
    fn traffic(&self) -> TrafficOptions {
        TrafficOptions {
            duration: Duration::from_secs_f64(self.duration),
            warmup: Duration::from_secs_f64(self.warmup),
            pace: match (self.window, self.rate) {
                (_, Some(rate)) => Pace::Rate(rate),
                (Some(w), None) => Pace::Window(w),
                (None, None) => Pace::Window(16),
            },
            size: self.message_size,
        }
    }
}

/// Runs the traffic once, or once per rate of `--sweep`.
fn run_traffic(
    cli: &Cli,
    endpoints: &[Arc<dyn Endpoint>],
    plan: &Plan,
    scenario: &str,
    system: &str,
) -> (Report, Vec<SweepPoint>) {
    traffic::set_up(endpoints, plan);
    let mut opts = cli.traffic();
    if cli.sweep.is_empty() {
        let mut report = traffic::run(endpoints, plan, &opts, scenario);
        report.system = system.into();
        return (report, Vec::new());
    }
    let mut points = Vec::new();
    let mut last: Option<Report> = None;
    for &rate in &cli.sweep {
        opts.pace = Pace::Rate(rate);
        let mut report = traffic::run(endpoints, plan, &opts, scenario);
        report.system = system.into();
        report.print();
        // The report is the last rate's, but any loss at any rate fails the run.
        if let Some(previous) = &last {
            report.lost += previous.lost;
            report.duplicated += previous.duplicated;
            for (code, n) in &previous.errors {
                *report.errors.entry(code.clone()).or_default() += n;
            }
        }
        points.push(SweepPoint {
            offered: rate,
            achieved: report.delivered_per_sec,
            p50_us: report.latency_us.p50,
            p99_us: report.latency_us.p99,
            machine_cpu: report.machine_cpu,
        });
        last = Some(report);
    }
    let mut report = last.expect("at least one rate");
    report.extra.insert(
        "sweep".into(),
        serde_json::to_value(&points).expect("points serialize"),
    );
    (report, points)
}

fn run(cli: &Cli) -> Result<(Report, Vec<SweepPoint>), String> {
    let (baseline, scenario) = match cli.what.as_slice() {
        [s] => (false, s.as_str()),
        [b, s] if b == "baseline" => (true, s.as_str()),
        other => return Err(format!("expected `[baseline] SCENARIO`, got {other:?}")),
    };
    if baseline {
        let groups = match scenario {
            "dm" => false,
            "group" => true,
            _ => {
                return Err(format!(
                    "the baseline relay runs `dm` and `group` only, not {scenario:?}"
                ))
            }
        };
        let plan = if groups {
            Plan::groups(cli.clients, cli.group_size)
        } else {
            Plan::direct(cli.clients, cli.peers)
        };
        let members = plan
            .members
            .iter()
            .map(|m| m.iter().map(|&c| c as u32).collect())
            .collect();
        let relay = baseline::start_relay(if groups { members } else { Vec::new() });
        let endpoints: Vec<Arc<dyn Endpoint>> = (0..cli.clients)
            .map(|i| {
                Arc::new(baseline::RelayClient::connect(&relay, i as u32, groups))
                    as Arc<dyn Endpoint>
            })
            .collect();
        return Ok(run_traffic(cli, &endpoints, &plan, scenario, "baseline"));
    }
    if !["dm", "group", "file", "offline", "connections", "login"].contains(&scenario) {
        return Err(format!("unknown scenario {scenario:?}"));
    }
    let target = Target::open(
        cli.balancer.as_deref(),
        cli.ca.as_deref(),
        cli.data_dir.as_deref(),
        cli.servers.unwrap_or(3),
    )?;
    let prefix = cli
        .users
        .clone()
        .unwrap_or_else(|| format!("lt{}", &fastchat_common::ids::new_message_id()[..8]));
    let names: Vec<String> = (0..cli.clients).map(|i| format!("{prefix}-{i}")).collect();
    let setup = scenarios::Setup {
        target: &target,
        names: &names,
        duration: Duration::from_secs_f64(cli.duration),
        workers: cli.workers,
        homes: cli.homes.as_deref(),
    };
    let report = match scenario {
        "file" => scenarios::file(&setup, cli.file_size)?,
        "offline" => scenarios::offline(&setup, cli.messages, cli.window.unwrap_or(64))?,
        "connections" => scenarios::connections(&setup, cli.probes)?,
        "login" => scenarios::login(&setup)?,
        _ => {
            if cli.clients < 2 {
                return Err(format!("{scenario} needs at least 2 clients"));
            }
            eprintln!("logging in {} users", names.len());
            let problems = Problems::default();
            let sinks: Vec<Arc<SinkSlot>> = names.iter().map(|_| Arc::default()).collect();
            let handlers: Vec<_> = sinks
                .iter()
                .map(|s| event_handler(s.clone(), problems.clone()))
                .collect();
            let clients = log_in_all(
                &target.config,
                &names,
                cli.homes.as_deref(),
                cli.workers,
                &handlers,
            )?;
            let (plan, targets) = if scenario == "group" {
                let plan = Plan::groups(names.len(), cli.group_size);
                let groups = create_groups(&clients, &names, &plan, &prefix)?;
                (plan, groups)
            } else {
                (Plan::direct(names.len(), cli.peers), names.clone())
            };
            let targets = Arc::new(targets);
            let endpoints: Vec<Arc<dyn Endpoint>> = clients
                .into_iter()
                .zip(sinks)
                .map(|(client, sinks)| {
                    Arc::new(FastChatEndpoint {
                        client,
                        targets: targets.clone(),
                        groups: scenario == "group",
                        sinks,
                    }) as Arc<dyn Endpoint>
                })
                .collect();
            let (mut report, sweep) = run_traffic(cli, &endpoints, &plan, scenario, "fastchat");
            for (code, n) in problems.lock().iter() {
                *report.errors.entry(code.clone()).or_default() += n;
            }
            return Ok((report, sweep));
        }
    };
    Ok((report, Vec::new()))
}

/// Each group's first member creates it with the others; returns the groups' names.
fn create_groups(
    clients: &[fastchat_client::Client],
    names: &[String],
    plan: &Plan,
    prefix: &str,
) -> Result<Vec<String>, String> {
    let mut groups = Vec::new();
    for (g, members) in plan.members.iter().enumerate() {
        let group = format!("{prefix}-g{g}");
        let others: Vec<String> = members[1..].iter().map(|&m| names[m].clone()).collect();
        match clients[members[0]].group_create(&group, &others) {
            Ok(_) => {}
            // Reused users (--users): the group is there from an earlier run.
            Err(e) if e.code == fastchat_client::ErrorCode::NameTaken => {}
            Err(e) => return Err(format!("group create {group}: {e}")),
        }
        groups.push(group);
    }
    Ok(groups)
}

/// `summary DIR`: prints the benchmark table; `None` for any other command.
fn summary(cli: &Cli) -> Option<ExitCode> {
    let [command, dir] = cli.what.as_slice() else {
        return None;
    };
    if command != "summary" {
        return None;
    }
    Some(match summary::markdown(std::path::Path::new(dir)) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fastchat-loadtest: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Thousands of clients each hold a socket and a few history files: the soft limit on
/// open descriptors (often 1024) goes up to the hard one, as load tools do.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> ExitCode {
    // As in the server: each login's 16 MiB of scrypt goes back to the system when freed,
    // so that the memory figures show connections, not malloc's retention; and a file
    // chunk's buffers are not given back and faulted in again at every chunk.
    // SAFETY: mallopt only sets a malloc parameter; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * 1024 * 1024);
    }
    raise_descriptor_limit();
    let cli = Cli::parse();
    if let Some(code) = summary(&cli) {
        return code;
    }
    match run(&cli) {
        Ok((report, sweep)) => {
            report.print();
            if let Some(path) = &cli.out {
                let json = serde_json::to_string_pretty(&report).expect("report serializes");
                if let Err(e) = std::fs::write(path, json) {
                    eprintln!("cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if let Some(dir) = &cli.plot {
                let data = PlotData {
                    title: format!(
                        "{} {}, {} clients",
                        report.system, report.scenario, report.clients
                    ),
                    percentiles: report.percentiles.clone(),
                    throughput: report.throughput.clone(),
                    sweep,
                };
                let prefix = format!("{}-{}", report.system, report.scenario);
                match plot::draw(dir, &prefix, &data) {
                    Ok(paths) => {
                        for p in paths {
                            eprintln!("chart: {}", p.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("cannot draw the charts: {e}");
                        return ExitCode::FAILURE;
                    }
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
