//! Connections: a single client for one-off work, or an r2d2 pool for servers.

use crate::error::StoreError;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use std::time::Duration;

/// A pool of PostgreSQL connections shared by a process's threads.
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// A connection checked out of a [`Pool`]; derefs to `postgres::Client`.
pub type PooledClient = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Opens one connection.
pub fn connect(url: &str) -> Result<postgres::Client, StoreError> {
    Ok(postgres::Client::connect(url, NoTls)?)
}

/// Opens one connection whose commits do not wait for the write-ahead log to reach
/// disk: for heartbeats, rewritten every half second, where a commit lost in a crash
/// costs nothing and waiting for a busy disk could make a live server look dead.
/// It never waits long: connecting, a silent peer (keepalives, unacknowledged data)
/// and each statement are bounded, so a database gone half-open cannot stop the
/// heartbeats for good.
pub fn connect_for_maintenance(url: &str) -> Result<postgres::Client, StoreError> {
    let mut client = bounded_config(url, Duration::from_secs(10))?.connect(NoTls)?;
    client.batch_execute("SET synchronous_commit TO off; SET statement_timeout TO '5s'")?;
    Ok(client)
}

/// Builds a pool of at most `size` connections. Connections are made lazily and a
/// checkout waits at most `wait` (then the caller answers `unavailable`).
///
/// Each statement runs at most `statement_timeout`, which is also (but at least 5 s) how
/// long a pooled connection may go without an answer from a silent database: a lock
/// nobody releases or a database gone half-open turns into an `unavailable` answer
/// instead of a thread stuck for good. The server's default, 30 s, is generous: the longest statements (a
/// group commit of 1,000 messages, a fetch of 1,000 stored ones) take milliseconds.
pub fn pool(
    url: &str,
    size: u32,
    wait: Duration,
    statement_timeout: Duration,
) -> Result<Pool, StoreError> {
    // Not below 5 s for TCP: a short statement bound must not drop connections over a
    // brief stall.
    let mut config = bounded_config(url, statement_timeout.max(Duration::from_secs(5)))?;
    let options = format!(
        "{} -c statement_timeout={}",
        config.get_options().unwrap_or_default(),
        statement_timeout.as_millis()
    );
    config.options(options.trim_start());
    let manager = PostgresConnectionManager::new(config, NoTls);
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(wait)
        .build_unchecked(manager))
}

/// The connection settings of `url` with connecting bounded (5 s) and a silent database
/// noticed: TCP keepalives, and unacknowledged data given up after `silent`.
fn bounded_config(url: &str, silent: Duration) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| StoreError::Unavailable(format!("bad database url: {e}")))?;
    config
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .tcp_user_timeout(silent);
    Ok(config)
}
