//! Parsing of the frames that make up nearly all traffic under load (`send`,
//! `group_send` and `ack` to the server; `message`, and `ok` to a `send`, to a client; `deliver` and
//! `delivered` between servers) straight into their fields. serde's generic path for an internally tagged enum (and for `Request`, a
//! flattened one) first buffers every field as generic content and then converts it:
//! an allocation per field, twice, on every frame. Anything else, and anything the fast
//! path does not accept, goes the generic way, so errors read the same.
//!
//! The other way, [`MessageOut`] and [`DeliverOut`] write a `message` and a `deliver`
//! from borrowed fields: a server relaying a message (to each member of a group, say)
//! serializes it without first copying its id, sender, body and group into an owned
//! frame. They write exactly what the owned frames write (tested below).

use crate::blob::Blob;
use crate::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use crate::protocol::peer::PeerFrame;
use crate::protocol::UnixMillis;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Only the tag, borrowed; every other field is skipped without being kept.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct SendFields {
    req: u64,
    id: String,
    to: String,
    body: Blob,
}

#[derive(Deserialize)]
struct GroupSendFields {
    req: u64,
    id: String,
    group: String,
    epoch: u64,
    body: Blob,
}

#[derive(Deserialize)]
struct AckFields {
    req: u64,
    tags: Vec<u64>,
}

#[derive(Deserialize)]
struct MessageFields {
    tag: u64,
    id: String,
    from: String,
    to: String,
    body: Blob,
    sent_at: UnixMillis,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    stored: bool,
}

#[derive(Deserialize)]
struct DeliverFields {
    token: u64,
    id: String,
    from: String,
    to: String,
    body: Blob,
    sent_at: UnixMillis,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    session: Option<u64>,
}

#[derive(Deserialize)]
struct TokenFields {
    token: u64,
}

#[derive(Deserialize)]
struct TokensFields {
    tokens: Vec<u64>,
}

fn fast_peer_frame(bytes: &[u8]) -> Option<PeerFrame> {
    let tag: Tag<'_> = serde_json::from_slice(bytes).ok()?;
    match tag.kind.as_ref() {
        "deliver" => {
            let f: DeliverFields = serde_json::from_slice(bytes).ok()?;
            Some(PeerFrame::Deliver {
                token: f.token,
                id: f.id,
                from: f.from,
                to: f.to,
                body: f.body,
                sent_at: f.sent_at,
                group: f.group,
                session: f.session,
            })
        }
        "delivered" => {
            let f: TokenFields = serde_json::from_slice(bytes).ok()?;
            Some(PeerFrame::Delivered { token: f.token })
        }
        "delivered_many" => {
            let f: TokensFields = serde_json::from_slice(bytes).ok()?;
            Some(PeerFrame::DeliveredMany { tokens: f.tokens })
        }
        _ => None,
    }
}

fn fast_request(bytes: &[u8]) -> Option<Request> {
    let tag: Tag<'_> = serde_json::from_slice(bytes).ok()?;
    match tag.kind.as_ref() {
        "send" => {
            let f: SendFields = serde_json::from_slice(bytes).ok()?;
            Some(Request {
                req: f.req,
                body: RequestBody::Send {
                    id: f.id,
                    to: f.to,
                    body: f.body,
                },
            })
        }
        "group_send" => {
            let f: GroupSendFields = serde_json::from_slice(bytes).ok()?;
            Some(Request {
                req: f.req,
                body: RequestBody::GroupSend {
                    id: f.id,
                    group: f.group,
                    epoch: f.epoch,
                    body: f.body,
                },
            })
        }
        "ack" => {
            let f: AckFields = serde_json::from_slice(bytes).ok()?;
            Some(Request {
                req: f.req,
                body: RequestBody::Ack { tags: f.tags },
            })
        }
        _ => None,
    }
}

/// An `ok` whose result has the fields of `sent` (its kind is checked after).
#[derive(Deserialize)]
struct OkSentFields<'a> {
    req: u64,
    #[serde(borrow)]
    result: SentFields<'a>,
}

