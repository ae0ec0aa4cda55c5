//! Schema migrations: numbered SQL files applied in order, each recorded, all under an
//! advisory lock so that two servers starting at once never both apply one.

use crate::error::StoreError;

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "keys", include_str!("../migrations/0002_keys.sql")),
    (
        3,
        "pending_order",
        include_str!("../migrations/0003_pending_order.sql"),
    ),
    (
        4,
        "resume_tokens",
        include_str!("../migrations/0004_resume_tokens.sql"),
    ),
    (5, "groups", include_str!("../migrations/0005_groups.sql")),
    (6, "friends", include_str!("../migrations/0006_friends.sql")),
    (
        7,
        "pending_one_index",
        include_str!("../migrations/0007_pending_one_index.sql"),
    ),
    (
        8,
        "servers_recent_tickets",
        include_str!("../migrations/0008_servers_recent_tickets.sql"),
    ),
];

/// Arbitrary constant naming FastChat's migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x4641_5354_4348_4154; // "FASTCHAT"

/// Brings the schema up to date; returns how many migrations were applied now.
pub fn migrate(client: &mut postgres::Client) -> Result<usize, StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        log::info!("applying migration {version:04} {name}");
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )?;
        count += 1;
    }
    tx.commit()?;
    Ok(count)
}
