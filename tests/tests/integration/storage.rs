//! Stored messages on a real PostgreSQL: taken in delivery order, page by page, along
//! the index whatever the planner's statistics say.

use fastchat_sql::{NewPending, NewUser, TAKE_PENDING, TAKE_PENDING_SETTINGS};
use fastchat_tests::TestDb;
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
        body: Arc::from("eA=="),
        // Stored out of delivery order: several per millisecond, counters descending.
        sent_at: 1_700_000_000_000 + n / 7,
        order_key: 1_000_000 - n,
        group: None,
    }
}

/// Right after a burst of stores, before autovacuum has analyzed `pending` again, the
/// statistics say a recipient has few rows; left to them, the planner read and sorted
/// all of the recipient's rows for each page. `take_pending` pages through 20,000 rows
/// in order, and its query's plan is the ordered index scan, with no sort, even where
/// the planner's costs favour a sort.
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

    // Costs that make the index look dear, as statistics that undercount the recipient's
    // rows did: the plan must not change.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SET LOCAL random_page_cost = 1000")
        .unwrap();
    tx.batch_execute(TAKE_PENDING_SETTINGS).unwrap();
    let plan: Vec<String> = tx
        .query(
            &format!("EXPLAIN {TAKE_PENDING}"),
            &[&"bob", &i64::MIN, &i64::MIN, &1000i64],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using pending_recipient_order"),
        "{plan}"
    );
    assert!(!plan.contains("Sort"), "{plan}");

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
