//! The CRDT wrapper: one Yjs document and its awareness states, with the few operations a
//! room needs. Pure: no actors, no storage, no sockets; every method is synchronous and
//! returns bytes ready to persist or send.
//!
//! It owns the rule "an update that changes nothing produces nothing": [`Document::apply_updates`]
//! returns the delta a transaction really made, or nothing. yrs is handed only updates that
//! `protocol::update_check` has walked (every declared count and length checked against the
//! bytes that remain), and every call into yrs that reads client bytes runs under
//! `catch_unwind`, so a yrs bug on hostile input becomes an error, not a dead thread.
//!
//! It also owns freezing: an unused document held as its encoded state and thawed on use.
//! When to freeze is the room's decision (its tick); the awareness table is
//! `room::awareness`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use thiserror::Error;
use yrs::branch::BranchPtr;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, ArrayRef, Doc, Map, MapRef, Out, ReadTxn, StateVector, Transact, Update};

use super::awareness::Awareness;
use crate::protocol::update_check::check_update_v1;
use crate::protocol::ysync;

/// Yjs client ids are at most 53 bits (they must fit a JavaScript number).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Why the document refused an input.
#[derive(Debug, Error)]
pub enum DocError {
    /// The update bytes do not decode as a Yjs v1 update.
    #[error("update does not decode: {0}")]
    Decode(String),
    /// The update decodes but cannot be integrated.
    #[error("update cannot be applied: {0}")]
    Apply(String),
    /// The state vector does not decode.
    #[error("state vector does not decode: {0}")]
    StateVector(String),
    /// The awareness update is malformed.
    #[error("awareness update is invalid: {0}")]
    Awareness(String),
    /// yrs panicked on this input; the document may be inconsistent and must be reloaded.
    #[error("the CRDT library panicked on this input")]
    Panicked,
}

/// What an awareness update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AwarenessChange {
    /// Client ids whose state the update set (not removed).
    pub present: Vec<u64>,
    /// Client ids the update removed.
    pub removed: Vec<u64>,
}

/// What [`Document::apply_updates`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// How many of the updates were applied (all of them unless `error` is set).
    pub count: usize,
    /// Why the update after the applied ones was refused, if one was.
    pub error: Option<DocError>,
    /// What to persist and broadcast, in order; empty when nothing changed.
    pub records: Vec<Vec<u8>>,
}

/// The shortest time a document goes unused before it is frozen, however small: a pause
/// in typing should not cost a freeze and a thaw.
pub const FREEZE_AFTER_AT_LEAST: Duration = Duration::from_secs(5);

/// Stored bytes that add one second to that wait. Freezing encodes the whole state and
/// thawing decodes it: measured on the editing trace's documents (150 B to 370 KB of
/// state), ~4 and ~9 ns per state byte. At this rate a document that freezes and thaws
/// once per wait spends under 0.1% of the wait on it.
pub const FREEZE_BYTES_PER_SEC: u64 = 32 * 1024;

/// How long a document stored in `stored_bytes` (its snapshot and the log after it, a
/// measure of what thawing it would decode) may go unused before it is frozen: small
/// ones after [`FREEZE_AFTER_AT_LEAST`], larger ones later in proportion to their
/// size, none later than `longest` (`--doc-freeze-secs`).
pub fn freeze_delay(stored_bytes: u64, longest: Duration) -> Duration {
    let by_size = Duration::from_secs(stored_bytes / FREEZE_BYTES_PER_SEC);
    by_size.max(FREEZE_AFTER_AT_LEAST).min(longest)
}

/// The CRDT state: a live yrs document, or the same held encoded while it is unused.
enum Crdt {
    Live(Doc),
    /// The whole document as one v1 update, as a snapshot stores it. A document holding
    /// updates it cannot integrate yet (their dependencies are missing) is never frozen.
    Frozen(Box<[u8]>),
}

/// A Yjs document plus its awareness states.
///
/// An unused document can be frozen ([`Document::freeze_if_unused`]): held as its encoded
/// state, a fraction of yrs's live structures (0.15 KiB against 1.5 KiB for a 100-character
/// text), and thawed by the next operation that needs it. Freezing changes nothing a
/// client or the store sees.
pub struct Document {
    crdt: Crdt,
    /// When an operation last needed the live document.
    last_used: Instant,
    awareness: Awareness,
}

impl Default for Document {
    fn default() -> Self {
        Self::new()
    }
}

