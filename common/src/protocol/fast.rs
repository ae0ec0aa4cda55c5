//! Parsing of the frames that make up nearly all traffic under load (`send`,
//! `group_send` and `ack` to the server; `message`, and `ok` to a `send`, to a client; `deliver` and
//! `delivered` between servers) straight into their fields. serde's generic path for an internally tagged enum (and for `Request`, a
//! flattened one) first buffers every field as generic content and then converts it:
//! an allocation per field, twice, on every frame. Anything else, and anything the fast
//! path does not accept, goes the generic way, so errors read the same.
//! The other way is `write.rs`.
//!
//! These four are also the kinds that have a binary form (`binary.rs`): the same fields,
//! the body after the JSON instead of in it. A binary frame is read here or not at all.

use crate::blob::Blob;
use crate::protocol::binary;
use crate::protocol::client::{OkResult, Request, RequestBody, ServerFrame};
use crate::protocol::peer::PeerFrame;
use crate::protocol::UnixMillis;
use serde::Deserialize;
use std::borrow::Cow;

/// Only the tag, borrowed; every other field is skipped without being kept.
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// The frame's `type`. What serde and `write.rs` write begins with it (after `req` in a
/// request): read from there it costs nothing, where parsing the frame for it scans
/// every string in it, the body too, once more. Anything else is parsed.
fn frame_type(bytes: &[u8]) -> Option<Cow<'_, str>> {
    if let Some(kind) = leading_type(bytes) {
        return Some(Cow::Borrowed(kind));
    }
    let tag: Tag<'_> = serde_json::from_slice(bytes).ok()?;
    Some(tag.kind)
}

