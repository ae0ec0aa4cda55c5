//! Failover: a server killed mid-traffic, its clients reconnecting and resuming by
//! themselves, and every acknowledged message received exactly once, in order.

use crate::WAIT;
use fastchat_client::{Client, Event, OkResult};
use fastchat_tests::{sent_stored, Cluster, ClusterOptions, PrivatePostgres};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const USERS: usize = 30;
const MESSAGES: usize = 150;
const EVERY: Duration = Duration::from_millis(20);
/// Users per group: users 0-4 form group g0, 5-9 g1, ...; the first of each speaks.
const GROUP: usize = 5;
/// Group messages each speaker sends (one every 3 * EVERY).
const GROUP_MESSAGES: usize = 50;

/// What a receiver saw: message numbers in arrival order, and when it reconnected.
#[derive(Default)]
struct Seen {
    /// The server it was on before the disruption.
    server: String,
    numbers: Vec<usize>,
    /// Numbers of the group messages from its group's speaker, in arrival order.
    group_numbers: Vec<usize>,
    reconnected_at: Option<Instant>,
    reconnecting_at: Option<Instant>,
}

/// The numbers (positions) of the messages the cluster acknowledged.
fn acknowledged(handles: Vec<fastchat_client::ReplyHandle>) -> Vec<usize> {
    handles
        .into_iter()
        .enumerate()
        .filter(|(_, h)| {
            matches!(
                h.wait(Duration::from_secs(90)),
                Ok(Some(OkResult::Sent { .. }))
            )
        })
        .map(|(k, _)| k)
        .collect()
}

/// Thirty users, each writing to the next at a steady rate; a third of the way in,
/// `disrupt` runs. Checks that every acknowledged message arrives exactly once and in
/// order, and that every message ends up acknowledged. Returns what each user saw.
fn steady_traffic_through(cluster: &mut Cluster, disrupt: impl FnOnce(&mut Cluster)) -> Vec<Seen> {
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i:02}")).collect();
    let clients: Vec<Arc<Client>> = users
        .iter()
        .map(|u| Arc::new(cluster.user(u, None)))
        .collect();
    for g in 0..USERS / GROUP {
        let others: Vec<String> = users[g * GROUP + 1..(g + 1) * GROUP].to_vec();
        clients[g * GROUP]
            .group_create(&format!("g{g}"), &others)
            .expect("group created");
    }

    // Each user i writes to user i+1: thirty conversations, one writer each.
    let receivers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.clone();
            let group_expected = if i % GROUP == 0 { 0 } else { GROUP_MESSAGES };
            thread::spawn(move || {
                let mut seen = Seen {
                    server: c.server(),
                    ..Seen::default()
                };
                let deadline = Instant::now() + Duration::from_secs(120);
                while (seen.numbers.len() < MESSAGES || seen.group_numbers.len() < group_expected)
                    && Instant::now() < deadline
                {
                    match c.events().recv_timeout(Duration::from_millis(200)) {
                        Ok(Event::Message { text, .. }) => {
                            seen.numbers.push(text.parse().expect("a number"))
                        }
                        Ok(Event::GroupMessage { text, .. }) => {
                            seen.group_numbers.push(text.parse().expect("a number"))
                        }
                        Ok(Event::Reconnecting { .. }) => {
                            seen.reconnecting_at = Some(Instant::now())
                        }
                        Ok(Event::Reconnected { .. }) => seen.reconnected_at = Some(Instant::now()),
                        Ok(Event::Disconnected { reason }) => panic!("gave up: {reason}"),
                        _ => {}
                    }
                }
                seen
            })
        })
        .collect();
    let senders: Vec<_> = (0..USERS)
        .map(|i| {
            let c = clients[i].clone();
            let to = users[(i + 1) % USERS].clone();
            thread::spawn(move || {
                let handles: Vec<_> = (0..MESSAGES)
                    .map(|k| {
                        thread::sleep(EVERY);
                        c.send_text(&to, &k.to_string()).1
                    })
                    .collect();
                acknowledged(handles)
            })
        })
        .collect();

    let speakers: Vec<_> = (0..USERS / GROUP)
        .map(|g| {
            let c = clients[g * GROUP].clone();
            thread::spawn(move || {
                let handles: Vec<_> = (0..GROUP_MESSAGES)
                    .map(|k| {
                        thread::sleep(EVERY * 3);
                        c.send_group_text(&format!("g{g}"), &k.to_string()).1
                    })
                    .collect();
                acknowledged(handles)
            })
        })
        .collect();

    thread::sleep(EVERY * (MESSAGES as u32) / 3);
    disrupt(cluster);

    let acked: Vec<Vec<usize>> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let group_acked: Vec<Vec<usize>> = speakers.into_iter().map(|t| t.join().unwrap()).collect();
    let seen: Vec<Seen> = receivers.into_iter().map(|t| t.join().unwrap()).collect();
    for i in 0..USERS {
        let receiver = (i + 1) % USERS;
        let got = &seen[receiver].numbers;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            got.len(),
            "{} got duplicates: {got:?}",
            users[receiver]
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{} got {}'s messages out of order: {got:?}",
            users[receiver],
            users[i]
        );
        let missing: Vec<usize> = acked[i]
            .iter()
            .filter(|k| !got.contains(k))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "acknowledged to {} but never received by {}: {missing:?}",
            users[i],
            users[receiver]
        );
    }
    for (i, s) in seen.iter().enumerate() {
        if i % GROUP == 0 {
            assert!(
                s.group_numbers.is_empty(),
                "a speaker got its own group messages"
            );
            continue;
        }
        let got = &s.group_numbers;
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "user{i:02} got group messages out of order or twice: {got:?}"
        );
        let acked = &group_acked[i / GROUP];
        assert!(
            acked.iter().all(|k| got.contains(k)),
            "user{i:02} misses acknowledged group messages: {got:?}"
        );
    }
    // Every message was acknowledged in the end: refused or unanswered ones were sent again.
    let unacked: usize = acked.iter().map(|a| MESSAGES - a.len()).sum();
    assert_eq!(unacked, 0, "messages never acknowledged");
    let group_unacked: usize = group_acked.iter().map(|a| GROUP_MESSAGES - a.len()).sum();
    assert_eq!(group_unacked, 0, "group messages never acknowledged");
    seen
}

