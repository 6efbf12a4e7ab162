//! WebSocket frame heads, judged before any payload is buffered (pure: bytes in, verdicts
//! out; no sockets, no actors).
//!
//! actix-http's codec decodes a frame only once all of it has arrived, and checks its size
//! limit only then: a client declaring a 512 MiB frame made the server hold every byte it
//! sent until a timeout. Here the reader looks at a frame's head (RFC 6455 §5.2: at most
//! 14 bytes) as soon as it is in, and refuses it at once when the head breaks the protocol
//! or declares more than the limit — alone, or with the fragments of the message it
//! continues. Only frames that pass are buffered and handed to the codec.

use thiserror::Error;

/// FIN: the last frame of a message.
const FIN: u8 = 0x80;
/// RSV1–3: must be zero without a negotiated extension (Tandem negotiates none).
const RSV: u8 = 0x70;
/// The opcode nibble.
const OPCODE: u8 = 0x0f;
/// The mask bit: every client frame must be masked.
const MASKED: u8 = 0x80;
/// Largest control-frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame head that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last frame of its message.
    pub fin: bool,
    /// The opcode (0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Bytes of the head (with the masking key).
    pub head_len: usize,
    /// Bytes of payload the head declares.
    pub payload_len: u64,
}

impl Head {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> u64 {
        self.head_len as u64 + self.payload_len
    }
}

/// Why a frame head is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    /// The frame, or the message it belongs to, would exceed the limit (close 1009).
    #[error("{declared} bytes declared; the limit is {limit}")]
    TooBig {
        /// What the frame (with the fragments before it) declares.
        declared: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The head breaks RFC 6455 (close 1002).
    #[error("{0}")]
    Protocol(&'static str),
}

/// Reads a frame head from the start of `buf`: `Ok(None)` until all of it has arrived.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & RSV != 0 {
        return Err(HeadError::Protocol(
            "reserved bits set; no extension was negotiated",
        ));
    }
    if second & MASKED == 0 {
        return Err(HeadError::Protocol("client frames must be masked"));
    }
    let opcode = first & OPCODE;
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(HeadError::Protocol("unknown opcode"));
    }
    let fin = first & FIN != 0;
    if opcode >= 8 && (!fin || u64::from(second & 0x7f) > MAX_CONTROL_PAYLOAD) {
        return Err(HeadError::Protocol(
            "control frames must be whole and at most 125 bytes",
        ));
    }
    let (payload_len, len_bytes) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(HeadError::Protocol("payload length has its top bit set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let head = Head {
        fin,
        opcode,
        head_len: 2 + len_bytes + 4,
        payload_len,
    };
    if buf.len() < head.head_len {
        return Ok(None);
    }
    Ok(Some(head))
}

/// The size budget of the message being received: a frame is refused when it, added to
/// the fragments of the message it continues, declares more than the limit.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u64,
    /// Payload bytes of the fragmented data message under way, if one is.
    fragments: Option<u64>,
}

impl Budget {
    /// A budget of `limit` bytes per message.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit as u64,
            fragments: None,
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `head` fits. Does not change the budget: call [`Budget::consumed`] once
    /// the frame has been decoded.
    pub fn admit(&self, head: &Head) -> Result<(), HeadError> {
        let declared = match head.opcode {
            0 => self.fragments.unwrap_or(0).saturating_add(head.payload_len),
            _ => head.payload_len,
        };
        if declared > self.limit {
            return Err(HeadError::TooBig {
                declared,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Counts a decoded frame against the message it belongs to.
    pub fn consumed(&mut self, head: &Head) {
        match (head.opcode, head.fin) {
            (1 | 2, false) => self.fragments = Some(head.payload_len),
            (0, false) => {
                self.fragments = Some(self.fragments.unwrap_or(0) + head.payload_len);
            }
            (0, true) | (1 | 2, true) => self.fragments = None,
            _ => {} // control frames may sit between fragments
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame head declaring `len` bytes.
    fn head_bytes(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut out = vec![if fin { FIN } else { 0 } | opcode];
        match len {
            0..=125 => out.push(MASKED | len as u8),
            126..=0xffff => {
                out.push(MASKED | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(MASKED | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]); // masking key
        out
    }

    #[test]
    fn a_head_is_read_only_once_whole() {
        let bytes = head_bytes(true, 2, 70_000);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let head = parse(&bytes).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                fin: true,
                opcode: 2,
                head_len: 2 + 8 + 4,
                payload_len: 70_000
            }
        );
        assert_eq!(head.frame_len(), 70_014);
        assert_eq!(
            parse(&head_bytes(true, 1, 300)).unwrap().unwrap().head_len,
            8
        );
        assert_eq!(parse(&head_bytes(true, 9, 5)).unwrap().unwrap().head_len, 6);
    }

    #[test]
    fn protocol_breaks_are_refused_from_the_first_two_bytes() {
        let cases: [(&[u8], &str); 5] = [
            (&[0x80 | 0x40 | 2, MASKED | 5], "reserved"),
            (&[0x80 | 2, 5], "masked"),
            (&[0x80 | 3, MASKED], "opcode"),
            (&[9, MASKED], "control"),
            (&[0x80 | 9, MASKED | 126], "control"),
        ];
        for (bytes, what) in cases {
            match parse(bytes) {
                Err(HeadError::Protocol(reason)) => assert!(reason.contains(what), "{reason}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let mut top_bit = head_bytes(true, 2, 0);
        top_bit.truncate(1);
        top_bit.push(MASKED | 127);
        top_bit.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse(&top_bit), Err(HeadError::Protocol(_))));
    }

    #[test]
    fn the_budget_counts_a_fragmented_message_as_one() {
        let mut budget = Budget::new(100);
        let first = parse(&head_bytes(false, 2, 60)).unwrap().unwrap();
        assert_eq!(budget.admit(&first), Ok(()));
        budget.consumed(&first);
        let ping = parse(&head_bytes(true, 9, 4)).unwrap().unwrap();
        assert_eq!(budget.admit(&ping), Ok(()));
        budget.consumed(&ping);
        let more = parse(&head_bytes(false, 0, 40)).unwrap().unwrap();
        assert_eq!(budget.admit(&more), Ok(()));
        budget.consumed(&more);
        let last = parse(&head_bytes(true, 0, 1)).unwrap().unwrap();
        assert_eq!(
            budget.admit(&last),
            Err(HeadError::TooBig {
                declared: 101,
                limit: 100
            })
        );
        let fits = parse(&head_bytes(true, 0, 0)).unwrap().unwrap();
        budget.consumed(&fits);
        // The message is over: a new one has the whole budget again.
        let whole = parse(&head_bytes(true, 2, 100)).unwrap().unwrap();
        assert_eq!(budget.admit(&whole), Ok(()));
    }

    proptest! {
        /// Every declared length, however large, is judged from the head alone.
        #[test]
        fn any_declared_length_is_judged_at_the_head(len in 0u64..(1 << 63), limit in 0usize..(1 << 30)) {
            let head = parse(&head_bytes(true, 2, len)).unwrap().unwrap();
            prop_assert_eq!(head.payload_len, len);
            let verdict = Budget::new(limit).admit(&head);
            prop_assert_eq!(verdict.is_ok(), len <= limit as u64);
        }

        /// Arbitrary bytes never panic the parser, and a head it accepts fits in them.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some(head)) = parse(&bytes) {
                prop_assert!(head.head_len <= bytes.len());
            }
        }
    }
}
