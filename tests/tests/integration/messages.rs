//! Direct messages: same server, across servers, offline in order, deletion after ack.

use crate::WAIT;
use fastchat_client::{Client, Event};
use fastchat_tests::{next_message, sent_stored, wait_until, Cluster};
use std::time::Duration;

#[test]
fn direct_message_on_the_same_server() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-1"));
    let (_, h) = alice.send_text("bob", "hello bob");
    assert!(
        !sent_stored(h.wait(WAIT)),
        "bob is online: delivered, not stored"
    );
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "hello bob".into())
    );
    let (_, h) = bob.send_text("alice", "hi alice");
    h.wait(WAIT).unwrap();
    assert_eq!(
        next_message(&alice, WAIT),
        ("bob".into(), "hi alice".into())
    );
    assert_eq!(cluster.pending_count(), 0);
}

#[test]
fn direct_message_across_servers_keeps_order() {
    let cluster = Cluster::start(3);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-3"));
    let handles: Vec<_> = (0..200)
        .map(|i| alice.send_text("bob", &format!("message {i}")).1)
        .collect();
    for h in handles {
        assert!(!sent_stored(h.wait(WAIT)));
    }
    for i in 0..200 {
        assert_eq!(
            next_message(&bob, WAIT),
            ("alice".into(), format!("message {i}"))
        );
    }
    // An idle client gets a push at once, with nothing sent from its side.
    let (_, h) = bob.send_text("alice", "pong");
    h.wait(WAIT).unwrap();
    assert_eq!(next_message(&alice, WAIT), ("bob".into(), "pong".into()));
}

#[test]
fn lone_messages_and_bursts_from_one_sender_arrive_in_order() {
    // A message sent alone is written by the sending thread, one of a burst goes
    // through the link's writer thread (`client/src/link.rs`, `LinkOut`): in turn here,
    // with large messages among them (each round opens with one, after a pause). Which
    // path each frame takes, and that a lone one never overtakes a queued one, the unit
    // tests in `link.rs` show; this shows both together, end to end, across servers.
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let text = |round: usize, i: usize| {
        let label = format!("{round}.{i}");
        match i % 10 {
            0 => format!("{label} {}", "x".repeat(60_000)),
            _ => label,
        }
    };
    let mut handles = Vec::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(60));
        for i in 0..40 {
            handles.push(alice.send_text("bob", &text(round, i)).1);
        }
    }
    for h in handles {
        h.wait(WAIT).expect("sent");
    }
    for round in 0..5 {
        for i in 0..40 {
            assert_eq!(next_message(&bob, WAIT), ("alice".into(), text(round, i)));
        }
    }
}

#[test]
fn an_event_handler_gets_the_events_on_the_clients_thread_and_the_channel_stays_empty() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let (tx, got) = crossbeam_channel::unbounded();
    let config = cluster.config().with_event_handler(move |event| {
        let _ = tx.send((std::thread::current().name().map(String::from), event));
    });
    let bob = fastchat_client::Client::connect(&config).unwrap();
    bob.signup("bob", "bob-password").unwrap();
    for i in 0..3 {
        alice
            .send_text("bob", &format!("m{i}"))
            .1
            .wait(WAIT)
            .unwrap();
    }
    for i in 0..3 {
        let (thread, event) = got.recv_timeout(WAIT).expect("an event");
        match event {
            Event::Message { from, text, .. } => {
                assert_eq!((from.as_str(), text), ("alice", format!("m{i}")))
            }
            other => panic!("not a message: {other:?}"),
        }
        // Handed over by the client's own thread (its reader, or its inbox thread while
        // a key is fetched), not queued for another one.
        assert!(
            matches!(
                thread.as_deref(),
                Some("fastchat-reader" | "fastchat-inbox")
            ),
            "{thread:?}"
        );
    }
    // Bob's requests still work, his own delivery report comes through the handler
    // too, and nothing went to the channel.
    let (back, h) = bob.send_text("alice", "back");
    h.wait(WAIT).unwrap();
    assert_eq!(next_message(&alice, WAIT), ("bob".into(), "back".into()));
    match got.recv_timeout(WAIT).expect("the delivery event").1 {
        Event::Delivered { id, to } => assert_eq!((id, to.as_str()), (back, "alice")),
        other => panic!("not a delivery: {other:?}"),
    }
    assert!(bob.events().try_recv().is_err());
}

