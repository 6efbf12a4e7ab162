//! Metric names and the one process-wide registry, exported as Prometheus text at
//! `/metrics`. Every metric is defined here, so the names in dashboards have one source.
//! Holds no logic beyond counting.

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric Tandem exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Room actors currently active.
    pub rooms_active: Gauge,
    /// Document updates received from clients (WebSocket and HTTP).
    pub updates_in: Counter,
    /// Document update frames sent to sessions (one per recipient).
    pub updates_out: Counter,
    /// Bytes received in WebSocket frames and HTTP update bodies.
    pub bytes_in: Counter,
    /// Bytes queued to WebSocket sessions.
    pub bytes_out: Counter,
    /// Sessions closed for a protocol violation.
    pub protocol_errors: Counter,
    /// Sessions closed because their client read too slowly.
    pub slow_consumers: Counter,
    /// Times a session's reading was paused because its client was over the message rate.
    pub throttled: Counter,
    /// Sessions closed because their token expired.
    pub tokens_expired: Counter,
    /// WebSocket sessions moved to their room's thread as they started.
    pub sessions_moved: Counter,
    /// Time from receiving an update to its being durable.
    pub persist_seconds: Histogram,
    /// Time to hand one broadcast to every recipient's outbox.
    pub broadcast_seconds: Histogram,
    /// Duration of one storage flush (group commit).
    pub flush_seconds: Histogram,
    /// Durability requests served by one flush.
    pub flush_batch_size: Histogram,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Room activations (load from store).
    pub activations: Counter,
    /// Room deactivations after the idle timeout.
    pub evictions: Counter,
    /// Documents frozen (held encoded) after going unused (`--doc-freeze-secs`).
    pub document_freezes: Counter,
    /// Chat messages published (made durable), not counting idempotent retries.
    pub chat_published: Counter,
    /// Chat message events delivered to members (one per recipient).
    pub chat_delivered: Counter,
    /// Publishes answered from the idempotency window instead of publishing again.
    pub chat_duplicates: Counter,
    /// Chat members (WebSocket and SSE) currently joined.
    pub chat_members: Gauge,
    /// Resuming joins that got every missed message.
    pub chat_recovered: Counter,
    /// Resuming joins told the server could not recover (the app must reload).
    pub chat_not_recovered: Counter,
    /// Room activations that stepped down because a newer claim fenced their writes.
    pub rooms_fenced: Counter,
    /// Requests answered with a 307 to the room's owner.
    pub redirects: Counter,
    /// Updates sent merged with others released by the same flush (one frame per
    /// recipient for all of them).
    pub merged_updates: Counter,
    /// Chat messages handed to members in a batch with others released by the same flush
    /// (one mailbox message and one write per member for all of them).
    pub chat_batched: Counter,
    /// Rooms handed off (deactivated here) because the ring gave them to another node.
    pub handoffs: Counter,
    /// Cluster members this node sees.
    pub cluster_members: Gauge,
    /// The ring's version (equal on every node that sees the same members).
    pub ring_version: Gauge,
    /// WebSocket connections relayed to a room's owner on another node.
    pub proxied_sessions: Gauge,
    /// PostgreSQL round trips (one transaction or one read each), and their duration.
    pub store_round_trip_seconds: Histogram,
    /// PostgreSQL operations that failed (the database errored or was unreachable).
    pub store_errors: Counter,
    /// PostgreSQL connections open in the pool.
    pub store_pool_size: Gauge,
    /// PostgreSQL connections in the pool not in use.
    pub store_pool_available: Gauge,
    /// Writes waiting for the next PostgreSQL commit.
    pub store_queued_writes: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            connections: Gauge::default(),
            rooms_active: Gauge::default(),
            updates_in: Counter::default(),
            updates_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            protocol_errors: Counter::default(),
            slow_consumers: Counter::default(),
            throttled: Counter::default(),
            tokens_expired: Counter::default(),
            sessions_moved: Counter::default(),
            persist_seconds: latency_histogram(),
            broadcast_seconds: latency_histogram(),
            flush_seconds: latency_histogram(),
            flush_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            snapshots: Counter::default(),
            activations: Counter::default(),
            evictions: Counter::default(),
            document_freezes: Counter::default(),
            chat_published: Counter::default(),
            chat_delivered: Counter::default(),
            chat_duplicates: Counter::default(),
            chat_members: Gauge::default(),
            chat_recovered: Counter::default(),
            chat_not_recovered: Counter::default(),
            rooms_fenced: Counter::default(),
            redirects: Counter::default(),
            merged_updates: Counter::default(),
            chat_batched: Counter::default(),
            handoffs: Counter::default(),
            cluster_members: Gauge::default(),
            ring_version: Gauge::default(),
            proxied_sessions: Gauge::default(),
            store_round_trip_seconds: latency_histogram(),
            store_errors: Counter::default(),
            store_pool_size: Gauge::default(),
            store_pool_available: Gauge::default(),
            store_queued_writes: Gauge::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "tandem_connections",
            "Open WebSocket sessions",
            m.connections.clone(),
        );
        registry.register(
            "tandem_rooms_active",
            "Active room actors",
            m.rooms_active.clone(),
        );
        registry.register(
            "tandem_updates_in",
            "Document updates received",
            m.updates_in.clone(),
        );
        registry.register(
            "tandem_updates_out",
            "Document update frames sent",
            m.updates_out.clone(),
        );
        registry.register(
            "tandem_bytes_in",
            "Bytes received from clients",
            m.bytes_in.clone(),
        );
        registry.register(
            "tandem_bytes_out",
            "Bytes queued to clients",
            m.bytes_out.clone(),
        );
        registry.register(
            "tandem_protocol_errors",
            "Sessions closed for a protocol violation",
            m.protocol_errors.clone(),
        );
        registry.register(
            "tandem_slow_consumers",
            "Sessions closed because their client read too slowly",
            m.slow_consumers.clone(),
        );
        registry.register(
            "tandem_throttled",
            "Times a session's reading was paused because its client was over the message rate",
            m.throttled.clone(),
        );
        registry.register(
            "tandem_rooms_fenced",
            "Room activations that stepped down because a newer claim fenced their writes",
            m.rooms_fenced.clone(),
        );
        registry.register(
            "tandem_merged_updates",
            "Updates sent merged with others released by the same flush",
            m.merged_updates.clone(),
        );
        registry.register(
            "tandem_chat_batched_messages",
            "Chat messages handed to members in a batch with others released by the same flush",
            m.chat_batched.clone(),
        );
        registry.register(
            "tandem_redirects",
            "Requests answered with a 307 to the room's owner",
            m.redirects.clone(),
        );
        registry.register(
            "tandem_handoffs",
            "Rooms deactivated here because the ring gave them to another node",
            m.handoffs.clone(),
        );
        registry.register(
            "tandem_cluster_members",
            "Cluster members this node sees",
            m.cluster_members.clone(),
        );
        registry.register(
            "tandem_ring_version",
            "The ring's version (the same on nodes that agree on the members)",
            m.ring_version.clone(),
        );
        registry.register(
            "tandem_proxied_sessions",
            "WebSocket connections relayed to a room's owner on another node",
            m.proxied_sessions.clone(),
        );
        registry.register(
            "tandem_store_round_trip_seconds",
            "Duration of one PostgreSQL round trip (a commit or a read)",
            m.store_round_trip_seconds.clone(),
        );
        registry.register(
            "tandem_store_errors",
            "PostgreSQL operations that failed",
            m.store_errors.clone(),
        );
        registry.register(
            "tandem_store_pool_size",
            "PostgreSQL connections open in the pool",
            m.store_pool_size.clone(),
        );
        registry.register(
            "tandem_store_pool_available",
            "PostgreSQL connections in the pool not in use",
            m.store_pool_available.clone(),
        );
        registry.register(
            "tandem_store_queued_writes",
            "Writes waiting for the next PostgreSQL commit",
            m.store_queued_writes.clone(),
        );
        registry.register(
            "tandem_tokens_expired",
            "Sessions closed because their token expired",
            m.tokens_expired.clone(),
        );
        registry.register(
            "tandem_sessions_moved",
            "WebSocket sessions moved to their room's thread as they started",
            m.sessions_moved.clone(),
        );
        registry.register(
            "tandem_persist_seconds",
            "Time from receiving an update to its being durable",
            m.persist_seconds.clone(),
        );
        registry.register(
            "tandem_broadcast_seconds",
            "Time to hand one broadcast to every recipient",
            m.broadcast_seconds.clone(),
        );
        registry.register(
            "tandem_flush_seconds",
            "Duration of one storage flush",
            m.flush_seconds.clone(),
        );
        registry.register(
            "tandem_flush_batch_size",
            "Durability requests served by one flush",
            m.flush_batch_size.clone(),
        );
        registry.register("tandem_snapshots", "Snapshots written", m.snapshots.clone());
        registry.register(
            "tandem_room_activations",
            "Room activations",
            m.activations.clone(),
        );
        registry.register(
            "tandem_room_evictions",
            "Idle room deactivations",
            m.evictions.clone(),
        );
        registry.register(
            "tandem_document_freezes",
            "Documents held encoded after going unused",
            m.document_freezes.clone(),
        );
        for (name, help, counter) in [
            (
                "tandem_chat_published",
                "Chat messages published",
                &m.chat_published,
            ),
            (
                "tandem_chat_delivered",
                "Chat message events delivered to members",
                &m.chat_delivered,
            ),
            (
                "tandem_chat_duplicates",
                "Chat publishes answered from the idempotency window",
                &m.chat_duplicates,
            ),
            (
                "tandem_chat_recovered",
                "Resuming chat joins that recovered every missed message",
                &m.chat_recovered,
            ),
            (
                "tandem_chat_not_recovered",
                "Resuming chat joins that could not recover",
                &m.chat_not_recovered,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "tandem_chat_members",
            "Chat members currently joined",
            m.chat_members.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
