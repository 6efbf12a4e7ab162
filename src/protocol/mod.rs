//! Wire formats, pure: bytes in, typed values out. No actors, sockets or storage here.
//!
//! - [`lib0`]: the variable-length integers and byte arrays Yjs encodes with;
//! - [`ysync`]: the y-websocket sync and awareness messages;
//! - [`close`]: the WebSocket close codes Tandem sends, with their reasons;
//! - [`update_check`]: structural validation of v1 Yjs updates before yrs decodes them.

pub mod close;
pub mod lib0;
pub mod update_check;
pub mod ysync;