#[test]
fn offline_messages_arrive_in_order_at_login_and_are_deleted_after_ack() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    bob.logout().unwrap();
    drop(bob);
    wait_until("bob offline everywhere", WAIT, || {
        let mut db = cluster.db.connect();
        db.query_one("SELECT count(*) FROM presence WHERE user_name = 'bob'", &[])
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    });
    let mut ids = Vec::new();
    for i in 0..50 {
        let (id, h) = alice.send_text("bob", &format!("offline {i}"));
        assert!(sent_stored(h.wait(WAIT)), "bob is offline: stored");
        ids.push(id);
    }
    assert_eq!(cluster.pending_count(), 50);

    let bob = cluster.client_on("server-1");
    bob.login("bob", "bob-password").unwrap();
    for i in 0..50 {
        assert_eq!(
            next_message(&bob, WAIT),
            ("alice".into(), format!("offline {i}"))
        );
    }
    wait_until("acknowledged messages deleted", WAIT, || {
        cluster.pending_count() == 0
    });
    // alice hears of each delivery once, by receipt.
    ids.sort();
    assert_eq!(deliveries_to(&alice, "bob", ids.len()), ids);

    // Nothing is delivered twice at the next login.
    bob.logout().unwrap();
    let again = cluster.client();
    again.login("bob", "bob-password").unwrap();
    let (_, h) = alice.send_text("bob", "fresh");
    h.wait(WAIT).unwrap();
    assert_eq!(next_message(&again, WAIT), ("alice".into(), "fresh".into()));
}

/// Stored messages acknowledged before a logout or a close are deleted by the time it
/// returns: a login right after is not pushed them again (and a new process, which
/// remembers no ids, would show them again). A trigger makes every delete from
/// `pending` take 300 ms, far longer than ending the session takes otherwise.
#[test]
fn stored_messages_acknowledged_before_a_logout_or_close_are_gone_when_it_returns() {
    let cluster = Cluster::start(1);
    let alice = cluster.user("alice", None);
    cluster.user("bob", None).logout().unwrap();
    slow_pending_deletes(&cluster, 0.3);
    for end in [End::Logout, End::Close] {
        store_texts(&alice, "bob", "", 5);
        assert_eq!(cluster.pending_count(), 5);
        let bob = cluster.client();
        bob.login("bob", "bob-password").unwrap();
        expect_texts(&bob, "alice", "", 5);
        match end {
            End::Logout => drop(bob.logout().expect("logged out")),
            End::Close => bob.close(),
        }
        assert_eq!(
            cluster.pending_count(),
            0,
            "deleted before the end returned"
        );
    }
}

/// A login that replaces a session, on the same server or another, is not pushed the
/// stored messages that the replaced session acknowledged: their deletes are committed
/// before its fetch (the other server answers the login's fence only then). A trigger
/// makes every delete from `pending` take 0.6 s, longer than a login takes.
#[test]
fn stored_messages_the_replaced_session_acknowledged_are_not_pushed_to_the_new_one() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    cluster.user("bob", Some("server-1")).logout().unwrap();
    slow_pending_deletes(&cluster, 0.6);
    for (round, next_server) in ["server-1", "server-2"].into_iter().enumerate() {
        let prefix = format!("r{round} ");
        store_texts(&alice, "bob", &prefix, 5);
        let first = cluster.client_on("server-1");
        first.login("bob", "bob-password").unwrap();
        expect_texts(&first, "alice", &prefix, 5);
        // The client acknowledges a message just after handing it over: time for the
        // acknowledgements to reach the server (the promise covers those that did).
        std::thread::sleep(Duration::from_millis(200));
        // Logged in again elsewhere while the first client is still connected.
        let next = cluster.client_on(next_server);
        next.login("bob", "bob-password").unwrap();
        let (_, h) = alice.send_text("bob", &format!("r{round} after"));
        h.wait(WAIT).unwrap();
        assert_eq!(
            next_message(&next, WAIT),
            ("alice".into(), format!("r{round} after")),
            "the first message the login on {next_server} gets"
        );
        next.logout().unwrap();
        drop(first);
    }
}

