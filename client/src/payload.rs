//! What a sealed message holds once opened: a small JSON object whose `t` says what it
//! is, or, for a file chunk, a binary framing (`chunk_payload`) that spares the chunk a
//! base64 round. Only clients ever see it.

use crate::files::FileChunk;
use fastchat_common::e2e::{chunk_payload, ChunkPayload, BINARY_PAYLOAD};
use serde::{Deserialize, Serialize};

/// The plaintext inside a message envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Payload {
    /// A text message.
    Text {
        /// The text.
        text: String,
    },
    /// A file is coming: its name, size, hash and key; its chunks follow in order.
    FileStart(crate::files::FileHeader),
    /// One chunk of a file.
    FileChunk(FileChunk),
    /// A delivery receipt: the direct messages named waited in storage and have now
    /// reached the recipient, who sends this back. Never shown, never answered.
    Receipt {
        /// One message's id (what earlier clients sent; still understood).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The ids of the messages delivered, oldest first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<String>,
    },
}

impl Payload {
    /// The plaintext to seal: a chunk in binary, anything else as JSON.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Payload::FileChunk(c) => chunk_payload(&c.file_id, c.index, c.last, &c.data)
                // A file id is 32 hex digits; a longer one is not ours.
                .unwrap_or_else(|_| serde_json::to_vec(self).expect("payloads serialize")),
            _ => serde_json::to_vec(self).expect("payloads serialize"),
        }
    }

    /// Reads what [`Payload::encode`] wrote (or an earlier client's JSON chunk).
    pub(crate) fn decode(plaintext: &[u8]) -> Result<Payload, String> {
        if plaintext.first() == Some(&BINARY_PAYLOAD) {
            let c = ChunkPayload::parse(plaintext).map_err(|e| e.to_string())?;
            return Ok(Payload::FileChunk(FileChunk {
                file_id: c.file_id.to_string(),
                index: c.index,
                last: c.last,
                data: c.sealed.to_vec(),
            }));
        }
        serde_json::from_slice(plaintext).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_travel_in_binary_and_the_rest_as_json() {
        let chunk = Payload::FileChunk(FileChunk {
            file_id: "0a1b".into(),
            index: 3,
            last: false,
            data: vec![0, 1, 2, 255],
        });
        let bytes = chunk.encode();
        assert_eq!(bytes[0], BINARY_PAYLOAD);
        assert_eq!(bytes.len(), 2 + 1 + 4 + 8 + 1 + 4);
        assert_eq!(Payload::decode(&bytes).unwrap(), chunk);

        let text = Payload::Text { text: "hi".into() };
        assert_eq!(text.encode(), br#"{"t":"text","text":"hi"}"#);
        assert_eq!(Payload::decode(&text.encode()).unwrap(), text);
    }

    #[test]
    fn a_receipt_names_many_messages_and_an_earlier_clients_one() {
        let many = Payload::Receipt {
            id: None,
            ids: vec!["a".into(), "b".into()],
        };
        assert_eq!(many.encode(), br#"{"t":"receipt","ids":["a","b"]}"#);
        assert_eq!(
            Payload::decode(br#"{"t":"receipt","id":"a"}"#).unwrap(),
            Payload::Receipt {
                id: Some("a".into()),
                ids: vec![]
            }
        );
    }

    #[test]
    fn an_earlier_clients_json_chunk_is_still_understood() {
        let json = br#"{"t":"file_chunk","file_id":"0a1b","index":0,"last":true,"data":"AAH/"}"#;
        assert_eq!(
            Payload::decode(json).unwrap(),
            Payload::FileChunk(FileChunk {
                file_id: "0a1b".into(),
                index: 0,
                last: true,
                data: vec![0, 1, 255],
            })
        );
        assert!(Payload::decode(
            br#"{"t":"file_chunk","file_id":"a","index":0,"last":true,"data":"!"}"#
        )
        .is_err());
        assert!(Payload::decode(&[BINARY_PAYLOAD, 9]).is_err());
        assert!(Payload::decode(b"").is_err());
    }
}
