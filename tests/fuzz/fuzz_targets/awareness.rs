//! Any awareness payload: parsing and applying never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::protocol::ysync::parse_awareness;
use tandem::room::Document;

fuzz_target!(|data: &[u8]| {
    let _ = parse_awareness(data);
    let mut document = Document::new();
    let _ = document.apply_awareness(data);
});