/// Runs `body` (PL/pgSQL) before every delete from `pending` (a trigger).
fn on_pending_delete(cluster: &Cluster, body: &str) {
    let sql = format!(
        "CREATE FUNCTION on_pending_delete() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN {body} RETURN NULL; END $$;
         CREATE TRIGGER on_pending_delete BEFORE DELETE ON pending
             FOR EACH STATEMENT EXECUTE FUNCTION on_pending_delete();"
    );
    cluster
        .db
        .connect()
        .batch_execute(&sql)
        .expect("trigger on pending");
}

/// Makes every delete from `pending` take `seconds`.
fn slow_pending_deletes(cluster: &Cluster, seconds: f64) {
    on_pending_delete(cluster, &format!("PERFORM pg_sleep({seconds});"));
}

/// Sends `{prefix}m0`, `{prefix}m1`... (`n` texts) from `from` to `to`, who is offline:
/// each must be stored.
fn store_texts(from: &Client, to: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let (_, h) = from.send_text(to, &format!("{prefix}m{i}"));
        assert!(sent_stored(h.wait(WAIT)), "{to} is offline: stored");
    }
}

/// `client` gets the texts [`store_texts`] sent, from `from`, in order.
fn expect_texts(client: &Client, from: &str, prefix: &str, n: usize) {
    for i in 0..n {
        assert_eq!(
            next_message(client, WAIT),
            (from.into(), format!("{prefix}m{i}"))
        );
    }
}

/// Stored messages that a run of the client opened, but that are pushed again at the
/// next login (a trigger makes every delete from `pending` fail, as it would for a
/// process killed before its acknowledgements arrived), are not shown again by a new
/// client with the same home: its history says they were.
#[test]
fn stored_messages_a_run_opened_are_not_shown_again_by_the_next_run_with_the_same_home() {
    let cluster = Cluster::start(1);
    let home = tempfile::tempdir().unwrap();
    let alice = cluster.user("alice", None);
    let bob = cluster.client_with_home("server-1", home.path());
    bob.signup("bob", "bob-password").unwrap();
    bob.logout().unwrap();
    drop(bob);
    store_texts(&alice, "bob", "", 5);
    on_pending_delete(&cluster, "RAISE EXCEPTION 'kept for the test';");
    let first = cluster.client_with_home("server-1", home.path());
    first.login("bob", "bob-password").unwrap();
    expect_texts(&first, "alice", "", 5);
    first.close();
    assert_eq!(cluster.pending_count(), 5, "pushed again at the next login");

    let next = cluster.client_with_home("server-1", home.path());
    next.login("bob", "bob-password").unwrap();
    let (_, h) = alice.send_text("bob", "after");
    h.wait(WAIT).unwrap();
    assert_eq!(next_message(&next, WAIT), ("alice".into(), "after".into()));
}

#[test]
fn messages_sent_while_the_recipient_logs_in_are_not_lost() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    {
        let bob = cluster.user("bob", Some("server-2"));
        bob.logout().unwrap();
    }
    let sender = std::thread::spawn(move || {
        let handles: Vec<_> = (0..300)
            .map(|i| {
                let h = alice.send_text("bob", &format!("m{i}")).1;
                std::thread::sleep(std::time::Duration::from_micros(300));
                h
            })
            .collect();
        for h in handles {
            h.wait(WAIT).expect("every send is acknowledged");
        }
        alice
    });
    let bob = cluster.client_on("server-2");
    bob.login("bob", "bob-password").unwrap();
    let _alice = sender.join().unwrap();
    let mut got: Vec<String> = (0..300).map(|_| next_message(&bob, WAIT).1).collect();
    got.sort_by_key(|m| m[1..].parse::<u32>().unwrap());
    got.dedup();
    assert_eq!(got.len(), 300, "every acknowledged message arrives");
}

#[test]
fn messages_handed_over_before_a_close_are_not_pushed_again_live() {
    handed_over_before_the_end_are_not_pushed_again(false, End::Close);
}

#[test]
fn messages_handed_over_before_a_close_are_not_pushed_again_from_storage() {
    handed_over_before_the_end_are_not_pushed_again(true, End::Close);
}

#[test]
fn messages_handed_over_before_a_logout_are_not_pushed_again_live() {
    handed_over_before_the_end_are_not_pushed_again(false, End::Logout);
}