impl Document {
    /// An empty document.
    pub fn new() -> Self {
        // The server never edits, so its own client id only has to be valid.
        Self {
            crdt: Crdt::Live(Doc::new()),
            last_used: Instant::now(),
            awareness: Awareness::default(),
        }
    }

    /// Rebuilds a document from a snapshot and the updates logged after it.
    pub fn load<'a>(
        snapshot: Option<&'a [u8]>,
        log: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, DocError> {
        let mut document = Self::new();
        for update in snapshot.into_iter().chain(log) {
            document.apply_update(update)?;
        }
        Ok(document)
    }

    /// The live document, thawed first if it was frozen. A state that does not decode
    /// (it was encoded by yrs itself, so only a yrs bug can make it so) is
    /// [`DocError::Panicked`]: the room rebuilds the document from the store.
    fn live(&mut self) -> Result<&Doc, DocError> {
        self.last_used = Instant::now();
        if let Crdt::Frozen(state) = &self.crdt {
            let doc = thaw(state)?;
            self.crdt = Crdt::Live(doc);
        }
        match &self.crdt {
            Crdt::Live(doc) => Ok(doc),
            Crdt::Frozen(_) => Err(DocError::Panicked),
        }
    }

    /// Holds the document as its encoded state until it is next needed, unless it holds
    /// pending updates, was needed within `unused_for`, or is frozen already. Returns
    /// whether this call froze it.
    pub fn freeze_if_unused(&mut self, unused_for: Duration) -> bool {
        let Crdt::Live(doc) = &self.crdt else {
            return false;
        };
        if self.last_used.elapsed() < unused_for || doc.transact().has_missing_updates() {
            return false;
        }
        match guard(|| {
            Ok(doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default()))
        }) {
            Ok(state) => {
                self.crdt = Crdt::Frozen(state.into_boxed_slice());
                true
            }
            Err(_) => false,
        }
    }

    /// Whether the document is held frozen.
    pub fn is_frozen(&self) -> bool {
        matches!(self.crdt, Crdt::Frozen(_))
    }

    /// Applies a v1 update. Returns the delta it made (a v1 update holding only what was new),
    /// or `None` when the document already held everything in it: [`Document::apply_updates`]
    /// for one update.
    pub fn apply_update(&mut self, update: &[u8]) -> Result<Option<Vec<u8>>, DocError> {
        let applied = self.apply_updates(&[update])?;
        match applied.error {
            Some(e) => Err(e),
            None => Ok(applied.records.into_iter().next()),
        }
    }

    /// Applies v1 updates in order, in one transaction, stopping at the first one refused.
    ///
    /// One transaction for many updates is what makes a busy room cheap: yrs commits (and
    /// Tandem logs and broadcasts) once per batch instead of once per update. What is
    /// returned to persist and broadcast is the delta the transaction made (never larger
    /// than its inputs, holding nothing a peer already has); if nothing was integrated but
    /// yrs keeps some of the updates as pending (their dependencies are missing), the
    /// applied updates themselves, so that they survive a restart like any other update.
    /// `Err` only for [`DocError::Panicked`]: the document may then be half-changed.
    pub fn apply_updates(&mut self, updates: &[&[u8]]) -> Result<Applied, DocError> {
        let doc = self.live()?;
        guard(|| {
            let mut txn = doc.transact_mut();
            let mut applied = Applied::default();
            for update in updates {
                // yrs trusts declared counts and lengths (4 bytes can make it reserve
                // gigabytes): nothing reaches it that the structural check has not walked.
                let integrated = check_update_v1(update)
                    .map_err(|e| DocError::Decode(e.to_string()))
                    .and_then(|_| {
                        Update::decode_v1(update).map_err(|e| DocError::Decode(e.to_string()))
                    })
                    .and_then(|decoded| {
                        txn.apply_update(decoded)
                            .map_err(|e| DocError::Apply(e.to_string()))
                    });
                if let Err(e) = integrated {
                    applied.error = Some(e);
                    break;
                }
                applied.count += 1;
            }
            let changed = txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
            if changed {
                applied.records.push(txn.encode_update_v1());
            }
            if txn.has_missing_updates() {
                // What yrs could not integrate yet is pending, outside the delta: keep the
                // updates themselves too. (While anything is pending a duplicate may be
                // kept: harmless, updates are idempotent.)
                let kept = &updates[..applied.count];
                applied.records.extend(kept.iter().map(|u| u.to_vec()));
            }
            Ok(applied)
        })
    }

    /// This document's state vector, v1-encoded (the payload of a SyncStep1).
    pub fn state_vector(&mut self) -> Result<Vec<u8>, DocError> {
        Ok(self.live()?.transact().state_vector().encode_v1())
    }

    /// What a peer with state vector `sv` lacks, as a v1 update (the payload of a SyncStep2).
    /// A peer with nothing gets a frozen document's state as it is, without thawing it.
    pub fn diff(&mut self, sv: &[u8]) -> Result<Vec<u8>, DocError> {
        let sv =
            guard(|| StateVector::decode_v1(sv).map_err(|e| DocError::StateVector(e.to_string())))?;
        if let (Crdt::Frozen(state), true) = (&self.crdt, sv.is_empty()) {
            return Ok(state.to_vec());
        }
        let doc = self.live()?;
        Ok(encode_state(doc, &sv))
    }

    /// The whole document as one v1 update (what a snapshot stores).
    pub fn snapshot(&self) -> Vec<u8> {
        match &self.crdt {
            Crdt::Live(doc) => encode_state(doc, &StateVector::default()),
            Crdt::Frozen(state) => state.to_vec(),
        }
    }

    /// The document's root shared types as JSON (text as strings, maps as objects, arrays).
    ///
    /// The server never declares root types, so it infers each one: entries with keys make
    /// a map; a sequence of only characters is text; any other sequence is an array (XML
    /// elements render as XML strings).
    pub fn to_json(&mut self) -> Result<serde_json::Value, DocError> {
        let txn = self.live()?.transact();
        let mut roots = serde_json::Map::new();
        for (name, value) in txn.root_refs() {
            let any = match value {
                Out::UndefinedRef(branch) => infer_root(&txn, branch),
                typed => typed.to_json(&txn),
            };
            roots.insert(name.to_owned(), any_to_json(&any));
        }
        Ok(serde_json::Value::Object(roots))
    }

    /// Applies an awareness update payload. Returns which clients it set and removed.
    pub fn apply_awareness(&mut self, payload: &[u8]) -> Result<AwarenessChange, DocError> {
        let entries =
            ysync::parse_awareness(payload).map_err(|e| DocError::Awareness(e.to_string()))?;
        let mut change = AwarenessChange::default();
        for entry in &entries {
            if entry.client_id > MAX_CLIENT_ID {
                return Err(DocError::Awareness(format!(
                    "client id {} exceeds 53 bits",
                    entry.client_id
                )));
            }
            if entry.json == "null" {
                change.removed.push(entry.client_id);
            } else {
                change.present.push(entry.client_id);
            }
        }
        self.awareness.apply(&entries);
        Ok(change)
    }

    /// Every present awareness state as one awareness payload, or `None` when there is none.
    pub fn awareness_states(&self) -> Option<Vec<u8>> {
        self.awareness.states()
    }

    /// Marks `clients` as gone and returns the awareness payload announcing it, or `None`
    /// when none of them had a state.
    pub fn remove_awareness(&mut self, clients: &[u64]) -> Option<Vec<u8>> {
        self.awareness.remove(clients.iter().copied())
    }
}

