//! The automerge-paper editing trace as Yjs updates, shared by the load generator and the
//! benches (included by `#[path]`, so it is not an example of its own).

use std::io::Read;
use std::path::Path;

use yrs::{Doc, GetString, OffsetKind, Options, Text, Transact};

/// The first `limit` transactions (all for 0) of the gzipped trace at `file`, one v1 update
/// per transaction as a Yjs client sends them, and the text they produce. When the whole
/// trace is replayed, the text is checked against the trace's `endContent`.
pub fn load(file: &Path, limit: usize) -> std::io::Result<(Vec<Vec<u8>>, String)> {
    load_grouped(file, limit, 1)
}

/// Like [`load`], with `group` consecutive transactions made into each update (a client
/// that batches its edits, or a bulk import).
pub fn load_grouped(
    file: &Path,
    limit: usize,
    group: usize,
) -> std::io::Result<(Vec<Vec<u8>>, String)> {
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(file)?).read_to_string(&mut json)?;
    let trace: serde_json::Value = serde_json::from_str(&json).map_err(std::io::Error::other)?;
    let txns = trace["txns"]
        .as_array()
        .ok_or_else(|| std::io::Error::other("the trace has no txns"))?;
    let limit = if limit == 0 {
        txns.len()
    } else {
        limit.min(txns.len())
    };
    // Trace positions count UTF-16 units, as JavaScript strings do.
    let doc = Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let text = doc.get_or_insert_text("text");
    let mut updates = Vec::with_capacity(limit / group.max(1) + 1);
    for txns in txns[..limit].chunks(group.max(1)) {
        let mut t = doc.transact_mut();
        let patches = txns
            .iter()
            .flat_map(|txn| txn["patches"].as_array().into_iter().flatten());
        for patch in patches {
            let pos = patch[0].as_u64().unwrap_or(0) as u32;
            let del = patch[1].as_u64().unwrap_or(0) as u32;
            if del > 0 {
                text.remove_range(&mut t, pos, del);
            }
            if let Some(ins) = patch[2].as_str().filter(|s| !s.is_empty()) {
                text.insert(&mut t, pos, ins);
            }
        }
        updates.push(t.encode_update_v1());
    }
    let end = text.get_string(&doc.transact());
    if limit == txns.len() && trace["endContent"].as_str() != Some(end.as_str()) {
        return Err(std::io::Error::other(
            "the trace does not replay to its endContent",
        ));
    }
    Ok((updates, end))
}
