//! The `fastchat` terminal program driven through a pipe with `--json`: receipts,
//! groups and the local history, as a user's script would see them.

use crate::WAIT;
use fastchat_client::{Conversation, Event};
use fastchat_tests::{wait_event, Cluster};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `fastchat` (with `--json` or without) on `home`, its input and output piped.
fn start_terminal(cluster: &Cluster, home: &std::path::Path, json: bool) -> Child {
    Command::new(fastchat_tests::bin("fastchat"))
        .args(json.then_some("--json"))
        .args(["--balancer", &cluster.balancer, "--ca"])
        .arg(cluster.ca())
        .arg("--home")
        .arg(home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fastchat starts")
}

/// Waits for `child`, its input closed, to exit 0.
fn assert_exits_cleanly(child: &mut Child) {
    let status = fastchat_tests::wait_for("fastchat to exit", Duration::from_secs(60), || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success());
}

/// Runs `fastchat --json` with `lines` on standard input (one every `pace`), keeps its
/// input open until it has printed an object for which `until` holds (or `WAIT` has
/// passed), and returns every JSON object it printed.
fn run_terminal(
    cluster: &Cluster,
    home: &std::path::Path,
    lines: &[&str],
    pace: Duration,
    until: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut child = start_terminal(cluster, home, true);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
        std::thread::sleep(pace);
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !out.iter().any(&until) {
        match rx.recv_deadline(deadline) {
            Ok(value) => out.push(value),
            Err(_) => break,
        }
    }
    drop(stdin);
    assert_exits_cleanly(&mut child);
    reader.join().unwrap();
    out.extend(rx.try_iter());
    out
}

fn find(out: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    out.iter()
        .find(|v| pred(v))
        .unwrap_or_else(|| panic!("not in the output: {out:#?}"))
}

#[test]
fn receipts_groups_and_history_through_the_terminal() {
    let cluster = Cluster::start(2);
    let bob = cluster.user("bob", Some("server-2"));
    let carol = cluster.user("carol", Some("server-1"));
    carol.logout().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = run_terminal(
        &cluster,
        home.path(),
        &[
            "/signup alice alice-pw",
            "/msg bob hi bob",
            "/msg carol hi carol",
            "/group create pals bob carol",
            "/gmsg pals hello pals",
            "/groups",
            "/history bob",
            "/history pals 5",
            "/group members pals",
        ],
        Duration::from_millis(100),
        |v| v["event"] == "delivered",
    );
    // A live message is reported delivered at once.
    let delivered = find(&out, |v| v["event"] == "delivered");
    assert_eq!(delivered["to"], "bob");
    // carol is offline: stored.
    let stored = find(&out, |v| v["cmd"] == "msg" && v["stored"] == true);
    assert!(stored["id"].is_string());
    let group = find(&out, |v| v["cmd"] == "group");
    assert_eq!(group["group"], "pals");
    assert_eq!(group["members"][0]["user"], "alice");
    assert_eq!(group["members"][0]["admin"], true);
    let groups = find(&out, |v| v["cmd"] == "groups");
    assert_eq!(groups["groups"][0]["group"], "pals");
    let history: Vec<&Value> = out.iter().filter(|v| v["cmd"] == "history").collect();
    assert_eq!(history[0]["messages"][0]["text"], "hi bob");
    assert_eq!(history[0]["messages"][0]["from"], "alice");
    assert_eq!(history[1]["messages"][0]["text"], "hello pals");

    // bob got both; carol gets hers at login, and alice's next run hears of it.
    let got = wait_event(&bob, WAIT, "the group message", |e| match e {
        Event::GroupMessage { text, .. } => Some(text),
        _ => None,
    });
    assert_eq!(got, "hello pals");
    let carol = cluster.client();
    carol.login("carol", "carol-password").unwrap();
    assert_eq!(
        fastchat_tests::next_message(&carol, WAIT),
        ("alice".into(), "hi carol".into())
    );
    let out = run_terminal(
        &cluster,
        home.path(),
        &["/login alice alice-pw"],
        Duration::ZERO,
        |v| v["event"] == "delivered",
    );
    let receipt = find(&out, |v| v["event"] == "delivered");
    assert_eq!(receipt["to"], "carol");
    assert_eq!(receipt["id"], stored["id"]);
    // The library gives the same history.
    let alice = fastchat_client::Client::connect(&cluster.config().with_home(home.path())).unwrap();
    alice.login("alice", "alice-pw").unwrap();
    let h = alice
        .history(&Conversation::User("carol".into()), 10)
        .unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "hi carol");
}

/// The terminal without `--json`, as a person uses it: a line of input that is not
/// UTF-8 gets an error and the program reads on, and an escape sequence in a message
/// from someone else reaches the screen escaped, not as a command to the terminal.
#[test]
fn the_human_terminal_skips_bad_input_and_shows_control_characters_escaped() {
    let cluster = Cluster::start(1);
    let bob = cluster.user("bob", None);
    let home = tempfile::tempdir().unwrap();
    let mut child = start_terminal(&cluster, home.path(), false);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        while stdout.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let wait_line = |what: &str, seen: &mut Vec<Vec<u8>>| {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = seen
                .iter()
                .find(|l| String::from_utf8_lossy(l).contains(what))
            {
                return String::from_utf8_lossy(line).into_owned();
            }
            match rx.recv_deadline(deadline) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {what:?} in {seen:?}"),
            }
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"/signup dee dee-pw\n").unwrap();
    wait_line("signed up", &mut seen);
    stdin
        .write_all(b"/msg bob \xff\xfe not utf-8\n/msg bob after\n")
        .unwrap();
    assert_eq!(
        fastchat_tests::next_message(&bob, WAIT),
        ("dee".into(), "after".into())
    );
    assert!(wait_line("bad_request", &mut seen).contains("not UTF-8"));
    let (_, h) = bob.send_text("dee", "\u{1b}[2J\u{1b}]0;owned\u{7}boo");
    h.wait(WAIT).unwrap();
    let shown = wait_line("boo", &mut seen);
    assert!(
        shown.contains("bob: \\u{1b}[2J\\u{1b}]0;owned\\u{7}boo"),
        "{shown:?}"
    );
    drop(stdin);
    assert_exits_cleanly(&mut child);
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert!(
        seen.iter().flatten().all(|&b| b != 0x1b && b != 0x07),
        "a control byte reached the terminal: {seen:?}"
    );
}