#[test]
fn thirty_clients_survive_a_sigkill_and_every_acknowledged_message_arrives_once_in_order() {
    let mut cluster = Cluster::start(3);
    let mut killed_at = None;
    let seen = steady_traffic_through(&mut cluster, |cluster| {
        killed_at = Some(Instant::now());
        assert!(
            cluster.signal_server(1, libc::SIGKILL, WAIT),
            "server-2 killed"
        );
    });
    let killed_at = killed_at.unwrap();
    // The killed server's clients came back, each within 10 seconds; no one else left.
    let mut back_after = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        if s.server == "server-2" {
            let back = s.reconnected_at.expect("reconnected");
            back_after.insert(i, back.duration_since(killed_at));
        } else {
            assert!(s.reconnecting_at.is_none(), "user{i:02} lost its server");
        }
    }
    assert!(!back_after.is_empty(), "round-robin put users on server-2");
    assert!(
        back_after.values().all(|d| *d < Duration::from_secs(10)),
        "reconnect times: {back_after:?}"
    );
}

#[test]
fn thirty_clients_lose_nothing_through_a_postgresql_restart() {
    let postgres = PrivatePostgres::start();
    let mut cluster = Cluster::start_with(ClusterOptions {
        servers: 3,
        postgres: Some(postgres.url.clone()),
        ..Default::default()
    });
    steady_traffic_through(&mut cluster, |_| {
        postgres.stop();
        thread::sleep(Duration::from_secs(2));
        postgres.restart();
    });
}

#[test]
fn a_dropped_connection_resumes_without_the_password_and_resends() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    alice.drop_connection();
    let server = fastchat_tests::wait_event(&alice, WAIT, "reconnected", |e| match e {
        Event::Reconnected { server } => Some(server),
        Event::Disconnected { reason } => panic!("gave up: {reason}"),
        _ => None,
    });
    assert!(server.starts_with("server-"));
    alice.send_text("bob", "after resume").1.wait(WAIT).unwrap();
    assert_eq!(
        fastchat_tests::next_message(&bob, WAIT),
        ("alice".into(), "after resume".into())
    );
}

