//! Servers joining a running cluster, and a server killed without warning.

use crate::WAIT;
use fastchat_client::{balancer_status, Event};
use fastchat_tests::{next_message, sent_stored, wait_event, wait_until, Cluster};
use std::time::Duration;

#[test]
fn a_server_added_to_a_running_cluster_gets_clients_and_exchanges_messages() {
    let mut cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let name = cluster.add_server();
    assert_eq!(name, "server-3");
    // The balancer assigns it (client_on connects until it is chosen)...
    let carol = cluster.user("carol", Some("server-3"));
    // ...and the mesh routes both ways.
    alice.send_text("carol", "welcome").1.wait(WAIT).unwrap();
    assert_eq!(
        next_message(&carol, WAIT),
        ("alice".into(), "welcome".into())
    );
    carol.send_text("alice", "thanks").1.wait(WAIT).unwrap();
    assert_eq!(
        next_message(&alice, WAIT),
        ("carol".into(), "thanks".into())
    );
}

#[test]
fn a_killed_server_is_noticed_by_heartbeat_and_its_users_messages_are_stored() {
    let mut cluster = Cluster::start(3);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    // dave is on server-2 through a hand-made connection, which does not reconnect.
    let _dave = cluster.raw_user("dave", 1);

    assert!(
        cluster.signal_server(1, libc::SIGKILL, WAIT),
        "server-2 killed"
    );
    // Heartbeats are 3 s stale at most; the balancer re-reads every 250 ms.
    let config = cluster.config();
    wait_until(
        "the balancer to drop server-2",
        Duration::from_millis(4500),
        || {
            balancer_status(&config)
                .map(|(servers, _)| servers.iter().all(|s| s.name != "server-2"))
                .unwrap_or(false)
        },
    );
    for _ in 0..30 {
        let c = fastchat_client::Client::connect(&config).unwrap();
        assert_ne!(c.server(), "server-2", "a dead server was assigned");
    }
    // dave is offline for the survivors: a message to him is stored, not lost.
    assert!(sent_stored(alice.send_text("dave", "after").1.wait(WAIT)));
    assert_eq!(cluster.pending_count(), 1);
    // bob's client reconnected elsewhere by itself and still gets messages.
    let server = wait_event(&bob, WAIT, "bob to reconnect", |e| match e {
        Event::Reconnected { server } => Some(server),
        _ => None,
    });
    assert_ne!(server, "server-2");
    alice.send_text("bob", "still there?").1.wait(WAIT).unwrap();
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "still there?".into())
    );
    // When dave comes back, he gets his.
    let dave = cluster.client();
    dave.login("dave", "dave-password").unwrap();
    assert_eq!(next_message(&dave, WAIT), ("alice".into(), "after".into()));
}
