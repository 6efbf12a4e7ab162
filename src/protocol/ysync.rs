//! The y-websocket wire protocol: the sync messages (SyncStep1, SyncStep2, Update) and the
//! awareness messages that stock Yjs clients exchange over a WebSocket, one message per
//! binary frame.
//!
//! Pure: frames in, typed messages out, and back. Payloads are zero-copy slices of the
//! frame ([`Bytes::slice_ref`]). It checks the framing (message types, lengths, trailing
//! bytes) and the structure of awareness and state-vector payloads, but never interprets a
//! document update: that is the CRDT's job (`room::document`).

use bytes::Bytes;
use thiserror::Error;

use super::lib0::{self, Lib0Error, Reader};

/// Top-level message type: document sync.
pub const MSG_SYNC: u64 = 0;
/// Top-level message type: awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Top-level message type: auth (server → client only in y-protocols).
pub const MSG_AUTH: u64 = 2;
/// Top-level message type: a request for the full awareness state.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync sub-type: "here is my state vector".
pub const SYNC_STEP1: u64 = 0;
/// Sync sub-type: "here is what you lack".
pub const SYNC_STEP2: u64 = 1;
/// Sync sub-type: an incremental update.
pub const SYNC_UPDATE: u64 = 2;

/// One decoded y-websocket message. Payloads share the frame's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The sender's state vector; the answer is a [`Message::SyncStep2`].
    SyncStep1(Bytes),
    /// A document update holding what the receiver lacked.
    SyncStep2(Bytes),
    /// An incremental document update.
    Update(Bytes),
    /// An awareness update (cursors, names), lib0-encoded.
    Awareness(Bytes),
    /// A request for every awareness state the receiver knows.
    QueryAwareness,
}

