//! Output of the terminal program: for people (`[HH:MM:SS] alice: text`) or one JSON
//! object per line (`--json`). Replies are printed in the order commands were given;
//! events as they come.

use chrono::{Local, TimeZone, Utc};
use fastchat_client::{ClientError, Event, OkResult, Reply};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::io::Write;

/// How output is shaped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (the JSON output's times).
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn clock(ms: i64) -> String {
    Local
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Writes output lines.
pub struct Output {
    mode: Mode,
}

impl Output {
    /// A printer in `mode`.
    pub fn new(mode: Mode) -> Output {
        Output { mode }
    }

    fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = match self.mode {
            Mode::Human => writeln!(out, "{}", shown(text)),
            // serde_json escapes what a terminal could take for a command.
            Mode::Json => writeln!(out, "{text}"),
        };
        let _ = out.flush();
    }

    fn json(&self, value: Value) {
        self.line(&value.to_string());
    }

    /// Prints the reply to command `cmd`; `human` is the success text for people.
    pub fn reply(&self, cmd: &str, reply: &Reply, human: &str) {
        match (self.mode, reply) {
            (Mode::Json, Ok(result)) => {
                let mut v = json!({"event": "ok", "cmd": cmd});
                match result {
                    Some(OkResult::Session { user, .. }) => v["user"] = json!(user),
                    Some(OkResult::Sent {
                        id,
                        sent_at,
                        stored,
                    }) => {
                        v["id"] = json!(id);
                        v["sent_at"] = json!(rfc3339(*sent_at));
                        v["stored"] = json!(stored);
                    }
                    Some(OkResult::Hello { server, .. }) => v["server"] = json!(server),
                    Some(OkResult::Group {
                        group,
                        epoch,
                        members,
                    }) => {
                        v["group"] = json!(group);
                        v["epoch"] = json!(epoch);
                        v["members"] = json!(members
                            .iter()
                            .map(|m| json!({"user": m.user, "admin": m.admin}))
                            .collect::<Vec<_>>());
                    }
                    Some(OkResult::Friends { friends }) => {
                        v["friends"] = json!(friends
                            .iter()
                            .map(|f| json!({"user": f.user, "online": f.online}))
                            .collect::<Vec<_>>());
                    }
                    Some(OkResult::Groups { groups }) => {
                        v["groups"] = json!(groups
                            .iter()
                            .map(|g| json!({"group": g.group, "admin": g.admin}))
                            .collect::<Vec<_>>());
                    }
                    // Key records are the library's business, never a command's reply.
                    Some(
                        OkResult::PublicKey { .. }
                        | OkResult::ConversationKey { .. }
                        | OkResult::GroupKey { .. },
                    )
                    | None => {}
                }
                self.json(v);
            }
            (Mode::Json, Err(e)) => self.error(cmd, e),
            (Mode::Human, Ok(_)) => {
                if !human.is_empty() {
                    self.line(&format!("* {human}"));
                }
            }
            (Mode::Human, Err(e)) => self.error(cmd, e),
        }
    }

    /// Prints a JSON `ok` with extra fields, or a human line.
    pub fn ok_with(&self, cmd: &str, fields: Value, human: &str) {
        match self.mode {
            Mode::Json => {
                let mut v = json!({"event": "ok", "cmd": cmd});
                if let (Some(obj), Some(extra)) = (v.as_object_mut(), fields.as_object()) {
                    for (k, val) in extra {
                        obj.insert(k.clone(), val.clone());
                    }
                }
                self.json(v);
            }
            Mode::Human => self.line(human),
        }
    }

    /// Prints an error reply.
    pub fn error(&self, cmd: &str, e: &ClientError) {
        match self.mode {
            Mode::Json => self.json(json!({
                "event": "error", "cmd": cmd, "code": e.code.as_str(), "message": e.message
            })),
            Mode::Human => self.line(&format!("! {}: {}", e.code, e.message)),
        }
    }

    /// Prints a pushed event.
    pub fn event(&self, event: &Event) {
        match (self.mode, event) {
            (
                Mode::Json,
                Event::Message {
                    id,
                    from,
                    text,
                    sent_at,
                    ..
                },
            ) => self.json(json!({
                "event": "message", "from": from, "text": text,
                "id": id, "sent_at": rfc3339(*sent_at)
            })),
            (
                Mode::Human,
                Event::Message {
                    from,
                    text,
                    sent_at,
                    ..
                },
            ) => self.line(&format!("[{}] {from}: {text}", clock(*sent_at))),
            (
                Mode::Json,
                Event::GroupMessage {
                    group,
                    id,
                    from,
                    text,
                    sent_at,
                },
            ) => self.json(json!({
                "event": "group_message", "group": group, "from": from, "text": text,
                "id": id, "sent_at": rfc3339(*sent_at)
            })),
            (
                Mode::Human,
                Event::GroupMessage {
                    group,
                    from,
                    text,
                    sent_at,
                    ..
                },
            ) => self.line(&format!("[{}] {from}@{group}: {text}", clock(*sent_at))),
            (
                Mode::Json,
                Event::Group {
                    group,
                    change,
                    user,
                    ..
                },
            ) => self.json(json!({
                "event": "group", "group": group, "change": change, "user": user
            })),
            (
                Mode::Human,
                Event::Group {
                    group,
                    change,
                    user,
                    ..
                },
            ) => self.line(&format!(
                "* {group}: {user} {}",
                match change.as_str() {
                    "created" => "created the group",
                    "added" => "joined",
                    "removed" => "was removed",
                    "left" => "left",
                    "admin" => "is now the admin",
                    other => other,
                }
            )),
            (
                Mode::Json,
                Event::File {
                    from,
                    group,
                    name,
                    path,
                    bytes,
                    sha256,
                },
            ) => self.json(json!({
                "event": "file", "from": from, "group": group, "name": name,
                "path": path.display().to_string(), "bytes": bytes, "sha256": sha256
            })),
            (
                Mode::Human,
                Event::File {
                    from, path, bytes, ..
                },
            ) => self.line(&format!(
                "* file from {from}: {} ({bytes} bytes)",
                path.display()
            )),
            (Mode::Json, Event::FileFailed { from, name, error }) => self.json(json!({
                "event": "error", "code": error.code.as_str(), "message": error.message,
                "from": from, "name": name
            })),
            (Mode::Human, Event::FileFailed { from, name, error }) => self.line(&format!(
                "! the file {name:?} from {from} arrived damaged and was not kept ({}): {}",
                error.code, error.message
            )),
            (Mode::Json, Event::Presence { user, online }) => {
                self.json(json!({"event": "presence", "user": user, "online": online}))
            }
            (Mode::Human, Event::Presence { user, online }) => self.line(&format!(
                "* {user} is {}",
                if *online { "online" } else { "offline" }
            )),
            (Mode::Json, Event::Delivered { id, to }) => {
                self.json(json!({"event": "delivered", "id": id, "to": to}))
            }
            (Mode::Human, Event::Delivered { to, .. }) => {
                self.line(&format!("* delivered to {to}"))
            }
            (Mode::Json, Event::Undecryptable { id, from, error }) => self.json(json!({
                "event": "error", "code": error.code.as_str(), "message": error.message,
                "id": id, "from": from
            })),
            (Mode::Human, Event::Undecryptable { from, error, .. }) => self.line(&format!(
                "! a message from {from} does not open ({}): {}",
                error.code, error.message
            )),
            (Mode::Json, Event::SessionReplaced) => self.json(json!({"event": "session_replaced"})),
            (Mode::Human, Event::SessionReplaced) => {
                self.line("* this session was replaced by a login elsewhere")
            }
            (Mode::Json, Event::Reconnect { reason }) => {
                self.json(json!({"event": "reconnect", "reason": reason}))
            }
            (Mode::Human, Event::Reconnect { reason }) => {
                self.line(&format!("* the server asks us to reconnect: {reason}"))
            }
            (Mode::Json, Event::Reconnecting { reason }) => {
                self.json(json!({"event": "reconnecting", "reason": reason}))
            }
            (Mode::Human, Event::Reconnecting { reason }) => {
                self.line(&format!("* connection lost ({reason}); reconnecting"))
            }
            (Mode::Json, Event::Reconnected { server }) => {
                self.json(json!({"event": "reconnected", "server": server}))
            }
            (Mode::Human, Event::Reconnected { server }) => {
                self.line(&format!("* reconnected to {server}"))
            }
            (Mode::Json, Event::Disconnected { reason }) => {
                self.json(json!({"event": "disconnected", "reason": reason}))
            }
            (Mode::Human, Event::Disconnected { reason }) => {
                self.line(&format!("* disconnected: {reason}"))
            }
        }
    }
}

/// `text` as a terminal may show it: what others wrote (a message, a name, a file name)
/// could hold control characters, an escape sequence that moves the cursor, rewrites
/// earlier lines or retitles the window; each is shown escaped (`\u{1b}`, `\r`)
/// instead. Line breaks and tabs stay: a message may have several lines.
fn shown(text: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn control_characters_from_others_are_shown_escaped() {
        assert_eq!(shown("plain text, é ü 中"), "plain text, é ü 中");
        assert_eq!(shown("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(shown("two\nlines\r\tx\u{7}"), "two\nlines\\r\tx\\u{7}");
        assert_eq!(shown("\u{9b}31m\u{7f}"), "\\u{9b}31m\\u{7f}");
    }
}
