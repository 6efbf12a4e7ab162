//! One actor per Server-Sent Events subscriber on `/rooms/{room}/events`: a chat member
//! whose events are written to an HTTP response body instead of a WebSocket. It owns the
//! subscriber's transport concerns only: the bounded outbox (bytes queued and not yet taken
//! by the response), the comment-line keepalive that also notices a vanished client, and
//! how a close is told (a final `close` event). The room treats it like any other member.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::{SessionConfig, NEXT_SESSION};
use crate::auth::Access;
use crate::metrics;
use crate::protocol::close::{self, Close};
use crate::registry::{send_to_room, Registry};
use crate::room::{ChatJoin, Leave, Outbound, RoomAddr, RoomError, RoomName, SessionId};
use crate::stream::wire::Event;
use crate::stream::ResumeFrom;

/// A comment line: ignored by `EventSource`, but it keeps proxies from timing out.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Who subscribes, and from where.
pub struct Subscriber {
    /// The token's subject.
    pub subject: Option<String>,
    /// The token's public presence info.
    pub info: Option<Value>,
    /// What the token allows.
    pub access: Access,
    /// Where to resume from.
    pub resume: Option<ResumeFrom>,
    /// How long the subscription may live on its token (None: the server is open). At
    /// expiry the stream ends with a `close` event (code 4010); `EventSource` reconnects
    /// with whatever URL (and token) it was made with.
    pub expires_in: Option<Duration>,
}

/// The SSE member actor.
pub struct SseSession {
    id: SessionId,
    room_name: RoomName,
    registry: Arc<Addr<Registry>>,
    room: Option<RoomAddr>,
    config: Arc<SessionConfig>,
    subscriber: Option<Subscriber>,
    out: mpsc::UnboundedSender<Bytes>,
    /// Bytes handed to the response and not yet taken by it.
    queued: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
}

impl SseSession {
    /// Starts a subscriber; the returned stream is the response body.
    pub fn start(
        room_name: RoomName,
        subscriber: Subscriber,
        registry: Arc<Addr<Registry>>,
        config: Arc<SessionConfig>,
        connections: Arc<AtomicUsize>,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> {
        let (out, rx) = mpsc::unbounded();
        let queued = Arc::new(AtomicU64::new(0));
        let taken = Arc::clone(&queued);
        SseSession {
            id: SessionId(NEXT_SESSION.fetch_add(1, Ordering::Relaxed)),
            room_name,
            registry,
            room: None,
            config,
            subscriber: Some(subscriber),
            out,
            queued,
            connections,
        }
        .start();
        rx.map(move |chunk: Bytes| {
            taken.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
            Ok(chunk)
        })
    }

    /// Queues one event, or closes the subscriber (false) when it reads too slowly.
    fn push_event(&mut self, event: &Event, ctx: &mut Context<Self>) -> bool {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > self.config.max_outbox_bytes {
            info!(room = %self.room_name, session = self.id.0, queued, "closing SSE subscriber: client too slow");
            metrics::get().slow_consumers.inc();
            self.close(close::TOO_SLOW, &format!("{queued} bytes unread"), ctx);
            return false;
        }
        self.push(event.to_sse(), ctx)
    }

    /// Queues bytes for the response; false (and stopping) once the client is gone.
    fn push(&mut self, chunk: Bytes, ctx: &mut Context<Self>) -> bool {
        let len = chunk.len() as u64;
        if self.out.unbounded_send(chunk).is_err() {
            debug!(session = self.id.0, "SSE client went away");
            ctx.stop();
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        metrics::get().bytes_out.inc_by(len);
        true
    }

    /// Tells the client why the stream ends, then ends it.
    fn close(&mut self, close: Close, detail: &str, ctx: &mut Context<Self>) {
        let reason = if detail.is_empty() {
            close.reason.to_owned()
        } else {
            format!("{}: {detail}", close.reason)
        };
        let data = serde_json::json!({"type": "close", "code": close.code, "reason": reason});
        self.push(Bytes::from(format!("event: close\ndata: {data}\n\n")), ctx);
        self.out.close_channel();
        ctx.stop();
    }
}

impl Actor for SseSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::get().connections.inc();
        self.connections.fetch_add(1, Ordering::Relaxed);
        ctx.run_interval(self.config.heartbeat_interval, |session, ctx| {
            session.push(Bytes::from_static(KEEPALIVE), ctx);
        });
        let Some(subscriber) = self.subscriber.take() else {
            return;
        };
        if let Some(left) = subscriber.expires_in {
            ctx.run_later(left, |session, ctx| {
                info!(room = %session.room_name, session = session.id.0, "closing SSE subscriber: token expired");
                metrics::get().tokens_expired.inc();
                session.close(close::TOKEN_EXPIRED, "", ctx);
            });
        }
        let (registry, name, id) = (self.registry.clone(), self.room_name.clone(), self.id);
        let (outbox, events) = crate::room::outbox(self.config.max_outbox_bytes);
        ctx.add_stream(events);
        let join = async move {
            send_to_room(&registry, &name, || ChatJoin {
                session: id,
                access: subscriber.access,
                subject: subscriber.subject.clone(),
                info: subscriber.info.clone(),
                outbox: outbox.clone(),
                resume: subscriber.resume.clone(),
            })
            .await?
        };
        ctx.wait(
            join.into_actor(self)
                .map(
                    |result: Result<RoomAddr, RoomError>, session, ctx| match result {
                        Ok(room) => session.room = Some(room),
                        Err(e) => {
                            if !matches!(e, RoomError::Full { .. }) {
                                warn!(room = %session.room_name, error = %e, "could not join room");
                            }
                            session.close(e.close(), &e.public_message(), ctx);
                        }
                    },
                ),
        );
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if let Some(room) = self.room.take() {
            room.do_send(Leave { session: self.id });
        }
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::get().connections.dec();
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamHandler<Outbound> for SseSession {
    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        match msg {
            Outbound::Event(event) => {
                self.push_event(&event, ctx);
            }
            Outbound::Events(events) => {
                for event in events.iter() {
                    if !self.push_event(event, ctx) {
                        return;
                    }
                }
            }
            // Subscribers take chat events only.
            Outbound::Frame(_) => {}
            Outbound::Close(close, detail) => {
                self.room = None; // the room has already forgotten this member
                self.close(close, &detail, ctx);
            }
        }
    }

    /// The room let go of the outbox (it removed this member): nothing more comes from
    /// it, and the subscriber's end is the room's `Close` or the client's, not this.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}