#[test]
fn messages_refused_during_a_postgresql_outage_are_retried_and_arrive_in_order() {
    let postgres = PrivatePostgres::start();
    let cluster = Cluster::start_with(ClusterOptions {
        servers: 2,
        postgres: Some(postgres.url.clone()),
        ..Default::default()
    });
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    alice.send_text("bob", "before").1.wait(WAIT).unwrap();
    assert_eq!(
        fastchat_tests::next_message(&bob, WAIT),
        ("alice".into(), "before".into())
    );
    bob.logout().unwrap();

    // bob is offline, so every message must be stored, and the database is down.
    postgres.stop();
    let handles: Vec<_> = (0..20)
        .map(|k| alice.send_text("bob", &k.to_string()).1)
        .collect();
    fastchat_tests::wait_until("the outage to refuse a store", WAIT, || {
        cluster.log("server-1").contains("could not store")
    });
    thread::sleep(Duration::from_secs(1));
    postgres.restart();
    for h in handles {
        assert!(
            sent_stored(h.wait(Duration::from_secs(60))),
            "stored after the outage"
        );
    }
    let bob = cluster.client();
    bob.login("bob", "bob-password").unwrap();
    for k in 0..20 {
        assert_eq!(
            fastchat_tests::next_message(&bob, WAIT),
            ("alice".into(), k.to_string())
        );
    }
}

/// What server-1 logs when it drops its link to server-2 as dead.
const SERVER_2_DROPPED: &str = "server-2 missed its heartbeats";

/// Two servers; alice on server-1 has written to bob on server-2, and he got it live.
fn alice_on_server_1_writing_to_bob_on_server_2() -> (Cluster, Client, Client) {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    assert!(!stored(&alice, "bob", "before"));
    assert_eq!(
        fastchat_tests::next_message(&bob, WAIT),
        ("alice".into(), "before".into())
    );
    (cluster, alice, bob)
}

/// A server process stopped (`SIGSTOP`) until this is dropped, even by a failed test.
struct Stopped(libc::pid_t);

impl Stopped {
    fn server(cluster: &Cluster, index: usize) -> Stopped {
        let pid = cluster.server_pid(index).expect("the server runs") as libc::pid_t;
        // SAFETY: a signal to a child process this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `server`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Sends `text` from `from` to `to` and returns whether the cluster stored it (rather
/// than delivering it live).
fn stored(from: &Client, to: &str, text: &str) -> bool {
    fastchat_tests::sent_stored(from.send_text(to, text).1.wait(WAIT))
}

#[test]
fn a_peer_whose_heartbeat_is_late_but_whose_link_is_busy_is_kept() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));

    // Every heartbeat server-2 writes lands 10 s old, as when the database is too slow
    // to take it; meanwhile alice writes to bob, so the link from server-2 keeps
    // bringing `delivered` frames. (A thread ageing the row every 20 ms raced
    // server-2's own heartbeats: on a loaded machine server-1 could read the fresh one
    // tick after tick, and the test failed.)
    let mut db = cluster.db.connect();
    db.batch_execute(
        "CREATE FUNCTION keep_heartbeat_late() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN NEW.heartbeat := now() - interval '10 seconds'; RETURN NEW; END $$;
         CREATE TRIGGER keep_heartbeat_late BEFORE UPDATE ON servers
             FOR EACH ROW WHEN (NEW.name = 'server-2')
             EXECUTE FUNCTION keep_heartbeat_late();
         UPDATE servers SET heartbeat = now() WHERE name = 'server-2';",
    )
    .unwrap();
    let mut sent = 0;
    let started = Instant::now();
    while !cluster
        .log("server-1")
        .contains("server-2's heartbeat is late")
    {
        assert!(
            started.elapsed() < WAIT,
            "server-1 never noticed the late heartbeat"
        );
        assert!(
            !stored(&alice, "bob", &sent.to_string()),
            "message {sent} was stored"
        );
        sent += 1;
        thread::sleep(Duration::from_millis(20));
    }
    // Three more rounds of the stale check (each logs the late heartbeat), still live.
    let kept = |cluster: &Cluster| {
        cluster
            .log("server-1")
            .matches("server-2's heartbeat is late")
            .count()
    };
    let rounds = kept(&cluster) + 3;
    let started = Instant::now();
    while kept(&cluster) < rounds {
        assert!(started.elapsed() < WAIT, "the stale check stopped running");
        assert!(
            !stored(&alice, "bob", &sent.to_string()),
            "message {sent} was stored"
        );
        sent += 1;
        thread::sleep(Duration::from_millis(20));
    }
    db.batch_execute("DROP TRIGGER keep_heartbeat_late ON servers")
        .unwrap();
    assert!(
        !cluster.log("server-1").contains(SERVER_2_DROPPED),
        "the busy link was dropped"
    );
    for k in 0..sent {
        assert_eq!(
            fastchat_tests::next_message(&bob, WAIT),
            ("alice".into(), k.to_string())
        );
    }
}

