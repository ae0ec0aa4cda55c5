//! The local history: every message this client sent or opened, one JSON line each in
//! `HOME/history/ME/users/PEER.jsonl` or `HOME/history/ME/groups/GROUP.jsonl`. The
//! servers keep no readable history; this is the only one.

use crate::appender::Appender;
use crate::error::ClientError;
use fastchat_common::protocol::UnixMillis;
use fastchat_common::ErrorCode;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
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

/// A line about to be written: a [`HistoryEntry`] that borrows what it holds, so that
/// recording a message copies nothing but the line itself.
#[derive(Serialize)]
pub(crate) struct EntryRef<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub text: &'a str,
    pub sent_at: UnixMillis,
}

/// Which conversation a line goes to, borrowed (see [`Conversation`]).
#[derive(Clone, Copy)]
pub(crate) enum ConversationRef<'a> {
    User(&'a str),
    Group(&'a str),
}

#[cfg(test)]
impl HistoryEntry {
    pub(crate) fn borrow(&self) -> EntryRef<'_> {
        EntryRef {
            id: &self.id,
            from: &self.from,
            text: &self.text,
            sent_at: self.sent_at,
        }
    }
}

impl Conversation {
    pub(crate) fn borrow(&self) -> ConversationRef<'_> {
        match self {
            Conversation::User(u) => ConversationRef::User(u),
            Conversation::Group(g) => ConversationRef::Group(g),
        }
    }
}

/// Appends to and reads the history files (nothing at all without a HOME).
pub(crate) struct History {
    home: Option<PathBuf>,
    /// Lines wait here for at most `FLUSH_AFTER`; reading flushes first.
    appender: Appender,
}

impl History {
    pub fn new(home: Option<PathBuf>) -> History {
        History {
            home,
            appender: Appender::default(),
        }
    }

    fn path(&self, me: &str, conversation: ConversationRef<'_>) -> Option<PathBuf> {
        let (dir, name) = match conversation {
            ConversationRef::User(u) => ("users", u),
            ConversationRef::Group(g) => ("groups", g),
        };
        // Names are checked by the servers (no separators, no dots-only names), but a
        // hostile server could send anything: refuse what could leave the folder.
        let unsafe_name = |n: &str| n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.');
        if unsafe_name(name) || unsafe_name(me) {
            return None;
        }
        let home = self.home.as_ref()?;
        // One allocation: this runs for every message sent or opened.
        let mut path = PathBuf::with_capacity(
            home.as_os_str().len() + me.len() + name.len() + "/history///.jsonl".len() + 6,
        );
        path.push(home);
        path.push("history");
        path.push(me);
        path.push(dir);
        path.push(name);
        path.as_mut_os_string().push(".jsonl");
        Some(path)
    }

    /// Appends a message; failures are only logged (the message itself is not lost).
    pub fn record(&self, me: &str, conversation: ConversationRef<'_>, entry: &EntryRef<'_>) {
        let Some(path) = self.path(me, conversation) else {
            return;
        };
        let mut line =
            Vec::with_capacity(64 + entry.id.len() + entry.from.len() + entry.text.len());
        serde_json::to_writer(&mut line, entry).expect("entries serialize");
        line.push(b'\n');
        let written = self.appender.append(&path, &line);
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
        self.last_lines(me, conversation.borrow(), n, |line| {
            serde_json::from_slice::<HistoryEntry>(line).ok()
        })
        .map_err(|e| ClientError::new(ErrorCode::LocalError, format!("cannot read history: {e}")))
    }

