//! Test fixtures: real FastChat clusters (balancer and servers as processes, a database
//! of their own on the test PostgreSQL), clients, and bounded waits.
//!
//! Needs `FASTCHAT_TEST_DATABASE_URL` (a URL with the right to create databases) and the
//! release binaries (`FASTCHAT_BIN_DIR`, else the directory above the test binary);
//! `scripts/test.sh` provides both.
#![deny(missing_docs)]

mod cluster;
mod database;
mod raw;
mod wait;

pub use cluster::{bin, free_port, make_pki, signal_and_wait, Cluster, ClusterOptions};
pub use database::{PrivatePostgres, TestDb};
pub use raw::RawConn;
pub use wait::{next_message, sent_stored, wait_event, wait_for, wait_until};
