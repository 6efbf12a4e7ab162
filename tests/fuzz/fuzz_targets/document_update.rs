//! Any update: applying it to a document never panics, never makes the process allocate
//! far beyond its size (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch that), and a
//! document that accepted it still snapshots and reloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::room::Document;

fuzz_target!(|data: &[u8]| {
    let mut document = Document::new();
    if let Ok(Some(_)) = document.apply_update(data) {
        let snapshot = document.snapshot();
        Document::load(Some(&snapshot), []).expect("a snapshot reloads");
    }
});
