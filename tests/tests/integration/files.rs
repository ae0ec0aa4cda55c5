//! Files through the real cluster: 20 MiB to a user, to a group and to an offline
//! user, byte-identical; hostile names saved safely; a damaged transfer never saved.

use crate::WAIT;
use fastchat_client::{Client, Conversation, ErrorCode, Event};
use fastchat_tests::{wait_event, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SIZE: usize = 20 * 1024 * 1024;

fn random_file(dir: &Path, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; size];
    openssl::rand::rand_bytes(&mut data).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// A client on `server` keeping its keys and downloads in a home of its own.
fn user_with_home(cluster: &Cluster, user: &str, server: &str) -> (Client, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let client = cluster.client_with_home(server, home.path());
    client.signup(user, &format!("{user}-password")).unwrap();
    (client, home)
}

/// The next file event: (from, group, name, path, bytes).
fn next_file(client: &Client) -> (String, Option<String>, String, PathBuf, u64) {
    wait_event(client, Duration::from_secs(120), "a file", |e| match e {
        Event::File {
            from,
            group,
            name,
            path,
            bytes,
            ..
        } => Some((from, group, name, path, bytes)),
        Event::FileFailed { error, .. } => panic!("file failed: {error}"),
        _ => None,
    })
}

#[test]
fn a_20_mib_file_reaches_a_user_a_group_and_an_offline_user_byte_identical() {
    let cluster = Cluster::start(2);
    let src = tempfile::tempdir().unwrap();
    let (path, data) = random_file(src.path(), "video.bin", SIZE);
    let (alice, _alice_home) = user_with_home(&cluster, "alice", "server-1");
    let (bob, bob_home) = user_with_home(&cluster, "bob", "server-2");
    let (carol, carol_home) = user_with_home(&cluster, "carol", "server-1");

    let sent = alice
        .send_file(&Conversation::User("bob".into()), &path, &mut |_, _| {})
        .unwrap();
    assert_eq!(sent.bytes, SIZE as u64);
    let (from, group, name, saved, bytes) = next_file(&bob);
    assert_eq!(
        (from.as_str(), group, name.as_str(), bytes),
        ("alice", None, "video.bin", SIZE as u64)
    );
    assert!(saved.starts_with(bob_home.path().join("downloads")));
    assert!(std::fs::read(&saved).unwrap() == data, "bob's copy differs");
    // The sender hears that a text was delivered, never of each of a file's chunks:
    // the first delivery it is told of is the text's.
    let (text_id, handle) = alice.send_text("bob", "did it arrive?");
    handle.wait(WAIT).unwrap();
    let first = wait_event(&alice, WAIT, "a delivery", |e| match e {
        Event::Delivered { id, .. } => Some(id),
        _ => None,
    });
    assert_eq!(first, text_id, "a delivery reported before the text's");

    alice
        .group_create("crew", &["bob".into(), "carol".into()])
        .unwrap();
    alice
        .send_file(&Conversation::Group("crew".into()), &path, &mut |_, _| {})
        .unwrap();
    for (member, home) in [(&bob, &bob_home), (&carol, &carol_home)] {
        let (_, group, _, saved, _) = next_file(member);
        assert_eq!(group.as_deref(), Some("crew"));
        assert!(saved.starts_with(home.path()));
        assert!(
            std::fs::read(&saved).unwrap() == data,
            "a group copy differs"
        );
    }
    // bob got the same name twice: the second copy has a suffix, nothing overwritten.
    let names: Vec<String> = std::fs::read_dir(bob_home.path().join("downloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"video.bin".to_string()) && names.contains(&"video (1).bin".to_string()),
        "{names:?}"
    );

    // To an offline user: stored, then received at login.
    carol.logout().unwrap();
    alice
        .send_file(&Conversation::User("carol".into()), &path, &mut |_, _| {})
        .unwrap();
    let carol = Client::connect(&cluster.config().with_home(carol_home.path())).unwrap();
    carol.login("carol", "carol-password").unwrap();
    let (_, _, _, saved, _) = next_file(&carol);
    assert!(
        std::fs::read(&saved).unwrap() == data,
        "the offline copy differs"
    );
}

#[test]
fn hostile_names_are_saved_inside_downloads_and_damage_is_reported() {
    let cluster = Cluster::start(1);
    let src = tempfile::tempdir().unwrap();
    let (path, data) = random_file(src.path(), "x", 100_000);
    let (alice, _h) = user_with_home(&cluster, "alice", "server-1");
    let (bob, bob_home) = user_with_home(&cluster, "bob", "server-1");
    let downloads = bob_home.path().join("downloads");

    alice
        .send_file_as(
            &Conversation::User("bob".into()),
            &path,
            Some("../../etc/passwd"),
            &mut |_, _| {},
        )
        .unwrap();
    let (_, _, name, saved, _) = next_file(&bob);
    assert_eq!(name, "../../etc/passwd");
    assert_eq!(saved, downloads.join("passwd"));
    assert!(std::fs::read(&saved).unwrap() == data);

    // A byte flipped in a stored chunk (bob offline): reported, and not saved.
    bob.logout().unwrap();
    alice
        .send_file_as(
            &Conversation::User("bob".into()),
            &path,
            Some("broken.bin"),
            &mut |_, _| {},
        )
        .unwrap();
    cluster.corrupt_stored("SELECT max(seq) FROM pending WHERE recipient = 'bob'");
    let bob = Client::connect(&cluster.config().with_home(bob_home.path())).unwrap();
    bob.login("bob", "bob-password").unwrap();
    let code = wait_event(&bob, WAIT, "the damaged file", |e| match e {
        Event::FileFailed { error, .. } => Some(error.code),
        Event::Undecryptable { error, .. } => Some(error.code),
        Event::File { name, .. } => panic!("{name} was saved though damaged"),
        _ => None,
    });
    // The tampered message does not open at all, or its chunk does not: either way the
    // transfer is reported and dropped.
    assert!(matches!(
        code,
        ErrorCode::Undecryptable | ErrorCode::DamagedFile
    ));
    std::thread::sleep(Duration::from_millis(500));
    let names: Vec<String> = std::fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("broken")), "{names:?}");
}
