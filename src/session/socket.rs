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
//! write queue whenever the kernel has taken all of it; a queued data frame holds its
//! payload by reference (a broadcast's one `Bytes`), never a copy.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use thiserror::Error;
use tokio::net::TcpStream;

use super::framing::{self, Budget, HeadError};

/// Bytes read from the socket per system call (a stack buffer; only what arrives is kept).
const READ_CHUNK: usize = 8 * 1024;

/// Most the reader reserves ahead of a frame's bytes (a head declares, the bytes prove).
const MAX_RESERVE: usize = 64 * 1024;

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

/// The connection a session's reader and writer share, with the gate that pauses reading
/// (one allocation for both: every idle connection holds it).
pub struct Connection {
    io: TcpStream,
    gate: ReadGate,
}

impl Connection {
    /// The upgraded connection `io`, reading not paused.
    pub fn new(io: TcpStream) -> Rc<Self> {
        Rc::new(Self {
            io,
            gate: ReadGate::default(),
        })
    }
}

/// The frames a client sends, as a stream. Refused frames are reported once; afterwards
/// the stream discards what the client sends (see [`Mode`]) and ends at EOF.
pub struct FrameReader {
    connection: Rc<Connection>,
    codec: Codec,
    /// The size budget of the message being received.
    budget: Budget,
    /// Received bytes not yet decoded into a whole frame: at most one frame that passed its
    /// head check, plus one read's worth. Empty (unallocated) when idle.
    buf: BytesMut,
    mode: Mode,
    /// A frame was refused as too big: the session is closing, and data frames that
    /// follow are skipped at their head.
    refused_too_big: bool,
}

impl FrameReader {
    /// A reader of `connection` that first decodes `pending` (bytes read during the
    /// handshake), refuses frames and messages larger than `max_message` bytes at their
    /// head, and waits while the connection's gate is paused.
    pub fn new(connection: Rc<Connection>, pending: &[u8], max_message: usize) -> Self {
        Self {
            connection,
            codec: Codec::new().max_size(max_message),
            budget: Budget::new(max_message),
            buf: BytesMut::from(pending),
            mode: Mode::Frames,
            refused_too_big: false,
        }
    }

