//! Tandem: a stateful, actor-model server for live collaboration. Every room is an actor
//! holding a Yjs document; stock y-websocket clients connect unchanged; every update is
//! durable before anyone else sees it.
//!
//! # Layout
//! Data flows one way: socket → session actor → room actor → CRDT merge → persist →
//! broadcast. Layers depend downward only.
//!
//! - [`id`] — the ids every layer shares (room names, session ids, access, epochs, node
//!   ids); a leaf that imports nothing of Tandem's;
//! - [`cluster`] — the consistent hash ring (pure) that says which node owns a room;
//! - [`protocol`] — pure wire formats: lib0 primitives, y-websocket messages, close codes;
//! - [`room`] — the room actor and its pure [`room::Document`] (the CRDT wrapper);
//! - [`session`] — one actor per WebSocket: frames, heartbeat, close codes;
//! - [`registry`] — room name → room actor; activation and deactivation;
//! - [`storage`] — the [`storage::Store`] trait; sled (default) and in-memory;
//! - [`stream`] — the chat stream's pure core and JSON wire format;
//! - [`http`] — routes, the WebSocket upgrade, the REST and ops endpoints;
//! - [`config`] — flags, environment and TOML file, validated;
//! - [`metrics`] — the Prometheus metrics;
//! - [`server`] — wiring and ordered shutdown.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod id;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod room;
pub mod server;
pub mod session;
pub mod storage;
pub mod stream;

pub use config::{Config, Settings};
pub use server::{open_store, run, run_listening, run_with_store, ServerError};