#[test]
fn a_hung_server_is_dropped_and_its_users_messages_wait_until_it_is_back() {
    let (cluster, alice, bob) = alice_on_server_1_writing_to_bob_on_server_2();

    // A stopped process neither heartbeats nor talks on its link: it is presumed dead.
    let stopped = Stopped::server(&cluster, 1);
    // Normally within about 3 s; while server-1's own ticks run slow (a loaded
    // machine), it may put the judgement off for up to 30 s.
    fastchat_tests::wait_until(
        "server-1 to drop the hung server-2",
        WAIT + Duration::from_secs(30),
        || cluster.log("server-1").contains(SERVER_2_DROPPED),
    );
    let stored_while_hung = stored(&alice, "bob", "while hung");
    drop(stopped);
    assert!(
        stored_while_hung,
        "a message to a hung server's user is stored"
    );
    assert_eq!(
        fastchat_tests::next_message(&bob, WAIT),
        ("alice".into(), "while hung".into())
    );
    cluster.wait_meshed(2);
}

#[test]
fn a_server_whose_own_ticks_run_slow_judges_a_silent_peer_only_once_they_run_on_time() {
    let (cluster, alice, bob) = alice_on_server_1_writing_to_bob_on_server_2();

    // Each of server-1's heartbeats takes 0.8 s, so its ticks run slow, as on an
    // overloaded machine where any one thread waits seconds for a core (then the link
    // reader that would have shown a peer alive waits too).
    let mut db = cluster.db.connect();
    db.batch_execute(
        "CREATE FUNCTION slow_heartbeat() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(0.8); RETURN NEW; END $$;
         CREATE TRIGGER slow_heartbeat BEFORE UPDATE ON servers
             FOR EACH ROW WHEN (NEW.name = 'server-1')
             EXECUTE FUNCTION slow_heartbeat();",
    )
    .unwrap();
    // server-2 stops: no heartbeat, nothing on its link.
    let stopped = Stopped::server(&cluster, 1);

    // server-1 sees the late heartbeat and puts off its judgement, round after round,
    // never dropping server-2 meanwhile.
    let dropped = |cluster: &Cluster| cluster.log("server-1").contains(SERVER_2_DROPPED);
    fastchat_tests::wait_until(
        "server-1 to put off judging server-2 three times",
        WAIT,
        || {
            let log = cluster.log("server-1");
            assert!(
                !log.contains(SERVER_2_DROPPED),
                "server-2 was judged from a slow tick"
            );
            log.matches("server-2's heartbeat is late, but this tick took")
                .count()
                >= 3
        },
    );
    assert!(!dropped(&cluster), "server-2 was judged from a slow tick");

    // Once server-1's ticks run on time again, the silent server-2 is dropped.
    db.batch_execute("DROP TRIGGER slow_heartbeat ON servers")
        .unwrap();
    fastchat_tests::wait_until("server-1 to drop the stopped server-2", WAIT, || {
        dropped(&cluster)
    });
    drop(stopped);
    cluster.wait_meshed(2);
    alice.send_text("bob", "after").1.wait(WAIT).unwrap();
    assert_eq!(
        fastchat_tests::next_message(&bob, WAIT),
        ("alice".into(), "after".into())
    );
}
