//! Groups through the real cluster: every command and refusal, membership events,
//! group messages on three servers exactly once, removal and key epochs, the size
//! limit and the admin hand-over.

use crate::WAIT;
use fastchat_client::{Client, ErrorCode, Event, OkResult};
use fastchat_common::e2e::{open_group_key, unwrap_key, GroupKeyRecord, UserKeys};
use fastchat_tests::{sent_stored, wait_event, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

fn code(reply: fastchat_client::Reply) -> ErrorCode {
    reply.expect_err("refused").code
}

fn members(reply: fastchat_client::Reply) -> Vec<(String, bool)> {
    match reply.expect("ok") {
        Some(OkResult::Group { members, .. }) => {
            members.into_iter().map(|m| (m.user, m.admin)).collect()
        }
        other => panic!("not a group: {other:?}"),
    }
}

/// The next membership event: (group, change, user).
fn next_group_event(client: &Client) -> (String, String, String) {
    wait_event(client, WAIT, "a group event", |e| match e {
        Event::Group {
            group,
            change,
            user,
            ..
        } => Some((group, change, user)),
        _ => None,
    })
}

/// The next group message: (group, from, text).
fn next_group_message(client: &Client) -> (String, String, String) {
    wait_event(client, WAIT, "a group message", |e| match e {
        Event::GroupMessage {
            group, from, text, ..
        } => Some((group, from, text)),
        _ => None,
    })
}

/// Asserts that no group message arrives within `quiet`.
fn no_group_message(client: &Client, quiet: Duration) {
    let deadline = Instant::now() + quiet;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(Event::GroupMessage { text, .. }) = client.events().recv_timeout(left) {
            panic!("unexpected group message {text:?}");
        }
    }
}

fn ev(group: &str, change: &str, user: &str) -> (String, String, String) {
    (group.into(), change.into(), user.into())
}

#[test]
fn group_commands_refusals_and_events_across_servers() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let carol = cluster.user("carol", Some("server-1"));
    let _dave = cluster.user("dave", Some("server-2"));

    let team = members(alice.group_create("team", &["bob".into()]));
    assert_eq!(team, vec![("alice".into(), true), ("bob".into(), false)]);
    assert_eq!(next_group_event(&bob), ev("team", "created", "alice"));
    assert_eq!(next_group_event(&bob), ev("team", "added", "bob"));

    assert_eq!(code(bob.group_create("team", &[])), ErrorCode::NameTaken);
    assert_eq!(
        code(alice.group_create("other", &["zed".into()])),
        ErrorCode::UnknownUser
    );
    assert_eq!(code(bob.group_add("team", "carol")), ErrorCode::NotAdmin);
    assert_eq!(code(carol.group_members("team")), ErrorCode::NotMember);
    assert_eq!(
        code(alice.group_add("team", "bob")),
        ErrorCode::AlreadyMember
    );
    assert_eq!(code(alice.group_add("team", "zed")), ErrorCode::UnknownUser);
    assert_eq!(code(alice.group_members("nosuch")), ErrorCode::UnknownGroup);
    assert_eq!(code(bob.group_remove("team", "alice")), ErrorCode::NotAdmin);
    assert_eq!(code(carol.group_leave("team")), ErrorCode::NotMember);

    alice.group_add("team", "carol").unwrap();
    assert_eq!(next_group_event(&bob), ev("team", "added", "carol"));
    assert_eq!(next_group_event(&carol), ev("team", "added", "carol"));
    match carol.groups().unwrap() {
        Some(OkResult::Groups { groups }) => {
            assert_eq!(groups.len(), 1);
            assert_eq!((groups[0].group.as_str(), groups[0].admin), ("team", false));
        }
        other => panic!("{other:?}"),
    }

    carol.group_leave("team").unwrap();
    assert_eq!(next_group_event(&bob), ev("team", "left", "carol"));
    alice.group_remove("team", "bob").unwrap();
    assert_eq!(next_group_event(&bob), ev("team", "removed", "bob"));
    assert_eq!(code(bob.group_members("team")), ErrorCode::NotMember);
    assert_eq!(
        members(alice.group_members("team")),
        vec![("alice".into(), true)]
    );
}

