//! The balancer's strategies, each on a real 3-server cluster: how connections through
//! the balancer spread, and how the load-aware ones steer away from a loaded server.

use crate::WAIT;
use fastchat_client::{balancer_status, Client};
use fastchat_tests::{wait_for, Cluster, ClusterOptions, RawConn};
use serde_json::json;
use std::collections::HashMap;

fn cluster_with(strategy: &str) -> Cluster {
    Cluster::start_with(ClusterOptions {
        servers: 3,
        strategy: strategy.into(),
        ..Default::default()
    })
}

/// Connects `n` clients through the balancer; returns them and how many each server got.
fn connect_many(cluster: &Cluster, n: usize) -> (Vec<Client>, HashMap<String, usize>) {
    let config = cluster.config();
    let mut per_server = HashMap::new();
    let clients: Vec<Client> = (0..n)
        .map(|_| {
            let c = Client::connect(&config).expect("connect through the balancer");
            *per_server.entry(c.server().to_string()).or_default() += 1;
            c
        })
        .collect();
    (clients, per_server)
}

/// The client counts the balancer last heard from each server, by name.
fn reported(cluster: &Cluster) -> HashMap<String, i32> {
    let (servers, _) = balancer_status(&cluster.config()).expect("status");
    servers.into_iter().map(|s| (s.name, s.clients)).collect()
}

/// Waits until the heartbeats report `expected` clients in total.
fn wait_reported_total(cluster: &Cluster, expected: i32) -> HashMap<String, i32> {
    wait_for(&format!("{expected} clients reported"), WAIT, || {
        let counts = reported(cluster);
        (counts.values().sum::<i32>() == expected).then_some(counts)
    })
}

/// Holds `n` connections on server `index` that did not come through the balancer (a
/// server with clients of its own): TLS, a hello with a valid ticket, then idle.
fn load_server(cluster: &Cluster, index: usize, n: usize) -> Vec<RawConn> {
    let server = &cluster.servers[index];
    let signer = cluster.ticket_signer();
    (0..n)
        .map(|i| {
            let mut conn = cluster.raw(&server.addr);
            let ticket = signer.sign(&server.name).unwrap();
            conn.send_json(&json!({"req": i, "type": "hello", "version": 1, "ticket": ticket}));
            assert_eq!(conn.recv().expect("hello answered")["type"], "ok");
            conn
        })
        .collect()
}

#[test]
fn round_robin_spreads_300_connections_within_one() {
    let cluster = cluster_with("round-robin");
    let (_clients, per_server) = connect_many(&cluster, 300);
    let counts: Vec<usize> = per_server.values().copied().collect();
    assert_eq!(counts.len(), 3, "{per_server:?}");
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "{per_server:?}");
}

#[test]
fn random_reaches_every_server() {
    let cluster = cluster_with("random");
    let (_clients, per_server) = connect_many(&cluster, 300);
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    // 100 expected each; 60 is about five standard deviations below.
    assert!(per_server.values().all(|&n| n >= 60), "{per_server:?}");
}

#[test]
fn least_connections_evens_out_after_uneven_disconnects() {
    // A client sent to a server just before its heartbeat but connected just after it
    // is counted by neither (ARCHITECTURE.md, "Not yet"): on a loaded machine one
    // client of a burst can land one off. Every check below allows that one and no
    // more.
    let spread = |counts: &HashMap<String, i32>| {
        counts.values().max().unwrap() - counts.values().min().unwrap()
    };
    let cluster = cluster_with("least-connections");
    let (mut clients, _) = connect_many(&cluster, 30);
    let counts = wait_reported_total(&cluster, 30);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        spread(&counts) <= 2,
        "a burst of 30 spreads evenly: {counts:?}"
    );

    // Uneven disconnects: 6 leave server-1, 2 leave server-2.
    for (server, leaving) in [("server-1", 6), ("server-2", 2)] {
        for _ in 0..leaving {
            let i = clients.iter().position(|c| c.server() == server).unwrap();
            clients.swap_remove(i).close();
        }
    }
    let before = counts;
    let counts = wait_reported_total(&cluster, 22);
    assert_eq!(
        (counts["server-1"], counts["server-2"], counts["server-3"]),
        (
            before["server-1"] - 6,
            before["server-2"] - 2,
            before["server-3"]
        )
    );

    // The next 8 fill the gaps: most go to server-1, which lost the most, and
    // server-3, which lost none, gets none (one, if the race above struck).
    let (_more, per_server) = connect_many(&cluster, 8);
    let got = |server: &str| per_server.get(server).copied().unwrap_or(0);
    assert!(
        got("server-1") > got("server-2") && got("server-3") <= 1,
        "{per_server:?}"
    );
    let counts = wait_reported_total(&cluster, 30);
    assert!(spread(&counts) <= 2, "back to even: {counts:?}");
}

/// Loads server-1 with 60 clients of its own, then connects 60 through the balancer:
/// returns how many of those the loaded server got.
fn share_of_a_loaded_server(strategy: &str) -> HashMap<String, usize> {
    let cluster = cluster_with(strategy);
    let _held = load_server(&cluster, 0, 60);
    wait_for("server-1's load to be reported", WAIT, || {
        (reported(&cluster).get("server-1") == Some(&60)).then_some(())
    });
    let (_clients, per_server) = connect_many(&cluster, 60);
    per_server
}

#[test]
fn power_of_two_steers_away_from_a_loaded_server() {
    let per_server = share_of_a_loaded_server("power-of-two");
    // Compared with a less loaded server every time, server-1 never wins.
    assert_eq!(per_server.get("server-1"), None, "{per_server:?}");
    assert_eq!(per_server.values().sum::<usize>(), 60);
}

#[test]
fn weighted_steers_away_from_a_loaded_server() {
    let per_server = share_of_a_loaded_server("weighted");
    // Weight 1/61 against 1/(1+k) for k <= 30: a few percent at most; 15 is far out.
    let loaded = per_server.get("server-1").copied().unwrap_or(0);
    assert!(loaded <= 15, "{per_server:?}");
    assert!(
        per_server.get("server-2").copied().unwrap_or(0) >= 20
            && per_server.get("server-3").copied().unwrap_or(0) >= 20,
        "{per_server:?}"
    );
}
