//! The bare WebSocket connection a session owns after the upgrade: frames read off the TCP
//! stream and frames queued for it, with buffers that exist only while bytes are pending.
//! It knows WebSocket framing (through actix-http's codec) and nothing about sessions or
//! rooms; when and what to send is the session's business.
//!
//! Reading pauses while the write queue is long ([`ReadGate`]): whatever a client makes
//! the server send (pongs, answers to its requests) waits for it to read, as with any
//! TCP backpressure, instead of piling up in memory.
//!
//! Why not a framed stream: a framed reader and writer each keep an 8 KiB buffer for the
//! connection's whole life, and an idle collaboration server holds mostly idle sockets.
//! Here the read buffer is released whenever every frame in it has been decoded, and the
//! write buffer whenever the kernel has taken all of it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use bytes::{Buf, BytesMut};
use futures_util::Stream;
use thiserror::Error;
use tokio::net::TcpStream;

use super::framing::{self, Budget, HeadError};

/// Bytes read from the socket per system call (a stack buffer; only what arrives is kept).
const READ_CHUNK: usize = 8 * 1024;

/// Reads per poll of the reader before it yields to the rest of the session's work.
const READS_PER_POLL: usize = 16;

/// Why reading is paused; reading goes on only when no reason holds.
#[derive(Debug, Clone, Copy)]
pub enum Pause {
    /// The write queue is long: the client must read before it is read again.
    Backlog = 1,
    /// The client is over its message rate: it is read again when its tokens refill.
    Throttle = 2,
}

/// Shared by a session and its reader: while paused, the reader yields nothing.
#[derive(Default)]
pub struct ReadGate {
    /// The [`Pause`] reasons that hold, as bits.
    paused: Cell<u8>,
    waker: Cell<Option<Waker>>,
}

impl ReadGate {
    /// Stops the reader, for `why`, after the frame it is handing out.
    pub fn pause(&self, why: Pause) {
        self.paused.set(self.paused.get() | why as u8);
    }

    /// Lifts `why`; the reader goes on (woken if it waits) once no reason holds.
    pub fn resume(&self, why: Pause) {
        let before = self.paused.get();
        let after = before & !(why as u8);
        self.paused.set(after);
        if before != 0 && after == 0 {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }

    /// Whether `why` holds.
    pub fn is_paused_for(&self, why: Pause) -> bool {
        self.paused.get() & why as u8 != 0
    }
}

/// Why the client's frames cannot be read on.
#[derive(Debug, Error)]
pub enum ReadError {
    /// A frame, or the message it continues, declares more than the limit (close 1009).
    #[error("{0}")]
    TooBig(HeadError),
    /// The client broke the WebSocket protocol (close 1002).
    #[error("{0}")]
    Protocol(String),
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where the reader is in the byte stream.
enum Mode {
    /// Reading frames.
    Frames,
    /// Discarding the payload of a frame refused as too big (this many bytes are left),
    /// then reading frames again: the client's answer to our close frame comes after it.
    Skip(u64),
    /// After a protocol error frame boundaries are lost: discard everything until EOF,
    /// so that closing does not reset the connection under our close frame.
    Drain,
    /// EOF: nothing more.
    Done,
}

/// The frames a client sends, as a stream. Refused frames are reported once; afterwards
/// the stream discards what the client sends (see [`Mode`]) and ends at EOF.
pub struct FrameReader {
    io: Rc<TcpStream>,
    gate: Rc<ReadGate>,
    codec: Codec,
    /// The size budget of the message being received.
    budget: Budget,
    /// Received bytes not yet decoded into a whole frame: at most one frame that passed its
    /// head check, plus one read's worth. Empty (unallocated) when idle.
    buf: BytesMut,
    mode: Mode,
}

impl FrameReader {
    /// A reader for `io` that first decodes `pending` (bytes read during the handshake),
    /// refuses frames and messages larger than `max_message` bytes at their head, and
    /// waits while `gate` is paused.
    pub fn new(io: Rc<TcpStream>, gate: Rc<ReadGate>, pending: &[u8], max_message: usize) -> Self {
        Self {
            io,
            gate,
            codec: Codec::new().max_size(max_message),
            budget: Budget::new(max_message),
            buf: BytesMut::from(pending),
            mode: Mode::Frames,
        }
    }

    /// The next whole frame in `buf`, checked at its head; `Ok(None)` until it has arrived.
    fn decode(&mut self) -> Result<Option<Frame>, ReadError> {
        let head = match framing::parse(&self.buf) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.refuse(Mode::Drain);
                return Err(ReadError::Protocol(e.to_string()));
            }
        };
        if let Err(e) = self.budget.admit(&head) {
            self.refuse(Mode::Skip(head.frame_len()));
            return Err(ReadError::TooBig(e));
        }
        if (self.buf.len() as u64) < head.frame_len() {
            // The head passed: room for exactly this frame, so that the frame handed on
            // (which shares this allocation) does not keep a larger one alive.
            let frame_len = head.frame_len() as usize;
            self.buf.reserve(frame_len - self.buf.len());
            return Ok(None);
        }
        match self.codec.decode(&mut self.buf) {
            Ok(Some(frame)) => {
                self.budget.consumed(&head);
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                Ok(Some(frame))
            }
            // The whole frame is here, so the codec has an answer; keep reading if not.
            Ok(None) => Ok(None),
            Err(ProtocolError::Overflow) => {
                self.refuse(Mode::Drain);
                Err(ReadError::TooBig(HeadError::TooBig {
                    declared: head.payload_len,
                    limit: self.budget.limit(),
                }))
            }
            Err(ProtocolError::Io(e)) if e.kind() != io::ErrorKind::InvalidData => {
                self.refuse(Mode::Drain);
                Err(ReadError::Io(e))
            }
            Err(e) => {
                self.refuse(Mode::Drain);
                Err(ReadError::Protocol(e.to_string()))
            }
        }
    }

