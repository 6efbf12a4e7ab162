//! The chat stream's JSON wire format, version [`VERSION`], as documented in
//! `docs/PROTOCOL.md`: what clients send ([`Request`]) and every event the server sends,
//! each encoded once into an [`Event`] whose bytes every transport reuses (a WebSocket text
//! frame, or an SSE `data:` line). Pure: no actors, no sockets.

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::Member;

/// The protocol version sent in `joined`; bumped on incompatible changes.
pub const VERSION: u32 = 1;

/// A request from a client over the chat WebSocket.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Join the room, optionally resuming after `since` in `epoch`.
    Join {
        /// The protocol version the client speaks (only 1 exists).
        #[serde(default)]
        v: Option<u32>,
        /// The epoch `since` belongs to.
        #[serde(default)]
        epoch: Option<String>,
        /// The last sequence number the client has seen.
        #[serde(default)]
        since: Option<u64>,
    },
    /// Publish a message.
    Publish {
        /// The client's message id (idempotency key), echoed in the ack.
        #[serde(default)]
        id: Option<String>,
        /// The message body: any JSON value.
        body: Value,
    },
    /// Set (or with `null` clear) this connection's typing/status state.
    Typing {
        /// The status, e.g. "typing"; expires on its own.
        #[serde(default)]
        status: Option<String>,
    },
    /// A page of history.
    History {
        /// Echoed in the reply, to match it.
        #[serde(default)]
        req: Option<String>,
        /// Messages before this seq, newest page first (exclusive).
        #[serde(default)]
        before: Option<u64>,
        /// Messages after this seq, oldest first (exclusive).
        #[serde(default)]
        after: Option<u64>,
        /// Page size (capped by the server).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Replace the connection's token with a newer one (same subject, same right in this
    /// room) before the old one expires; answered with `refreshed`.
    Refresh {
        /// The new token.
        token: String,
    },
}

/// Why a client's frame could not be parsed.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct ParseError(String);

/// Longest message id, history `req` or typing status accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest token a `refresh` may carry, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most messages one history page holds.
pub const MAX_PAGE: usize = 1000;

impl Request {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        serde_json::from_str(text).map_err(|e| ParseError(e.to_string()))
    }

    /// The id an answer to this request echoes: a publish's `id`, a history `req`.
    pub fn reply_id(&self) -> Option<&str> {
        match self {
            Request::Publish { id, .. } => id.as_deref(),
            Request::History { req, .. } => req.as_deref(),
            _ => None,
        }
    }

    /// Checks the limits parsing cannot: string lengths, page sizes, exclusive fields.
    pub fn validated(self) -> Result<Self, ParseError> {
        let too_long = |what: &str, s: &Option<String>| {
            s.as_ref()
                .is_some_and(|s| s.len() > MAX_ID_BYTES)
                .then(|| ParseError(format!("{what} is longer than {MAX_ID_BYTES} bytes")))
        };
        let problem = match &self {
            Request::Join { .. } => None,
            Request::Refresh { token } => (token.is_empty() || token.len() > MAX_TOKEN_BYTES)
                .then(|| ParseError(format!("token must be 1..={MAX_TOKEN_BYTES} bytes"))),
            Request::Publish { id, .. } => too_long("id", id),
            Request::Typing { status } => too_long("status", status),
            Request::History {
                req,
                before,
                after,
                limit,
            } => too_long("req", req)
                .or_else(|| {
                    (before.is_some() && after.is_some())
                        .then(|| ParseError("give before or after, not both".into()))
                })
                .or_else(|| {
                    limit
                        .is_some_and(|l| l == 0 || l > MAX_PAGE)
                        .then(|| ParseError(format!("limit must be 1..={MAX_PAGE}")))
                }),
        };
        match problem {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

/// What kind of event an [`Event`] carries; its SSE event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The answer to a join.
    Joined,
    /// A published message (live or replayed).
    Message,
    /// The answer to a publish.
    Ack,
    /// A member joined or left.
    Presence,
    /// A member's typing/status state changed.
    Typing,
    /// The answer to a history request.
    History,
    /// The answer to a refresh.
    Refreshed,
    /// A request failed; the connection stays open.
    Error,
}

impl EventKind {
    /// The event's name, as in its `type` field and the SSE `event:` line.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Message => "message",
            EventKind::Ack => "ack",
            EventKind::Presence => "presence",
            EventKind::Typing => "typing",
            EventKind::History => "history",
            EventKind::Refreshed => "refreshed",
            EventKind::Error => "error",
        }
    }
}

