//! Stored messages on a real PostgreSQL: taken in delivery order, page by page, along
//! the index whatever the planner's statistics say.

use crate::WAIT;
use fastchat_sql::{NewPending, NewUser};
use fastchat_tests::{wait_for, TestDb};
use std::sync::Arc;

fn user(db: &mut postgres::Client, name: &str) {
    fastchat_sql::create_user(
        db,
        &NewUser {
            name,
            password_hash: "h",
            public_key: "k",
            key_backup: "b",
        },
    )
    .unwrap();
}

fn message(recipient: &str, n: i64) -> NewPending {
    NewPending {
        recipient: recipient.to_string(),
        sender: Arc::from("ann"),
        msg_id: Arc::from(format!("m{n}")),
        body: fastchat_common::Blob::from_base64("eA==".into()),
        // Stored out of delivery order: several per millisecond, counters descending.
        sent_at: 1_700_000_000_000 + n / 7,
        order_key: 1_000_000 - n,
        group: None,
    }
}

/// Index tuples read from `pending_recipient_order` so far, by this database's
/// statistics: `(scans, tuples)`.
fn index_reads(db: &mut postgres::Client) -> (i64, i64) {
    db.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    let row = db
        .query_one(
            "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes \
             WHERE indexrelname = 'pending_recipient_order'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Right after a burst of stores, before autovacuum has analyzed `pending` again, the
/// statistics say a recipient has few rows; left to them, the planner read and sorted
/// all of the recipient's rows for each page. `take_pending` pages through 20,000 rows
/// in order, and a page reads its 1,000 rows along the index and no more, even in a
/// session whose costs favour a sort (without its settings, it scans the table).
#[test]
fn stored_messages_are_taken_in_order_along_the_index_with_stale_statistics() {
    let test_db = TestDb::create();
    let mut db = test_db.connect();
    fastchat_sql::migrate(&mut db).unwrap();
    for name in ["ann", "bob", "cat"] {
        user(&mut db, name);
    }
    fastchat_sql::store_pending(&mut db, &[message("cat", 0), message("cat", 1)]).unwrap();
    db.batch_execute("ANALYZE pending").unwrap();
    let burst: Vec<NewPending> = (0..20_000).map(|n| message("bob", n)).collect();
    fastchat_sql::store_pending(&mut db, &burst).unwrap();

    // One page, in a session where index reads look dear (as statistics that undercount
    // the recipient's rows made them). Each step's statistics are sent at once: a
    // backend sends them when it goes idle after a statement that asked it to.
    db.batch_execute("SET random_page_cost = 1000").unwrap();
    db.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    let before = index_reads(&mut db);
    let first = fastchat_sql::take_pending(&mut db, "bob", None, 1000).unwrap();
    assert_eq!(first.len(), 1000);
    db.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    let counted = wait_for("the page's index statistics", WAIT, || {
        let now = index_reads(&mut db);
        (now.0 > before.0).then_some(now)
    });
    assert_eq!(counted.0 - before.0, 1, "one index scan");
    let read = counted.1 - before.1;
    assert!(
        (1000..=1001).contains(&read),
        "a page of 1,000 read {read} index entries"
    );
    db.batch_execute("RESET random_page_cost").unwrap();

    let mut expected: Vec<(i64, i64)> = burst.iter().map(|m| (m.sent_at, m.order_key)).collect();
    expected.sort();
    let (mut taken, mut after) = (Vec::new(), None);
    loop {
        let page = fastchat_sql::take_pending(&mut db, "bob", after, 1000).unwrap();
        assert!(page.iter().all(|m| m.recipient == "bob"));
        taken.extend(page.iter().map(|m| (m.sent_at, m.order_key)));
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some((last.sent_at, last.order_key)),
            _ => break,
        }
    }
    assert_eq!(taken, expected);
}
