//! The local history: every message this client sent or opened, one JSON line each in
//! `HOME/history/ME/users/PEER.jsonl` or `HOME/history/ME/groups/GROUP.jsonl`. The
//! servers keep no readable history; this is the only one.

use crate::error::ClientError;
use fastchat_common::protocol::UnixMillis;
use fastchat_common::ErrorCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// A conversation: with a user, or in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// Direct messages with this user.
    User(String),
    /// This group's messages.
    Group(String),
}

/// One message in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The message id.
    pub id: String,
    /// Who wrote it.
    pub from: String,
    /// Its text.
    pub text: String,
    /// When the server accepted it (or, for our own messages, when we sent it).
    pub sent_at: UnixMillis,
}

/// Appends to and reads the history files (nothing at all without a HOME).
pub(crate) struct History {
    home: Option<PathBuf>,
    lock: Mutex<()>,
}

impl History {
    pub fn new(home: Option<PathBuf>) -> History {
        History {
            home,
            lock: Mutex::new(()),
        }
    }

    fn path(&self, me: &str, conversation: &Conversation) -> Option<PathBuf> {
        let (dir, name) = match conversation {
            Conversation::User(u) => ("users", u),
            Conversation::Group(g) => ("groups", g),
        };
        // Names are checked by the servers (no separators, no dots-only names), but a
        // hostile server could send anything: refuse what could leave the folder.
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return None;
        }
        Some(
            self.home
                .as_ref()?
                .join("history")
                .join(me)
                .join(dir)
                .join(format!("{name}.jsonl")),
        )
    }

    /// Appends a message; failures are only logged (the message itself is not lost).
    pub fn record(&self, me: &str, conversation: &Conversation, entry: &HistoryEntry) {
        let Some(path) = self.path(me, conversation) else {
            return;
        };
        let _guard = self.lock.lock();
        let mut line = serde_json::to_vec(entry).expect("entries serialize");
        line.push(b'\n');
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
            })
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            log::warn!("history not written to {}: {e}", path.display());
        }
    }

    /// The last `n` messages of a conversation, oldest first.
    pub fn last(
        &self,
        me: &str,
        conversation: &Conversation,
        n: usize,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        let Some(path) = self.path(me, conversation) else {
            return Ok(Vec::new());
        };
        let _guard = self.lock.lock();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ClientError::new(
                    ErrorCode::LocalError,
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        let mut last = std::collections::VecDeque::with_capacity(n);
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(entry) = serde_json::from_str::<HistoryEntry>(&line) {
                if last.len() == n {
                    last.pop_front();
                }
                if n > 0 {
                    last.push_back(entry);
                }
            }
        }
        Ok(last.into())
    }

    /// Whether a group conversation has any history here.
    pub fn has_group(&self, me: &str, group: &str) -> bool {
        self.path(me, &Conversation::Group(group.to_string()))
            .is_some_and(|p| p.exists())
    }
}