/// One server event, encoded once: the JSON object, with the message's seq for SSE ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What it is.
    pub kind: EventKind,
    /// The message's sequence number, for `message` events.
    pub seq: Option<u64>,
    /// The JSON object, with its `type` field; text, so every WebSocket recipient sends
    /// it as is (its UTF-8 is known once, when the event is made).
    pub json: ByteString,
}

impl Event {
    fn of(kind: EventKind, value: &impl Serialize) -> Self {
        Self {
            kind,
            seq: None,
            json: to_json(value),
        }
    }

    /// A stored message record (as [`message_record`] made it) as an event.
    pub fn message(seq: u64, record: ByteString) -> Self {
        Self {
            kind: EventKind::Message,
            seq: Some(seq),
            json: record,
        }
    }

    /// The event as one Server-Sent Events block (`id:` only on messages, so a client's
    /// `Last-Event-ID` is always the last message seq it received).
    pub fn to_sse(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.json.len() + 40);
        if let Some(seq) = self.seq {
            out.extend_from_slice(format!("id: {seq}\n").as_bytes());
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(self.kind.name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Records are compact JSON: they hold no raw newline, so one data line suffices.
        out.extend_from_slice(self.json.as_bytes());
        out.extend_from_slice(b"\n\n");
        out.into()
    }
}

fn to_json(value: &impl Serialize) -> ByteString {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    // Should it ever fail, send a fixed, valid error event rather than splice the error's
    // text (unescaped) into JSON.
    serde_json::to_string(value)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not encode a stream event");
            r#"{"type":"error","code":"internal","message":"event could not be encoded"}"#
                .to_owned()
        })
        .into()
}

#[derive(Serialize)]
struct MessageRecord<'a> {
    r#type: &'static str,
    seq: u64,
    ts: u64,
    sender: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    body: &'a Value,
}

/// A message as stored and as sent: the `message` event's JSON.
pub fn message_record(
    seq: u64,
    ts: u64,
    sender: &str,
    id: Option<&str>,
    body: &Value,
) -> ByteString {
    to_json(&MessageRecord {
        r#type: "message",
        seq,
        ts,
        sender,
        id,
        body,
    })
}

/// The fields of a stored record the room needs when it reloads (for idempotency).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct RecordHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its server timestamp (ms since the Unix epoch).
    pub ts: u64,
    /// Who sent it.
    pub sender: String,
    /// The client's message id.
    #[serde(default)]
    pub id: Option<String>,
}

impl RecordHead {
    /// Reads the head of a stored record.
    pub fn parse(record: &[u8]) -> Option<Self> {
        serde_json::from_slice(record).ok()
    }
}

/// A presence member as sent to clients.
#[derive(Serialize)]
struct MemberView<'a> {
    conn: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
}

impl<'a> From<&'a Member> for MemberView<'a> {
    fn from(m: &'a Member) -> Self {
        Self {
            conn: &m.conn,
            subject: &m.subject,
            info: m.info.as_ref(),
            status: m.status.as_ref().map(|(s, _)| s.as_str()),
        }
    }
}