#[test]
fn messages_handed_over_before_a_logout_are_not_pushed_again_from_storage() {
    handed_over_before_the_end_are_not_pushed_again(true, End::Logout);
}

/// How bob's session ends.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Close,
    /// `/quit` in the terminal logs out.
    Logout,
}

/// Bob's event handler holds the last of 20 messages from alice while bob closes (or
/// logs out), and lets it go only once that has begun. Live, the handler runs on the link's
/// reader, which keeps its acknowledgements to write in one go; from storage, on the
/// inbox thread, whose acknowledgements go through the link's writer. Either way the
/// close must wait for the hand-over and have its acknowledgements (and, from storage,
/// alice's receipts) written before the link ends; a logout, before the logout itself
/// (whose frame could overtake acknowledgements queued for the link's writer). At the
/// next login, with a new client that remembers nothing, no message comes again.
fn handed_over_before_the_end_are_not_pushed_again(stored: bool, end: End) {
    let cluster = Cluster::start(1);
    let alice = cluster.user("alice", None);
    let texts: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let last = texts.last().unwrap().clone();
    let send_all = || -> Vec<_> { texts.iter().map(|t| alice.send_text("bob", t)).collect() };
    let mut sent = Vec::new();
    if stored {
        cluster.user("bob", None).logout().unwrap();
        sent = send_all();
        for (_, h) in &sent {
            assert!(sent_stored(h.wait(WAIT)));
        }
        assert_eq!(cluster.pending_count(), 20);
    }
    let (handed, got) = crossbeam_channel::unbounded();
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let config = cluster.config().with_event_handler(move |event| {
        if let Event::Message { text, .. } = event {
            let hold = text == last;
            let _ = handed.send(text);
            if hold {
                let _ = released.recv_timeout(WAIT);
            }
        }
    });
    let bob = fastchat_client::Client::connect(&config).unwrap();
    match stored {
        true => {
            bob.login("bob", "bob-password").unwrap();
        }
        false => {
            bob.signup("bob", "bob-password").unwrap();
            // Answered as each is acknowledged: the last only after the close below.
            sent = send_all();
        }
    };
    for text in &texts {
        assert_eq!(&got.recv_timeout(WAIT).expect("handed over"), text);
    }
    // The handler holds the last message. End meanwhile, and let it go after a while:
    // at once if the end does not wait for it (then its acknowledgement is lost).
    std::thread::scope(|s| {
        let ending = s.spawn(|| match end {
            End::Close => bob.close(),
            End::Logout => bob.logout().map(drop).expect("logged out"),
        });
        std::thread::sleep(Duration::from_millis(300));
        release.send(()).unwrap();
        ending.join().unwrap();
    });
    assert!(got.try_recv().is_err(), "each message handed over once");
    let mut ids = Vec::new();
    for (id, h) in sent {
        if !stored {
            // Acknowledged by bob's client, not stored for his next login.
            assert!(!sent_stored(h.wait(WAIT)), "{id} delivered");
        }
        ids.push(id);
    }
    if stored {
        wait_until("acknowledged messages deleted", WAIT, || {
            cluster.pending_count() == 0
        });
        ids.sort();
        assert_eq!(
            deliveries_to(&alice, "bob", ids.len()),
            ids,
            "alice hears of each delivery"
        );
    }
    // A new client knows nothing of what bob was handed: whatever the server pushes
    // again before alice's next message, it shows.
    let again = cluster.client();
    again.login("bob", "bob-password").unwrap();
    let (_, h) = alice.send_text("bob", "after");
    h.wait(WAIT).unwrap();
    assert_eq!(next_message(&again, WAIT), ("alice".into(), "after".into()));
}

/// The ids of the next `n` deliveries to `to` that `sender` hears of, sorted.
fn deliveries_to(sender: &fastchat_client::Client, to: &str, n: usize) -> Vec<String> {
    let mut delivered: Vec<String> = (0..n)
        .map(|_| {
            fastchat_tests::wait_event(sender, WAIT, "a delivery", |e| match e {
                Event::Delivered { id, to: t } if t == to => Some(id),
                _ => None,
            })
        })
        .collect();
    delivered.sort();
    delivered
}
