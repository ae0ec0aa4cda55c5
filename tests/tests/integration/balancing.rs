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
    // The balancer counts each client it sent exactly once: in a server's heartbeat
    // when the heartbeat lists the client's ticket, on top of it otherwise. So however
    // the hellos and the heartbeats interleave, the counts are exact.
    let cluster = cluster_with("least-connections");
    let (mut clients, per_server) = connect_many(&cluster, 30);
    let even: HashMap<String, usize> = (1..=3).map(|i| (format!("server-{i}"), 10)).collect();
    assert_eq!(per_server, even, "a burst of 30 spreads evenly");
    let counts = wait_reported_total(&cluster, 30);
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");

    // Uneven disconnects: 6 leave server-1, 2 leave server-2.
    for (server, leaving) in [("server-1", 6), ("server-2", 2)] {
        for _ in 0..leaving {
            let i = clients.iter().position(|c| c.server() == server).unwrap();
            clients.swap_remove(i).close();
        }
    }
    wait_reported_total(&cluster, 22);

    // The next 8 fill the gaps (4 and 8 against 10): server-1 gets 6 (4 alone, then
    // every other one with server-2), server-2 gets 2, server-3 none.
    let (_more, per_server) = connect_many(&cluster, 8);
    let got = |server: &str| per_server.get(server).copied().unwrap_or(0);
    assert_eq!(
        (got("server-1"), got("server-2"), got("server-3")),
        (6, 2, 0),
        "{per_server:?}"
    );
    let counts = wait_reported_total(&cluster, 30);
    assert!(
        counts.values().all(|&n| n == 10),
        "back to even: {counts:?}"
    );
}

#[test]
fn least_connections_counts_a_client_whose_hello_came_after_the_heartbeat() {
    // The race, made certain: a trigger freezes each server's client count and ticket
    // list as they are (0, none) while the heartbeats go on, as if every heartbeat had
    // been written just before the hello below. Each heartbeat adds one to `load`, so
    // the balancer's status shows when it has read one written after the assignment.
    let cluster = cluster_with("least-connections");
    wait_reported_total(&cluster, 0);
    cluster
        .db
        .connect()
        .batch_execute(
            "CREATE FUNCTION freeze_counts() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN
                     NEW.clients := OLD.clients;
                     NEW.recent_tickets := OLD.recent_tickets;
                     NEW.load := OLD.load + 1;
                     RETURN NEW;
                 END $$;
             CREATE TRIGGER freeze_counts BEFORE UPDATE ON servers
                 FOR EACH ROW EXECUTE FUNCTION freeze_counts();",
        )
        .expect("freeze the counts");
    let config = cluster.config();
    let load_of = |server: &str| -> f32 {
        let (servers, _) = balancer_status(&config).expect("status");
        servers
            .iter()
            .find(|s| s.name == server)
            .expect("listed")
            .load
    };
    let first = fastchat_client::ask_balancer(&config).expect("an assignment");
    let load = load_of(&first.server);
    let mut conn = cluster.raw(&first.addr);
    conn.send_json(&json!({"req": 1, "type": "hello", "version": 1, "ticket": first.ticket}));
    assert_eq!(conn.recv().expect("hello answered")["type"], "ok");
    wait_for("two heartbeats after the assignment", WAIT, || {
        (load_of(&first.server) >= load + 2.0).then_some(())
    });
    // Its heartbeats say 0 clients, and list no ticket: the first client is still
    // counted, so the next goes elsewhere.
    let second = fastchat_client::ask_balancer(&config).expect("an assignment");
    assert_ne!(second.server, first.server);
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
