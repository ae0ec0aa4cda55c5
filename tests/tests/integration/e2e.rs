//! End-to-end encryption through the real cluster: what the database and the logs hold,
//! key backups and fresh homes, password changes, tampered and replayed ciphertexts,
//! and key files the `openssl` tool reads.

use crate::WAIT;
use fastchat_client::{Client, Conversation, ErrorCode, Event};
use fastchat_common::e2e::open_key_backup;
use fastchat_common::password::{login_secret, verify_password};
use fastchat_common::Blob;
use fastchat_tests::{next_message, sent_stored, wait_event, wait_until, Cluster};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Every row of every table of the cluster's database, as JSON text.
fn dump_database(cluster: &Cluster) -> String {
    let mut db = cluster.db.connect();
    let tables: Vec<String> = db
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "pending"), "{tables:?}");
    let mut dump = String::new();
    for table in tables {
        let rows: String = db
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM \"{table}\" t"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        dump.push_str(&rows);
        dump.push('\n');
    }
    dump
}

fn stored_backup(cluster: &Cluster, user: &str) -> String {
    cluster
        .db
        .connect()
        .query_one("SELECT key_backup FROM users WHERE name = $1", &[&user])
        .unwrap()
        .get(0)
}

/// Whether `text` holds `secret` as it is or base64-encoded (at any of the three byte
/// alignments, the part of the encoding that depends on the secret alone).
fn leaks(text: &str, secret: &str) -> bool {
    if text.contains(secret) {
        return true;
    }
    (0..3).any(|offset| {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        let encoded = Blob::from_bytes(&bytes).into_base64();
        let core = &encoded[4..encoded.len() - 4];
        text.contains(core)
    })
}

#[test]
fn leaks_finds_plain_and_base64_secrets() {
    let secret = "offline-plaintext-51be2d";
    for prefix in ["", "x", "xy", "xyz"] {
        let encoded = Blob::from_bytes(format!("{prefix}{secret}!").as_bytes()).into_base64();
        assert!(leaks(&encoded, secret), "{prefix:?}");
    }
    assert!(leaks(&format!("a{secret}b"), secret));
    assert!(!leaks("nothing to see", secret));
}

#[test]
fn the_database_and_the_logs_hold_no_plaintext_no_private_key_and_no_password() {
    let cluster = Cluster::start(2);
    let home = tempfile::tempdir().unwrap();
    let alice = cluster.client_with_home("server-1", home.path());
    alice.signup("alice", "alice-secret-pw-1").unwrap();
    let bob = cluster.client_with_home("server-2", home.path());
    bob.signup("bob", "bob-secret-pw-2").unwrap();
    let carol = cluster.user("carol", Some("server-1"));
    carol.logout().unwrap(); // offline: what is sent to her is stored

    let live = "live-plaintext-7f3a9c";
    let offline = "offline-plaintext-51be2d";
    alice.send_text("bob", live).1.wait(WAIT).unwrap();
    assert_eq!(next_message(&bob, WAIT), ("alice".into(), live.into()));
    assert!(sent_stored(alice.send_text("carol", offline).1.wait(WAIT)));
    assert_eq!(cluster.pending_count(), 1);
    // A group message: bob (online) reads it, carol's copy is stored.
    let group_text = "group-plaintext-9d41e7";
    alice
        .group_create("club", &["bob".into(), "carol".into()])
        .unwrap();
    assert!(sent_stored(
        alice.send_group_text("club", group_text).1.wait(WAIT)
    ));
    let got = fastchat_tests::wait_event(&bob, WAIT, "the group message", |e| match e {
        Event::GroupMessage { text, .. } => Some(text),
        _ => None,
    });
    assert_eq!(got, group_text);
    assert_eq!(cluster.pending_count(), 2);
    // A file to carol (stored) and bob (live), under a name that is a secret too.
    let file_text = "file-plaintext-c03e11 ";
    let file_name = "file-name-secret-8a2f.txt";
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join(file_name);
    std::fs::write(&path, file_text.repeat(5_000)).unwrap();
    for to in ["carol", "bob"] {
        alice
            .send_file(&Conversation::User(to.into()), &path, &mut |_, _| {})
            .unwrap();
    }
    let got = fastchat_tests::wait_event(&bob, WAIT, "the file", |e| match e {
        Event::File { name, .. } => Some(name),
        _ => None,
    });
    assert_eq!(got, file_name);
    assert!(cluster.pending_count() > 2, "carol's file is stored");

    let private_pem = std::fs::read_to_string(home.path().join("keys/alice.key")).unwrap();
    // A line from the middle of the PEM body: the key's bytes, whatever the framing.
    let private_line = private_pem.lines().nth(5).unwrap().to_string();
    let mut dump = dump_database(&cluster);
    // Bodies are stored as base64: look inside them too, so that a body stored in the
    // clear (merely encoded) would be caught.
    for row in cluster
        .db
        .connect()
        .query("SELECT body FROM pending", &[])
        .unwrap()
    {
        let bytes = Blob::from_base64(row.get(0))
            .to_bytes()
            .expect("base64 body");
        dump.push_str(&String::from_utf8_lossy(&bytes));
        dump.push('\n');
    }
    let logs = ["balancer", "server-1", "server-2"]
        .iter()
        .map(|n| cluster.log(n))
        .collect::<Vec<_>>()
        .join("\n");
    for (name, text) in [("database", &dump), ("logs", &logs)] {
        for secret in [
            live,
            offline,
            group_text,
            file_text,
            file_name,
            "alice-secret-pw-1",
            "bob-secret-pw-2",
            "carol-password",
            "PRIVATE KEY",
            &private_line,
        ] {
            assert!(!leaks(text, secret), "the {name} contain {secret:?}");
        }
    }
    // The server was never given the password: what it hashed is the login secret the
    // client derives from it, and the backup's key cannot be derived from that.
    let hash: String = cluster
        .db
        .connect()
        .query_one("SELECT password_hash FROM users WHERE name = 'alice'", &[])
        .unwrap()
        .get(0);
    assert!(verify_password(
        &login_secret("alice", "alice-secret-pw-1"),
        &hash
    ));
    assert!(!verify_password("alice-secret-pw-1", &hash));
    assert!(open_key_backup(
        &stored_backup(&cluster, "alice"),
        &login_secret("alice", "alice-secret-pw-1")
    )
    .is_err());

    // What the server does hold: public keys, sealed backups, wrapped conversation and
    // group keys.
    assert!(dump.contains("\"epoch\":1") || dump.contains("\"epoch\": 1"));
    assert!(dump.contains("BEGIN PUBLIC KEY"));
    assert!(dump.contains("fcbackup1$"));
    let keys: i64 = cluster
        .db
        .connect()
        .query_one("SELECT count(*) FROM conversation_keys", &[])
        .unwrap()
        .get(0);
    assert_eq!(keys, 2, "alice-bob and alice-carol each have one key");
}

