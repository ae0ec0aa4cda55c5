//! A client that stops reading: it is cut off once its bounded queue is full, nobody
//! else waits for it, and what it missed is stored for its return.

use crate::WAIT;
use fastchat_client::OkResult;
use fastchat_common::password::login_secret;
use fastchat_tests::{next_message, wait_until, Cluster};

/// Messages of about 60 KB: 400 of them are far more than the socket buffers and the
/// server's 8 MiB per-client queue together.
const FLOOD: usize = 400;

#[test]
fn a_client_that_stops_reading_is_cut_off_without_delaying_anyone_and_loses_nothing() {
    let cluster = Cluster::start(2);
    // sloth logs in by hand on server-1, then never reads again.
    let _sloth = cluster.raw_user("sloth", 0);

    let alice = cluster.user("alice", Some("server-2"));
    let bob = cluster.user("bob", Some("server-1"));
    let carol = cluster.user("carol", Some("server-2"));

    let flood = std::thread::spawn(move || {
        let handles: Vec<_> = (0..FLOOD)
            .map(|i| {
                alice
                    .send_text("sloth", &format!("{i:05} {}", "z".repeat(60_000)))
                    .1
            })
            .collect();
        let mut stored = 0;
        for h in handles {
            match h.wait(WAIT * 4) {
                Ok(Some(OkResult::Sent { stored: s, .. })) => stored += usize::from(s),
                other => panic!("a message to sloth was not accepted: {other:?}"),
            }
        }
        (alice, stored)
    });

    // While sloth's queue fills and it is cut off, bob (on sloth's server) keeps
    // getting carol's messages, each within the usual bounded wait.
    for i in 0..20 {
        carol
            .send_text("bob", &format!("note {i}"))
            .1
            .wait(WAIT)
            .unwrap();
        assert_eq!(
            next_message(&bob, WAIT),
            ("carol".into(), format!("note {i}"))
        );
    }

    let (_alice, stored) = flood.join().unwrap();
    assert!(stored > 0, "sloth never read, so messages were stored");
    wait_until("server-1 to cut the slow consumer", WAIT, || {
        cluster.log("server-1").contains("closing slow consumer")
    });

    // sloth comes back with a real client: everything arrives, in order, once.
    let sloth = cluster.client_on("server-2");
    sloth.login("sloth", "sloth-password").unwrap();
    for i in 0..FLOOD {
        let (from, text) = next_message(&sloth, WAIT);
        assert_eq!(from, "alice");
        assert_eq!(&text[..5], format!("{i:05}"), "message {i} out of order");
    }
    wait_until("every stored message to be acknowledged", WAIT, || {
        cluster.pending_count() == 0
    });
}

/// Two users who log in to a large backlog and then do not read: once each one's queue
/// stays full, its fetch moves to a thread of its own, so a third login on the same
/// server (which has two shared fetchers) gets its stored messages at once, while the
/// two are still connected, and not when they are cut off 10 s later.
#[test]
fn logins_that_do_not_read_their_backlog_do_not_hold_up_anyone_elses() {
    let cluster = Cluster::start(1);
    let alice = cluster.user("alice", None);
    for name in ["sloth1", "sloth2", "carol"] {
        cluster.user(name, None).logout().unwrap();
    }
    let stored = |to: &str, text: String| {
        let reply = alice.send_text(to, &text).1.wait(WAIT * 4);
        assert!(
            matches!(reply, Ok(Some(OkResult::Sent { stored: true, .. }))),
            "{reply:?}"
        );
    };
    for sloth in ["sloth1", "sloth2"] {
        for i in 0..FLOOD {
            stored(sloth, format!("{i:05} {}", "z".repeat(60_000)));
        }
    }
    for i in 0..3 {
        stored("carol", format!("stored {i}"));
    }
    let _sloths: Vec<_> = ["sloth1", "sloth2"]
        .into_iter()
        .map(|user| {
            let mut conn = cluster.raw_hello(0, false);
            conn.send_json(&serde_json::json!({
                "req": 1, "type": "login", "user": user,
                "password": login_secret(user, &format!("{user}-password")),
            }));
            conn.recv_until(|f| f["type"] == "ok" && f["req"] == 1);
            conn
        })
        .collect();
    wait_until(
        "both sloths' fetches to move off the shared fetchers",
        WAIT,
        || {
            cluster
                .log("server-1")
                .matches("fetching on a thread of its own")
                .count()
                == 2
        },
    );

    let carol = cluster.client();
    carol.login("carol", "carol-password").unwrap();
    for i in 0..3 {
        assert_eq!(
            next_message(&carol, WAIT),
            ("alice".into(), format!("stored {i}"))
        );
    }
    assert!(
        !cluster
            .log("server-1")
            .contains("no room for stored messages, closing"),
        "carol's messages came only once a sloth was cut off"
    );
}

/// A client that reads every message but never acknowledges one: each is kept in
/// flight, so past 64 MiB not acknowledged its session is closed like a slow
/// consumer's, what it had is stored, and it all arrives, in order, at its next login.
#[test]
fn a_client_that_reads_but_never_acknowledges_is_cut_off_and_loses_nothing() {
    /// Messages of about 60 KB: 1,300 are about 78 MB, past the 64 MiB allowed.
    const MANY: usize = 1_300;
    let cluster = Cluster::start(1);
    let mut rae = cluster.raw_user("rae", 0);
    let reader = std::thread::spawn(move || {
        let mut messages = 0;
        while let Some(frame) = rae.recv_frame() {
            messages += usize::from(frame.windows(9).any(|w| w == b"\"message\""));
        }
        messages
    });
    let alice = cluster.user("alice", None);
    let handles: Vec<_> = (0..MANY)
        .map(|i| {
            alice
                .send_text("rae", &format!("{i:05} {}", "z".repeat(60_000)))
                .1
        })
        .collect();
    for h in handles {
        assert!(
            matches!(h.wait(WAIT * 4), Ok(Some(OkResult::Sent { .. }))),
            "every message to rae is accepted"
        );
    }
    let seen = reader.join().unwrap();
    assert!(
        seen > 0 && seen < MANY,
        "rae was cut off after {seen} messages"
    );
    assert!(cluster
        .log("server-1")
        .contains("not acknowledged, closing"));

    let rae = cluster.client();
    rae.login("rae", "rae-password").unwrap();
    for i in 0..MANY {
        let (from, text) = next_message(&rae, WAIT);
        assert_eq!(from, "alice");
        assert_eq!(&text[..5], format!("{i:05}"), "message {i} out of order");
    }
}
