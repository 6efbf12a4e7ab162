//! The WebSocket close codes Tandem sends, one constant each, so the README's table, the
//! session actor and the tests name the same numbers. Pure data.
//!
//! Standard codes (RFC 6455 §7.4.1) are used where one fits; 4000–4099 are Tandem's own.

/// A close code with the short, stable reason sent alongside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The numeric close code.
    pub code: u16,
    /// A short reason; the session may append detail after a colon.
    pub reason: &'static str,
}

/// The server is shutting down; reconnect later (or to another node).
pub const GOING_AWAY: Close = Close {
    code: 1001,
    reason: "server shutting down",
};
/// The client broke the WebSocket protocol (reserved bits, unmasked frame, bad opcode,
/// broken fragmentation, an invalid close frame).
pub const PROTOCOL_ERROR: Close = Close {
    code: 1002,
    reason: "WebSocket protocol error",
};
/// A text frame arrived on the binary Yjs endpoint.
pub const UNSUPPORTED_DATA: Close = Close {
    code: 1003,
    reason: "binary frames only",
};
/// A binary frame arrived on the JSON chat endpoint.
pub const TEXT_ONLY: Close = Close {
    code: 1003,
    reason: "text frames only",
};
/// No frame (not even a pong) arrived within the heartbeat timeout.
pub const HEARTBEAT_TIMEOUT: Close = Close {
    code: 1001,
    reason: "heartbeat timeout",
};
/// A frame or reassembled message exceeded the configured size limit.
pub const MESSAGE_TOO_BIG: Close = Close {
    code: 1009,
    reason: "message too big",
};
/// The node is at its connection or room limit; try again later (or another node).
pub const TRY_AGAIN_LATER: Close = Close {
    code: 1013,
    reason: "try again later",
};
/// The server failed (storage error); the client's state is intact and it may reconnect.
pub const INTERNAL_ERROR: Close = Close {
    code: 1011,
    reason: "internal server error",
};
/// The frame is not a well-formed y-websocket message (framing, lengths, trailing bytes).
pub const MALFORMED_MESSAGE: Close = Close {
    code: 4000,
    reason: "malformed message",
};
/// The frame's message type is not one a client may send.
pub const UNKNOWN_MESSAGE_TYPE: Close = Close {
    code: 4001,
    reason: "unknown message type",
};
/// The document update could not be decoded or applied.
pub const INVALID_UPDATE: Close = Close {
    code: 4002,
    reason: "invalid document update",
};
/// The client did not read what was sent to it fast enough; it resyncs on reconnect.
pub const TOO_SLOW: Close = Close {
    code: 4008,
    reason: "too slow",
};
/// The document would exceed the configured size limit.
pub const DOCUMENT_TOO_LARGE: Close = Close {
    code: 4009,
    reason: "document too large",
};
/// The token the session was opened with has expired (and, on the chat stream, no
/// `refresh` replaced it in time); reconnect with a fresh token.
pub const TOKEN_EXPIRED: Close = Close {
    code: 4010,
    reason: "token expired",
};
/// The room was taken over by another activation (another node, after a membership
/// change or a pause): this one may not write any more. Reconnect; the room's new owner
/// serves it from everything acknowledged.
pub const ROOM_MOVED: Close = Close {
    code: 4011,
    reason: "room moved",
};
// 4029 ("rate limit exceeded") is retired: a client over its message rate is throttled
// (its socket is not read until its tokens refill), never closed.