    /// Stops reading frames: `mode` says what happens to the bytes that follow.
    fn refuse(&mut self, mode: Mode) {
        if let Mode::Skip(mut left) = mode {
            let here = left.min(self.buf.len() as u64);
            self.buf.advance(here as usize);
            left -= here;
            self.mode = if left == 0 {
                Mode::Frames
            } else {
                Mode::Skip(left)
            };
        } else {
            self.mode = mode;
        }
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

impl Stream for FrameReader {
    type Item = Result<Frame, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut reads = 0;
        loop {
            match this.mode {
                Mode::Done => return Poll::Ready(None),
                Mode::Frames => {
                    if this.gate.paused.get() != 0 {
                        this.gate.waker.set(Some(cx.waker().clone()));
                        return Poll::Pending;
                    }
                    match this.decode() {
                        Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Mode::Skip(_) | Mode::Drain => {}
            }
            if reads == READS_PER_POLL {
                // A client that sends without pause must not hold the thread: let the
                // session's other work (timers, writes, the close timeout) run, then go on.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            if let Err(e) = ready!(this.io.poll_read_ready(cx)) {
                this.mode = Mode::Done;
                return Poll::Ready(Some(Err(ReadError::Io(e))));
            }
            let mut chunk = [0u8; READ_CHUNK];
            match this.io.try_read(&mut chunk) {
                Ok(0) => {
                    this.mode = Mode::Done;
                    this.buf = BytesMut::new();
                    return Poll::Ready(None);
                }
                Ok(n) => match this.mode {
                    Mode::Frames => this.buf.extend_from_slice(&chunk[..n]),
                    Mode::Skip(left) if (n as u64) < left => {
                        this.mode = Mode::Skip(left - n as u64)
                    }
                    Mode::Skip(left) => {
                        // The refused frame is behind us: what follows is frames again.
                        this.buf.extend_from_slice(&chunk[left as usize..n]);
                        this.mode = Mode::Frames;
                    }
                    Mode::Drain | Mode::Done => {}
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.mode = Mode::Done;
                    return Poll::Ready(Some(Err(ReadError::Io(e))));
                }
            }
        }
    }
}

/// Frames queued for the client, written as fast as the kernel takes them.
pub struct FrameWriter {
    io: Rc<TcpStream>,
    codec: Codec,
    /// Encoded bytes the kernel has not taken yet; empty (unallocated) when all are written.
    out: BytesMut,
    /// Bytes the kernel took since `out` was last empty.
    taken: usize,
    /// Where each frame not yet wholly taken ends, counted like `taken`: lets a session that
    /// cuts a client drop the frames the kernel has not begun to take.
    ends: VecDeque<usize>,
}

impl FrameWriter {
    /// A writer for `io`.
    pub fn new(io: Rc<TcpStream>) -> Self {
        Self {
            io,
            codec: Codec::new(),
            out: BytesMut::new(),
            taken: 0,
            ends: VecDeque::new(),
        }
    }

    /// Encodes `message` at the end of the queue.
    pub fn queue(&mut self, message: Message) {
        // Encoding a server frame into memory cannot fail: no mask, no continuation state.
        if let Err(e) = self.codec.encode(message, &mut self.out) {
            tracing::error!(error = %e, "could not encode a WebSocket frame");
        }
        let end = self.taken + self.out.len();
        if self.ends.back() != Some(&end) {
            self.ends.push_back(end);
        }
    }

    /// Queued bytes the kernel has not taken yet.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Drops every queued frame the kernel has not begun to take (the one it is part way
    /// through stays, so the stream of frames stays whole).
    pub fn discard_unsent(&mut self) {
        let keep = self.ends.front().map_or(0, |&end| end - self.taken);
        self.out.truncate(keep);
        self.ends.truncate(1);
        if self.out.is_empty() {
            self.release();
        }
    }

    /// Writes what the kernel takes now: `Ok(true)` when the queue is empty, `Ok(false)`
    /// when the socket is full (wait for [`Self::writable`] and call again).
    pub fn write_now(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match self.io.try_write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.release();
        Ok(true)
    }

    /// Forgets the first `n` queued bytes (the kernel took them).
    fn advance(&mut self, n: usize) {
        self.out.advance(n);
        self.taken += n;
        while self.ends.front().is_some_and(|&end| end <= self.taken) {
            self.ends.pop_front();
        }
    }

    /// Frees the buffers once everything is written.
    fn release(&mut self) {
        self.out = BytesMut::new();
        self.taken = 0;
        self.ends = VecDeque::new();
    }

    /// Resolves when the socket can take more bytes.
    pub fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + 'static {
        let io = Rc::clone(&self.io);
        async move { io.writable().await }
    }
}
