//! Sign-up, login, logout and their refusals; a second login replacing the first.

use crate::WAIT;
use fastchat_client::{ErrorCode, Event, OkResult};
use fastchat_tests::{wait_event, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

fn code(reply: fastchat_client::Reply) -> ErrorCode {
    reply.expect_err("expected a refusal").code
}

#[test]
fn signup_and_login_refusals_have_stable_codes() {
    let cluster = Cluster::start(1);
    let c = cluster.client();
    assert_eq!(code(c.signup("bad name", "pw")), ErrorCode::BadName);
    assert_eq!(code(c.signup("", "pw")), ErrorCode::BadName);
    assert_eq!(code(c.signup(&"x".repeat(33), "pw")), ErrorCode::BadName);
    assert_eq!(code(c.signup("../etc", "pw")), ErrorCode::BadName);
    assert_eq!(code(c.signup("carol", "")), ErrorCode::BadPassword);
    let (_, h) = c.send_text("carol", "hi");
    assert_eq!(code(h.wait(WAIT)), ErrorCode::NotLoggedIn);
    assert_eq!(code(c.logout()), ErrorCode::NotLoggedIn);

    assert!(matches!(
        c.signup("carol", "secret"),
        Ok(Some(OkResult::Session { user, .. })) if user == "carol"
    ));
    assert_eq!(code(c.signup("dave", "pw")), ErrorCode::AlreadyLoggedIn);
    c.logout().expect("logout");

    let other = cluster.client();
    assert_eq!(code(other.signup("carol", "another")), ErrorCode::NameTaken);
    // Unknown user and wrong password get the same answer.
    assert_eq!(code(other.login("carol", "wrong")), ErrorCode::BadPassword);
    assert_eq!(
        code(other.login("nobody", "secret")),
        ErrorCode::BadPassword
    );
    other
        .login("carol", "secret")
        .expect("login with the right password");
    let (_, h) = other.send_text("nobody", "hello?");
    assert_eq!(code(h.wait(WAIT)), ErrorCode::UnknownUser);
    let (_, h) = other.send_text("carol", &"x".repeat(64 * 1024 + 1));
    assert_eq!(code(h.wait(WAIT)), ErrorCode::TooLarge);
}

#[test]
fn passwords_are_stored_as_salted_scrypt_hashes() {
    let cluster = Cluster::start(1);
    cluster.user("erin", None);
    let mut db = cluster.db.connect();
    let hash: String = db
        .query_one("SELECT password_hash FROM users WHERE name = 'erin'", &[])
        .unwrap()
        .get(0);
    assert!(hash.starts_with("scrypt$"), "{hash}");
    assert!(!hash.contains("erin-password"));
}

#[test]
fn a_second_login_replaces_the_first_session() {
    let cluster = Cluster::start(2);
    let first = cluster.user("frank", Some("server-1"));
    let second = cluster.client_on("server-2");
    second
        .login("frank", "frank-password")
        .expect("second login");
    wait_event(&first, WAIT, "session_replaced", |e| {
        matches!(e, Event::SessionReplaced).then_some(())
    });
    wait_event(&first, WAIT, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    });
    // Messages now reach the new session.
    let sender = cluster.user("gina", Some("server-1"));
    let (_, h) = sender.send_text("frank", "to the new session");
    h.wait(WAIT).expect("send");
    let (from, text) = fastchat_tests::next_message(&second, WAIT);
    assert_eq!(
        (from.as_str(), text.as_str()),
        ("gina", "to the new session")
    );

    // The same on one server.
    let third = cluster.client_on("server-2");
    third.login("frank", "frank-password").expect("third login");
    wait_event(&second, WAIT, "session_replaced", |e| {
        matches!(e, Event::SessionReplaced).then_some(())
    });
}

/// A statement that runs past the pool's statement timeout (`--db-statement-timeout`,
/// 1 s here) is cancelled by the database and answered `unavailable`, which a client
/// may retry; the retry succeeds once the database is free again.
#[test]
fn a_statement_past_the_timeout_is_answered_unavailable_and_a_retry_succeeds() {
    let cluster = Cluster::start_with(ClusterOptions {
        servers: 1,
        server_args: vec!["--db-statement-timeout".into(), "1".into()],
        ..Default::default()
    });
    let mut db = cluster.db.connect();
    let mut lock = db.transaction().unwrap();
    // Reads of users go on; the sign-up's insert waits, past the timeout.
    lock.batch_execute("LOCK TABLE users IN EXCLUSIVE MODE")
        .unwrap();
    let client = cluster.client();
    let started = Instant::now();
    let refused = client.signup("dora", "dora-password");
    assert_eq!(code(refused), ErrorCode::Unavailable);
    // The 1 s bound ended it, not the 30 s default nor anything before the timeout.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    lock.commit().unwrap();
    client.signup("dora", "dora-password").unwrap();
}
