//! FastChat's PostgreSQL layer: numbered migrations and the domain functions the server
//! and balancer call. SQL text lives here and nowhere else.
#![deny(missing_docs)]

mod error;
mod friends;
mod groups;
mod keys;
mod migrate;
mod pending;
mod pool;
mod presence;
mod resume;
mod servers;
mod users;

pub use error::StoreError;
pub use friends::{add_friend, followers_of, friends_of, remove_friend};
pub use groups::{
    add_member, create_group, group_info, group_key, group_membership, groups_of, remove_member,
    Change, GroupError, GroupInfo, GroupRefusal,
};
pub use keys::{conversation_key, offer_conversation_key, ConversationKeyRow};
pub use migrate::{migrate, MIGRATIONS};
pub use pending::{
    delete_pending, store_pending, take_pending, NewPending, PendingCursor, PendingMessage,
};
pub use pool::{connect, connect_for_maintenance, pool, Pool, PooledClient};
pub use presence::{clear_presence, clear_server_presence, reconcile_presence, set_presence};
pub use resume::{issue_resume_token, redeem_resume_token, revoke_resume_token};
pub use servers::{
    heartbeat, live_servers, live_servers_with_tickets, mark_draining, register_server,
    remove_server, stale_servers, Beat, ServerRow,
};
pub use users::{
    account, change_password, create_user, public_key, user_exists, Account, Credentials, NewUser,
};

/// A heartbeat older than this marks a server dead (the balancer stops assigning it, its
/// peers mark its users offline).
pub const HEARTBEAT_TIMEOUT_MS: i64 = 3000;
