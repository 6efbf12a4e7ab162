//! Wire formats, pure: bytes in, typed values out. No actors, sockets or storage here.
//!
//! - [`lib0`]: the variable-length integers and byte arrays Yjs encodes with;
//! - [`ysync`]: the y-websocket sync and awareness messages;
//! - [`close`]: the WebSocket close codes Tandem sends, with their reasons.

pub mod close;
pub mod lib0;
pub mod ysync;