#[test]
fn a_group_message_reaches_members_on_three_servers_exactly_once_in_order() {
    let cluster = Cluster::start(3);
    let names = ["m1", "m2", "m3", "m4", "m5"];
    let servers = ["server-1", "server-2", "server-3", "server-1", "server-2"];
    let clients: Vec<Client> = names
        .iter()
        .zip(servers)
        .map(|(n, s)| cluster.user(n, Some(s)))
        .collect();
    // An offline member too: its copies are stored and arrive at its next login.
    let late = cluster.user("late", Some("server-3"));
    late.logout().unwrap();
    let all: Vec<String> = names[1..]
        .iter()
        .map(|s| s.to_string())
        .chain(["late".into()])
        .collect();
    clients[0].group_create("crowd", &all).unwrap();

    let handles: Vec<_> = (0..20)
        .map(|i| clients[0].send_group_text("crowd", &format!("hello {i}")).1)
        .collect();
    for h in handles {
        assert!(sent_stored(h.wait(WAIT)), "late is offline");
    }
    for c in &clients[1..] {
        for i in 0..20 {
            assert_eq!(
                next_group_message(c),
                ("crowd".into(), "m1".into(), format!("hello {i}"))
            );
        }
        no_group_message(c, Duration::from_millis(300));
    }
    // The sender does not get its own message.
    no_group_message(&clients[0], Duration::from_millis(100));
    late.login("late", "late-password").unwrap();
    for i in 0..20 {
        assert_eq!(
            next_group_message(&late),
            ("crowd".into(), "m1".into(), format!("hello {i}"))
        );
    }
    no_group_message(&late, Duration::from_millis(300));
}

#[test]
fn a_removed_member_gets_nothing_after_removal_and_cannot_open_the_new_epoch() {
    let cluster = Cluster::start(2);
    let home = tempfile::tempdir().unwrap();
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let carol = Client::connect(&cluster.config().with_home(home.path())).unwrap();
    carol.signup("carol", "carol-password").unwrap();
    let dave = cluster.user("dave", Some("server-1"));
    alice
        .group_create("club", &["bob".into(), "carol".into(), "dave".into()])
        .unwrap();
    alice
        .send_group_text("club", "before")
        .1
        .wait(WAIT)
        .unwrap();
    for member in [&bob, &carol, &dave] {
        assert_eq!(next_group_message(member).2, "before");
    }

    dave.logout().unwrap(); // dave's copies will be stored: the test reads one
    alice.group_remove("club", "carol").unwrap();
    alice.send_group_text("club", "after").1.wait(WAIT).unwrap();
    assert_eq!(next_group_message(&bob).2, "after");
    no_group_message(&carol, Duration::from_millis(500));

    // Even with the stored ciphertext and its own private key, carol opens nothing:
    // the new epoch's key was never wrapped for her.
    let mut db = cluster.db.connect();
    let row = db
        .query_one(
            "SELECT k.record, k.epoch FROM group_keys k
             WHERE k.group_name = 'club' ORDER BY k.epoch DESC LIMIT 1",
            &[],
        )
        .unwrap();
    let record: GroupKeyRecord = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM pending WHERE recipient = 'dave' AND group_name = 'club'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "dave's copy of the message after the removal");
    let carol_keys = UserKeys::from_private_pem(
        &std::fs::read_to_string(home.path().join("keys/carol.key")).unwrap(),
    )
    .unwrap();
    assert!(record.wrapped.iter().all(|w| w.user != "carol"));
    assert!(record
        .wrapped
        .iter()
        .all(|w| unwrap_key(&carol_keys, &w.key.to_bytes().unwrap()).is_err()));
    let alice_pub = carol_keys.public(); // any key: the record has no copy for carol
    assert!(open_group_key(&record, "carol", &carol_keys, &alice_pub).is_err());
}