/// What a peer at `sv` lacks, pending updates included. yrs 0.28 panics while merging
/// some malformed pending updates into it (found by fuzzing); then the pending part is
/// left out rather than the room's thread taken down.
fn encode_state(doc: &Doc, sv: &StateVector) -> Vec<u8> {
    match guard(|| Ok(doc.transact().encode_state_as_update_v1(sv))) {
        Ok(state) => state,
        Err(_) => {
            tracing::warn!("pending updates could not be encoded; leaving them out");
            doc.transact().encode_diff_v1(sv)
        }
    }
}

/// A live document from a frozen state.
fn thaw(state: &[u8]) -> Result<Doc, DocError> {
    let doc = Doc::new();
    guard(|| {
        let update = Update::decode_v1(state).map_err(|_| DocError::Panicked)?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|_| DocError::Panicked)
    })?;
    Ok(doc)
}

/// Renders an untyped root as a map, text or array; see [`Document::to_json`].
fn infer_root(txn: &yrs::Transaction<'_>, branch: BranchPtr) -> Any {
    let map = MapRef::from(branch);
    if map.len(txn) > 0 {
        return map.to_json(txn);
    }
    let items = ArrayRef::from(branch).to_json(txn);
    match &items {
        Any::Array(values) if values.iter().all(|v| matches!(v, Any::String(_))) => {
            let text: String = values
                .iter()
                .filter_map(|v| match v {
                    Any::String(s) => Some(&**s),
                    _ => None,
                })
                .collect();
            Any::from(text)
        }
        _ => items,
    }
}

