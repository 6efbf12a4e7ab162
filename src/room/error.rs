//! Why a room could not do what was asked, and what each reason means to each kind of
//! client: a WebSocket close code, a chat error code, and the text a client may see (HTTP
//! statuses are mapped by `http`, the only module that knows HTTP). One place each, so a
//! new reason cannot be answered three different ways. Store errors never reach a
//! client's eyes: they are logged, and clients are told [`STORAGE_FAILED`].

use thiserror::Error;

use super::document::DocError;
use crate::protocol::close::{self, Close};
use crate::storage::StoreError;
use crate::stream::wire::ErrorCode;

/// What clients are told when the store fails; the error itself is logged.
pub const STORAGE_FAILED: &str = "storage unavailable; retry later";

/// Why a room could not do what was asked.
#[derive(Debug, Error)]
pub enum RoomError {
    /// The update or request was refused by the CRDT.
    #[error(transparent)]
    Invalid(#[from] DocError),
    /// The store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The room cannot serve now (see [`Unavailable`]); retrying later may succeed.
    #[error("room is unavailable: {0}")]
    Unavailable(Unavailable),
    /// The node holds its limit of active rooms; try again later (or another node).
    #[error("this node holds its limit of {limit} active rooms")]
    Full {
        /// The configured limit (`--max-rooms`).
        limit: usize,
    },
    /// The update would make the document larger than the configured limit.
    #[error("document would exceed {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// A chat message body is larger than the configured limit.
    #[error("message body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
}

/// Why a room is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Unavailable {
    /// The room is deactivating (idle) or shutting down.
    #[error("room is stopping")]
    Stopping,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The room failed (its store, or a reload after a yrs panic); it reloads on next use.
    #[error("{STORAGE_FAILED}")]
    Failed,
    /// The room was claimed by a newer activation (fenced by the store); it stepped down.
    #[error("the room moved to another owner; retry")]
    Moved,
    /// The room is rebuilding its document from the store (after yrs panicked).
    #[error("the room is reloading; retry")]
    Reloading,
    /// The room did not answer in time.
    #[error("room did not answer in time")]
    NotAnswering,
    /// The room kept stopping while it was asked.
    #[error("the room kept stopping; try again")]
    KeepsStopping,
}

impl RoomError {
    /// What a client may be told: the reason for a refusal it caused, or a fixed line for
    /// a failure of the server's own (storage details stay in the server's log).
    pub fn public_message(&self) -> String {
        match self {
            RoomError::Store(StoreError::Fenced { .. }) => Unavailable::Moved.to_string(),
            RoomError::Store(_) => STORAGE_FAILED.to_owned(),
            other => other.to_string(),
        }
    }

    /// The close code a WebSocket session gets for this.
    pub fn close(&self) -> Close {
        match self {
            RoomError::Invalid(_) => close::INVALID_UPDATE,
            RoomError::TooLarge { .. } => close::DOCUMENT_TOO_LARGE,
            RoomError::BodyTooLarge { .. } => close::MESSAGE_TOO_BIG,
            RoomError::Full { .. } => close::TRY_AGAIN_LATER,
            RoomError::Unavailable(Unavailable::ShuttingDown) => close::GOING_AWAY,
            RoomError::Unavailable(Unavailable::Moved)
            | RoomError::Store(StoreError::Fenced { .. }) => close::ROOM_MOVED,
            RoomError::Store(_) | RoomError::Unavailable(_) => close::INTERNAL_ERROR,
        }
    }

    /// The chat `error` event code for this.
    pub fn chat_code(&self) -> ErrorCode {
        match self {
            RoomError::Invalid(_) => ErrorCode::BadRequest,
            RoomError::BodyTooLarge { .. } | RoomError::TooLarge { .. } => ErrorCode::BodyTooLarge,
            RoomError::Store(_) | RoomError::Unavailable(_) | RoomError::Full { .. } => {
                ErrorCode::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_told_without_their_details() {
        let e = RoomError::Store(StoreError::refused("disk /dev/sdq on fire"));
        assert_eq!(e.public_message(), STORAGE_FAILED);
        assert_eq!(e.close(), close::INTERNAL_ERROR);
        assert_eq!(e.chat_code(), ErrorCode::Unavailable);
        let failed = RoomError::Unavailable(Unavailable::Failed);
        assert!(failed.public_message().contains(STORAGE_FAILED));
        let room = crate::id::RoomName::parse("r").unwrap();
        let fenced = RoomError::Store(StoreError::fenced(&room, crate::id::Epoch(3)));
        assert_eq!(fenced.close(), close::ROOM_MOVED);
        assert!(
            !fenced.public_message().contains("epoch"),
            "{}",
            fenced.public_message()
        );
    }

    #[test]
    fn refusals_a_client_caused_say_why() {
        let e = RoomError::TooLarge { limit: 10 };
        assert_eq!(e.public_message(), "document would exceed 10 bytes");
        assert_eq!(e.close(), close::DOCUMENT_TOO_LARGE);
        let e = RoomError::BodyTooLarge { limit: 5 };
        assert_eq!(e.chat_code(), ErrorCode::BodyTooLarge);
        assert_eq!(RoomError::Full { limit: 3 }.close(), close::TRY_AGAIN_LATER);
    }
}
