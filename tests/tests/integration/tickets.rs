//! Tickets: a server accepts a client only with a valid, unexpired ticket naming it.

use fastchat_common::protocol::now_millis;
use fastchat_common::ticket::{generate_ticket_keys, Ticket, TicketSigner};
use fastchat_tests::Cluster;
use serde_json::json;

/// Says hello with `ticket` to `addr`; returns the frames until the server closes.
fn hello_refused(cluster: &Cluster, addr: &str, ticket: &Ticket) -> Vec<serde_json::Value> {
    let mut conn = cluster.raw(addr);
    conn.send_json(&json!({"req": 1, "type": "hello", "version": 1, "ticket": ticket}));
    conn.recv_until_closed()
}

fn assert_bad_ticket(frames: &[serde_json::Value]) {
    assert_eq!(
        frames.len(),
        1,
        "one error, then the connection closes: {frames:?}"
    );
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], "bad_ticket");
    assert_eq!(frames[0]["req"], 1);
}

#[test]
fn forged_expired_and_misdirected_tickets_are_refused() {
    let cluster = Cluster::start(2);
    let addr = &cluster.servers[0].addr;
    let signer = cluster.ticket_signer();

    // A good ticket is accepted (the control case).
    let mut conn = cluster.raw(addr);
    let good = signer.sign("server-1").unwrap();
    conn.send_json(&json!({"req": 1, "type": "hello", "version": 1, "ticket": good}));
    let reply = conn.recv().expect("hello answered");
    assert_eq!(reply["type"], "ok", "{reply}");

    // Tampered: the server name changed after signing.
    let mut forged = signer.sign("server-2").unwrap();
    forged.server = "server-1".into();
    assert_bad_ticket(&hello_refused(&cluster, addr, &forged));

    // Signed with a key that is not the balancer's.
    let (other_key, _) = generate_ticket_keys().unwrap();
    let stranger = TicketSigner::from_pem(&other_key).unwrap();
    assert_bad_ticket(&hello_refused(
        &cluster,
        addr,
        &stranger.sign("server-1").unwrap(),
    ));

    // Expired.
    let expired = signer
        .sign_with_expiry("server-1", now_millis() - 1000)
        .unwrap();
    assert_bad_ticket(&hello_refused(&cluster, addr, &expired));

    // Another server's ticket.
    assert_bad_ticket(&hello_refused(
        &cluster,
        addr,
        &signer.sign("server-2").unwrap(),
    ));

    // Garbage signature.
    let mut garbage = signer.sign("server-1").unwrap();
    garbage.sig = "not base64 at all!".into();
    assert_bad_ticket(&hello_refused(&cluster, addr, &garbage));
}