#[derive(Deserialize)]
struct SentFields<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    id: String,
    sent_at: UnixMillis,
    stored: bool,
}

fn fast_server_frame(bytes: &[u8]) -> Option<ServerFrame> {
    let tag: Tag<'_> = serde_json::from_slice(bytes).ok()?;
    if tag.kind == "ok" {
        let f: OkSentFields<'_> = serde_json::from_slice(bytes).ok()?;
        if f.result.kind != "sent" {
            return None;
        }
        return Some(ServerFrame::Ok {
            req: f.req,
            result: Some(OkResult::Sent {
                id: f.result.id,
                sent_at: f.result.sent_at,
                stored: f.result.stored,
            }),
        });
    }
    if tag.kind != "message" {
        return None;
    }
    let f: MessageFields = serde_json::from_slice(bytes).ok()?;
    Some(ServerFrame::Message {
        tag: f.tag,
        id: f.id,
        from: f.from,
        to: f.to,
        body: f.body,
        sent_at: f.sent_at,
        group: f.group,
        stored: f.stored,
    })
}

impl Request {
    /// Parses a request from JSON, the hot kinds directly (see the module).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Request> {
        match fast_request(bytes) {
            Some(request) => Ok(request),
            None => serde_json::from_slice(bytes),
        }
    }
}

impl PeerFrame {
    /// Parses a peer frame from JSON, `deliver` and `delivered` directly (see the
    /// module).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<PeerFrame> {
        match fast_peer_frame(bytes) {
            Some(frame) => Ok(frame),
            None => serde_json::from_slice(bytes),
        }
    }
}

impl ServerFrame {
    /// Parses a server frame from JSON, `message` directly (see the module).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<ServerFrame> {
        match fast_server_frame(bytes) {
            Some(frame) => Ok(frame),
            None => serde_json::from_slice(bytes),
        }
    }
}

/// What a message carries on every link, borrowed; `body` is the body's base64 text.
#[derive(Serialize, Clone, Copy)]
pub struct RelayedOut<'a> {
    /// The sender's message id.
    pub id: &'a str,
    /// The sender.
    pub from: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// The opaque body, base64.
    pub body: &'a str,
    /// When the first server accepted it.
    pub sent_at: UnixMillis,
    /// For a member's copy of a group message: the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
}

/// A `message` frame ([`ServerFrame::Message`]) over borrowed fields.
#[derive(Serialize)]
#[serde(tag = "type", rename = "message")]
pub struct MessageOut<'a> {
    /// Delivery tag.
    pub tag: u64,
    /// The message.
    #[serde(flatten)]
    pub message: RelayedOut<'a>,
    /// Whether it comes from storage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stored: bool,
}