fn any_to_json(any: &Any) -> serde_json::Value {
    let mut text = String::new();
    any.to_json(&mut text);
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Runs a yrs call that reads client bytes, turning a panic into [`DocError::Panicked`].
fn guard<T>(f: impl FnOnce() -> Result<T, DocError>) -> Result<T, DocError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(DocError::Panicked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ysync::AwarenessEntry;
    use proptest::prelude::*;
    use yrs::{Array, GetString, Text};

    #[test]
    fn small_documents_freeze_after_the_floor_large_ones_later_none_after_the_flag() {
        let longest = Duration::from_secs(30);
        assert_eq!(freeze_delay(0, longest), FREEZE_AFTER_AT_LEAST);
        assert_eq!(freeze_delay(150, longest), FREEZE_AFTER_AT_LEAST);
        assert_eq!(
            freeze_delay(10 * FREEZE_BYTES_PER_SEC, longest),
            Duration::from_secs(10)
        );
        assert_eq!(freeze_delay(1 << 30, longest), longest);
        // A flag below the floor wins over it (tests and operators set 0.2 s).
        let short = Duration::from_millis(200);
        assert_eq!(freeze_delay(0, short), short);
    }

    proptest! {
        /// The wait never shrinks as a document grows, and stays within its bounds.
        #[test]
        fn the_freeze_delay_grows_with_size_within_bounds(
            a in 0u64..(64 << 20), b in 0u64..(64 << 20), longest_ms in 1u64..120_000
        ) {
            let longest = Duration::from_millis(longest_ms);
            let (small, large) = (a.min(b), a.max(b));
            prop_assert!(freeze_delay(small, longest) <= freeze_delay(large, longest));
            let delay = freeze_delay(a, longest);
            prop_assert!(delay <= longest);
            prop_assert!(delay >= FREEZE_AFTER_AT_LEAST.min(longest));
        }
    }

    /// A client-side document that produces real updates.
    fn edit(
        client: u64,
        base: &[u8],
        f: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut),
    ) -> Vec<u8> {
        let doc = Doc::with_client_id(client);
        let text = doc.get_or_insert_text("text");
        {
            let mut txn = doc.transact_mut();
            if !base.is_empty() {
                txn.apply_update(Update::decode_v1(base).unwrap()).unwrap();
            }
        }
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            f(&text, &mut txn);
        }
        let update = doc.transact().encode_state_as_update_v1(&before);
        update
    }

    fn text_of(document: &mut Document) -> String {
        document.to_json().unwrap()["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn duplicate_update_changes_nothing() {
        let update = edit(1, &[], |t, txn| t.insert(txn, 0, "hello"));
        let mut document = Document::new();
        assert!(document.apply_update(&update).unwrap().is_some());
        assert_eq!(document.apply_update(&update).unwrap(), None);
        assert_eq!(text_of(&mut document), "hello");
    }

    #[test]
    fn delete_only_update_is_a_change() {
        let insert = edit(1, &[], |t, txn| t.insert(txn, 0, "hello"));
        let delete = edit(2, &insert, |t, txn| t.remove_range(txn, 0, 2));
        let mut document = Document::new();
        document.apply_update(&insert).unwrap();
        let delta = document
            .apply_update(&delete)
            .unwrap()
            .expect("delete is a change");
        assert!(!delta.is_empty());
        assert_eq!(text_of(&mut document), "llo");
    }

    #[test]
    fn a_batch_is_one_delta_and_stops_at_the_first_refused_update() {
        let a = edit(1, &[], |t, txn| t.insert(txn, 0, "abc"));
        let b = edit(2, &a, |t, txn| t.insert(txn, 3, "def"));
        let c = edit(3, &a, |t, txn| t.remove_range(txn, 0, 1));
        let mut document = Document::new();
        let applied = document
            .apply_updates(&[&a, &b, &[0xff, 0xff, 0xff], &c])
            .unwrap();
        assert_eq!(applied.count, 2);
        assert!(matches!(applied.error, Some(DocError::Decode(_))));
        // One record: the delta of what was applied, which rebuilds the same document.
        assert_eq!(applied.records.len(), 1);
        let mut reloaded = Document::load(None, [applied.records[0].as_slice()]).unwrap();
        assert_eq!(text_of(&mut reloaded), "abcdef");
        assert_eq!(text_of(&mut document), "abcdef");
        // Already known: nothing to log.
        assert!(document
            .apply_updates(&[&a, &b])
            .unwrap()
            .records
            .is_empty());
        // Missing its dependencies: kept as it came, so that it is logged.
        let mut fresh = Document::new();
        let pending = fresh.apply_updates(&[&c]).unwrap();
        assert_eq!(pending.records, vec![c.clone()]);
        // Integrated and pending in one batch: the delta leaves the pending one out, so it
        // is kept as it came beside the delta.
        let x = edit(5, &[], |t, txn| t.insert(txn, 0, "xyz"));
        let mut fresh = Document::new();
        let mixed = fresh.apply_updates(&[&x, &c]).unwrap();
        assert_eq!(mixed.records.len(), 3, "the delta, then both updates");
        assert_eq!(mixed.records[2], c);
        let mut reloaded = Document::load(
            None,
            mixed
                .records
                .iter()
                .map(Vec::as_slice)
                .chain([a.as_slice()]),
        )
        .unwrap();
        assert_eq!(text_of(&mut reloaded), "bcxyz");
    }

    #[test]
    fn snapshot_and_log_reload_the_same_state() {
        let a = edit(1, &[], |t, txn| t.insert(txn, 0, "abc"));
        let b = edit(2, &a, |t, txn| t.insert(txn, 3, "def"));
        let mut document = Document::new();
        document.apply_update(&a).unwrap();
        let snapshot = document.snapshot();
        let delta = document.apply_update(&b).unwrap().unwrap();
        let mut reloaded = Document::load(Some(&snapshot), [delta.as_slice()]).unwrap();
        assert_eq!(text_of(&mut reloaded), "abcdef");
    }

    #[test]
    fn json_infers_untyped_roots() {
        let doc = Doc::with_client_id(5);
        let (t, m, a) = (
            doc.get_or_insert_text("t"),
            doc.get_or_insert_map("m"),
            doc.get_or_insert_array("a"),
        );
        {
            let mut txn = doc.transact_mut();
            t.insert(&mut txn, 0, "hi");
            m.insert(&mut txn, "k", 1.0);
            a.push_back(&mut txn, 7.0);
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut document = Document::new();
        document.apply_update(&update).unwrap();
        assert_eq!(
            document.to_json().unwrap(),
            serde_json::json!({"t": "hi", "m": {"k": 1}, "a": [7]})
        );
    }

    #[test]
    fn garbage_update_is_an_error_not_a_panic() {
        let mut document = Document::new();
        for bad in [
            &[0xff, 0xff, 0xff][..],
            &[1, 1, 0xff, 0xff, 0xff, 0x0f, 0, 0x28],
            &[5],
        ] {
            assert!(document.apply_update(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_pending_update_does_not_break_snapshots() {
        // Found by cargo fuzz: legacy JSON content, which yrs cannot re-encode. It is now
        // refused up front; if anything like it got in, snapshots must still not panic.
        let input = [
            1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 0, 1, 0, 2, 0x7a, 2, 0, 0, 0, 0, 0, 0,
        ];
        let mut document = Document::new();
        let _ = document.apply_update(&input);
        let snapshot = document.snapshot();
        Document::load(Some(&snapshot), []).unwrap();
        document.diff(&StateVector::default().encode_v1()).unwrap();
    }

    #[test]
    fn diff_gives_a_peer_what_it_lacks() {
        let a = edit(1, &[], |t, txn| t.insert(txn, 0, "shared"));
        let mut document = Document::new();
        document.apply_update(&a).unwrap();
        let diff = document.diff(&StateVector::default().encode_v1()).unwrap();
        let peer = Doc::new();
        peer.transact_mut()
            .apply_update(Update::decode_v1(&diff).unwrap())
            .unwrap();
        assert_eq!(
            peer.get_or_insert_text("text").get_string(&peer.transact()),
            "shared"
        );
    }

    #[test]
    fn awareness_removal_announces_only_known_states() {
        let mut document = Document::new();
        let payload = ysync::encode_awareness(&[AwarenessEntry {
            client_id: 9,
            clock: 1,
            json: "{\"a\":1}",
        }]);
        let change = document.apply_awareness(&payload).unwrap();
        assert_eq!(change.present, vec![9]);
        assert!(document.awareness_states().is_some());
        let removal = document.remove_awareness(&[9, 10]).unwrap();
        let entries = ysync::parse_awareness(&removal).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].client_id, entries[0].json), (9, "null"));
        // At the client's own clock, as y-protocols' server announces it: a later state
        // from the same client (clock 2) is then accepted by every peer.
        assert_eq!(entries[0].clock, 1);
        assert!(document.awareness_states().is_none());
    }

    #[test]
    fn a_frozen_document_answers_as_the_live_one_and_thaws_on_use() {
        let a = edit(1, &[], |t, txn| t.insert(txn, 0, "hello"));
        let mut document = Document::new();
        document.apply_update(&a).unwrap();
        let (snapshot, sv) = (document.snapshot(), document.state_vector().unwrap());
        assert!(
            !document.freeze_if_unused(Duration::from_secs(60)),
            "just used"
        );
        assert!(document.freeze_if_unused(Duration::ZERO));
        assert!(document.is_frozen());
        assert_eq!(document.snapshot(), snapshot);
        // A peer with nothing is answered from the frozen state as it is.
        assert_eq!(document.diff(&[0]).unwrap(), snapshot);
        assert!(document.is_frozen());
        // Anything else thaws it, and it holds what it held.
        assert_eq!(document.state_vector().unwrap(), sv);
        assert!(!document.is_frozen());
        assert!(document.freeze_if_unused(Duration::ZERO));
        let b = edit(2, &a, |t, txn| t.insert(txn, 5, " world"));
        assert!(document.apply_update(&b).unwrap().is_some());
        assert_eq!(text_of(&mut document), "hello world");
        assert!(
            document.freeze_if_unused(Duration::ZERO)
                && document.apply_update(&b).unwrap().is_none(),
            "what a frozen document held is still known once thawed"
        );
    }

    #[test]
    fn a_document_with_pending_updates_is_not_frozen() {
        let a = edit(1, &[], |t, txn| t.insert(txn, 0, "abc"));
        let b = edit(1, &a, |t, txn| t.insert(txn, 3, "def"));
        let mut document = Document::new();
        document.apply_update(&b).unwrap(); // depends on `a`: pending
        assert!(!document.freeze_if_unused(Duration::ZERO));
        document.apply_update(&a).unwrap();
        assert!(document.freeze_if_unused(Duration::ZERO));
        assert_eq!(text_of(&mut document), "abcdef");
    }

    proptest! {
        /// Concurrent edits from many clients merge to the same text in any order.
        #[test]
        fn merge_is_order_independent(
            (inserts, order) in (1usize..12).prop_flat_map(|n| (
                proptest::collection::vec("[a-z]{1,4}", n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )),
        ) {
            let updates: Vec<Vec<u8>> = inserts
                .iter()
                .enumerate()
                .map(|(i, s)| edit(i as u64 + 1, &[], |t, txn| t.insert(txn, 0, s)))
                .collect();
            let mut forward = Document::new();
            for u in &updates {
                forward.apply_update(u).unwrap();
            }
            let mut shuffled = Document::new();
            for &i in &order {
                shuffled.apply_update(&updates[i]).unwrap();
            }
            prop_assert_eq!(text_of(&mut forward), text_of(&mut shuffled));
        }

        /// Freezing between any two updates changes nothing a client or the store sees.
        #[test]
        fn freezing_anywhere_changes_nothing(
            inserts in proptest::collection::vec("[a-z]{1,4}", 1..10),
            freezes in proptest::collection::vec(any::<bool>(), 10),
        ) {
            let mut live = Document::new();
            let mut frozen = Document::new();
            let mut base = Vec::new();
            for (i, s) in inserts.iter().enumerate() {
                let update = edit(i as u64 % 3 + 1, &base, |t, txn| t.insert(txn, 0, s));
                base = {
                    live.apply_update(&update).unwrap();
                    live.snapshot()
                };
                if freezes[i] {
                    prop_assert!(frozen.freeze_if_unused(Duration::ZERO));
                }
                let delta = frozen.apply_update(&update).unwrap();
                prop_assert!(delta.is_some());
            }
            prop_assert!(frozen.freeze_if_unused(Duration::ZERO));
            prop_assert_eq!(frozen.snapshot(), live.snapshot());
            prop_assert_eq!(frozen.diff(&[0]).unwrap(), live.diff(&[0]).unwrap());
            prop_assert_eq!(text_of(&mut frozen), text_of(&mut live));
        }
    }
}