#[test]
fn the_group_size_limit_and_the_admin_hand_over() {
    let cluster = Cluster::start_with(ClusterOptions {
        servers: 2,
        server_args: vec!["--max-group-size".into(), "3".into()],
        ..Default::default()
    });
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let carol = cluster.user("carol", Some("server-1"));
    let _dave = cluster.user("dave", Some("server-2"));
    assert_eq!(
        code(alice.group_create("big", &["bob".into(), "carol".into(), "dave".into()])),
        ErrorCode::GroupFull
    );
    alice
        .group_create("trio", &["bob".into(), "carol".into()])
        .unwrap();
    assert_eq!(code(alice.group_add("trio", "dave")), ErrorCode::GroupFull);

    // The admin leaves: the longest-standing member, bob, takes over.
    alice.group_leave("trio").unwrap();
    let admin_event = wait_event(&carol, WAIT, "the admin event", |e| match e {
        Event::Group { change, user, .. } if change == "admin" => Some(user),
        _ => None,
    });
    assert_eq!(admin_event, "bob");
    assert_eq!(
        members(bob.group_members("trio")),
        vec![("bob".into(), true), ("carol".into(), false)]
    );
    bob.group_add("trio", "dave").unwrap();
    assert_eq!(code(carol.group_add("trio", "alice")), ErrorCode::NotAdmin);

    // When the last member leaves, the group is gone (and its name free again).
    let dave = cluster.client_on("server-1");
    dave.login("dave", "dave-password").unwrap();
    for member in [&bob, &carol, &dave] {
        member.group_leave("trio").unwrap();
    }
    assert_eq!(code(alice.group_members("trio")), ErrorCode::UnknownGroup);
    alice.group_create("trio", &[]).unwrap();
}

/// Sends a hand-made `group_send` under `epoch` and returns the answer to it (pushed
/// frames before it are skipped).
fn raw_group_send(
    raw: &mut fastchat_tests::RawConn,
    req: u64,
    group: &str,
    epoch: u64,
) -> serde_json::Value {
    raw.send_json(&serde_json::json!({
        "req": req, "type": "group_send", "id": format!("raw-{req}"), "group": group,
        "epoch": epoch, "body": "AQIDBA==",
    }));
    raw.recv_until(|frame| frame["req"] == req)
}

#[test]
fn a_membership_change_on_one_server_is_seen_at_once_by_group_sends_on_another() {
    let cluster = Cluster::start(2);
    // rae writes by hand on server-1: it can name an old epoch, which a client never
    // keeps doing; alice, the admin, and carol are on server-2.
    let mut rae = cluster.raw_user("rae", 0);
    let alice = cluster.user("alice", Some("server-2"));
    let carol = cluster.user("carol", Some("server-2"));
    let created = alice.group_create("crew", &["rae".to_string(), "carol".to_string()]);
    let Ok(Some(OkResult::Group { epoch, .. })) = created else {
        panic!("group not created: {created:?}");
    };
    // The first send reads the membership (and keeps it); the second uses what was kept.
    for req in [10, 11] {
        let answer = raw_group_send(&mut rae, req, "crew", epoch);
        assert_eq!(answer["type"], "ok", "{answer}");
    }

    // carol is removed on server-2; server-1 must not deliver an old-epoch message to her.
    alice.group_remove("crew", "carol").unwrap();
    let answer = raw_group_send(&mut rae, 12, "crew", epoch);
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "stale_epoch", "{answer}");
    let answer = raw_group_send(&mut rae, 13, "crew", epoch + 1);
    assert_eq!(answer["type"], "ok", "{answer}");

    // carol got the two messages of her epoch (unreadable: hand-made bodies) and no more.
    // No wait is needed: a sender is answered once every copy is acknowledged (or
    // stored; carol is online), and a client acknowledges a message after handing its
    // event over, so every copy carol was sent is in her queue by now.
    let copies = carol
        .events()
        .try_iter()
        .filter(|e| matches!(e, Event::Message { .. } | Event::Undecryptable { .. }))
        .count();
    assert_eq!(copies, 2, "carol's copies");
}
