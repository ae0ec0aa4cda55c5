//! The server registry: who is up, where, how loaded, and whether it still beats.

use crate::error::StoreError;
use crate::HEARTBEAT_TIMEOUT_MS;

/// A registered server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerRow {
    /// Unique name, e.g. `server-1`.
    pub name: String,
    /// Address clients connect to.
    pub client_addr: String,
    /// Address peers connect to.
    pub peer_addr: String,
    /// Changes at every start; the later start has the larger one.
    pub incarnation: i64,
    /// Clients connected (and greeted) at the last heartbeat.
    pub clients: i32,
    /// Mesh links up at the last heartbeat.
    pub peers: i32,
    /// Load figure at the last heartbeat.
    pub load: f32,
    /// Whether the server is shutting down and takes no new clients.
    pub draining: bool,
    /// Nonces of the tickets that clients said hello with in the seconds before the
    /// last heartbeat: those clients are in `clients`. Read only by
    /// [`live_servers_with_tickets`] (the balancer's); empty from [`live_servers`].
    pub recent_tickets: Vec<String>,
}

fn row_to_server(row: &postgres::Row) -> ServerRow {
    ServerRow {
        name: row.get("name"),
        client_addr: row.get("client_addr"),
        peer_addr: row.get("peer_addr"),
        incarnation: row.get("incarnation"),
        clients: row.get("clients"),
        peers: row.get("peers"),
        load: row.get("load"),
        draining: row.get("draining"),
        recent_tickets: row.get("recent_tickets"),
    }
}

/// Registers (or re-registers) a server at start; returns its new incarnation.
pub fn register_server(
    client: &mut postgres::Client,
    name: &str,
    client_addr: &str,
    peer_addr: &str,
) -> Result<i64, StoreError> {
    let row = client.query_one(
        "INSERT INTO servers (name, client_addr, peer_addr, incarnation)
         VALUES ($1, $2, $3, nextval('server_incarnation'))
         ON CONFLICT (name) DO UPDATE SET
             client_addr = EXCLUDED.client_addr, peer_addr = EXCLUDED.peer_addr,
             incarnation = EXCLUDED.incarnation, started_at = now(), heartbeat = now(),
             clients = 0, load = 0, draining = false, recent_tickets = '{}'
         RETURNING incarnation",
        &[&name, &client_addr, &peer_addr],
    )?;
    Ok(row.get(0))
}

/// What a heartbeat reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    /// Clients connected and greeted.
    pub clients: i32,
    /// Mesh links up.
    pub peers: i32,
    /// Load figure.
    pub load: f32,
    /// Nonces of the tickets of the latest of those clients (see
    /// [`ServerRow::recent_tickets`]).
    pub recent_tickets: Vec<String>,
}

/// Records that the server is alive, with its current load. Returns `false` when the
/// row is gone or belongs to a newer incarnation (someone else took the name).
pub fn heartbeat(
    client: &mut postgres::Client,
    name: &str,
    incarnation: i64,
    beat: &Beat,
) -> Result<bool, StoreError> {
    let n = client.execute(
        "UPDATE servers SET heartbeat = now(), clients = $3, peers = $4, load = $5,
             recent_tickets = $6
         WHERE name = $1 AND incarnation = $2",
        &[
            &name,
            &incarnation,
            &beat.clients,
            &beat.peers,
            &beat.load,
            &beat.recent_tickets,
        ],
    )?;
    Ok(n == 1)
}

/// Marks the server as draining: the balancer stops assigning it.
pub fn mark_draining(client: &mut postgres::Client, name: &str) -> Result<(), StoreError> {
    client.execute(
        "UPDATE servers SET draining = true WHERE name = $1",
        &[&name],
    )?;
    Ok(())
}

/// Removes the server's row (at a clean shutdown), if it is still this incarnation's.
pub fn remove_server(
    client: &mut postgres::Client,
    name: &str,
    incarnation: i64,
) -> Result<(), StoreError> {
    client.execute(
        "DELETE FROM servers WHERE name = $1 AND incarnation = $2",
        &[&name, &incarnation],
    )?;
    Ok(())
}

/// Servers whose heartbeat is fresh (draining ones included; callers filter), without
/// their `recent_tickets` (up to thousands each; only the balancer needs them).
pub fn live_servers(client: &mut postgres::Client) -> Result<Vec<ServerRow>, StoreError> {
    query_live_servers(client, "'{}'::text[]")
}

/// [`live_servers`], with each server's `recent_tickets`.
pub fn live_servers_with_tickets(
    client: &mut postgres::Client,
) -> Result<Vec<ServerRow>, StoreError> {
    query_live_servers(client, "recent_tickets")
}

fn query_live_servers(
    client: &mut postgres::Client,
    tickets: &str,
) -> Result<Vec<ServerRow>, StoreError> {
    let rows = client.query(
        &format!(
            "SELECT name, client_addr, peer_addr, incarnation, clients, peers, load, draining,
                    {tickets} AS recent_tickets
             FROM servers
             WHERE heartbeat > now() - make_interval(secs => $1::bigint / 1000.0)
             ORDER BY name"
        ),
        &[&HEARTBEAT_TIMEOUT_MS],
    )?;
    Ok(rows.iter().map(row_to_server).collect())
}

/// Names of servers whose heartbeat is stale: presumed dead.
pub fn stale_servers(client: &mut postgres::Client) -> Result<Vec<String>, StoreError> {
    let rows = client.query(
        "SELECT name FROM servers
         WHERE heartbeat <= now() - make_interval(secs => $1::bigint / 1000.0)",
        &[&HEARTBEAT_TIMEOUT_MS],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