/// Why a frame is not a valid y-websocket message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame's lib0 framing is broken (truncated varint, bad length).
    #[error("malformed frame: {0}")]
    Malformed(#[from] Lib0Error),
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The top-level message type is not one this server accepts from clients.
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    /// The sync sub-type is not 0, 1 or 2.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// Bytes follow the message.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// A payload's inner structure is broken.
    #[error("invalid {what}: {reason}")]
    InvalidPayload {
        /// Which payload.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Message {
    /// Decodes one frame. Fails on anything but exactly one well-framed message.
    pub fn decode(frame: &Bytes) -> Result<Message, DecodeError> {
        if frame.is_empty() {
            return Err(DecodeError::Empty);
        }
        let mut reader = Reader::new(frame);
        let message = match reader.read_var_u64()? {
            MSG_SYNC => {
                let kind = reader.read_var_u64()?;
                let payload = frame.slice_ref(reader.read_var_bytes()?);
                match kind {
                    SYNC_STEP1 => {
                        validate_state_vector(&payload)?;
                        Message::SyncStep1(payload)
                    }
                    SYNC_STEP2 => Message::SyncStep2(payload),
                    SYNC_UPDATE => Message::Update(payload),
                    other => return Err(DecodeError::UnknownSyncType(other)),
                }
            }
            MSG_AWARENESS => {
                let payload = frame.slice_ref(reader.read_var_bytes()?);
                parse_awareness(&payload)?;
                Message::Awareness(payload)
            }
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            other => return Err(DecodeError::UnknownMessageType(other)),
        };
        match reader.remaining() {
            0 => Ok(message),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Bytes {
        let (kind, sub, payload): (u64, Option<u64>, &[u8]) = match self {
            Message::SyncStep1(p) => (MSG_SYNC, Some(SYNC_STEP1), p),
            Message::SyncStep2(p) => (MSG_SYNC, Some(SYNC_STEP2), p),
            Message::Update(p) => (MSG_SYNC, Some(SYNC_UPDATE), p),
            Message::Awareness(p) => (MSG_AWARENESS, None, p),
            Message::QueryAwareness => {
                let mut out = Vec::with_capacity(1);
                lib0::write_var_u64(&mut out, MSG_QUERY_AWARENESS);
                return out.into();
            }
        };
        let mut out = Vec::with_capacity(payload.len() + 12);
        lib0::write_var_u64(&mut out, kind);
        if let Some(sub) = sub {
            lib0::write_var_u64(&mut out, sub);
        }
        lib0::write_var_bytes(&mut out, payload);
        out.into()
    }
}

/// Encodes y-protocols' auth message "permission denied" with `reason` (server → client).
pub fn encode_permission_denied(reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(reason.len() + 4);
    lib0::write_var_u64(&mut out, MSG_AUTH);
    lib0::write_var_u64(&mut out, 0); // 0 = denied
    lib0::write_var_bytes(&mut out, reason.as_bytes());
    out.into()
}

/// One client's entry in an awareness update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    /// The Yjs client id the state belongs to.
    pub client_id: u64,
    /// The state's logical clock; a higher clock wins.
    pub clock: u32,
    /// The state as JSON text; `null` means the client left.
    pub json: &'a str,
}

/// Parses an awareness update payload: a count, then (client id, clock, JSON string) each.
pub fn parse_awareness(payload: &[u8]) -> Result<Vec<AwarenessEntry<'_>>, DecodeError> {
    let mut reader = Reader::new(payload);
    let count = reader.read_var_u64()?;
    // Every entry takes at least three bytes, so a larger count is a lie.
    if count > (reader.remaining() / 3) as u64 {
        return Err(invalid("awareness update", "count exceeds payload"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let client_id = reader.read_var_u64()?;
        let clock = u32::try_from(reader.read_var_u64()?)
            .map_err(|_| invalid("awareness update", "clock exceeds 32 bits"))?;
        let json = std::str::from_utf8(reader.read_var_bytes()?)
            .map_err(|_| invalid("awareness update", "state is not UTF-8"))?;
        entries.push(AwarenessEntry {
            client_id,
            clock,
            json,
        });
    }
    match reader.remaining() {
        0 => Ok(entries),
        _ => Err(invalid("awareness update", "trailing bytes")),
    }
}

/// Encodes an awareness update payload from its entries.
pub fn encode_awareness(entries: &[AwarenessEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    lib0::write_var_u64(&mut out, entries.len() as u64);
    for entry in entries {
        lib0::write_var_u64(&mut out, entry.client_id);
        lib0::write_var_u64(&mut out, u64::from(entry.clock));
        lib0::write_var_bytes(&mut out, entry.json.as_bytes());
    }
    out
}

/// Checks a state vector payload: a count, then (client id, clock) pairs.
fn validate_state_vector(payload: &[u8]) -> Result<(), DecodeError> {
    let mut reader = Reader::new(payload);
    let count = reader.read_var_u64()?;
    if count > (reader.remaining() / 2) as u64 {
        return Err(invalid("state vector", "count exceeds payload"));
    }
    for _ in 0..count {
        reader.read_var_u64()?;
        u32::try_from(reader.read_var_u64()?)
            .map_err(|_| invalid("state vector", "clock exceeds 32 bits"))?;
    }
    match reader.remaining() {
        0 => Ok(()),
        _ => Err(invalid("state vector", "trailing bytes")),
    }
}

fn invalid(what: &'static str, reason: &str) -> DecodeError {
    DecodeError::InvalidPayload {
        what,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    #[test]
    fn decodes_the_messages_a_stock_client_sends() {
        // SyncStep1 with an empty state vector, as a fresh y-websocket client sends it.
        assert_eq!(
            Message::decode(&frame(&[0, 0, 1, 0])),
            Ok(Message::SyncStep1(frame(&[0])))
        );
        assert_eq!(
            Message::decode(&frame(&[0, 2, 2, 0, 0])),
            Ok(Message::Update(frame(&[0, 0])))
        );
        assert_eq!(Message::decode(&frame(&[3])), Ok(Message::QueryAwareness));
    }

    #[test]
    fn rejects_bad_frames() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "empty"),
            (&[0x80], "truncated varint"),
            (&[9], "unknown message type"),
            (&[2, 0], "auth from a client"),
            (&[0, 7, 0], "unknown sync type"),
            (&[0, 2, 5, 1], "length past the end"),
            (&[0, 2, 1, 0, 0], "trailing bytes"),
            (&[0, 0, 1, 5], "state vector count lies"),
            (&[1, 2, 9, 1], "awareness count lies"),
            (&[0, 2, 4, 0xfe, 0xc9, 0x9a, 0x3b], "ok framing"),
        ];
        for (bytes, name) in cases {
            let result = Message::decode(&frame(bytes));
            if *name == "ok framing" {
                // Framing is fine; the update itself is judged by the CRDT layer.
                assert!(result.is_ok(), "{name}");
            } else {
                assert!(result.is_err(), "{name}: {result:?}");
            }
        }
    }

    #[test]
    fn awareness_round_trips() {
        let entries = vec![
            AwarenessEntry {
                client_id: 7,
                clock: 3,
                json: "{\"user\":\"a\"}",
            },
            AwarenessEntry {
                client_id: 1 << 40,
                clock: 0,
                json: "null",
            },
        ];
        let payload = encode_awareness(&entries);
        assert_eq!(parse_awareness(&payload).unwrap(), entries);
    }

    fn any_message() -> impl Strategy<Value = Message> {
        let payload = proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
        prop_oneof![
            payload.clone().prop_map(Message::SyncStep2),
            payload.prop_map(Message::Update),
            Just(Message::QueryAwareness),
            proptest::collection::vec((any::<u64>(), any::<u32>(), ".{0,20}"), 0..5).prop_map(
                |entries| {
                    let entries: Vec<_> = entries
                        .iter()
                        .map(|(c, k, j)| AwarenessEntry {
                            client_id: *c,
                            clock: *k,
                            json: j,
                        })
                        .collect();
                    Message::Awareness(encode_awareness(&entries).into())
                }
            ),
            proptest::collection::vec((any::<u64>(), any::<u32>()), 0..5).prop_map(|pairs| {
                let mut sv = Vec::new();
                lib0::write_var_u64(&mut sv, pairs.len() as u64);
                for (client, clock) in pairs {
                    lib0::write_var_u64(&mut sv, client);
                    lib0::write_var_u64(&mut sv, u64::from(clock));
                }
                Message::SyncStep1(sv.into())
            }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(message in any_message()) {
            prop_assert_eq!(Message::decode(&message.encode()), Ok(message));
        }

        #[test]
        fn mutated_frames_never_panic(
            message in any_message(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = message.encode().to_vec();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = value;
                }
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = Message::decode(&Bytes::from(bytes));
        }
    }
}
