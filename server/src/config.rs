//! Command-line flags of `fastchat-server`.

use clap::Parser;
use std::path::PathBuf;

/// A FastChat server: serves clients, joins the mesh, keeps state in PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "fastchat-server", version)]
pub struct Config {
    /// Unique name of this server in the cluster, e.g. `server-1`.
    #[arg(long)]
    pub name: String,
    /// Address for clients (127.0.0.1 only, port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: String,
    /// Address for the other servers (port 0 picks one; it is published in the database).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub peer_listen: String,
    /// PostgreSQL URL.
    #[arg(long, env = "FASTCHAT_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Folder with the cluster CA (`ca.pem`) and this server's certificate and key
    /// (`NAME.pem`, `NAME.key`), as `fastchat-balancer tls` writes them.
    #[arg(long, env = "FASTCHAT_TLS_DIR")]
    pub tls_dir: PathBuf,
    /// The balancer's ticket public key (PEM).
    #[arg(long)]
    pub ticket_pubkey: PathBuf,
    /// Most members a group may have.
    #[arg(long, default_value_t = 256)]
    pub max_group_size: u32,
    /// Largest file a client may send, in bytes.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub max_file_size: u64,
    /// Database connections in the pool.
    #[arg(long, default_value_t = 16)]
    pub db_pool: u32,
    /// Seconds one statement on a pooled connection may run (and a silent database may
    /// stay silent) before the request is answered `unavailable`.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub db_statement_timeout: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
}
