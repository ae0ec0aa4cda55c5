//! Integration tests: real processes (balancer, servers), real sockets, a real
//! PostgreSQL. One binary, a module per area.

mod accounts;
mod bad_input;
mod balancing;
mod e2e;
mod failover;
mod files;
mod frames;
mod friends;
mod groups;
mod loadtest;
mod membership;
mod mesh;
mod messages;
mod shutdown;
mod slow_consumer;
mod storage;
mod terminal;
mod tickets;
mod tls;

use std::time::Duration;

/// How long a test waits for any one thing to happen.
pub const WAIT: Duration = Duration::from_secs(15);
