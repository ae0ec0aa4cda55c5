//! TLS on every link: clients trust only the cluster CA, and only holders of a cluster
//! certificate join the mesh.

use crate::WAIT;
use fastchat_client::{balancer_status, Client, ClientConfig, ErrorCode};
use fastchat_tests::{make_pki, wait_until, Cluster};
use std::time::Duration;

#[test]
fn a_client_that_does_not_trust_the_cluster_ca_refuses_to_connect() {
    let cluster = Cluster::start(1);
    let elsewhere = tempfile::tempdir().unwrap();
    make_pki(elsewhere.path(), &[]);
    let config =
        ClientConfig::with_ca_file(cluster.balancer.clone(), &elsewhere.path().join("ca.pem"))
            .unwrap();
    let err = Client::connect(&config).err().expect("connection refused");
    assert_eq!(err.code, ErrorCode::UntrustedServer, "{err}");

    // The same through the terminal program: a clear error with the stable code.
    let out = std::process::Command::new(fastchat_tests::bin("fastchat"))
        .args(["--json", "--balancer", &cluster.balancer, "--ca"])
        .arg(elsewhere.path().join("ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"untrusted_server\""), "{stdout}");

    // The cluster's own CA works (the control case).
    let client = Client::connect(&cluster.config()).expect("trusted");
    client.signup("ann", "ann-password").expect("signup");
}

#[test]
fn a_server_without_a_cluster_certificate_cannot_join_the_mesh() {
    let mut cluster = Cluster::start(2);
    // Same database and ticket key, but certificates from a CA of its own.
    let rogue_tls = tempfile::tempdir().unwrap();
    make_pki(rogue_tls.path(), &["server-9"]);
    cluster.spawn_server("server-9", rogue_tls.path());

    // It registers (it has the database), and it dials both members...
    let config = cluster.config();
    wait_until("the rogue server to register", WAIT, || {
        balancer_status(&config)
            .map(|(servers, _)| servers.iter().any(|s| s.name == "server-9"))
            .unwrap_or(false)
    });
    wait_until("both members to refuse its handshake", WAIT, || {
        cluster.log("server-1").contains("refused") && cluster.log("server-2").contains("refused")
    });
    // ...and is linked to nobody, a few heartbeats later too.
    std::thread::sleep(Duration::from_secs(2));
    let (servers, _) = balancer_status(&config).unwrap();
    for s in &servers {
        let expected = if s.name == "server-9" { 0 } else { 1 };
        assert_eq!(s.peers, expected, "{} has {} mesh links", s.name, s.peers);
    }

    // The members still talk to each other.
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    alice.send_text("bob", "still meshed").1.wait(WAIT).unwrap();
    let (from, text) = fastchat_tests::next_message(&bob, WAIT);
    assert_eq!((from.as_str(), text.as_str()), ("alice", "still meshed"));
}