#[test]
fn a_fresh_home_restores_the_key_from_the_backup_and_passwd_reseals_it() {
    let cluster = Cluster::start(2);
    let first_home = tempfile::tempdir().unwrap();
    let bob = cluster.client_with_home("server-2", first_home.path());
    bob.signup("bob", "old-password").unwrap();
    bob.logout().unwrap();
    let key_file = first_home.path().join("keys/bob.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the cached private key is the user's only"
    );
    drop(bob);

    let alice = cluster.user("alice", Some("server-1"));
    assert!(sent_stored(
        alice.send_text("bob", "while you were away").1.wait(WAIT)
    ));

    // A wrong password opens nothing: the login is refused, and the stored backup
    // does not open with it.
    let fresh_home = tempfile::tempdir().unwrap();
    let bob = cluster.client_with_home("server-1", fresh_home.path());
    let err = bob.login("bob", "wrong-password").unwrap_err();
    assert_eq!(err.code, ErrorCode::BadPassword);
    assert!(open_key_backup(&stored_backup(&cluster, "bob"), "wrong-password").is_err());

    // The right password on an empty home restores the key, and the offline message opens.
    bob.login("bob", "old-password").unwrap();
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "while you were away".into())
    );
    let restored = std::fs::read_to_string(fresh_home.path().join("keys/bob.key")).unwrap();
    assert_eq!(restored, std::fs::read_to_string(&key_file).unwrap());

    // /passwd re-seals the backup: the old password then opens nothing.
    bob.passwd("old-password", "new-password").unwrap();
    let backup = stored_backup(&cluster, "bob");
    assert!(open_key_backup(&backup, "old-password").is_err());
    assert!(open_key_backup(&backup, "new-password").is_ok());
    let err = bob.passwd("old-password", "x").unwrap_err();
    assert_eq!(err.code, ErrorCode::BadPassword);
    bob.logout().unwrap();

    let third_home = tempfile::tempdir().unwrap();
    let bob = cluster.client_with_home("server-2", third_home.path());
    assert_eq!(
        bob.login("bob", "old-password").unwrap_err().code,
        ErrorCode::BadPassword
    );
    bob.login("bob", "new-password").unwrap();
    alice
        .send_text("bob", "after the change")
        .1
        .wait(WAIT)
        .unwrap();
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "after the change".into())
    );
}