/// The stream position and the joined client's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined<'a> {
    /// The room.
    pub room: &'a str,
    /// The stream's epoch.
    pub epoch: &'a str,
    /// This connection's id.
    pub conn: &'a str,
    /// Whether every missed message follows (see the protocol).
    pub recovered: bool,
    /// How many replayed messages follow before live ones.
    pub replayed: usize,
    /// The lowest seq still stored.
    pub first_seq: u64,
    /// The highest seq delivered so far.
    pub last_seq: u64,
}

/// The `joined` event, with the presence list.
pub fn joined(j: &Joined<'_>, members: &[&Member]) -> Event {
    #[derive(Serialize)]
    struct Out<'a> {
        r#type: &'static str,
        v: u32,
        room: &'a str,
        epoch: &'a str,
        conn: &'a str,
        recovered: bool,
        replayed: usize,
        first_seq: u64,
        last_seq: u64,
        presence: Vec<MemberView<'a>>,
    }
    Event::of(
        EventKind::Joined,
        &Out {
            r#type: "joined",
            v: VERSION,
            room: j.room,
            epoch: j.epoch,
            conn: j.conn,
            recovered: j.recovered,
            replayed: j.replayed,
            first_seq: j.first_seq,
            last_seq: j.last_seq,
            presence: members.iter().map(|m| MemberView::from(*m)).collect(),
        },
    )
}

/// The `ack` event for a publish.
pub fn ack(id: Option<&str>, seq: u64, duplicate: bool) -> Event {
    #[derive(Serialize)]
    struct Out<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        seq: u64,
        duplicate: bool,
    }
    Event::of(
        EventKind::Ack,
        &Out {
            r#type: "ack",
            id,
            seq,
            duplicate,
        },
    )
}

/// A `presence` event: `event` is "join" or "leave".
pub fn presence(event: &'static str, member: &Member) -> Event {
    #[derive(Serialize)]
    struct Out<'a> {
        r#type: &'static str,
        event: &'static str,
        member: MemberView<'a>,
    }
    Event::of(
        EventKind::Presence,
        &Out {
            r#type: "presence",
            event,
            member: member.into(),
        },
    )
}

/// A `typing` event: the member's status now (`null` once cleared or expired).
pub fn typing(member: &Member, ttl_ms: u64) -> Event {
    #[derive(Serialize)]
    struct Out<'a> {
        r#type: &'static str,
        conn: &'a str,
        subject: &'a str,
        status: Option<&'a str>,
        ttl_ms: u64,
    }
    let status = member.status.as_ref().map(|(s, _)| s.as_str());
    Event::of(
        EventKind::Typing,
        &Out {
            r#type: "typing",
            conn: &member.conn,
            subject: &member.subject,
            status,
            ttl_ms: if status.is_some() { ttl_ms } else { 0 },
        },
    )
}

/// A page of stored messages, oldest first, with the stream position.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The stream's epoch.
    pub epoch: String,
    /// The lowest seq still stored.
    pub first_seq: u64,
    /// The highest seq delivered so far.
    pub last_seq: u64,
    /// Whether this page continues exactly from what the client asked for.
    pub recovered: bool,
    /// The records, oldest first.
    pub messages: Vec<(u64, ByteString)>,
}

impl Page {
    /// The page as one JSON object; `kind` adds a `type` field, `req` echoes a request id.
    pub fn to_json(&self, kind: Option<&str>, req: Option<&str>) -> ByteString {
        #[derive(Serialize)]
        struct Head<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            r#type: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            req: Option<&'a str>,
            epoch: &'a str,
            first_seq: u64,
            last_seq: u64,
            recovered: bool,
        }
        let head = to_json(&Head {
            r#type: kind,
            req,
            epoch: &self.epoch,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            recovered: self.recovered,
        });
        // Splice the stored records in as they are, without parsing them again.
        let size: usize = self.messages.iter().map(|(_, r)| r.len() + 1).sum();
        let mut out = String::with_capacity(head.len() + size + 16);
        out.push_str(&head[..head.len() - 1]);
        out.push_str(r#","messages":["#);
        for (i, (_, record)) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(record);
        }
        out.push_str("]}");
        out.into()
    }
}