/// The `type` of a frame that begins `{"type":"…"` or `{"req":N,"type":"…"`, if it has
/// no escape. The rest of the frame is not looked at: the parse of its fields that
/// follows refuses it if it is not JSON.
fn leading_type(bytes: &[u8]) -> Option<&str> {
    let mut rest = bytes.strip_prefix(b"{")?;
    if let Some(number) = rest.strip_prefix(br#""req":"#) {
        let digits = number.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = number[digits..].strip_prefix(b",")?;
    }
    let kind = rest.strip_prefix(br#""type":""#)?;
    let end = kind.iter().position(|&b| b == b'"' || b == b'\\')?;
    if kind[end] != b'"' {
        return None;
    }
    std::str::from_utf8(&kind[..end]).ok()
}

/// The body: in the JSON of a JSON frame, after the JSON of a binary one; never both.
/// `in_json` is `Some` whenever the JSON has a `body` field, even `null`.
fn body_of(in_json: Option<Option<Blob>>, after_json: Option<&[u8]>) -> Option<Blob> {
    match (in_json, after_json) {
        (Some(body), None) => body,
        (None, Some(raw)) => Some(Blob::from_bytes(raw)),
        _ => None,
    }
}

/// A field that is there, whatever its value (`null` too): `Some`. With
/// `#[serde(default)]`, a field that is not there is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Blob>>, D::Error> {
    Option::<Blob>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct SendFields {
    req: u64,
    id: String,
    to: String,
    #[serde(default, deserialize_with = "present")]
    body: Option<Option<Blob>>,
}

#[derive(Deserialize)]
struct GroupSendFields {
    req: u64,
    id: String,
    group: String,
    epoch: u64,
    #[serde(default, deserialize_with = "present")]
    body: Option<Option<Blob>>,
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
    #[serde(default, deserialize_with = "present")]
    body: Option<Option<Blob>>,
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
    #[serde(default, deserialize_with = "present")]
    body: Option<Option<Blob>>,
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

fn fast_peer_frame(bytes: &[u8], raw: Option<&[u8]>) -> Option<PeerFrame> {
    let kind = frame_type(bytes)?;
    if raw.is_some() && kind != "deliver" {
        return None;
    }
    match kind.as_ref() {
        "deliver" => {
            let f: DeliverFields = serde_json::from_slice(bytes).ok()?;
            Some(PeerFrame::Deliver {
                token: f.token,
                id: f.id,
                from: f.from,
                to: f.to,
                body: body_of(f.body, raw)?,
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

fn fast_request(bytes: &[u8], raw: Option<&[u8]>) -> Option<Request> {
    let kind = frame_type(bytes)?;
    if raw.is_some() && kind != "send" && kind != "group_send" {
        return None;
    }
    match kind.as_ref() {
        "send" => {
            let f: SendFields = serde_json::from_slice(bytes).ok()?;
            Some(Request {
                req: f.req,
                body: RequestBody::Send {
                    id: f.id,
                    to: f.to,
                    body: body_of(f.body, raw)?,
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
                    body: body_of(f.body, raw)?,
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

fn fast_server_frame(bytes: &[u8], raw: Option<&[u8]>) -> Option<ServerFrame> {
    let kind = frame_type(bytes)?;
    if raw.is_some() && kind != "message" {
        return None;
    }
    if kind == "ok" {
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
    if kind != "message" {
        return None;
    }
    let f: MessageFields = serde_json::from_slice(bytes).ok()?;
    Some(ServerFrame::Message {
        tag: f.tag,
        id: f.id,
        from: f.from,
        to: f.to,
        body: body_of(f.body, raw)?,
        sent_at: f.sent_at,
        group: f.group,
        stored: f.stored,
    })
}

/// Parses a frame of either form: the hot kinds directly, other JSON generically, a
/// binary frame only directly (it has no generic form).
fn parse<T: serde::de::DeserializeOwned>(
    frame: &[u8],
    fast: impl FnOnce(&[u8], Option<&[u8]>) -> Option<T>,
) -> serde_json::Result<T> {
    let split = binary::split(frame).ok_or_else(binary::unreadable)?;
    match (fast(split.json, split.body), split.body) {
        (Some(parsed), _) => Ok(parsed),
        (None, None) => serde_json::from_slice(split.json),
        (None, Some(_)) => Err(binary::unreadable()),
    }
}

impl Request {
    /// Parses a request, JSON or binary (see the module).
    pub fn from_frame(frame: &[u8]) -> serde_json::Result<Request> {
        parse(frame, fast_request)
    }

    /// The JSON part of a request frame (all of a JSON frame): where a request that
    /// cannot be parsed is looked at for its `req`.
    pub fn json_part(frame: &[u8]) -> &[u8] {
        binary::split(frame).map_or(frame, |split| split.json)
    }
}

impl PeerFrame {
    /// Parses a peer frame, JSON or binary (see the module).
    pub fn from_frame(frame: &[u8]) -> serde_json::Result<PeerFrame> {
        parse(frame, fast_peer_frame)
    }
}

impl ServerFrame {
    /// Parses a server frame, JSON or binary (see the module).
    pub fn from_frame(frame: &[u8]) -> serde_json::Result<ServerFrame> {
        parse(frame, fast_server_frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both_ways_request(body: RequestBody) {
        let request = Request { req: 7, body };
        let json = serde_json::to_vec(&request).unwrap();
        assert!(
            fast_request(&json, None).is_some(),
            "{}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(Request::from_frame(&json).unwrap(), request);
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
            assert!(fast_server_frame(&json, None).is_some());
            assert_eq!(ServerFrame::from_frame(&json).unwrap(), frame);
        }
    }

    #[test]
    fn the_type_is_read_wherever_it_is() {
        assert_eq!(
            leading_type(br#"{"type":"message","tag":1}"#),
            Some("message")
        );
        assert_eq!(
            leading_type(br#"{"req":12,"type":"send","id":"m"}"#),
            Some("send")
        );
        for elsewhere in [
            &br#"{"id":"m","type":"send"}"#[..],
            br#"{ "type":"send"}"#,
            br#"{"req":"1","type":"send"}"#,
            br#"{"req":,"type":"send"}"#,
            br#"{"type":"se\u006ed"}"#,
            br#"{"type":"send"#,
        ] {
            assert_eq!(
                leading_type(elsewhere),
                None,
                "{}",
                String::from_utf8_lossy(elsewhere)
            );
        }
        // Where it is not first, the frame is parsed for it: the same request.
        let moved = br#"{"id":"m","to":"bob","body":"eA==","type":"send","req":3}"#;
        let first = br#"{"req":3,"type":"send","id":"m","to":"bob","body":"eA=="}"#;
        assert!(fast_request(moved, None).is_some());
        assert_eq!(fast_request(moved, None), fast_request(first, None));
        let escaped = br#"{"req":3,"type":"se\u006ed","id":"m","to":"bob","body":"eA=="}"#;
        assert_eq!(fast_request(escaped, None), fast_request(first, None));
    }

    #[test]
    fn other_kinds_and_bad_frames_are_left_to_the_generic_path() {
        let ping = br#"{"req":1,"type":"ping"}"#;
        assert!(fast_request(ping, None).is_none());
        assert_eq!(
            Request::from_frame(ping).unwrap(),
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
                fast_request(bad, None).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(Request::from_frame(bad).is_err());
        }
        // An `ok` whose result is another kind with the same fields is not a `sent`.
        let other = br#"{"type":"ok","req":2,"result":{"kind":"other","id":"m","sent_at":1,"stored":false}}"#;
        assert!(fast_server_frame(other, None).is_none());
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
            assert!(fast_peer_frame(&json, None).is_some());
            assert_eq!(PeerFrame::from_frame(&json).unwrap(), frame);
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
        assert!(fast_server_frame(&json, None).is_some());
        assert_eq!(ServerFrame::from_frame(&json).unwrap(), sent);
        let ok = br#"{"type":"ok","req":4}"#;
        assert!(fast_server_frame(ok, None).is_none());
        assert_eq!(
            ServerFrame::from_frame(ok).unwrap(),
            ServerFrame::Ok {
                req: 4,
                result: None
            }
        );
    }

    #[test]
    fn binary_frames_read_as_their_json_forms_do() {
        use crate::protocol::{DeliverOut, MessageOut, RelayedOut};
        let raw = Blob::from_bytes(&[0, b'{', b'"', 0xff, b'}']);
        for body in [
            RequestBody::Send {
                id: "m1".into(),
                to: "bob".into(),
                body: raw.clone(),
            },
            RequestBody::GroupSend {
                id: "m2".into(),
                group: "pals".into(),
                epoch: 3,
                body: raw.clone(),
            },
        ] {
            let request = Request { req: 7, body };
            let frame = request.to_frame(true);
            assert_eq!(frame[0], binary::BINARY_FRAME);
            assert!(frame.len() < request.to_frame(false).len());
            let read = Request::from_frame(&frame).unwrap();
            assert_eq!(read, request);
            assert!(
                matches!(read.body, RequestBody::Send { ref body, .. } | RequestBody::GroupSend { ref body, .. } if body.raw().is_some())
            );
            assert_eq!(
                Request::from_frame(&request.to_frame(false)).unwrap(),
                request
            );
        }
        let message = RelayedOut {
            id: "m\"3",
            from: "ann",
            to: "bob",
            body: &raw,
            sent_at: 1_700_000_000_000,
            group: Some("pals"),
        };
        let out = MessageOut {
            tag: 9,
            message,
            stored: true,
        };
        let frame = out.to_frame(true);
        assert_eq!(frame[0], binary::BINARY_FRAME);
        let read = ServerFrame::from_frame(&frame).unwrap();
        assert!(matches!(read, ServerFrame::Message { ref body, .. } if body.raw().is_some()));
        assert_eq!(read, ServerFrame::from_frame(&out.to_frame(false)).unwrap());
        let out = DeliverOut {
            token: 5,
            message,
            session: Some(4),
        };
        let frame = out.to_frame(true);
        assert_eq!(frame[0], binary::BINARY_FRAME);
        let read = PeerFrame::from_frame(&frame).unwrap();
        assert!(matches!(read, PeerFrame::Deliver { ref body, .. } if body.raw().is_some()));
        assert_eq!(read, PeerFrame::from_frame(&out.to_frame(false)).unwrap());
        // A body held as base64 text stays JSON, binary asked for or not.
        let text = Blob::from_base64("eA==".into());
        let message = RelayedOut {
            body: &text,
            ..message
        };
        let frame = MessageOut {
            tag: 1,
            message,
            stored: false,
        }
        .to_frame(true);
        assert_eq!(frame[0], b'{');
    }

    #[test]
    fn a_binary_frame_of_another_kind_or_shape_is_refused() {
        let frame = |json: &[u8], body: &[u8]| {
            binary::write(json.len(), |out| out.extend_from_slice(json), body)
        };
        for (json, body) in [
            // Kinds without a body.
            (&br#"{"req":1,"type":"ping"}"#[..], &b"x"[..]),
            (br#"{"req":1,"type":"ack","tags":[1]}"#, b"x"),
            // A body in the JSON as well.
            (
                br#"{"req":1,"type":"send","id":"m","to":"bob","body":"eA=="}"#,
                b"x",
            ),
            // Not JSON before the body.
            (b"not json", b"x"),
        ] {
            assert!(Request::from_frame(&frame(json, body)).is_err());
        }
        assert!(ServerFrame::from_frame(&frame(br#"{"type":"ok","req":4}"#, b"x")).is_err());
        assert!(PeerFrame::from_frame(&frame(br#"{"type":"delivered","token":6}"#, b"x")).is_err());
        // A header that overruns the frame.
        assert!(Request::from_frame(&[binary::BINARY_FRAME, 0, 0, 1, 0, b'{']).is_err());
        // An empty body is a body.
        let empty = frame(br#"{"req":1,"type":"send","id":"m","to":"bob"}"#, b"");
        assert!(Request::from_frame(&empty).is_ok());
    }
}
