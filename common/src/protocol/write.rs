//! Writing the frames that carry a message body (`send` and `group_send` to the server,
//! `deliver` between servers, `message` to a client) by hand, byte for byte what serde
//! writes for the owned frames (tested below).
//!
//! serde_json looks each byte of a string up in its escape table and copies runs
//! between escapes, which for a body (tens of KiB of base64 in a file's chunk) was a
//! sixth of a file transfer's CPU over its three writes. Here a string with nothing to
//! escape, as base64 never has, is checked in a loop the compiler vectorizes and copied
//! whole; anything else is written by serde_json itself.
//!
//! [`MessageOut`] and [`DeliverOut`] write from borrowed fields: a server relaying a
//! message (to each member of a group, say) writes it without first copying its id,
//! sender, body and group into an owned frame.
//!
//! Each of these frames also has a binary form (`binary.rs`): `to_frame(true)` writes it
//! when the body is held raw, and the JSON form otherwise.

use crate::blob::Blob;
use crate::protocol::binary;
use crate::protocol::client::{Request, RequestBody};
use crate::protocol::UnixMillis;

/// What a message carries on every link, borrowed.
#[derive(Clone, Copy)]
pub struct RelayedOut<'a> {
    /// The sender's message id.
    pub id: &'a str,
    /// The sender.
    pub from: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// The opaque body.
    pub body: &'a Blob,
    /// When the first server accepted it.
    pub sent_at: UnixMillis,
    /// For a member's copy of a group message: the group.
    pub group: Option<&'a str>,
}

/// A `message` frame (`ServerFrame::Message`) over borrowed fields.
pub struct MessageOut<'a> {
    /// Delivery tag.
    pub tag: u64,
    /// The message.
    pub message: RelayedOut<'a>,
    /// Whether it comes from storage.
    pub stored: bool,
}

/// A `deliver` frame (`PeerFrame::Deliver`) over borrowed fields.
pub struct DeliverOut<'a> {
    /// The sender's in-flight token.
    pub token: u64,
    /// The message.
    pub message: RelayedOut<'a>,
    /// The recipient's session on the receiver.
    pub session: Option<u64>,
}

/// Room a frame needs beyond its strings: keys, quotes, numbers.
const FRAME_KEYS: usize = 128;

impl RelayedOut<'_> {
    /// The size of a frame carrying this message but its body, escapes aside.
    fn fields_capacity(&self) -> usize {
        FRAME_KEYS
            + self.id.len()
            + self.from.len()
            + self.to.len()
            + self.group.map_or(0, str::len)
    }

    /// `,"id":…,"from":…,"to":…[,"body":…],"sent_at":…[,"group":…]`
    fn write_fields(&self, out: &mut Vec<u8>, body: Option<&str>) {
        str_field(out, "id", self.id);
        str_field(out, "from", self.from);
        str_field(out, "to", self.to);
        if let Some(body) = body {
            str_field(out, "body", body);
        }
        int_field(out, "sent_at", self.sent_at);
        if let Some(group) = self.group {
            str_field(out, "group", group);
        }
    }

    /// A `message` or `deliver` frame: `{"type":KIND,"KEY":N` (the tag or token), the
    /// message's fields, then `more` (the frame's own optional fields) and `}`.
    fn frame(
        &self,
        binary: bool,
        kind: &str,
        (key, n): (&str, u64),
        more: impl Fn(&mut Vec<u8>),
    ) -> Vec<u8> {
        frame_with_body(self.fields_capacity(), self.body, binary, |out, body| {
            out.extend_from_slice(br#"{"type":"#);
            push_json_str(out, kind);
            int_field(out, key, n);
            self.write_fields(out, body);
            more(out);
            out.push(b'}');
        })
    }
}

/// A frame's bytes: binary if `binary` and the body is held raw, else JSON with the
/// body as base64. `fields` writes the frame's JSON, the body's field when given.
fn frame_with_body(
    capacity: usize,
    body: &Blob,
    binary: bool,
    fields: impl Fn(&mut Vec<u8>, Option<&str>),
) -> Vec<u8> {
    match body.raw().filter(|_| binary) {
        Some(raw) => binary::write(capacity, |out| fields(out, None), raw),
        None => {
            let text = body.as_base64();
            let mut out = Vec::with_capacity(capacity + text.len());
            fields(&mut out, Some(&text));
            out
        }
    }
}

impl MessageOut<'_> {
    /// The frame: binary if `binary` and the body is held raw, JSON otherwise.
    pub fn to_frame(&self, binary: bool) -> Vec<u8> {
        self.message
            .frame(binary, "message", ("tag", self.tag), |out| {
                if self.stored {
                    out.extend_from_slice(br#","stored":true"#);
                }
            })
    }
}

impl DeliverOut<'_> {
    /// The frame: binary if `binary` and the body is held raw, JSON otherwise.
    pub fn to_frame(&self, binary: bool) -> Vec<u8> {
        self.message
            .frame(binary, "deliver", ("token", self.token), |out| {
                if let Some(session) = self.session {
                    int_field(out, "session", session);
                }
            })
    }
}

impl Request {
    /// The request's JSON: `send` and `group_send` by hand, the rest by serde.
    pub fn to_json(&self) -> Vec<u8> {
        self.to_frame(false)
    }