/// A `deliver` frame ([`PeerFrame::Deliver`]) over borrowed fields.
#[derive(Serialize)]
#[serde(tag = "type", rename = "deliver")]
pub struct DeliverOut<'a> {
    /// The sender's in-flight token.
    pub token: u64,
    /// The message.
    #[serde(flatten)]
    pub message: RelayedOut<'a>,
    /// The recipient's session on the receiver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both_ways_request(body: RequestBody) {
        let request = Request { req: 7, body };
        let json = serde_json::to_vec(&request).unwrap();
        assert!(
            fast_request(&json).is_some(),
            "{}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(Request::from_json(&json).unwrap(), request);
        assert_eq!(serde_json::from_slice::<Request>(&json).unwrap(), request);
    }

    #[test]
    fn the_fast_path_reads_what_the_generic_one_reads() {
        both_ways_request(RequestBody::Send {
            id: "m1".into(),
            to: "bob".into(),
            body: Blob::from_bytes(b"sealed"),
        });
        both_ways_request(RequestBody::GroupSend {
            id: "m2".into(),
            group: "pals".into(),
            epoch: 3,
            body: Blob::from_bytes(b"sealed"),
        });
        both_ways_request(RequestBody::Ack {
            tags: vec![1, 2, 3],
        });
        for (group, stored) in [(None, false), (Some("pals".to_string()), true)] {
            let frame = ServerFrame::Message {
                tag: 9,
                id: "m\"3".into(),
                from: "ann".into(),
                to: "bob".into(),
                body: Blob::from_bytes(b"x"),
                sent_at: 1_700_000_000_000,
                group,
                stored,
            };
            let json = serde_json::to_vec(&frame).unwrap();
            assert!(fast_server_frame(&json).is_some());
            assert_eq!(ServerFrame::from_json(&json).unwrap(), frame);
        }
    }

    /// `borrowed` reads back as the owned frame, which writes the very same JSON: a
    /// field missing, misnamed, of another form or out of order would differ.
    fn writes_as<Owned: Serialize + serde::de::DeserializeOwned>(borrowed: &impl Serialize) {
        let json = serde_json::to_string(borrowed).unwrap();
        let owned: Owned = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&owned).unwrap(), json);
    }

    #[test]
    fn the_borrowed_frames_write_what_the_owned_ones_write() {
        let body = Blob::from_bytes(b"sealed");
        for (group, stored, session) in [(None, false, None), (Some("pals"), true, Some(4))] {
            let message = RelayedOut {
                id: "m\"3",
                from: "ann",
                to: "bob",
                body: body.as_base64(),
                sent_at: 1_700_000_000_000,
                group,
            };
            writes_as::<ServerFrame>(&MessageOut {
                tag: 9,
                message,
                stored,
            });
            writes_as::<PeerFrame>(&DeliverOut {
                token: 5,
                message,
                session,
            });
        }
    }

    #[test]
    fn other_kinds_and_bad_frames_are_left_to_the_generic_path() {
        let ping = br#"{"req":1,"type":"ping"}"#;
        assert!(fast_request(ping).is_none());
        assert_eq!(
            Request::from_json(ping).unwrap(),
            Request {
                req: 1,
                body: RequestBody::Ping
            }
        );
        // A field missing, a field of the wrong type, no tag, not JSON: the fast path
        // declines, and the generic path (whose error the client is told) refuses.
        for bad in [
            &br#"{"req":1,"type":"send","id":"m","to":"bob"}"#[..],
            br#"{"req":1,"type":"ack","tags":"all"}"#,
            br#"{"req":1,"id":"m"}"#,
            br#"{"type":"send","id":"m","to":"b","body":"eA=="}"#,
            b"not json",
        ] {
            assert!(
                fast_request(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(Request::from_json(bad).is_err());
        }
        // An `ok` whose result is another kind with the same fields is not a `sent`.
        let other = br#"{"type":"ok","req":2,"result":{"kind":"other","id":"m","sent_at":1,"stored":false}}"#;
        assert!(fast_server_frame(other).is_none());
        for frame in [
            PeerFrame::Deliver {
                token: 5,
                id: "m".into(),
                from: "ann".into(),
                to: "bob".into(),
                body: Blob::from_bytes(b"x"),
                sent_at: 1,
                group: Some("pals".into()),
                session: Some(4),
            },
            PeerFrame::Delivered { token: 6 },
            PeerFrame::DeliveredMany {
                tokens: vec![7, 8, 9],
            },
        ] {
            let json = serde_json::to_vec(&frame).unwrap();
            assert!(fast_peer_frame(&json).is_some());
            assert_eq!(PeerFrame::from_json(&json).unwrap(), frame);
        }
        let sent = ServerFrame::Ok {
            req: 3,
            result: Some(OkResult::Sent {
                id: "m".into(),
                sent_at: 2,
                stored: true,
            }),
        };
        let json = serde_json::to_vec(&sent).unwrap();
        assert!(fast_server_frame(&json).is_some());
        assert_eq!(ServerFrame::from_json(&json).unwrap(), sent);
        let ok = br#"{"type":"ok","req":4}"#;
        assert!(fast_server_frame(ok).is_none());
        assert_eq!(
            ServerFrame::from_json(ok).unwrap(),
            ServerFrame::Ok {
                req: 4,
                result: None
            }
        );
    }
}