    /// The `(from, id)` of a conversation's last `n` messages, oldest first (only those
    /// two fields of each line are read).
    pub fn recent_ids(
        &self,
        me: &str,
        conversation: ConversationRef<'_>,
        n: usize,
    ) -> std::io::Result<Vec<(String, String)>> {
        #[derive(Deserialize)]
        struct IdFrom<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            from: std::borrow::Cow<'a, str>,
        }
        self.last_lines(me, conversation, n, |line| {
            let e = serde_json::from_slice::<IdFrom<'_>>(line).ok()?;
            Some((e.from.into_owned(), e.id.into_owned()))
        })
    }

    /// What `parse` makes of a conversation's last `n` lines it can read, oldest first.
    /// The file is read from its end, only as far back as those lines take; a damaged
    /// line among them is skipped (then fewer than `n` may come back).
    fn last_lines<T>(
        &self,
        me: &str,
        conversation: ConversationRef<'_>,
        n: usize,
        parse: impl Fn(&[u8]) -> Option<T>,
    ) -> std::io::Result<Vec<T>> {
        const BLOCK: u64 = 64 * 1024;
        let Some(path) = self.path(me, conversation) else {
            return Ok(Vec::new());
        };
        self.appender.flush();
        let named = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(named(e)),
        };
        // Blocks from the end until they hold more than `n` line ends (or the file).
        let mut start = file.metadata().map_err(named)?.len();
        let mut blocks = Vec::new();
        let mut line_ends = 0;
        while start > 0 && line_ends <= n {
            let from = start.saturating_sub(BLOCK);
            let mut block = vec![0u8; (start - from) as usize];
            file.seek(SeekFrom::Start(from)).map_err(named)?;
            file.read_exact(&mut block).map_err(named)?;
            line_ends += block.iter().filter(|&&b| b == b'\n').count();
            blocks.push(block);
            start = from;
        }
        blocks.reverse();
        let tail = blocks.concat();
        let mut lines = tail.split(|&b| b == b'\n');
        if start > 0 {
            lines.next(); // begun before the blocks read
        }
        let mut parsed: Vec<T> = lines.rev().filter_map(parse).take(n).collect();
        parsed.reverse();
        Ok(parsed)
    }

    /// Writes out the lines not yet written.
    pub fn flush(&self) {
        self.appender.flush();
    }

    /// Whether a group conversation has any history here.
    pub fn has_group(&self, me: &str, group: &str) -> bool {
        self.appender.flush();
        self.path(me, ConversationRef::Group(group))
            .is_some_and(|p| p.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> HistoryEntry {
        HistoryEntry {
            id: format!("m{n}"),
            from: "ann".into(),
            text: format!("text {n}"),
            sent_at: n,
        }
    }

    #[test]
    fn lines_written_through_open_files_read_back_across_many_conversations() {
        let home = tempfile::tempdir().unwrap();
        let history = History::new(Some(home.path().to_path_buf()));
        // More conversations than files kept open, written to in turns.
        for round in 0..3 {
            for peer in 0..40 {
                let c = Conversation::User(format!("peer{peer}"));
                history.record("ann", c.borrow(), &entry(round).borrow());
            }
        }
        for peer in [0, 39] {
            let c = Conversation::User(format!("peer{peer}"));
            let got = history.last("ann", &c, 10).unwrap();
            assert_eq!(got, vec![entry(0), entry(1), entry(2)]);
        }
        assert_eq!(
            history
                .last("ann", &Conversation::Group("g".into()), 5)
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_removed_folder_is_made_again_on_the_next_message() {
        let home = tempfile::tempdir().unwrap();
        let history = History::new(Some(home.path().to_path_buf()));
        let c = Conversation::Group("team".into());
        history.record("ann", c.borrow(), &entry(1).borrow());
        history.flush();
        std::fs::remove_dir_all(home.path().join("history")).unwrap();
        history.record("ann", c.borrow(), &entry(2).borrow());
        assert_eq!(history.last("ann", &c, 10).unwrap(), vec![entry(2)]);
        assert!(history.has_group("ann", "team"));
    }

    #[test]
    fn names_that_would_leave_the_folder_are_not_written() {
        let home = tempfile::tempdir().unwrap();
        let history = History::new(Some(home.path().to_path_buf()));
        for name in ["../x", ".hidden", "", "a/b"] {
            history.record("ann", ConversationRef::User(name), &entry(1).borrow());
        }
        assert!(!home
            .path()
            .join("history")
            .join("ann")
            .join("users")
            .exists());
    }

    #[test]
    fn recent_ids_are_read_from_the_end_and_skip_damaged_lines() {
        let home = tempfile::tempdir().unwrap();
        let history = History::new(Some(home.path().to_path_buf()));
        let peer = Conversation::User("bob".into());
        for n in 0..3000 {
            let entry = HistoryEntry {
                id: format!("id{n}"),
                from: "bob".into(),
                text: "x".repeat(100),
                sent_at: n,
            };
            history.record("ann", peer.borrow(), &entry.borrow());
        }
        history.flush();
        let path = history.path("ann", peer.borrow()).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"\xff\xfe not a line\n").unwrap();
        history.record(
            "ann",
            peer.borrow(),
            &EntryRef {
                id: "last",
                from: "ann",
                text: "mine",
                sent_at: 1,
            },
        );
        let ids = history.recent_ids("ann", peer.borrow(), 1000).unwrap();
        assert_eq!(ids.len(), 1000);
        assert_eq!(ids[0], ("bob".to_string(), "id2001".to_string()));
        assert_eq!(ids[998], ("bob".to_string(), "id2999".to_string()));
        assert_eq!(ids[999], ("ann".to_string(), "last".to_string()));
        assert_eq!(
            history
                .recent_ids("ann", peer.borrow(), 5000)
                .unwrap()
                .len(),
            3001
        );
        let last = history.last("ann", &peer, 2).unwrap();
        assert_eq!(
            last[1].id, "last",
            "a damaged line does not end the history"
        );
        assert!(history
            .recent_ids("..", peer.borrow(), 10)
            .unwrap()
            .is_empty());
    }
}
