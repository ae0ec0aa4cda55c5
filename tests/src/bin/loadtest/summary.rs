//! `fastchat-loadtest summary DIR`: the benchmark's reports (the JSON files that
//! `tests/bench.sh` writes into DIR) as the Markdown table of docs/PERFORMANCE.md, each
//! figure beside its target.

use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

fn load(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn ms(v: &Value, p: &str) -> f64 {
    v["latency_us"][p].as_f64().unwrap_or(f64::NAN) / 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

fn integrity(v: &Value) -> String {
    format!("lost {}, duplicated {}", v["lost"], v["duplicated"])
}

/// `; machine busy B%, steal S%` for a report (or a sweep point) that measured the
/// machine's CPU (`machine_cpu`), else nothing: whether the figure is the machine's limit,
/// and how much of the machine the hypervisor kept for others meanwhile.
fn and_machine(v: &Value) -> String {
    let cpu = &v["machine_cpu"];
    match (cpu["busy_pct"].as_f64(), cpu["steal_pct"].as_f64()) {
        (Some(busy), Some(steal)) => format!("; machine busy {busy:.0}%, steal {steal:.0}%"),
        _ => String::new(),
    }
}

/// The Markdown table for the reports in `dir`.
pub fn markdown(dir: &Path) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | conditions | measured | target | met |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    let mut rows = 0;
    if let (Some(dm), Some(base)) = (load(dir, "dm"), load(dir, "baseline")) {
        let (ours, ceiling) = (f(&dm, "delivered_per_sec"), f(&base, "delivered_per_sec"));
        let ratio = ours / ceiling;
        let _ = writeln!(
            out,
            "| `dm` | {} clients, window 16 | {ours:.0} msg/s (p50 {:.1} ms, p99 {:.1} ms{}); baseline {ceiling:.0} msg/s (p50 {:.1} ms{}): **{:.0}%**; {} | ≥ 40,000 msg/s and ≥ 50% of baseline | {} |",
            dm["clients"],
            ms(&dm, "p50"),
            ms(&dm, "p99"),
            and_machine(&dm),
            ms(&base, "p50"),
            and_machine(&base),
            ratio * 100.0,
            integrity(&dm),
            verdict(ours >= 40_000.0 && ratio >= 0.5)
        );
        rows += 1;
    }
    if let Some(v) = load(dir, "dm-open") {
        let (p50, p99) = (ms(&v, "p50"), ms(&v, "p99"));
        let clean = v["lost"] == 0 && v["duplicated"] == 0;
        let _ = writeln!(
            out,
            "| `dm` open loop | {} clients at 10,000 msg/s | {:.0} msg/s delivered, p50 {p50:.2} ms, p90 {:.2} ms, p99 {p99:.2} ms, max {:.1} ms; {}{} | p50 ≤ 1 ms, p99 ≤ 10 ms, 0 lost, 0 duplicated | {} |",
            v["clients"],
            f(&v, "delivered_per_sec"),
            ms(&v, "p90"),
            ms(&v, "max"),
            integrity(&v),
            load(dir, "baseline-open").map_or(String::new(), |b| format!(
                "; baseline at the same rate p50 {:.2} ms, p99 {:.2} ms",
                ms(&b, "p50"),
                ms(&b, "p99")
            )),
            verdict(p50 <= 1.0 && p99 <= 10.0 && clean)
        );
        rows += 1;
    }
    for (name, what) in [("dm-open", "FastChat"), ("baseline-open", "baseline")] {
        let Some(v) = load(dir, name) else {
            continue;
        };
        let points: Vec<String> = v["sweep"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{:.0}/s: {:.0}/s carried, p50 {:.2} ms, p99 {:.2} ms{}",
                    f(p, "offered"),
                    f(p, "achieved"),
                    f(p, "p50_us") / 1000.0,
                    f(p, "p99_us") / 1000.0,
                    and_machine(p)
                )
            })
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                out,
                "| `dm` open-loop sweep, {what} | {} clients | {} | (for comparison) | |",
                v["clients"],
                points.join("; ")
            );
            rows += 1;
        }
    }
    if let Some(v) = load(dir, "group") {
        let p99 = ms(&v, "p99");
        let clean = v["lost"] == 0 && v["duplicated"] == 0;
        let _ = writeln!(
            out,
            "| `group` | {} clients in groups of 20, 2,000 group msg/s | {:.0} deliveries/s, p50 {:.2} ms, p99 {p99:.2} ms{}; {}{} | p99 ≤ 20 ms, each member gets each message once | {} |",
            v["clients"],
            f(&v, "delivered_per_sec"),
            ms(&v, "p50"),
            and_machine(&v),
            integrity(&v),
            load(dir, "baseline-group").map_or(String::new(), |b| format!(
                "; baseline at the same rate {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms{}",
                f(&b, "delivered_per_sec"),
                ms(&b, "p50"),
                ms(&b, "p99"),
                and_machine(&b)
            )),
            verdict(p99 <= 20.0 && clean)
        );
        rows += 1;
    }
    if let Some(v) = load(dir, "file") {
        let mb = f(&v, "mb_per_sec");
        let _ = writeln!(
            out,
            "| `file` | {} MiB between two users | {mb:.0} MB/s end to end; peak RSS KiB: servers {}, load tester {}; {} | ≥ 100 MB/s, bounded memory | {} |",
            v["file_size"].as_u64().unwrap_or(0) >> 20,
            v["peak_rss_kib"]["servers"],
            v["peak_rss_kib"]["load_tester"],
            integrity(&v),
            verdict(mb >= 100.0)
        );
        rows += 1;
    }
    if let Some(v) = load(dir, "offline") {
        let secs = f(&v, "login_to_last_ms") / 1000.0;
        let in_order = v["out_of_order"] == 0;
        let _ = writeln!(
            out,
            "| `offline` | {} messages queued (in {:.1} s) | all received {secs:.2} s after login, out of order {}; {} | ≤ 5 s, in order | {} |",
            v["queued"],
            f(&v, "queue_secs"),
            v["out_of_order"],
            integrity(&v),
            verdict(secs <= 5.0 && in_order && v["lost"] == 0)
        );
        rows += 1;
    }
    if let Some(v) = load(dir, "connections") {
        let per = f(&v, "rss_kib_per_connection");
        let p99 = ms(&v, "p99");
        let _ = writeln!(
            out,
            "| `connections` | {} idle clients (logged in in {:.0} s) | {per:.0} KiB server RSS per connection; a message at that load p50 {:.2} ms, p99 {p99:.2} ms | 10,000 clients, ≤ 128 KiB each, a message < 10 ms | {} |",
            v["connected"],
            f(&v, "login_secs"),
            ms(&v, "p50"),
            verdict(per <= 128.0 && p99 < 10.0 && v["connected"].as_u64() >= Some(10_000))
        );
        rows += 1;
    }
    if let Some(v) = load(dir, "login") {
        let _ = writeln!(
            out,
            "| `login` | {} clients logging in and out | {:.1} logins/s, p50 {:.0} ms | (none set) | |",
            v["clients"],
            f(&v, "logins_per_sec"),
            ms(&v, "p50"),
        );
        rows += 1;
    }
    if rows == 0 {
        return Err(format!("no reports in {}", dir.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dm_row_says_how_busy_the_machine_was_when_the_reports_measured_it() {
        let dir = tempfile::tempdir().unwrap();
        let report = |per_sec: f64, cpu: Option<(f64, f64)>| {
            let mut v = serde_json::json!({
                "clients": 100, "delivered_per_sec": per_sec, "lost": 0, "duplicated": 0,
                "latency_us": {"p50": 2000, "p90": 3000, "p99": 9000, "p999": 9500, "max": 9900},
            });
            if let Some((busy, steal)) = cpu {
                v["machine_cpu"] = serde_json::json!({"busy_pct": busy, "idle_pct": 100.0 - busy - steal, "steal_pct": steal});
            }
            v.to_string()
        };
        std::fs::write(
            dir.path().join("dm.json"),
            report(45_000.0, Some((99.6, 0.2))),
        )
        .unwrap();
        std::fs::write(dir.path().join("baseline.json"), report(80_000.0, None)).unwrap();
        let table = markdown(dir.path()).unwrap();
        let row = table.lines().find(|l| l.starts_with("| `dm` |")).unwrap();
        assert!(
            row.contains("45000 msg/s (p50 2.0 ms, p99 9.0 ms; machine busy 100%, steal 0%)"),
            "{row}"
        );
        assert!(row.contains("baseline 80000 msg/s (p50 2.0 ms)"), "{row}");
        assert!(row.contains("**56%**") && row.ends_with("| yes |"), "{row}");
    }
}
