//! The load tester runs (briefly: figures are for the benchmark, not for tests), through
//! the real balancer, TLS and end-to-end encryption, and reports 0 lost, 0 duplicated.

use fastchat_tests::Cluster;
use std::process::{Command, Stdio};

fn run_loadtest(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let status = Command::new(fastchat_tests::bin("fastchat-loadtest"))
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("fastchat-loadtest runs");
    assert!(status.success(), "fastchat-loadtest {args:?} failed");
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

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
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
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

    let mut args = vec!["baseline", "dm", "--rate", "500"];
    args.extend(common);
    let baseline = run_loadtest(&args, &dir.path().join("baseline.json"));
    check_report(&baseline);
    assert_eq!(baseline["system"], "baseline");
}
