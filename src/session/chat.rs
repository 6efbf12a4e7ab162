//! A chat session's side of the session: the JSON requests its client sends (`join`
//! here, `refresh` here, everything else forwarded to the room), the rate answer a chat
//! client gets, and what the session knows of its member. The socket, the close and the
//! flow control are the session's ([`super`], [`super::flow`]); the stream's state is the
//! room's.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tracing::debug;

use super::{Protocol, Session};
use crate::auth::Authenticator;
use crate::metrics;
use crate::room::{ChatJoin, ChatRequest};
use crate::stream::wire::{self, ErrorCode, Request};
use crate::stream::ResumeFrom;

/// What a chat session knows of its member.
pub(super) struct ChatSide {
    /// Verifies the client's `refresh` tokens.
    pub(super) auth: Arc<Authenticator>,
    /// The token's subject.
    pub(super) subject: Option<String>,
    /// The token's public presence info.
    pub(super) info: Option<Value>,
    /// Whether a `join` was accepted (or is under way).
    pub(super) joined: bool,
}

impl Session {
    /// Parses one whole chat request and acts on it: `join` here, the rest in the room.
    pub(super) fn receive_text(&mut self, text: &str) {
        let parsed = Request::parse(text).and_then(Request::validated);
        // A refresh is never refused for the rate: losing it would end the session.
        let refresh = matches!(parsed, Ok(Request::Refresh { .. }));
        if !refresh && !self.chat_within_rate(text.len()) {
            let id = parsed.as_ref().ok().and_then(Request::reply_id);
            let error = wire::error(ErrorCode::RateLimited, "over the message rate", id);
            self.send_event(error);
            return;
        }
        let request = match parsed {
            Ok(request) => request,
            Err(e) => {
                metrics::get().protocol_errors.inc();
                self.send_event(wire::error(ErrorCode::BadRequest, &e.to_string(), None));
                return;
            }
        };
        let Protocol::Chat(chat) = &mut self.protocol else {
            return;
        };
        let ChatSide {
            subject,
            info,
            joined,
            ..
        } = &mut **chat;
        match request {
            Request::Refresh { token } => self.refresh(&token),
            Request::Join { v, epoch, since } if !*joined => {
                if v.is_some_and(|v| v != wire::VERSION) {
                    let why = format!("protocol version {} is not supported", v.unwrap_or(0));
                    self.send_event(wire::error(ErrorCode::BadRequest, &why, None));
                    return;
                }
                *joined = true;
                let resume = since.map(|since| ResumeFrom { epoch, since });
                let (subject, info) = (subject.clone(), info.clone());
                self.join_chat(subject, info, resume);
            }
            request if !*joined => {
                let error =
                    wire::error(ErrorCode::NotJoined, "send join first", request.reply_id());
                self.send_event(error);
            }
            request => {
                // `room` is None only while the join is under way, and the task reads no
                // frame until the room has answered, so a request is never dropped here.
                if let Some(room) = &self.room {
                    room.do_send(ChatRequest {
                        session: self.id,
                        request,
                    });
                }
            }
        }
    }

    /// Whether a chat request is within the rate: one over it is answered with a
    /// `rate_limited` error (retry it, with the same id, later) and the socket is not read
    /// until a token is back, so a flood costs one error per refill.
    pub(super) fn chat_within_rate(&mut self, size: usize) -> bool {
        metrics::get().bytes_in.inc_by(size as u64);
        let now = Instant::now();
        let Some(rate) = self.rate.as_mut() else {
            return true;
        };
        if rate.try_take(now) {
            return true;
        }
        self.pause_for_rate();
        false
    }

    /// A chat client's `refresh`: a valid token for the same subject and the same right in
    /// this room moves the session's expiry to the new token's; anything else is refused
    /// with an error and leaves the old expiry in place.
    pub(super) fn refresh(&mut self, token: &str) {
        let Protocol::Chat(chat) = &self.protocol else {
            return;
        };
        let refused = match chat.auth.authorize(Some(token), &self.room_name) {
            Err(e) => Some(e.to_string()),
            Ok(grant) if grant.subject != chat.subject => {
                Some("the new token is for another subject".to_owned())
            }
            Ok(grant) if grant.access != self.access => {
                Some("the new token grants another right in this room".to_owned())
            }
            Ok(grant) => {
                if let Some(left) = grant.remaining() {
                    self.arm_expiry(left);
                }
                self.send_event(wire::refreshed(grant.valid_until));
                None
            }
        };
        if let Some(why) = refused {
            debug!(room = %self.room_name, session = self.id.0, why, "refresh refused");
            self.send_event(wire::error(ErrorCode::Unauthorized, &why, None));
        }
    }

    /// Joins the room's chat stream.
    pub(super) fn join_chat(
        &mut self,
        subject: Option<String>,
        info: Option<Value>,
        resume: Option<ResumeFrom>,
    ) {
        let (session, access) = (self.id, self.access);
        let join = move |outbox| ChatJoin {
            session,
            access,
            subject: subject.clone(),
            info: info.clone(),
            outbox,
            resume: resume.clone(),
        };
        self.join(join);
    }

    /// Sends a chat event (a text frame; its UTF-8 was checked when it was made).
    pub(super) fn send_event(&mut self, event: wire::Event) {
        self.send_text(event.json);
    }
}
