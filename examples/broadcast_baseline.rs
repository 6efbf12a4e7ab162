//! The fan-out ceiling of this machine: a bare tokio WebSocket server that relays every
//! document update a client sends to the other clients of its room, with no CRDT, no
//! storage and no actors. It speaks just enough of the y-websocket sync protocol for the
//! load generator's clients (an empty SyncStep1 on connect, an empty SyncStep2 answering
//! theirs), so `loadgen fanout`/`saturate` run against it unchanged. A benchmark baseline
//! only: it keeps nothing and checks nothing.
//!
//! ```text
//! cargo run --release --example broadcast_baseline -- 127.0.0.1:4500
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_codec::Framed;
use actix_http::ws::{hash_key, Codec, Frame, Message as WsMessage};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tandem::protocol::ysync::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<(u64, Bytes)>>>>;

/// Reads the upgrade request head and answers 101; returns the request path.
async fn upgrade(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(std::io::Error::other("bad request head"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| std::io::Error::other("no Sec-WebSocket-Key"))?;
    let accept = hash_key(key.as_bytes());
    let accept = std::str::from_utf8(&accept).map_err(std::io::Error::other)?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(path)
}

async fn serve(mut stream: TcpStream, id: u64, rooms: Rooms) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let path = upgrade(&mut stream).await?;
    let (tx, mut rx) = {
        let mut rooms = rooms.lock().unwrap_or_else(|e| e.into_inner());
        let tx = rooms
            .entry(path)
            .or_insert_with(|| broadcast::channel(4096).0)
            .clone();
        let rx = tx.subscribe();
        (tx, rx)
    };
    let mut socket = Framed::new(stream, Codec::new().max_size(64 << 20));
    let hello = Message::SyncStep1(Bytes::from_static(&[0])).encode();
    socket
        .send(WsMessage::Binary(hello))
        .await
        .map_err(std::io::Error::other)?;
    loop {
        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Frame::Binary(bytes))) => match Message::decode(&bytes) {
                    Ok(Message::SyncStep1(_)) => {
                        let empty = Message::SyncStep2(Bytes::from_static(&[0, 0])).encode();
                        socket.send(WsMessage::Binary(empty)).await.map_err(std::io::Error::other)?;
                    }
                    Ok(Message::Update(_)) => {
                        let _ = tx.send((id, bytes));
                    }
                    _ => {}
                },
                Some(Ok(Frame::Ping(p))) => {
                    socket.send(WsMessage::Pong(p)).await.map_err(std::io::Error::other)?;
                }
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            update = rx.recv() => match update {
                Ok((from, frame)) if from != id => {
                    socket.send(WsMessage::Binary(frame)).await.map_err(std::io::Error::other)?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("connection {id} lagged and lost {n} updates");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4500".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("broadcast baseline listening on {addr}");
        let rooms: Rooms = Arc::default();
        let mut next = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            next += 1;
            tokio::spawn(serve(stream, next, Arc::clone(&rooms)));
        }
    })
}
