//! Clean shutdown: SIGTERM stops servers and balancer with status 0, clients are told
//! to reconnect, and `run_cluster.sh` leaves no process behind.

use crate::WAIT;
use fastchat_client::Event;
use fastchat_tests::{wait_event, Cluster};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn sigterm_stops_servers_and_balancer_cleanly() {
    let mut cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    assert!(
        cluster.signal_server(0, libc::SIGTERM, Duration::from_secs(15)),
        "server-1 exits 0"
    );
    wait_event(&alice, WAIT, "reconnect notice", |e| {
        matches!(e, Event::Reconnect { .. }).then_some(())
    });
    // The survivor no longer counts server-1 and the balancer stops assigning it.
    cluster.wait_meshed(1);
    assert!(
        cluster.signal_server(1, libc::SIGTERM, Duration::from_secs(15)),
        "server-2 exits 0"
    );
    assert!(
        cluster.signal_balancer(libc::SIGTERM, Duration::from_secs(15)),
        "balancer exits 0"
    );
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn free_base_port() -> u16 {
    // Four consecutive free ports (balancer, two servers, one added later).
    for _ in 0..100 {
        let base = fastchat_tests::free_port();
        if base < 60000
            && (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no four consecutive free ports");
}

/// A running `run_cluster.sh`, stopped (SIGTERM, then at most 30 s) if the test ends
/// before it stopped it: a failed check must not leave a cluster running.
struct Script(std::process::Child);

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            fastchat_tests::signal_and_wait(&mut self.0, libc::SIGTERM, Duration::from_secs(30));
        }
    }
}

#[test]
fn run_cluster_script_starts_everything_and_stops_on_sigterm() {
    let db = fastchat_tests::TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let port = free_base_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../run_cluster.sh");
    let mut script_run = Script(
        Command::new("bash")
            .arg(script)
            .args(["--servers", "2", "--port", &port.to_string(), "--data-dir"])
            .arg(dir.path())
            .env("FASTCHAT_DATABASE_URL", &db.url)
            .env("FASTCHAT_SKIP_BUILD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run_cluster.sh starts"),
    );
    let child = &mut script_run.0;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a READY line in time");
    assert_eq!(ready, format!("READY balancer=127.0.0.1:{port} servers=2"));

    let pid_of = |name: &str| -> i32 {
        let path = dir.path().join("run").join(format!("{name}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    };
    let mut pids: Vec<i32> = ["balancer", "server-1", "server-2"]
        .iter()
        .map(|name| pid_of(name))
        .collect();
    assert!(pids.iter().all(|&p| alive(p)));
    assert!(dir.path().join("logs/server-1.log").exists());

    // A client can use the cluster it started.
    let config = fastchat_client::ClientConfig::with_ca_file(
        format!("127.0.0.1:{port}"),
        &dir.path().join("ca.pem"),
    )
    .expect("run_cluster.sh wrote DIR/ca.pem");
    let client =
        fastchat_client::Client::connect(&config).expect("connect through the script's balancer");
    client.signup("zoe", "pw").expect("signup");
    drop(client);

    // --add-server asks the running script for one more server, which joins the mesh.
    let added = Command::new("bash")
        .arg(script)
        .arg("--add-server")
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run_cluster.sh --add-server runs");
    assert!(added.status.success(), "--add-server failed");
    assert_eq!(
        String::from_utf8_lossy(&added.stdout).trim(),
        format!("ADDED server=server-3 addr=127.0.0.1:{}", port + 3)
    );
    pids.push(pid_of("server-3"));
    fastchat_tests::wait_until("three meshed servers", Duration::from_secs(15), || {
        fastchat_client::balancer_status(&config)
            .map(|(servers, _)| servers.len() == 3 && servers.iter().all(|s| s.peers == 2))
            .unwrap_or(false)
    });

    // SAFETY: the pid of the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status =
        fastchat_tests::wait_for("run_cluster.sh to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
    assert!(
        status.success(),
        "run_cluster.sh exits 0 after SIGTERM: {status:?}"
    );
    fastchat_tests::wait_until("every process gone", Duration::from_secs(10), || {
        pids.iter().all(|&p| !alive(p))
    });
}
