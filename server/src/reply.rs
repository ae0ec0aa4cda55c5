//! Who waits for a message's fate: the request that sent it. A direct message answers
//! its sender once; a group message answers once every member's copy is delivered or
//! stored (or one of them could not be stored, and the sender must send it again).

use crate::session_handle::SessionHandle;
use fastchat_common::protocol::client::{OkResult, ServerFrame};
use fastchat_common::protocol::UnixMillis;
use fastchat_common::ErrorCode;
use parking_lot::Mutex;
use std::sync::Arc;

/// The request a message's outcome is reported to.
#[derive(Clone)]
pub enum ReplyTo {
    /// A direct message's `send`.
    Direct {
        /// The sender's session.
        session: SessionHandle,
        /// Its request number.
        req: u64,
        /// `u:RECIPIENT`, where a refusal is recorded (see `SessionHandle::mark_refused`).
        target: String,
    },
    /// One member's copy of a group message.
    Group(Arc<GroupReply>),
}

/// A group message's `group_send`, answered when its last copy is settled.
pub struct GroupReply {
    session: SessionHandle,
    group: String,
    req: u64,
    id: String,
    sent_at: UnixMillis,
    state: Mutex<GroupState>,
}

struct GroupState {
    remaining: usize,
    stored: bool,
    failed: Option<ErrorCode>,
}

impl GroupReply {
    /// Waits for `copies` outcomes; answers at once when there are none.
    pub fn new(
        session: SessionHandle,
        group: &str,
        req: u64,
        id: String,
        sent_at: UnixMillis,
        copies: usize,
    ) -> Arc<GroupReply> {
        let reply = Arc::new(GroupReply {
            session,
            group: group.to_string(),
            req,
            id,
            sent_at,
            state: Mutex::new(GroupState {
                remaining: copies,
                stored: false,
                failed: None,
            }),
        });
        if copies == 0 {
            reply.answer(false, None);
        }
        reply
    }

    fn settle(&self, stored: bool, failed: Option<ErrorCode>) {
        let done = {
            let mut st = self.state.lock();
            st.stored |= stored;
            if st.failed.is_none() {
                st.failed = failed;
            }
            st.remaining = st.remaining.saturating_sub(1);
            (st.remaining == 0).then_some((st.stored, st.failed))
        };
        if let Some((stored, failed)) = done {
            self.answer(stored, failed);
        }
    }

    fn answer(&self, stored: bool, failed: Option<ErrorCode>) {
        let frame = match failed {
            Some(code) => ServerFrame::Error {
                req: Some(self.req),
                code,
                message: "a copy could not be stored; send the message again".into(),
            },
            None => ServerFrame::Ok {
                req: self.req,
                result: Some(OkResult::Sent {
                    id: self.id.clone(),
                    sent_at: self.sent_at,
                    stored,
                }),
            },
        };
        let _ = self.session.send_frame(&frame);
    }
}

impl ReplyTo {
    /// The recipient's client acknowledged it (`stored: false`), or it is committed to
    /// the database (`stored: true`).
    pub fn settled(&self, id: &str, sent_at: UnixMillis, stored: bool) {
        match self {
            ReplyTo::Direct { session, req, .. } => {
                let _ = session.send_frame(&ServerFrame::Ok {
                    req: *req,
                    result: Some(OkResult::Sent {
                        id: id.to_string(),
                        sent_at,
                        stored,
                    }),
                });
            }
            ReplyTo::Group(group) => group.settle(stored, None),
        }
    }

    /// It could not be stored, for want of the database (`code` is `unavailable`): from
    /// now on, later messages from this session to the same target are refused until
    /// it comes again (see `SessionHandle::mark_refused`). Called before the store
    /// backlog forgets it and before the answer, so that no later message gets in
    /// between; for a group message, at its first failed copy, not its last.
    pub fn hold_back_later(&self, id: &str, code: ErrorCode) {
        if code != ErrorCode::Unavailable {
            return;
        }
        match self {
            ReplyTo::Direct {
                session, target, ..
            } => session.mark_refused(target, id),
            ReplyTo::Group(group) => group
                .session
                .mark_refused(&format!("g:{}", group.group), &group.id),
        }
    }

    /// It could not be stored: the sender must send it again (after
    /// [`ReplyTo::hold_back_later`]).
    pub fn failed(&self, code: ErrorCode) {
        match self {
            ReplyTo::Direct { session, req, .. } => {
                let _ = session.send_frame(&ServerFrame::Error {
                    req: Some(*req),
                    code,
                    message: "the message could not be stored; send it again".into(),
                });
            }
            ReplyTo::Group(group) => group.settle(false, Some(code)),
        }
    }
}