    /// The request as a frame: `send` and `group_send` in binary if `binary` and the
    /// body is held raw, everything else as JSON.
    pub fn to_frame(&self, binary: bool) -> Vec<u8> {
        let (kind, id, to_key, to, epoch, body) = match &self.body {
            RequestBody::Send { id, to, body } => ("send", id, "to", to, None, body),
            RequestBody::GroupSend {
                id,
                group,
                epoch,
                body,
            } => ("group_send", id, "group", group, Some(*epoch), body),
            _ => return serde_json::to_vec(self).expect("requests serialize"),
        };
        frame_with_body(
            FRAME_KEYS + id.len() + to.len(),
            body,
            binary,
            |out, body| {
                out.push(b'{');
                push_json_str(out, "req");
                out.push(b':');
                push_json_int(out, self.req);
                str_field(out, "type", kind);
                str_field(out, "id", id);
                str_field(out, to_key, to);
                if let Some(epoch) = epoch {
                    int_field(out, "epoch", epoch);
                }
                if let Some(body) = body {
                    str_field(out, "body", body);
                }
                out.push(b'}');
            },
        )
    }
}

/// `,"key":"value"`
fn str_field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    push_json_str(out, key);
    out.push(b':');
    push_json_str(out, value);
}

/// `,"key":n`
fn int_field(out: &mut Vec<u8>, key: &str, n: impl serde::Serialize) {
    out.push(b',');
    push_json_str(out, key);
    out.push(b':');
    push_json_int(out, n);
}

fn push_json_int(out: &mut Vec<u8>, n: impl serde::Serialize) {
    serde_json::to_writer(out, &n).expect("integers serialize");
}

/// Appends `s` as a JSON string, exactly as serde_json writes it: only `"`, `\` and
/// control characters (below 0x20) are escaped.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(out, s).expect("strings serialize");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte must be escaped. Without an early exit inside a block, so that the
/// compiler turns each block into a few vector compares.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.chunks(64).any(|block| {
        block.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Blob;
    use crate::protocol::client::ServerFrame;
    use crate::protocol::peer::PeerFrame;

    /// Strings with nothing to escape, and with each kind of escape at either end and
    /// in the middle of a long run.
    fn strings() -> Vec<String> {
        let long =
            Blob::from_bytes(&(0..=255u8).cycle().take(5000).collect::<Vec<_>>()).into_base64();
        let mut all = vec![
            String::new(),
            "bob".to_string(),
            "é ü 中文 🦀".to_string(),
            "\u{7f}\u{80}".to_string(),
            long.clone(),
        ];
        for special in ["\"", "\\", "\n", "\u{0}", "\u{1f}", "\t", "/"] {
            all.push(format!("{special}{long}"));
            all.push(format!("{long}{special}"));
            all.push(format!("{}{special}{}", &long[..2000], &long[2000..]));
        }
        all
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in strings() {
            let mut out = b"x".to_vec();
            push_json_str(&mut out, &s);
            assert_eq!(&out[1..], serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn the_borrowed_frames_write_what_the_owned_ones_write() {
        for s in strings() {
            let body = Blob::from_base64(s.clone());
            for (group, stored, session) in [(None, false, None), (Some(&*s), true, Some(4))] {
                let message = RelayedOut {
                    id: &s,
                    from: "ann",
                    to: &s,
                    body: &body,
                    sent_at: -1_700_000_000_000,
                    group,
                };
                let owned = ServerFrame::Message {
                    tag: u64::MAX,
                    id: s.clone(),
                    from: "ann".into(),
                    to: s.clone(),
                    body: Blob::from_base64(s.clone()),
                    sent_at: -1_700_000_000_000,
                    group: group.map(str::to_string),
                    stored,
                };
                let borrowed = MessageOut {
                    tag: u64::MAX,
                    message,
                    stored,
                };
                assert_eq!(
                    borrowed.to_frame(false),
                    serde_json::to_vec(&owned).unwrap()
                );
                let owned = PeerFrame::Deliver {
                    token: 5,
                    id: s.clone(),
                    from: "ann".into(),
                    to: s.clone(),
                    body: Blob::from_base64(s.clone()),
                    sent_at: -1_700_000_000_000,
                    group: group.map(str::to_string),
                    session,
                };
                let borrowed = DeliverOut {
                    token: 5,
                    message,
                    session,
                };
                assert_eq!(
                    borrowed.to_frame(false),
                    serde_json::to_vec(&owned).unwrap()
                );
            }
        }
    }

    #[test]
    fn requests_write_what_serde_writes() {
        for s in strings() {
            for body in [
                RequestBody::Send {
                    id: s.clone(),
                    to: s.clone(),
                    body: Blob::from_base64(s.clone()),
                },
                RequestBody::GroupSend {
                    id: s.clone(),
                    group: s.clone(),
                    epoch: 7,
                    body: Blob::from_base64(s.clone()),
                },
                RequestBody::Ack { tags: vec![1, 2] },
            ] {
                let request = Request { req: 42, body };
                assert_eq!(request.to_json(), serde_json::to_vec(&request).unwrap());
            }
        }
    }
}