/// The `history` event answering a request.
pub fn history(page: &Page, req: Option<&str>) -> Event {
    Event {
        kind: EventKind::History,
        seq: None,
        json: page.to_json(Some("history"), req),
    }
}

/// Machine-readable error codes of `error` events (see `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not a valid request.
    BadRequest,
    /// A request other than `join` came before `join`.
    NotJoined,
    /// A second `join` on the same connection.
    AlreadyJoined,
    /// The body is larger than the room accepts.
    BodyTooLarge,
    /// The token grants read access only.
    ReadOnly,
    /// The room could not store the message; retry with the same id.
    Unavailable,
    /// The connection is over its message rate; retry with the same id a little later.
    RateLimited,
    /// A refresh's token was refused (invalid, expired, or for another subject or right).
    Unauthorized,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

/// The `refreshed` event: the connection now lives until `valid_until` (seconds since the
/// Unix epoch, the new token's `exp` plus the server's leeway; null when the server is open).
pub fn refreshed(valid_until: Option<u64>) -> Event {
    #[derive(Serialize)]
    struct Out {
        r#type: &'static str,
        valid_until: Option<u64>,
    }
    Event::of(
        EventKind::Refreshed,
        &Out {
            r#type: "refreshed",
            valid_until,
        },
    )
}

/// An `error` event; `id` echoes the publish id or history `req` it answers.
pub fn error(code: ErrorCode, message: &str, id: Option<&str>) -> Event {
    #[derive(Serialize)]
    struct Out<'a> {
        r#type: &'static str,
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    }
    Event::of(
        EventKind::Error,
        &Out {
            r#type: "error",
            code: code.name(),
            message,
            id,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        let join = Request::parse(r#"{"type":"join","epoch":"e","since":4}"#).unwrap();
        assert!(matches!(join, Request::Join { since: Some(4), .. }));
        let publish =
            Request::parse(r#"{"type":"publish","id":"m1","body":{"text":"hi"}}"#).unwrap();
        let Request::Publish { id, body } = publish else {
            panic!("not a publish");
        };
        assert_eq!(id.as_deref(), Some("m1"));
        assert_eq!(body, serde_json::json!({"text": "hi"}));
        for bad in [
            "",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"type":"publish"}"#,
            r#"{"type":"join","since":-1}"#,
            r#"{"type":"join","extra":1}"#,
        ] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_message_record_round_trips_its_head() {
        let body = serde_json::json!({"text": "line\nbreak"});
        let record = message_record(7, 1000, "alice", Some("m7"), &body);
        let v = value(record.as_bytes());
        assert_eq!(v["type"], "message");
        assert_eq!(v["body"]["text"], "line\nbreak");
        assert!(!record.contains('\n'), "records stay on one SSE data line");
        let head = RecordHead::parse(record.as_bytes()).unwrap();
        assert_eq!((head.seq, head.id.as_deref()), (7, Some("m7")));
        let sse = Event::message(7, record.clone()).to_sse();
        assert!(sse.starts_with(b"id: 7\nevent: message\ndata: {"));
        assert!(sse.ends_with(b"}\n\n"));
    }

    #[test]
    fn a_page_splices_records_into_valid_json() {
        let body = serde_json::json!(1);
        let page = Page {
            epoch: "e".into(),
            first_seq: 1,
            last_seq: 2,
            recovered: true,
            messages: vec![
                (1, message_record(1, 0, "a", None, &body)),
                (2, message_record(2, 0, "b", None, &body)),
            ],
        };
        let v = value(history(&page, Some("r1")).json.as_bytes());
        assert_eq!(v["type"], "history");
        assert_eq!(v["req"], "r1");
        assert_eq!(v["messages"][1]["sender"], "b");
        let empty = value(Page::default().to_json(None, None).as_bytes());
        assert_eq!(empty["messages"], serde_json::json!([]));
    }
}
