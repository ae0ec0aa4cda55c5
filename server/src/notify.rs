//! Telling users wherever they are logged in: a frame pushed to local sessions, and one
//! `notify` per peer server listing its users. Not stored: only those online hear it.

use crate::router::Location;
use crate::state::{ServerState, LINK_WAIT};
use fastchat_common::protocol::client::ServerFrame;
use fastchat_common::protocol::peer::PeerFrame;
use std::collections::HashMap;

/// Pushes `frame` to each of `users` who is online, on this server or a peer.
pub fn notify(state: &ServerState, users: &[String], frame: &ServerFrame) {
    let mut remote: HashMap<std::sync::Arc<str>, Vec<String>> = HashMap::new();
    for user in users {
        match state.router.locate(user) {
            Some(Location::Local(session)) => {
                let _ = session.send_frame(frame);
            }
            Some(Location::Remote { server, .. }) => {
                remote.entry(server).or_default().push(user.clone())
            }
            None => {}
        }
    }
    for (server, users) in remote {
        if let Some(link) = state.router.peer(&server) {
            link.send(
                &PeerFrame::Notify {
                    users,
                    frame: frame.clone(),
                },
                LINK_WAIT,
            );
        }
    }
}

/// A peer's `notify`: push the frame to the listed users logged in here.
pub fn on_notify(state: &ServerState, users: &[String], frame: &ServerFrame) {
    for user in users {
        if let Some(Location::Local(session)) = state.router.locate(user) {
            let _ = session.send_frame(frame);
        }
    }
}
