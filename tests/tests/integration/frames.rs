//! Binary frames through real servers: a body sent raw arrives byte for byte, across
//! the mesh raw to a reader of binary frames and as base64 to a reader of JSON only,
//! and out of storage (which keeps base64) as JSON; a body sent as base64 stays JSON;
//! the client library's binary sends reach a reader of JSON only; a malformed binary
//! frame is refused like any other bad request.

use crate::WAIT;
use fastchat_common::e2e::Envelope;
use fastchat_common::protocol::client::OkResult;
use fastchat_common::Blob;
use fastchat_tests::{Cluster, RawConn};
use serde_json::{json, Value};

/// A binary frame: marker, JSON length, the JSON, the body.
fn binary_frame(json: &Value, body: &[u8]) -> Vec<u8> {
    let json = json.to_string().into_bytes();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    frame.extend_from_slice(body);
    frame
}

/// A frame's JSON and, for a binary frame, its body.
fn split(frame: &[u8]) -> (Value, Option<Vec<u8>>) {
    if frame[0] != 0 {
        return (serde_json::from_slice(frame).expect("JSON"), None);
    }
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    let json = serde_json::from_slice(&frame[5..5 + len]).expect("JSON in a binary frame");
    (json, Some(frame[5 + len..].to_vec()))
}

/// The next `message` pushed to `conn`, acknowledged; frames of other kinds are skipped.
fn next_message(conn: &mut RawConn) -> (Value, Option<Vec<u8>>) {
    loop {
        let frame = conn.recv_frame().expect("the connection stays open");
        let (json, body) = split(&frame);
        if json["type"] == "message" {
            conn.send_json(&json!({"req": 0, "type": "ack", "tags": [json["tag"]]}));
            return (json, body);
        }
    }
}

/// The body of a JSON `message`, decoded.
fn base64_body(message: &Value) -> Vec<u8> {
    let text = message["body"].as_str().expect("a body in the JSON");
    Blob::from_base64(text.to_string())
        .to_bytes()
        .expect("base64")
}

/// The answer to request `req` (pushed frames and other answers before it are
/// skipped: only for a request with nothing else outstanding).
fn answer(conn: &mut RawConn, req: u64) -> Value {
    loop {
        let (json, _) = split(&conn.recv_frame().expect("the connection stays open"));
        if json["req"] == req && json["type"] != "message" {
            return json;
        }
    }
}

#[test]
fn a_raw_body_arrives_byte_for_byte_in_the_form_each_reader_reads() {
    let cluster = Cluster::start(2);
    // kim and lee read binary frames, jay JSON only; lee and jay are on the other
    // server, so kim's messages to them cross the mesh.
    let mut kim = cluster.raw_user_reading("kim", 0, true);
    let mut lee = cluster.raw_user_reading("lee", 1, true);
    let mut jay = cluster.raw_user_reading("jay", 1, false);
    // Offline from here on.
    drop(cluster.raw_user_reading("mo", 1, true));
    // Bytes JSON could not carry as they are: a zero, quotes, braces, invalid UTF-8.
    let body: Vec<u8> = [0u8, b'{', b'"', 0xff, b'}', b'\\']
        .iter()
        .copied()
        .cycle()
        .take(60_000)
        .collect();

    for (req, to) in [(10, "lee"), (11, "jay"), (12, "mo")] {
        kim.send_frame(&binary_frame(
            &json!({"req": req, "type": "send", "id": format!("b-{req}"), "to": to}),
            &body,
        ));
    }
    let (message, raw) = next_message(&mut lee);
    assert_eq!(
        (&message["from"], &message["id"], message.get("body")),
        (&json!("kim"), &json!("b-10"), None)
    );
    assert_eq!(raw.as_deref(), Some(&body[..]), "binary to lee, unchanged");
    let (message, raw) = next_message(&mut jay);
    assert_eq!(raw, None, "JSON to jay, who reads only JSON");
    assert_eq!(base64_body(&message), body);
    // Answered in whatever order the deliveries and the store end.
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let (json, _) = split(&kim.recv_frame().expect("the connection stays open"));
        if let Some(req) = json["req"].as_u64().filter(|_| json["type"] != "message") {
            answers.insert(
                req,
                (json["type"].clone(), json["result"]["stored"].clone()),
            );
        }
    }
    let ok = |stored: bool| (json!("ok"), json!(stored));
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        vec![(10, ok(false)), (11, ok(false)), (12, ok(true))]
    );

    // mo logs in: the stored copy comes out of the database intact, as the base64 text
    // the database keeps (binary reader or not).
    let mut mo = cluster.raw_hello(0, true);
    let password = fastchat_common::password::login_secret("mo", "mo-password");
    mo.send_json(&json!({"req": 1, "type": "login", "user": "mo", "password": password}));
    let (message, raw) = next_message(&mut mo);
    assert_eq!(raw, None, "JSON out of storage");
    assert_eq!(
        (message["id"].as_str(), base64_body(&message)),
        (Some("b-12"), body.clone())
    );

    // jay answers in JSON; kim, who reads binary, gets it as it was sent: JSON.
    jay.send_json(&json!({"req": 20, "type": "send", "id": "j-1", "to": "kim", "body": "AAEC"}));
    let (message, raw) = next_message(&mut kim);
    assert_eq!(raw, None, "a base64 body stays JSON");
    assert_eq!(base64_body(&message), vec![0, 1, 2]);
    assert_eq!(answer(&mut jay, 20)["type"], "ok");

    // Malformed binary frames: refused with the request's number, the connection lives.
    for (req, frame) in [
        // A kind that has no binary form.
        (30, binary_frame(&json!({"req": 30, "type": "ping"}), b"x")),
        // A body both in the JSON and after it.
        (
            31,
            binary_frame(
                &json!({"req": 31, "type": "send", "id": "b-31", "to": "lee", "body": "eA=="}),
                b"x",
            ),
        ),
    ] {
        kim.send_frame(&frame);
        let refused = answer(&mut kim, req);
        assert_eq!(refused["code"], "bad_request", "{refused}");
    }
    // A JSON length that overruns the frame: the frame is not JSON.
    kim.send_frame(&[0, 0, 0, 9, 9, b'{', b'}']);
    let refused = split(&kim.recv_frame().expect("an answer")).0;
    assert_eq!(refused["code"], "bad_json", "{refused}");
    kim.send_json(&json!({"req": 32, "type": "ping"}));
    assert_eq!(answer(&mut kim, 32)["type"], "ok");
}

#[test]
fn a_reader_of_json_only_gets_the_client_librarys_binary_sends_as_json() {
    let cluster = Cluster::start(2);
    let mut jay = cluster.raw_user_reading("jay", 0, false);
    let alice = cluster.user("alice", Some("server-2"));
    let (_, sent) = alice.send_text("jay", "hello, jay");
    // jay reads JSON only: the library's binary `send` reaches him as JSON, a sealed
    // envelope in base64.
    let (message, raw) = next_message(&mut jay);
    assert_eq!(raw, None);
    assert_eq!(message["from"], "alice");
    assert!(Envelope::parse(&base64_body(&message)).is_ok());
    match sent.wait(WAIT) {
        Ok(Some(OkResult::Sent { stored, .. })) => assert!(!stored),
        other => panic!("alice's send: {other:?}"),
    }
}
