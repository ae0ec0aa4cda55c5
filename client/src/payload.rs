//! What a sealed direct message holds once opened: a small JSON object whose `t` says
//! what it is. Only clients ever see it.

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
    FileChunk(crate::files::FileChunk),
    /// A delivery receipt: the direct message `id` waited in storage and has now
    /// reached the recipient, who sends this back. Never shown, never answered.
    Receipt {
        /// The id of the message delivered.
        id: String,
    },
}