    /// The next whole frame in `buf`, checked at its head; `Ok(None)` until it has arrived.
    fn decode(&mut self) -> Result<Option<Frame>, ReadError> {
        let head = loop {
            let head = match framing::parse(&self.buf) {
                Ok(Some(head)) => head,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.refuse(Mode::Drain);
                    return Err(ReadError::Protocol(e.to_string()));
                }
            };
            if self.refused_too_big && head.opcode < 8 {
                // Closing after a refused frame: the codec never saw it, so its idea of
                // the fragmented message is off. Data frames are skipped at their head;
                // only control frames (the client's close) go on to it.
                self.refuse(Mode::Skip(head.frame_len()));
                match self.mode {
                    Mode::Frames => continue,
                    _ => return Ok(None),
                }
            }
            if let Err(e) = self.budget.admit(&head) {
                self.refused_too_big = true;
                self.refuse(Mode::Skip(head.frame_len()));
                return Err(ReadError::TooBig(e));
            }
            break head;
        };
        if (self.buf.len() as u64) < head.frame_len() {
            // The head passed: make room for this frame, in full when small, so that the
            // frame handed on (which shares this allocation) keeps no larger one alive;
            // a large one grows as its bytes arrive, so a head alone reserves little.
            let missing = head.frame_len() as usize - self.buf.len();
            self.buf.reserve(missing.min(MAX_RESERVE));
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
        if self.buf.is_empty() || matches!(self.mode, Mode::Drain | Mode::Done) {
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
                    let gate = &this.connection.gate;
                    if gate.paused.get() != 0 {
                        gate.waker.set(Some(cx.waker().clone()));
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
            if let Err(e) = ready!(this.connection.io.poll_read_ready(cx)) {
                this.mode = Mode::Done;
                return Poll::Ready(Some(Err(ReadError::Io(e))));
            }
            let mut chunk = [0u8; READ_CHUNK];
            match this.connection.io.try_read(&mut chunk) {
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
///
/// A data frame is queued as its few header bytes plus its payload, the same `Bytes` every
/// other recipient of a broadcast holds: nothing is copied per recipient. Whatever is
/// queued when the socket is written goes out in one vectored write (`writev`), up to
/// [`MAX_SLICES`] pieces at a time.
pub struct FrameWriter {
    connection: Rc<Connection>,
    codec: Codec,
    /// Frames the kernel has not wholly taken; unallocated when all are written.
    frames: VecDeque<Queued>,
    /// Bytes of the front frame the kernel took.
    front_taken: usize,
    /// Bytes queued and not yet taken.
    queued: usize,
}

/// One frame: its header and its payload.
struct Queued {
    head: Head,
    payload: Bytes,
}

impl Queued {
    fn len(&self) -> usize {
        self.head.len as usize + self.payload.len()
    }
}

/// A server frame header: at most 10 bytes (no mask).
struct Head {
    bytes: [u8; 10],
    len: u8,
}

impl Head {
    const NONE: Head = Head {
        bytes: [0; 10],
        len: 0,
    };

    /// The header of an unfragmented, unmasked frame with `opcode` and `len` payload bytes.
    fn data(opcode: u8, len: usize) -> Head {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let len_bytes = match len {
            0..=125 => {
                bytes[1] = len as u8;
                2
            }
            126..=0xffff => {
                bytes[1] = 126;
                bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = 127;
                bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        Head {
            bytes,
            len: len_bytes,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Pieces handed to one vectored write (two per frame).
const MAX_SLICES: usize = 128;

/// WebSocket opcodes of the data frames queued without copying.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

impl FrameWriter {
    /// A writer to `connection`.
    pub fn new(connection: Rc<Connection>) -> Self {
        Self {
            connection,
            codec: Codec::new(),
            frames: VecDeque::new(),
            front_taken: 0,
            queued: 0,
        }
    }

    /// Queues `message` after what is queued: a data frame by reference to its payload,
    /// a control frame encoded (they are small).
    pub fn queue(&mut self, message: Message) {
        let frame = match message {
            Message::Binary(payload) => Queued {
                head: Head::data(OPCODE_BINARY, payload.len()),
                payload,
            },
            Message::Text(text) => {
                let payload = text.into_bytes();
                Queued {
                    head: Head::data(OPCODE_TEXT, payload.len()),
                    payload,
                }
            }
            other => {
                let mut encoded = BytesMut::new();
                // Encoding a server frame into memory cannot fail: no mask, no
                // continuation state.
                if let Err(e) = self.codec.encode(other, &mut encoded) {
                    tracing::error!(error = %e, "could not encode a WebSocket frame");
                    return;
                }
                Queued {
                    head: Head::NONE,
                    payload: encoded.freeze(),
                }
            }
        };
        self.queued += frame.len();
        self.frames.push_back(frame);
    }

    /// Queued bytes the kernel has not taken yet.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Drops every queued frame the kernel has not begun to take (the one it is part way
    /// through stays, so the stream of frames stays whole).
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.front_taken > 0);
        while self.frames.len() > keep {
            if let Some(frame) = self.frames.pop_back() {
                self.queued -= frame.len();
            }
        }
        if self.frames.is_empty() {
            self.release();
        }
    }

    /// Writes what the kernel takes now: `Ok(true)` when the queue is empty, `Ok(false)`
    /// when the socket is full (wait for [`Self::writable`] and call again).
    pub fn write_now(&mut self) -> io::Result<bool> {
        while !self.frames.is_empty() {
            // On the stack: a 2 KiB allocation per write made glibc consolidate its free
            // lists on every delivery (1.2% of the server's time at 1 → 1,000 fan-out).
            let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
            let mut used = 0;
            let mut skip = self.front_taken;
            'frames: for frame in &self.frames {
                for piece in [frame.head.as_slice(), &frame.payload[..]] {
                    if skip >= piece.len() {
                        skip -= piece.len();
                        continue;
                    }
                    if used == MAX_SLICES {
                        break 'frames;
                    }
                    slices[used] = io::IoSlice::new(&piece[skip..]);
                    used += 1;
                    skip = 0;
                }
            }
            match self.connection.io.try_write_vectored(&slices[..used]) {
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
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.front_taken;
            if n < left {
                self.front_taken += n;
                return;
            }
            n -= left;
            self.front_taken = 0;
            self.frames.pop_front();
        }
    }

    /// Frees the queue's memory once everything is written.
    fn release(&mut self) {
        self.frames = VecDeque::new();
        self.front_taken = 0;
        self.queued = 0;
    }

    /// The gate that pauses reading this connection.
    pub fn gate(&self) -> &ReadGate {
        &self.connection.gate
    }

    /// Ready when the socket can take more bytes (or failed); until then the task of `cx`
    /// is woken when it can.
    pub fn poll_writable(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        self.connection.io.poll_write_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames a client would decode from `bytes`, in order, and how many bytes are left.
    fn frames(mut bytes: BytesMut) -> (Vec<Frame>, usize) {
        let mut codec = Codec::new().client_mode().max_size(1 << 24);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut bytes).expect("valid frames") {
            out.push(frame);
        }
        (out, bytes.len())
    }

    /// Reads from `client`, `chunk` bytes at a time, until `done` says so or the stream ends.
    async fn read_until(
        client: &TcpStream,
        chunk: usize,
        done: impl Fn(&BytesMut) -> bool,
    ) -> BytesMut {
        let mut got = BytesMut::new();
        let mut buf = vec![0u8; chunk];
        while !done(&got) {
            client.readable().await.unwrap();
            match client.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    /// Both ends of a loopback TCP connection: (client, server).
    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Queues frames until the kernel takes no more, drops the unsent ones, queues a
    /// close: the client must read whole frames, the close last.
    async fn discard_after(stalled_by: usize) {
        let (client, server) = connected_pair().await;
        let mut writer = FrameWriter::new(Connection::new(server));
        let frame = Bytes::from(vec![7u8; stalled_by]);
        // Nothing taken yet: every queued frame is unsent, so none is kept.
        for _ in 0..3 {
            writer.queue(Message::Binary(frame.clone()));
        }
        writer.discard_unsent();
        assert_eq!(writer.queued(), 0, "an unbegun frame was kept");
        let mut queued = 0;
        while writer.write_now().unwrap() && queued < 100_000 {
            writer.queue(Message::Binary(frame.clone()));
            queued += 1;
        }
        // Frames the kernel has not begun, and maybe one it is part way through.
        for _ in 0..3 {
            writer.queue(Message::Binary(frame.clone()));
        }
        let begun = writer.front_taken > 0;
        writer.discard_unsent();
        if begun {
            assert!(
                writer.queued() < stalled_by + 16,
                "{} left",
                writer.queued()
            );
        } else {
            assert_eq!(writer.queued(), 0, "an unbegun frame was kept");
        }
        writer.queue(Message::Close(None));
        // Read everything the client gets while the writer finishes.
        let reader = read_until(&client, 64 * 1024, |got| {
            matches!(frames(got.clone()).0.last(), Some(Frame::Close(_)))
        });
        let drain = async {
            while !writer.write_now().unwrap() {
                std::future::poll_fn(|cx| writer.poll_writable(cx))
                    .await
                    .unwrap();
            }
        };
        let (got, ()) = tokio::join!(reader, drain);
        let (frames, left) = frames(got);
        assert_eq!(left, 0, "bytes of a cut frame");
        assert!(matches!(frames.last(), Some(Frame::Close(_))));
        assert!(frames[..frames.len() - 1]
            .iter()
            .all(|f| matches!(f, Frame::Binary(b) if b.len() == stalled_by)));
    }

    /// Every length form of the header (7-bit, 16-bit, 64-bit), text and binary, empty
    /// and control frames, written vectored through partial writes: the client decodes
    /// exactly what was queued, in order, and the payloads were shared, not copied.
    #[actix_rt::test]
    async fn frames_of_every_size_arrive_as_queued() {
        let (client, server) = connected_pair().await;
        let mut writer = FrameWriter::new(Connection::new(server));
        let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536, 300_000];
        let shared: Vec<Bytes> = sizes
            .iter()
            .map(|&n| Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
            .collect();
        for (i, payload) in shared.iter().enumerate() {
            writer.queue(Message::Binary(payload.clone()));
            writer.queue(Message::Text(format!("text {i}").into()));
            if i == 3 {
                writer.queue(Message::Ping(Bytes::from_static(b"probe")));
            }
        }
        // The writer holds the broadcast's payloads themselves.
        assert!(writer
            .frames
            .iter()
            .any(|f| f.payload.as_ptr() == shared[7].as_ptr()));
        writer.queue(Message::Close(None));
        let expected = writer.queued();
        // Small reads: the writer meets a full socket.
        let reader = read_until(&client, 4096, |got| got.len() >= expected);
        let drain = async {
            while !writer.write_now().unwrap() {
                std::future::poll_fn(|cx| writer.poll_writable(cx))
                    .await
                    .unwrap();
            }
        };
        let (got, ()) = tokio::join!(reader, drain);
        assert_eq!(writer.queued(), 0);
        let (frames, left) = frames(got);
        assert_eq!(left, 0);
        let mut frames = frames.into_iter();
        for (i, payload) in shared.iter().enumerate() {
            assert!(
                matches!(frames.next(), Some(Frame::Binary(b)) if b == *payload),
                "binary {i}"
            );
            let text = format!("text {i}");
            assert!(
                matches!(frames.next(), Some(Frame::Text(t)) if t == text.as_bytes()),
                "text {i}"
            );
            if i == 3 {
                assert!(matches!(frames.next(), Some(Frame::Ping(p)) if p == b"probe"[..]));
            }
        }
        assert!(matches!(frames.next(), Some(Frame::Close(None))));
        assert!(frames.next().is_none());
    }

    #[actix_rt::test]
    async fn a_cut_leaves_whole_frames_and_the_close_comes_next() {
        // Small frames: the kernel stops on a frame boundary or inside one.
        discard_after(1000).await;
        // Large frames: the first unsent one is large and must go, not be kept.
        discard_after(300_000).await;
    }
}
