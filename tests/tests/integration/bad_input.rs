//! Hostile or broken input to the balancer and the servers: an error where a reply is
//! possible, a closed connection where not, and every other client unharmed.

use crate::WAIT;
use fastchat_tests::{next_message, Cluster, RawConn};
use serde_json::json;

fn assert_error_then_close(conn: &mut RawConn, code: &str) {
    let frames = conn.recv_until_closed();
    assert!(
        frames.iter().any(|f| f["code"] == code),
        "expected an error {code} before the close, got {frames:?}"
    );
}

#[test]
fn garbage_to_a_server_leaves_the_cluster_serving() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let addr = cluster.servers[0].addr.clone();
    let ticket = cluster.ticket_signer().sign("server-1").unwrap();

    // A frame header announcing 4 GiB: refused before any allocation.
    let mut c = cluster.raw(&addr);
    c.send_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    assert_error_then_close(&mut c, "bad_frame");

    // Bytes that are not a frame at all (an HTTP request).
    let mut c = cluster.raw(&addr);
    c.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_error_then_close(&mut c, "bad_frame");

    // A frame that is not JSON, before the hello.
    let mut c = cluster.raw(&addr);
    c.send_frame(b"\x00\x01not json");
    assert_error_then_close(&mut c, "bad_json");

    // A request before the hello.
    let mut c = cluster.raw(&addr);
    c.send_json(&json!({"req": 5, "type": "login", "user": "alice", "password": "x"}));
    assert_error_then_close(&mut c, "bad_request");

    // After a good hello: bad JSON and unknown types get errors, the connection lives.
    let mut c = cluster.raw(&addr);
    c.send_json(&json!({"req": 1, "type": "hello", "version": 1, "ticket": ticket}));
    assert_eq!(c.recv().unwrap()["type"], "ok");
    c.send_frame(b"{{{{");
    assert_eq!(c.recv().unwrap()["code"], "bad_json");
    c.send_json(&json!({"req": 2, "type": "teleport"}));
    let reply = c.recv().unwrap();
    assert_eq!(
        (reply["code"].as_str(), reply["req"].as_u64()),
        (Some("bad_request"), Some(2))
    );
    c.send_json(&json!({"req": 3, "type": "send", "to": 7}));
    assert_eq!(c.recv().unwrap()["code"], "bad_request");
    c.send_json(&json!({"req": 4, "type": "send", "id": "x", "to": "bob", "body": "aGk="}));
    assert_eq!(c.recv().unwrap()["code"], "not_logged_in");
    c.send_json(&json!({"req": 5, "type": "ping"}));
    assert_eq!(c.recv().unwrap(), json!({"type": "ok", "req": 5}));
    // An oversized frame after the hello: error, then close.
    let mut big = vec![0u8; 4];
    big[..4].copy_from_slice(&(8u32 << 20).to_be_bytes());
    c.send_bytes(&big);
    assert_error_then_close(&mut c, "bad_frame");

    // A frame cut short, then silence: only that connection is affected.
    let mut c = cluster.raw(&addr);
    c.send_bytes(&[0, 0, 0, 100, b'{']);
    drop(c);

    // Everyone else is unharmed.
    let (_, h) = alice.send_text("bob", "still here");
    h.wait(WAIT).expect("send after garbage");
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "still here".into())
    );
}

#[test]
fn garbage_to_the_balancer_leaves_it_serving() {
    let cluster = Cluster::start(1);
    let mut c = cluster.raw(&cluster.balancer);
    c.send_bytes(&[0x7f, 0xff, 0xff, 0xff]);
    assert_error_then_close(&mut c, "bad_frame");

    let mut c = cluster.raw(&cluster.balancer);
    c.send_bytes(b"GET / HTTP/1.1\r\n\r\n");
    assert_error_then_close(&mut c, "bad_frame");

    let mut c = cluster.raw(&cluster.balancer);
    c.send_frame(b"nonsense");
    assert_error_then_close(&mut c, "bad_json");

    let mut c = cluster.raw(&cluster.balancer);
    c.send_json(&json!({"type": "assign"}));
    assert_error_then_close(&mut c, "bad_request");

    let mut c = cluster.raw(&cluster.balancer);
    c.send_json(&json!({"type": "hello", "version": 99}));
    assert_error_then_close(&mut c, "bad_version");

    let mut c = cluster.raw(&cluster.balancer);
    c.send_json(&json!({"type": "hello", "version": 1}));
    assert_eq!(c.recv().unwrap()["type"], "hello");
    c.send_json(&json!({"type": "juggle"}));
    assert_eq!(c.recv().unwrap()["code"], "bad_request");
    c.send_json(&json!({"type": "assign"}));
    assert_eq!(c.recv().unwrap()["type"], "assigned");

    // Real clients still get servers and can chat.
    let alice = cluster.user("alice", None);
    let bob = cluster.user("bob", None);
    let (_, h) = alice.send_text("bob", "ok?");
    h.wait(WAIT).unwrap();
    assert_eq!(next_message(&bob, WAIT), ("alice".into(), "ok?".into()));
}

/// A message PostgreSQL would refuse (a NUL byte in its id or JSON body) is refused with
/// `bad_request` when it comes in, so it never reaches the store's batch, where it
/// would have failed everyone's messages stored in the same transaction; a group whose
/// member list holds such a name gets `unknown_user`. The messages sent right behind it
/// are stored, and the connection serves on.
#[test]
fn a_message_the_database_would_refuse_is_refused_alone() {
    let cluster = Cluster::start(1);
    let bob = cluster.user("bob", None);
    bob.logout().unwrap();
    drop(bob);
    let mut rae = cluster.raw_user("rae", 0);
    let send = |req: u64, id: &str, body: &str| json!({"req": req, "type": "send", "id": id, "to": "bob", "body": body});
    // Written back to back, so that the good ones would share the bad ones' batch.
    rae.send_json(&send(2, "good-1", "aGk="));
    rae.send_json(&send(3, "nul\u{0}id", "aGk="));
    rae.send_json(&send(4, "good-2", "aGk="));
    rae.send_json(&send(5, "nul-body", "aGk\u{0}"));
    rae.send_json(&send(6, "good-3", "aGk="));
    rae.send_json(
        &json!({"req": 7, "type": "group_create", "group": "g", "members": ["bob", "x\u{0}y"]}),
    );
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < 6 {
        let frame = rae.recv().expect("every request answered");
        if let Some(req) = frame["req"].as_u64() {
            replies.insert(req, frame);
        }
    }
    for req in [2, 4, 6] {
        assert_eq!(replies[&req]["type"], "ok", "{:?}", replies[&req]);
        assert_eq!(
            replies[&req]["result"]["stored"], true,
            "{:?}",
            replies[&req]
        );
    }
    for req in [3, 5] {
        assert_eq!(replies[&req]["code"], "bad_request", "{:?}", replies[&req]);
    }
    assert_eq!(replies[&7]["code"], "unknown_user", "{:?}", replies[&7]);
    assert_eq!(cluster.pending_count(), 3);
    rae.send_json(&json!({"req": 8, "type": "ping"}));
    assert_eq!(rae.recv().unwrap(), json!({"type": "ok", "req": 8}));
}
