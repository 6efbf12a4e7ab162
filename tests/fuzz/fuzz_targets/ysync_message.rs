//! Any frame: decoding never panics, and what decodes survives an encode/decode round trip
//! (the bytes may differ: lib0 readers accept overlong varints, the writer never emits them).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem::protocol::ysync::Message;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(message) = Message::decode(&frame) {
        assert_eq!(Message::decode(&message.encode()), Ok(message), "round trip");
    }
});
