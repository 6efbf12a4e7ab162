//! Any frame: decoding never panics, and what decodes re-encodes to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem::protocol::ysync::Message;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(message) = Message::decode(&frame) {
        assert_eq!(message.encode(), frame, "decode/encode is not a round trip");
    }
});
