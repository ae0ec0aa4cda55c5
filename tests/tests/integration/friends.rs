//! Friends: the list with presence, and presence events across servers.

use crate::WAIT;
use fastchat_client::{Client, ErrorCode, Event, OkResult};
use fastchat_tests::{wait_event, wait_until, Cluster};

fn friends(client: &Client) -> Vec<(String, bool)> {
    match client.friends().unwrap() {
        Some(OkResult::Friends { friends }) => {
            friends.into_iter().map(|f| (f.user, f.online)).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn next_presence(client: &Client) -> (String, bool) {
    wait_event(client, WAIT, "a presence event", |e| match e {
        Event::Presence { user, online } => Some((user, online)),
        _ => None,
    })
}

#[test]
fn friends_see_each_other_come_and_go_across_servers() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let carol = cluster.user("carol", Some("server-1"));
    carol.logout().unwrap();

    alice.friend_add("bob").unwrap();
    alice.friend_add("carol").unwrap();
    alice.friend_add("bob").unwrap(); // twice is fine
    assert_eq!(
        alice.friend_add("zed").unwrap_err().code,
        ErrorCode::UnknownUser
    );
    assert_eq!(
        friends(&alice),
        vec![("bob".into(), true), ("carol".into(), false)]
    );

    // carol comes online on the other server, bob goes offline: alice is told.
    let carol = cluster.client_on("server-2");
    carol.login("carol", "carol-password").unwrap();
    assert_eq!(next_presence(&alice), ("carol".into(), true));
    bob.logout().unwrap();
    assert_eq!(next_presence(&alice), ("bob".into(), false));
    assert_eq!(
        friends(&alice),
        vec![("bob".into(), false), ("carol".into(), true)]
    );

    // Friendship is one-way and not needed for messages.
    assert_eq!(friends(&carol), vec![]);
    carol
        .send_text("alice", "no friendship needed")
        .1
        .wait(WAIT)
        .unwrap();
    alice.friend_remove("carol").unwrap();
    assert_eq!(
        alice.friend_remove("carol").unwrap_err().code,
        ErrorCode::NotMember
    );
    assert_eq!(friends(&alice), vec![("bob".into(), false)]);
}

/// A presence write that fails leaves no user online for good: here the database
/// refuses the server's delete (a trigger raises an error, as a database in trouble
/// would), and once it accepts again the maintenance loop rebuilds the server's rows
/// from who is logged in.
#[test]
fn a_presence_row_a_failed_write_left_wrong_is_rebuilt() {
    let cluster = Cluster::start(1);
    let alice = cluster.user("alice", None);
    let bob = cluster.user("bob", None);
    alice.friend_add("bob").unwrap();
    assert_eq!(friends(&alice), vec![("bob".into(), true)]);

    let mut db = cluster.db.connect();
    db.batch_execute(
        "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse_delete BEFORE DELETE ON presence
             FOR EACH ROW EXECUTE FUNCTION refuse_delete();",
    )
    .unwrap();
    drop(bob);
    wait_until("bob's presence delete to fail", WAIT, || {
        cluster
            .log("server-1")
            .contains("bob: presence not cleared")
    });
    assert_eq!(friends(&alice), vec![("bob".into(), true)], "still wrong");
    db.batch_execute("DROP TRIGGER refuse_delete ON presence")
        .unwrap();

    wait_until("bob to be shown offline", WAIT, || {
        friends(&alice) == vec![("bob".into(), false)]
    });
    assert!(cluster.log("server-1").contains("presence rows rebuilt"));
    // alice's own row survived the rebuild.
    let alice_rows: i64 = db
        .query_one(
            "SELECT count(*) FROM presence WHERE user_name = 'alice'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(alice_rows, 1);
}

/// A login or logout whose followers could not be looked up is announced later: here
/// the `friends` table is hidden (renamed) while bob logs out on the other server, so
/// alice is not told then; once it is back, the maintenance loop tells her.
#[test]
fn followers_a_failed_lookup_missed_are_told_later() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    alice.friend_add("bob").unwrap();
    assert_eq!(friends(&alice), vec![("bob".into(), true)]);

    let mut db = cluster.db.connect();
    db.batch_execute("ALTER TABLE friends RENAME TO friends_hidden_by_the_test")
        .unwrap();
    bob.logout().unwrap();
    wait_until("bob's followers lookup to fail", WAIT, || {
        cluster
            .log("server-2")
            .contains("bob: friends not told of its presence")
    });
    db.batch_execute("ALTER TABLE friends_hidden_by_the_test RENAME TO friends")
        .unwrap();

    assert_eq!(next_presence(&alice), ("bob".into(), false));
    wait_until("server-2 to log the late announcement", WAIT, || {
        cluster
            .log("server-2")
            .contains("bob: friends told late that it is offline")
    });
    assert_eq!(friends(&alice), vec![("bob".into(), false)]);
}