/// The next `undecryptable` (or other refused) message event.
fn next_refusal(client: &Client) -> (String, ErrorCode) {
    wait_event(client, WAIT, "an undecryptable message", |e| match e {
        Event::Undecryptable { from, error, .. } => Some((from, error.code)),
        Event::Message { from, text, .. } => panic!("opened a bad message from {from}: {text}"),
        _ => None,
    })
}

#[test]
fn a_flipped_byte_or_a_replay_to_another_user_gives_undecryptable() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    let carol = cluster.user("carol", Some("server-2"));
    bob.logout().unwrap();
    carol.logout().unwrap();
    assert!(sent_stored(
        alice.send_text("bob", "tamper with me").1.wait(WAIT)
    ));
    assert!(sent_stored(
        alice.send_text("bob", "and then this one").1.wait(WAIT)
    ));

    let mut db = cluster.db.connect();
    // Replay alice's first message to carol under the same id and sender.
    db.execute(
        "INSERT INTO pending (recipient, sender, msg_id, body, sent_at) \
         SELECT 'carol', sender, msg_id, body, sent_at FROM pending \
         WHERE recipient = 'bob' ORDER BY seq LIMIT 1",
        &[],
    )
    .unwrap();
    // Flip one byte of bob's first stored ciphertext (just before the GCM tag).
    cluster.corrupt_stored("SELECT min(seq) FROM pending WHERE recipient = 'bob'");

    let bob = cluster.client_on("server-1");
    bob.login("bob", "bob-password").unwrap();
    assert_eq!(
        next_refusal(&bob),
        ("alice".to_string(), ErrorCode::Undecryptable)
    );
    // ...and the client goes on: the next message opens.
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "and then this one".into())
    );

    let carol = cluster.client_on("server-2");
    carol.login("carol", "carol-password").unwrap();
    assert_eq!(
        next_refusal(&carol),
        ("alice".to_string(), ErrorCode::Undecryptable)
    );
    // Refused messages are acknowledged, not redelivered forever.
    wait_until("the stored messages to be acknowledged", WAIT, || {
        cluster.pending_count() == 0
    });
}

fn openssl_reads(args: &[&str], file: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(file)
        .arg("-noout")
        .output()
        .expect("the openssl tool runs");
    assert!(
        out.status.success(),
        "openssl {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_key_the_project_writes_loads_with_the_openssl_tool() {
    let cluster = Cluster::start(1);
    let home = tempfile::tempdir().unwrap();
    let alice = cluster.client_with_home("server-1", home.path());
    alice.signup("alice", "pw").unwrap();
    openssl_reads(&["pkey"], &home.path().join("keys/alice.key"));
    openssl_reads(&["pkey", "-pubin"], &home.path().join("keys/alice.pub"));
    let tls = cluster.tls_dir();
    openssl_reads(&["x509"], &tls.join("ca.pem"));
    openssl_reads(&["x509"], &tls.join("server-1.pem"));
    openssl_reads(&["pkey"], &tls.join("server-1.key"));
    openssl_reads(&["pkey"], &tls.join("ca.key"));
    openssl_reads(&["pkey"], &cluster.ticket_key_path());
    // The public key the server stores is the same standard PEM.
    let stored: String = cluster
        .db
        .connect()
        .query_one("SELECT public_key FROM users WHERE name = 'alice'", &[])
        .unwrap()
        .get(0);
    let file = home.path().join("stored.pub");
    std::fs::write(&file, stored).unwrap();
    openssl_reads(&["pkey", "-pubin"], &file);
}

#[test]
fn a_connection_keeps_its_keys_through_a_refused_login_and_a_relogin() {
    let cluster = Cluster::start(2);
    let alice = cluster.user("alice", Some("server-1"));
    let bob = cluster.user("bob", Some("server-2"));
    // A second login on a logged-in connection is refused and leaves the keys in place.
    let err = bob.login("bob", "bob-password").unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyLoggedIn);
    alice
        .send_text("bob", "still readable")
        .1
        .wait(WAIT)
        .unwrap();
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "still readable".into())
    );
    // Log out and back in on the same connection: what was stored meanwhile opens.
    bob.logout().unwrap();
    assert!(sent_stored(
        alice.send_text("bob", "while logged out").1.wait(WAIT)
    ));
    bob.login("bob", "bob-password").unwrap();
    assert_eq!(
        next_message(&bob, WAIT),
        ("alice".into(), "while logged out".into())
    );
    // The same connection can then serve another user.
    bob.logout().unwrap();
    bob.signup("dave", "dave-password").unwrap();
    alice.send_text("dave", "hi dave").1.wait(WAIT).unwrap();
    assert_eq!(next_message(&bob, WAIT), ("alice".into(), "hi dave".into()));
}
