//! The mesh seen by a hand-driven peer: a process holding a cluster certificate that
//! speaks the peer protocol frame by frame, to put on the wire what a real server only
//! sends in a race.

use crate::WAIT;
use fastchat_client::Event;
use fastchat_common::protocol::now_millis;
use fastchat_tests::{make_pki, wait_event, Cluster, RawConn};
use serde_json::{json, Value};

/// The next frame of `kind` from the peer link, skipping others (fences, presence...).
fn next_of(peer: &mut RawConn, kind: &str) -> Value {
    peer.recv_until(|frame| frame["type"] == kind)
}

/// A peer routed a message to a session of its recipient that has since been replaced
/// (a newer login on the receiver): the receiver answers `not_delivered`, so the sender
/// stores it behind whatever older messages that session left unacknowledged, instead
/// of pushing it into the newer session ahead of them. One routed to the current
/// session is pushed, and the recipient's acknowledgement comes back as `delivered`.
#[test]
fn a_peer_delivery_meant_for_another_session_is_answered_not_delivered() {
    let cluster = Cluster::start(1);
    let _bob = cluster.user("bob", Some("server-1"));
    let alice = cluster.user("alice", Some("server-1"));
    let tls_dir = cluster.tls_dir();
    make_pki(&tls_dir, &["server-9"]);
    let peer_addr: String = cluster
        .db
        .connect()
        .query_one("SELECT peer_addr FROM servers WHERE name = 'server-1'", &[])
        .unwrap()
        .get(0);

    let mut peer = RawConn::connect_as_peer(&peer_addr, &tls_dir, "server-9");
    peer.send_json(&json!({"type": "hello", "version": 1, "server": "server-9", "incarnation": 1}));
    assert_eq!(next_of(&mut peer, "hello")["server"], "server-1");
    let snapshot = next_of(&mut peer, "snapshot");
    let users = snapshot["users"].as_array().expect("users");
    let at = users
        .iter()
        .position(|u| u == "alice")
        .expect("alice listed");
    let session = snapshot["sessions"][at].as_u64().expect("alice's session");

    let deliver = |token: u64, session: u64| {
        json!({
            "type": "deliver", "token": token, "id": format!("m{token}"), "from": "bob",
            "to": "alice", "body": "eA==", "sent_at": now_millis(), "session": session,
        })
    };
    peer.send_json(&deliver(1, session + 1000));
    assert_eq!(next_of(&mut peer, "not_delivered")["token"], 1);

    peer.send_json(&deliver(2, session));
    // The body is not a sealed envelope: the client reports it, and acknowledges it.
    let id = wait_event(
        &alice,
        WAIT,
        "the message meant for this session",
        |e| match e {
            Event::Undecryptable { id, .. } => Some(id),
            _ => None,
        },
    );
    assert_eq!(id, "m2", "m1 must not have been pushed");
    assert_eq!(next_of(&mut peer, "delivered")["token"], 2);
}
