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
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use bytes::{Buf, BytesMut};
use futures_util::Stream;
use tokio::net::TcpStream;

/// Bytes read from the socket per system call (a stack buffer; only what arrives is kept).
const READ_CHUNK: usize = 8 * 1024;

/// Shared by a session and its reader: while paused, the reader yields nothing.
#[derive(Default)]
pub struct ReadGate {
    paused: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl ReadGate {
    /// Stops the reader after the frame it is handing out.
    pub fn pause(&self) {
        self.paused.set(true);
    }

    /// Lets the reader go on (waking it if it waits).
    pub fn resume(&self) {
        if self.paused.replace(false) {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

/// The frames a client sends, as a stream. Ends at EOF or after the first error.
pub struct FrameReader {
    io: Rc<TcpStream>,
    gate: Rc<ReadGate>,
    codec: Codec,
    /// Received bytes not yet decoded into a whole frame; empty (unallocated) when idle.
    buf: BytesMut,
    done: bool,
}

impl FrameReader {
    /// A reader for `io` that first decodes `pending` (bytes read during the handshake),
    /// refuses frames larger than `max_frame` bytes, and waits while `gate` is paused.
    pub fn new(io: Rc<TcpStream>, gate: Rc<ReadGate>, pending: &[u8], max_frame: usize) -> Self {
        Self {
            io,
            gate,
            codec: Codec::new().max_size(max_frame),
            buf: BytesMut::from(pending),
            done: false,
        }
    }

    fn finish(
        &mut self,
        item: Option<Result<Frame, ProtocolError>>,
    ) -> Poll<Option<<Self as Stream>::Item>> {
        self.done = true;
        self.buf = BytesMut::new();
        Poll::Ready(item)
    }
}

impl Stream for FrameReader {
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.gate.paused.get() {
                this.gate.waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => {
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
                Err(e) => return this.finish(Some(Err(e))),
            }
            if let Err(e) = ready!(this.io.poll_read_ready(cx)) {
                return this.finish(Some(Err(ProtocolError::Io(e))));
            }
            let mut chunk = [0u8; READ_CHUNK];
            match this.io.try_read(&mut chunk) {
                Ok(0) => return this.finish(None),
                Ok(n) => this.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return this.finish(Some(Err(ProtocolError::Io(e)))),
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
}

impl FrameWriter {
    /// A writer for `io`.
    pub fn new(io: Rc<TcpStream>) -> Self {
        Self {
            io,
            codec: Codec::new(),
            out: BytesMut::new(),
        }
    }

    /// Encodes `message` at the end of the queue.
    pub fn queue(&mut self, message: Message) {
        // Encoding a server frame into memory cannot fail: no mask, no continuation state.
        if let Err(e) = self.codec.encode(message, &mut self.out) {
            tracing::error!(error = %e, "could not encode a WebSocket frame");
        }
    }

    /// Queued bytes the kernel has not taken yet.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes what the kernel takes now: `Ok(true)` when the queue is empty, `Ok(false)`
    /// when the socket is full (wait for [`Self::writable`] and call again).
    pub fn write_now(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match self.io.try_write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.out = BytesMut::new();
        Ok(true)
    }

    /// Resolves when the socket can take more bytes.
    pub fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + 'static {
        let io = Rc::clone(&self.io);
        async move { io.writable().await }
    }
}
