//! A raw WebSocket client over a blocking TCP socket, for tests that must see every byte
//! the server sends and every end of the connection (resets included).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{Codec, Frame, Message as WsMessage};
use bytes::{Bytes, BytesMut};

use super::{Server, WAIT};

/// A client's WebSocket handshake request for `path`.
pub fn handshake(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One client frame (masked), encoded.
pub fn client_frame(message: WsMessage) -> BytesMut {
    let mut out = BytesMut::new();
    Codec::new()
        .client_mode()
        .encode(message, &mut out)
        .expect("encode a client frame");
    out
}

/// A raw connection: what was read and not yet consumed stays in `buf`.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
    codec: Codec,
}

impl Raw {
    pub fn connect(server: &Server) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: Codec::new().client_mode(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// Reads more bytes; false at EOF (or a reset: the server dropped the connection).
    pub fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading from the server: {e}"),
        }
    }

    /// The response head (status line and headers) and its status code.
    pub fn head(&mut self) -> (u16, String) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf.split_to(end + 4).to_vec()).unwrap();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status code");
                return (status, head);
            }
            assert!(self.fill(), "the connection ended before a response head");
        }
    }

    /// Everything until the server closes the connection.
    pub fn rest(&mut self) -> Bytes {
        while self.fill() {}
        self.buf.split().freeze()
    }

    /// The next WebSocket frame, or None when the connection ends first.
    pub fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).expect("a valid frame") {
                return Some(frame);
            }
            if !self.fill() {
                return None;
            }
        }
    }
}
