//! The load tester runs (briefly: figures are for the benchmark, not for tests), through
//! the real balancer, TLS and end-to-end encryption, and reports 0 lost, 0 duplicated.

use fastchat_tests::Cluster;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the load tester (bounded: killed after `LOADTEST_LIMIT`), its output in a log
/// beside `out` and shown if it fails; returns its JSON report.
fn run_loadtest(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let log_path = out.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(fastchat_tests::bin("fastchat-loadtest"))
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("fastchat-loadtest starts");
    let deadline = Instant::now() + LOADTEST_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("fastchat-loadtest {args:?} failed ({s}):\n{output}"),
        None => {
            panic!("fastchat-loadtest {args:?} still running after {LOADTEST_LIMIT:?}:\n{output}")
        }
    }
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

/// How long one brief load-test run may take (sign-ups included).
const LOADTEST_LIMIT: Duration = Duration::from_secs(180);

fn check_report(report: &serde_json::Value) {
    for key in [
        "scenario",
        "clients",
        "duration_s",
        "delivered",
        "delivered_per_sec",
        "bytes_per_sec",
        "latency_us",
        "lost",
        "duplicated",
        "errors",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}");
    }
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            report["latency_us"][p].is_u64(),
            "latency_us.{p} in {report}"
        );
    }
    for key in ["duration_s", "delivered_per_sec", "bytes_per_sec"] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    // A refused send is not counted as lost (it was never acknowledged): any error
    // fails the run too.
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn the_dm_scenario_and_its_baseline_run_with_nothing_lost() {
    let cluster = Cluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster.ca().display().to_string();
    let common = ["--clients", "6", "--duration", "2", "--warmup", "0.5"];
    let mut args = vec![
        "dm",
        "--balancer",
        &cluster.balancer,
        "--ca",
        &ca,
        "--window",
        "4",
    ];
    args.extend(common);
    let fastchat = run_loadtest(&args, &dir.path().join("dm.json"));
    check_report(&fastchat);
    assert_eq!(fastchat["scenario"], "dm");
    assert_eq!(fastchat["clients"], 6);
    machine_cpu_adds_up(&fastchat["machine_cpu"], &fastchat);

    // The baseline as a sweep: one open-loop run per rate, each in the report.
    let mut args = vec!["baseline", "dm", "--sweep", "200,500"];
    args.extend(common);
    let baseline = run_loadtest(&args, &dir.path().join("baseline.json"));
    check_report(&baseline);
    assert_eq!(baseline["system"], "baseline");
    let offered: Vec<f64> = baseline["sweep"]
        .as_array()
        .unwrap_or_else(|| panic!("no sweep in {baseline}"))
        .iter()
        .map(|point| point["offered"].as_f64().unwrap())
        .collect();
    assert_eq!(offered, [200.0, 500.0], "{baseline}");
    for point in baseline["sweep"].as_array().unwrap() {
        machine_cpu_adds_up(&point["machine_cpu"], &baseline);
    }
}

/// `cpu` (a report's `machine_cpu`) has the machine's busy, idle and stolen shares of
/// the measured time, which add up to all of it.
fn machine_cpu_adds_up(cpu: &serde_json::Value, report: &serde_json::Value) {
    let sum: f64 = ["busy_pct", "idle_pct", "steal_pct"]
        .iter()
        .map(|key| {
            let pct = cpu[key]
                .as_f64()
                .unwrap_or_else(|| panic!("no machine_cpu.{key} in {report}"));
            assert!((0.0..=100.0).contains(&pct), "{key} in {report}");
            pct
        })
        .sum();
    assert!((sum - 100.0).abs() < 0.5, "machine_cpu in {report}");
    assert!(
        cpu["busy_pct"].as_f64() > Some(0.0),
        "the run kept the machine busy: {report}"
    );
}

#[test]
fn the_group_scenario_reaches_every_member_once_and_draws_its_charts() {
    let cluster = Cluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster.ca().display().to_string();
    let plots = dir.path().join("plots");
    let traffic = [
        "--clients",
        "6",
        "--group-size",
        "3",
        "--rate",
        "60",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ];
    let mut args = vec!["group", "--balancer", &cluster.balancer, "--ca", &ca];
    args.extend(traffic);
    args.extend(["--plot", plots.to_str().unwrap()]);
    let report = run_loadtest(&args, &dir.path().join("group.json"));
    check_report(&report);
    assert_eq!(report["scenario"], "group");
    each_reached_the_others(&report, 2);
    for chart in ["latency", "throughput"] {
        let png = std::fs::read(plots.join(format!("fastchat-group-{chart}.png")))
            .unwrap_or_else(|e| panic!("no {chart} chart: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "{chart} is not a PNG");
    }

    // The relay fans out the same way.
    let mut args = vec!["baseline", "group"];
    args.extend(traffic);
    let baseline = run_loadtest(&args, &dir.path().join("baseline-group.json"));
    check_report(&baseline);
    assert_eq!(baseline["system"], "baseline");
    each_reached_the_others(&baseline, 2);
}

/// Each acknowledged group message reached the `others` other members of its group (a
/// report without errors, checked before, so every measured delivery is of an
/// acknowledged message).
fn each_reached_the_others(report: &serde_json::Value, others: u64) {
    let acked = report["acked"].as_u64().unwrap();
    assert!(acked > 0, "{report}");
    assert_eq!(
        report["delivered"].as_u64().unwrap(),
        acked * others,
        "{report}"
    );
}

#[test]
fn the_file_offline_connections_and_login_scenarios_run_with_nothing_lost() {
    let cluster = Cluster::start(2);
    let dir = tempfile::tempdir().unwrap();
    let ca = cluster.ca().display().to_string();
    let with_cluster = |args: &[&str]| {
        let mut all = vec!["--balancer", &cluster.balancer, "--ca", &ca];
        all.extend(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |name: &str, args: &[&str]| {
        let args = with_cluster(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = run_loadtest(&args, &dir.path().join(format!("{name}.json")));
        check_report(&report);
        assert_eq!(report["scenario"], name);
        report
    };

    let file = run(
        "file",
        &[
            "file",
            "--clients",
            "2",
            "--file-size",
            "3M",
            "--duration",
            "0.5",
        ],
    );
    assert_eq!(file["file_size"], 3 << 20);
    assert!(file["mb_per_sec"].as_f64().unwrap() > 0.0, "{file}");

    let offline = run(
        "offline",
        &["offline", "--clients", "3", "--messages", "600"],
    );
    assert_eq!(offline["delivered"], 600, "{offline}");
    assert_eq!(offline["out_of_order"], 0, "{offline}");

    let connections = run(
        "connections",
        &["connections", "--clients", "6", "--probes", "5"],
    );
    assert_eq!(connections["connected"], 6);
    assert_eq!(connections["delivered"], 5);

    let login = run("login", &["login", "--clients", "2", "--duration", "1"]);
    assert!(login["logins_per_sec"].as_f64().unwrap() > 0.0, "{login}");
}
