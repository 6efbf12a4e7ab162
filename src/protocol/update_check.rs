//! Structural validation of lib0 v1 Yjs updates before they reach yrs.
//!
//! `yrs::Update::decode_v1` trusts every count and length an update declares and reserves
//! memory for it up front, so a handful of bytes can ask for gigabytes. [`check_update_v1`]
//! walks the same v1 grammar yrs 0.28.1 decodes (block headers, item contents, lib0 `Any`
//! values, embedded JSON, the delete set) and checks each declared count against the bytes that
//! remain, so an update it accepts of n bytes can make yrs reserve at most a small multiple of n.
//! It is a pure function over a borrowed slice: it never calls into yrs, never builds the values
//! it reads, and never allocates in proportion to anything the input declares. It is at least as
//! strict as yrs (whatever it accepts, `decode_v1` decodes) and also refuses what would make yrs
//! panic or misread: clocks that overflow `u32`, client ids wider than 53 bits, `Any` nested
//! deeper than [`MAX_ANY_DEPTH`], and trailing bytes.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use thiserror::Error;

use super::lib0::{Lib0Error, Reader};

/// How deeply `Any` arrays and maps may nest before an update is refused.
pub const MAX_ANY_DEPTH: usize = 64;

/// The largest client id yrs represents faithfully (its `ClientID` keeps 53 bits).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

// Block info byte (yrs `block.rs`: BLOCK_GC_REF_NUMBER, BLOCK_SKIP_REF_NUMBER, HAS_*).
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
/// yrs `ItemContent::decode` matches `ref_num & 0b1111`: bit 4 of the info byte is ignored.
const CONTENT_REF_MASK: u8 = 0b0000_1111;

// Item content refs (yrs `block.rs`: BLOCK_ITEM_*_REF_NUMBER).
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;

// Shared type refs (yrs `types/mod.rs`: TYPE_REFS_*). 7 (weak link) only decodes with yrs's
// `weak` feature, which Tandem does not enable, so it is refused like any unknown ref.
const TYPE_ARRAY: u8 = 0;
const TYPE_MAP: u8 = 1;
const TYPE_TEXT: u8 = 2;
const TYPE_XML_ELEMENT: u8 = 3;
const TYPE_XML_FRAGMENT: u8 = 4;
const TYPE_XML_HOOK: u8 = 5;
const TYPE_XML_TEXT: u8 = 6;
const TYPE_DOC: u8 = 9;
const TYPE_UNDEFINED: u8 = 15;

// lib0 `Any` tags (yrs `any.rs`, `Any::decode`).
const ANY_UNDEFINED: u8 = 127;
const ANY_NULL: u8 = 126;
const ANY_VAR_INT: u8 = 125;
const ANY_F32: u8 = 124;
const ANY_F64: u8 = 123;
const ANY_BIGINT: u8 = 122;
const ANY_FALSE: u8 = 121;
const ANY_TRUE: u8 = 120;
const ANY_STRING: u8 = 119;
const ANY_MAP: u8 = 118;
const ANY_ARRAY: u8 = 117;
const ANY_BUFFER: u8 = 116;

// The fewest bytes one element of each counted collection can take, used to bound counts.
/// A client section: block count, client id and starting clock, one byte each at least.
const MIN_CLIENT_BYTES: usize = 3;
/// A block: GC/Skip is info + length; an item is info + at least one more byte.
const MIN_BLOCK_BYTES: usize = 2;
/// A delete-set client: client id + range count.
const MIN_DS_CLIENT_BYTES: usize = 2;
/// A delete-set range: clock + length.
const MIN_DS_RANGE_BYTES: usize = 2;
/// An `Any` map entry: key length + value tag.
const MIN_ANY_ENTRY_BYTES: usize = 2;
/// An `Any` value or a length-prefixed string: one byte.
const MIN_ELEMENT_BYTES: usize = 1;

/// What a structurally valid update contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Client sections in the block store (a client may appear in more than one).
    pub clients: u64,
    /// Blocks across all client sections: items, GC and Skip blocks alike.
    pub blocks: u64,
    /// Clock ranges in the delete set, across all its clients.
    pub delete_ranges: u64,
}

/// Why an update was refused before reaching yrs.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UpdateCheckError {
    /// A declared count cannot fit in the bytes that follow it.
    #[error(
        "update declares {declared} {what}, more than the {remaining} bytes that remain can hold"
    )]
    CountTooLarge {
        /// Which collection the count belongs to.
        what: &'static str,
        /// The count the input declared.
        declared: u64,
        /// The bytes actually left after the count.
        remaining: usize,
    },
    /// A lib0 primitive could not be read (truncation, overlong varint, oversized length).
    #[error("malformed update: {0}")]
    Malformed(#[from] Lib0Error),
    /// A value yrs reads as `u32` does not fit in one.
    #[error("{what} {value} does not fit in 32 bits")]
    IntegerTooLarge {
        /// Which field it is.
        what: &'static str,
        /// The value the input declared.
        value: u64,
    },
    /// A client id wider than the 53 bits yrs keeps.
    #[error("client id {0} is wider than 53 bits")]
    ClientIdTooLarge(u64),
    /// Block clocks (or a delete-set range) run past `u32::MAX`.
    #[error("clock overflows 32 bits")]
    ClockOverflow,
    /// A GC or Skip block of length zero, which yrs refuses.
    #[error("GC or Skip block of length zero")]
    EmptyBlock,
    /// An item content ref yrs does not know.
    #[error("unknown item content ref {0}")]
    UnknownContent(u8),
    /// Legacy JSON content (ref 2): yrs 0.28 decodes `n + 1` strings where it encodes `n`,
    /// so a document holding it would snapshot to bytes nothing can load again.
    #[error("legacy JSON item content is not supported")]
    LegacyJson,
    /// A shared type ref yrs does not decode.
    #[error("unknown shared type ref {0}")]
    UnknownTypeRef(u8),
    /// An `Any` tag lib0 does not define.
    #[error("unknown Any tag {0}")]
    UnknownAnyTag(u8),
    /// `Any` arrays or maps nested deeper than [`MAX_ANY_DEPTH`].
    #[error("Any values nested deeper than {MAX_ANY_DEPTH} levels")]
    TooDeep,
    /// A string is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// Embedded JSON (an embed or a format value) that yrs could not parse.
    #[error("embedded JSON is invalid")]
    InvalidJson,
    /// Bytes left over after the delete set.
    #[error("{0} trailing bytes after the update")]
    TrailingBytes(usize),
}

/// Checks that `update` is a well-formed lib0 v1 Yjs update that yrs 0.28 can decode without
/// reserving memory beyond a small multiple of its length, and counts what it holds.
///
/// The grammar follows yrs 0.28.1 (`Update::decode`, `Update::decode_block`,
/// `ItemContent::decode`, `TypeRef::decode`, `Any::decode`, `IdSet::decode`), including its
/// quirks: type ref XmlHook carries no name, and the type ref is a single byte. Legacy JSON
/// content is refused: yrs reads `n + 1` strings where it writes `n`, so it cannot round-trip.
pub fn check_update_v1(update: &[u8]) -> Result<UpdateStats, UpdateCheckError> {
    let mut cur = Cursor::new(update);
    let mut stats = UpdateStats::default();

    let clients = cur.count("client sections", MIN_CLIENT_BYTES, u32::MAX.into())?;
    for _ in 0..clients {
        let blocks = cur.count("blocks", MIN_BLOCK_BYTES, u32::MAX.into())?;
        cur.client_id()?;
        let mut clock = u64::from(cur.var_u32("clock")?);
        for _ in 0..blocks {
            clock += check_block(&mut cur)?;
            if clock > u64::from(u32::MAX) {
                return Err(UpdateCheckError::ClockOverflow);
            }
        }
        stats.clients += 1;
        stats.blocks += blocks;
    }

    let ds_clients = cur.count("delete-set clients", MIN_DS_CLIENT_BYTES, u32::MAX.into())?;
    for _ in 0..ds_clients {
        cur.client_id()?;
        let ranges = cur.count("delete-set ranges", MIN_DS_RANGE_BYTES, u32::MAX.into())?;
        for _ in 0..ranges {
            let clock = cur.var_u32("delete-set clock")?;
            let len = cur.var_u32("delete-set length")?;
            if clock.checked_add(len).is_none() {
                return Err(UpdateCheckError::ClockOverflow);
            }
        }
        stats.delete_ranges += ranges;
    }

    match cur.remaining() {
        0 => Ok(stats),
        n => Err(UpdateCheckError::TrailingBytes(n)),
    }
}

/// Checks one block and returns how far it advances its client's clock.
fn check_block(cur: &mut Cursor<'_>) -> Result<u64, UpdateCheckError> {
    let info = cur.u8()?;
    match info {
        BLOCK_GC | BLOCK_SKIP => match cur.var_u32("block length")? {
            0 => Err(UpdateCheckError::EmptyBlock),
            len => Ok(len.into()),
        },
        _ => {
            let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
            if info & HAS_ORIGIN != 0 {
                cur.id()?;
            }
            if info & HAS_RIGHT_ORIGIN != 0 {
                cur.id()?;
            }
            if cant_copy_parent_info {
                // yrs: `read_parent_info` is `read_var::<u32>() == 1`.
                if cur.var_u32("parent info")? == 1 {
                    cur.string()?;
                } else {
                    cur.id()?;
                }
                if info & HAS_PARENT_SUB != 0 {
                    cur.string()?;
                }
            }
            check_content(cur, info & CONTENT_REF_MASK)
        }
    }
}

/// Checks an item's content and returns its length in clock ticks (0 drops the item in yrs).
fn check_content(cur: &mut Cursor<'_>, content_ref: u8) -> Result<u64, UpdateCheckError> {
    match content_ref {
        CONTENT_DELETED => Ok(cur.var_u32("deleted length")?.into()),
        // Modern Yjs writes ContentAny; yrs cannot round-trip ContentJSON (found by fuzzing).
        CONTENT_JSON => Err(UpdateCheckError::LegacyJson),
        CONTENT_BINARY => {
            cur.bytes()?;
            Ok(1)
        }
        CONTENT_STRING => {
            let s = cur.string()?;
            Ok(s.encode_utf16().count() as u64)
        }
        CONTENT_EMBED => {
            cur.json()?;
            Ok(1)
        }
        CONTENT_FORMAT => {
            cur.string()?;
            cur.json()?;
            Ok(1)
        }
        CONTENT_TYPE => {
            check_type_ref(cur)?;
            Ok(1)
        }
        CONTENT_ANY => {
            let count = cur.count("Any values", MIN_ELEMENT_BYTES, u32::MAX.into())?;
            for _ in 0..count {
                check_any(cur, 0)?;
            }
            Ok(count)
        }
        CONTENT_DOC => {
            // yrs `Options::decode`: guid string, then an Any of options.
            cur.string()?;
            check_any(cur, 0)?;
            Ok(1)
        }
        other => Err(UpdateCheckError::UnknownContent(other)),
    }
}

/// Checks a shared type ref: one byte (yrs v1 `read_type_ref`), XmlElement adds its tag name.
fn check_type_ref(cur: &mut Cursor<'_>) -> Result<(), UpdateCheckError> {
    match cur.u8()? {
        TYPE_ARRAY | TYPE_MAP | TYPE_TEXT | TYPE_XML_FRAGMENT | TYPE_XML_HOOK | TYPE_XML_TEXT
        | TYPE_DOC | TYPE_UNDEFINED => Ok(()),
        TYPE_XML_ELEMENT => cur.string().map(drop),
        other => Err(UpdateCheckError::UnknownTypeRef(other)),
    }
}

/// Checks one lib0 `Any` value inside `depth` enclosing arrays or maps.
fn check_any(cur: &mut Cursor<'_>, depth: usize) -> Result<(), UpdateCheckError> {
    match cur.u8()? {
        ANY_UNDEFINED | ANY_NULL | ANY_FALSE | ANY_TRUE => Ok(()),
        ANY_VAR_INT => cur.var_i64(),
        ANY_F32 => Ok(cur.exact(4).map(drop)?),
        ANY_F64 | ANY_BIGINT => Ok(cur.exact(8).map(drop)?),
        ANY_STRING => cur.string().map(drop),
        ANY_BUFFER => cur.bytes().map(drop),
        ANY_MAP => {
            if depth >= MAX_ANY_DEPTH {
                return Err(UpdateCheckError::TooDeep);
            }
            // yrs reads this count as usize, not u32.
            let entries = cur.count("Any map entries", MIN_ANY_ENTRY_BYTES, u64::MAX)?;
            for _ in 0..entries {
                cur.string()?;
                check_any(cur, depth + 1)?;
            }
            Ok(())
        }
        ANY_ARRAY => {
            if depth >= MAX_ANY_DEPTH {
                return Err(UpdateCheckError::TooDeep);
            }
            let elements = cur.count("Any array elements", MIN_ELEMENT_BYTES, u64::MAX)?;
            for _ in 0..elements {
                check_any(cur, depth + 1)?;
            }
            Ok(())
        }
        other => Err(UpdateCheckError::UnknownAnyTag(other)),
    }
}

/// A position in the update, reading lib0 primitives through [`Reader`].
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn var_u64(&mut self) -> Result<u64, Lib0Error> {
        let mut reader = Reader::new(&self.buf[self.pos..]);
        let value = reader.read_var_u64()?;
        self.pos = self.buf.len() - reader.remaining();
        Ok(value)
    }

    /// A varint yrs reads as `u32` (it wraps wider values; we refuse them).
    fn var_u32(&mut self, what: &'static str) -> Result<u32, UpdateCheckError> {
        let value = self.var_u64()?;
        u32::try_from(value).map_err(|_| UpdateCheckError::IntegerTooLarge { what, value })
    }

    /// A count of elements each taking at least `min_bytes` bytes, and at most `max`.
    fn count(
        &mut self,
        what: &'static str,
        min_bytes: usize,
        max: u64,
    ) -> Result<u64, UpdateCheckError> {
        let declared = self.var_u64()?;
        let remaining = self.remaining();
        if declared > (remaining / min_bytes) as u64 {
            return Err(UpdateCheckError::CountTooLarge {
                what,
                declared,
                remaining,
            });
        }
        if declared > max {
            return Err(UpdateCheckError::IntegerTooLarge {
                what,
                value: declared,
            });
        }
        Ok(declared)
    }

    fn u8(&mut self) -> Result<u8, Lib0Error> {
        let byte = *self.buf.get(self.pos).ok_or(Lib0Error::UnexpectedEnd)?;
        self.pos += 1;
        Ok(byte)
    }

    fn exact(&mut self, len: usize) -> Result<&'a [u8], Lib0Error> {
        if len > self.remaining() {
            return Err(Lib0Error::UnexpectedEnd);
        }
        let start = self.pos;
        self.pos += len;
        Ok(&self.buf[start..self.pos])
    }

    /// A byte array with a `u32` length prefix (yrs `read_buf`).
    fn bytes(&mut self) -> Result<&'a [u8], UpdateCheckError> {
        let declared = self.var_u64()?;
        let remaining = self.remaining();
        if declared > remaining as u64 {
            return Err(Lib0Error::LengthTooLarge {
                declared,
                remaining,
            }
            .into());
        }
        if declared > u64::from(u32::MAX) {
            return Err(UpdateCheckError::IntegerTooLarge {
                what: "byte length",
                value: declared,
            });
        }
        Ok(self.exact(declared as usize)?)
    }

    /// A UTF-8 string (yrs `read_string`).
    fn string(&mut self) -> Result<&'a str, UpdateCheckError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| UpdateCheckError::InvalidUtf8)
    }

    /// A string holding JSON that yrs parses into an `Any` (v1 `read_json`).
    fn json(&mut self) -> Result<(), UpdateCheckError> {
        serde_json::from_str::<JsonCheck>(self.string()?)
            .map(drop)
            .map_err(|_| UpdateCheckError::InvalidJson)
    }

    /// A client id (yrs `read_client` / the client half of `read_id`).
    fn client_id(&mut self) -> Result<u64, UpdateCheckError> {
        match self.var_u64()? {
            id if id > MAX_CLIENT_ID => Err(UpdateCheckError::ClientIdTooLarge(id)),
            id => Ok(id),
        }
    }

    /// An item id: client, then clock (yrs v1 `read_left_id` / `read_right_id`).
    fn id(&mut self) -> Result<(), UpdateCheckError> {
        self.client_id()?;
        self.var_u32("id clock")?;
        Ok(())
    }

    /// A lib0 signed varint (`readVarInt`): 6 data bits, sign 0x40 and continuation 0x80 in the
    /// first byte, 7 data bits after. yrs shifts each byte into an `i64` and then negates, so
    /// it panics on a continuation past the tenth byte or a magnitude of 2^63; both are refused,
    /// as is any magnitude that does not fit in 63 bits.
    fn var_i64(&mut self) -> Result<(), UpdateCheckError> {
        let first = self.u8()?;
        if first & 0x80 == 0 {
            return Ok(());
        }
        let mut shift = 6u32;
        loop {
            let byte = self.u8()?;
            if shift == 62 && (byte & 0x80 != 0 || byte & 0x7f > 1) {
                return Err(Lib0Error::VarIntOverflow.into());
            }
            if byte & 0x80 == 0 {
                return Ok(());
            }
            shift += 7;
        }
    }
}

/// Parses JSON the way yrs's `Any::from_json` does, keeping nothing. `Any` refuses only one
/// thing `serde_json` accepts: integers above `i64::MAX`.
struct JsonCheck;

impl<'de> Deserialize<'de> for JsonCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonCheckVisitor)
    }
}

struct JsonCheckVisitor;

impl<'de> Visitor<'de> for JsonCheckVisitor {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<JsonCheck, E> {
        if v > i64::MAX as u64 {
            return Err(E::custom("integer outside of i64"));
        }
        Ok(JsonCheck)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonCheck, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonCheck, A::Error> {
        while map.next_entry::<IgnoredAny, JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use yrs::updates::decoder::Decode;
    use yrs::{
        Any, Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text,
        Transact, Update, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    fn full_update(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn assert_sound(update: &[u8]) -> UpdateStats {
        let stats = check_update_v1(update).expect("real update must pass");
        Update::decode_v1(update).expect("yrs decodes it too");
        stats
    }

    fn attrs(pairs: &[(&str, Any)]) -> HashMap<Arc<str>, Any> {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), v.clone()))
            .collect()
    }

    fn every_any() -> Vec<Any> {
        let nested: HashMap<String, Any> = [
            ("n".to_string(), Any::Null),
            ("deep".to_string(), Any::from(vec![Any::from(1.5f64)])),
        ]
        .into_iter()
        .collect();
        vec![
            Any::Undefined,
            Any::Null,
            Any::Bool(true),
            Any::Bool(false),
            Any::from(42),
            Any::from(-7_000_000),
            Any::from((1i64 << 62) + 1), // encoded as a bigint
            Any::from((1i64 << 40) + 1), // encoded as a float64
            Any::from(0.5f64),           // float32
            Any::from(0.1f64),           // float64
            Any::from("héllo 😀"),
            Any::from(vec![0u8, 1, 2, 255]),
            Any::from(vec![Any::from("a"), Any::Null, Any::from(3)]),
            Any::Map(Arc::new(nested)),
        ]
    }

    /// A document exercising every content kind yrs produces.
    fn rich_doc() -> Doc {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        let xml = doc.get_or_insert_xml_fragment("xml");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello world 😀");
            text.insert_with_attributes(&mut txn, 5, " bold", attrs(&[("bold", Any::Bool(true))]));
            text.format(&mut txn, 0, 3, attrs(&[("italic", Any::from("yes"))]));
            text.insert_embed(&mut txn, 2, Any::from(vec![Any::from("img")]));
            text.remove_range(&mut txn, 8, 3);
            for (i, value) in every_any().into_iter().enumerate() {
                map.insert(&mut txn, format!("k{i}"), value.clone());
                array.push_back(&mut txn, value);
            }
            map.insert(&mut txn, "nested_map", MapPrelim::from([("x", 1)]));
            map.insert(
                &mut txn,
                "nested_array",
                ArrayPrelim::from(vec![Any::from(1), Any::from("two")]),
            );
            map.insert(&mut txn, "sub", Doc::new());
            map.remove(&mut txn, "k0");
            array.remove_range(&mut txn, 1, 2);
            let p = xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
            p.insert_attribute(&mut txn, "class", "lead");
            p.push_back(&mut txn, XmlTextPrelim::new("para"));
            xml.push_back(&mut txn, XmlTextPrelim::new("tail"));
        }
        doc
    }

    #[test]
    fn rich_real_update_passes() {
        let doc = rich_doc();
        let stats = assert_sound(&full_update(&doc));
        assert_eq!(stats.clients, 1);
        assert!(stats.blocks > 20, "{stats:?}");
        assert!(stats.delete_ranges > 0, "{stats:?}");
    }

    #[test]
    fn empty_update_passes() {
        let doc = Doc::new();
        let stats = assert_sound(&full_update(&doc));
        assert_eq!(stats, UpdateStats::default());
        assert_eq!(check_update_v1(&[0, 0]), Ok(UpdateStats::default()));
    }

    #[test]
    fn multi_client_incremental_and_merged_updates_pass() {
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(2);
        let ta = a.get_or_insert_text("t");
        let tb = b.get_or_insert_text("t");
        ta.insert(&mut a.transact_mut(), 0, "abc");
        let first = full_update(&a);
        b.transact_mut()
            .apply_update(Update::decode_v1(&first).unwrap())
            .unwrap();
        let sv_b = b.transact().state_vector();
        tb.insert(&mut b.transact_mut(), 1, "XY");
        tb.remove_range(&mut b.transact_mut(), 0, 2);
        let diff = b.transact().encode_state_as_update_v1(&sv_b);
        assert!(assert_sound(&diff).delete_ranges > 0);
        let stats = assert_sound(&full_update(&b));
        assert_eq!(stats.clients, 2);

        // Merging updates with a gap in one client's clocks produces a Skip block.
        let c = Doc::with_client_id(3);
        let tc = c.get_or_insert_text("t");
        let mut steps = Vec::new();
        for s in ["one", "two", "three"] {
            let sv = c.transact().state_vector();
            tc.push(&mut c.transact_mut(), s);
            steps.push(c.transact().encode_state_as_update_v1(&sv));
        }
        let merged = yrs::merge_updates_v1([&steps[0], &steps[2]]).unwrap();
        assert!(merged.contains(&BLOCK_SKIP));
        assert_sound(&merged);
        assert_eq!(tc.get_string(&c.transact()), "onetwothree");
    }

    #[test]
    fn gc_blocks_pass() {
        let doc = Doc::with_client_id(9);
        let array = doc.get_or_insert_array("a");
        array.push_back(&mut doc.transact_mut(), MapPrelim::from([("x", 1)]));
        array.remove_range(&mut doc.transact_mut(), 0, 1);
        assert_sound(&full_update(&doc));
        // Hand-made: one client, one GC block of length 3, no deletes.
        assert_eq!(
            assert_sound(&[1, 1, 5, 0, BLOCK_GC, 3, 0]),
            UpdateStats {
                clients: 1,
                blocks: 1,
                delete_ranges: 0
            }
        );
        assert_eq!(
            check_update_v1(&[1, 1, 5, 0, BLOCK_GC, 0, 0]),
            Err(UpdateCheckError::EmptyBlock)
        );
    }

    /// An item with no origin, parent = root "t", given content bytes.
    fn root_item(content_ref: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![1, 1, 5, 0, content_ref, 1, 1, b't'];
        out.extend_from_slice(content);
        out.push(0);
        out
    }

    #[test]
    fn legacy_json_content_is_refused() {
        // yrs 0.28.1 would decode this (it reads one more string than declared) but then
        // encode it as an update it cannot decode again.
        let one = root_item(CONTENT_JSON, &[0, 1, b'1']);
        assert!(Update::decode_v1(&one).is_ok());
        assert_eq!(check_update_v1(&one), Err(UpdateCheckError::LegacyJson));
    }

    #[test]
    fn type_refs_follow_yrs() {
        for (type_ref, extra) in [
            (TYPE_ARRAY, &[][..]),
            (TYPE_MAP, &[]),
            (TYPE_TEXT, &[]),
            (TYPE_XML_ELEMENT, &[1, b'p']),
            (TYPE_XML_FRAGMENT, &[]),
            (TYPE_XML_HOOK, &[]),
            (TYPE_XML_TEXT, &[]),
            (TYPE_DOC, &[]),
            (TYPE_UNDEFINED, &[]),
        ] {
            let mut content = vec![type_ref];
            content.extend_from_slice(extra);
            assert_sound(&root_item(CONTENT_TYPE, &content));
        }
        for type_ref in [7, 8, 10, 14, 16, 255] {
            let bytes = root_item(CONTENT_TYPE, &[type_ref]);
            assert_eq!(
                check_update_v1(&bytes),
                Err(UpdateCheckError::UnknownTypeRef(type_ref))
            );
        }
    }

    #[test]
    fn unknown_content_and_tags_are_refused() {
        for info in [0x10, 0x1a, 0x1b, 0x0b, 0x0f] {
            let bytes = root_item(info, &[1, 1]);
            assert_eq!(
                check_update_v1(&bytes),
                Err(UpdateCheckError::UnknownContent(info & CONTENT_REF_MASK))
            );
        }
        assert_eq!(
            check_update_v1(&root_item(CONTENT_ANY, &[1, 115])),
            Err(UpdateCheckError::UnknownAnyTag(115))
        );
    }

    #[test]
    fn embedded_json_is_parsed() {
        let ok = root_item(
            CONTENT_EMBED,
            &[7, b'{', b'"', b'a', b'"', b':', b'1', b'}'],
        );
        assert_sound(&ok);
        let bad = root_item(CONTENT_EMBED, &[2, b'{', b'x']);
        assert_eq!(check_update_v1(&bad), Err(UpdateCheckError::InvalidJson));
        let huge = b"18446744073709551615";
        let mut content = vec![huge.len() as u8];
        content.extend_from_slice(huge);
        let too_big = root_item(CONTENT_EMBED, &content);
        assert_eq!(
            check_update_v1(&too_big),
            Err(UpdateCheckError::InvalidJson)
        );
        assert!(Update::decode_v1(&too_big).is_err());
    }

    #[test]
    fn amplification_prefix_is_refused() {
        assert_eq!(
            check_update_v1(&[0xfe, 0xc9, 0x9a, 0x3b]),
            Err(UpdateCheckError::CountTooLarge {
                what: "client sections",
                declared: 124_167_422,
                remaining: 0
            })
        );
    }

    const HUGE: [u8; 4] = [0xfe, 0xc9, 0x9a, 0x3b];

    fn with_huge(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
        [prefix, &HUGE[..], suffix].concat()
    }

    #[test]
    fn nested_amplification_is_refused() {
        let count_too_large = |bytes: &[u8], expected: &str| match check_update_v1(bytes) {
            Err(UpdateCheckError::CountTooLarge { what, .. }) => assert_eq!(what, expected),
            other => panic!("{expected}: {other:?}"),
        };
        // Blocks per client.
        count_too_large(&with_huge(&[1], &[5, 0, 0]), "blocks");
        // Any content count, Any array and map counts.
        count_too_large(&root_item(CONTENT_ANY, &HUGE), "Any values");
        count_too_large(
            &root_item(CONTENT_ANY, &with_huge(&[1, ANY_ARRAY], &[])),
            "Any array elements",
        );
        count_too_large(
            &root_item(CONTENT_ANY, &with_huge(&[1, ANY_MAP], &[])),
            "Any map entries",
        );
        // Delete set clients and ranges.
        count_too_large(&with_huge(&[0], &[]), "delete-set clients");
        count_too_large(&with_huge(&[0, 1, 5], &[]), "delete-set ranges");
        // String, buffer and root-name lengths.
        for bytes in [
            root_item(CONTENT_STRING, &HUGE),
            root_item(CONTENT_BINARY, &HUGE),
            root_item(CONTENT_ANY, &with_huge(&[1, ANY_BUFFER], &[])),
            root_item(CONTENT_ANY, &with_huge(&[1, ANY_STRING], &[])),
            with_huge(&[1, 1, 5, 0, CONTENT_STRING, 1], &[]),
        ] {
            assert!(
                matches!(
                    check_update_v1(&bytes),
                    Err(UpdateCheckError::Malformed(
                        Lib0Error::LengthTooLarge { .. }
                    ))
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn deep_any_is_refused() {
        let nest = |depth: usize| {
            let mut content = vec![1];
            for _ in 0..depth {
                content.extend_from_slice(&[ANY_ARRAY, 1]);
            }
            content.push(ANY_NULL);
            root_item(CONTENT_ANY, &content)
        };
        assert_sound(&nest(MAX_ANY_DEPTH));
        assert_eq!(
            check_update_v1(&nest(MAX_ANY_DEPTH + 1)),
            Err(UpdateCheckError::TooDeep)
        );
        assert_eq!(
            check_update_v1(&nest(100_000)),
            Err(UpdateCheckError::TooDeep)
        );
    }

    #[test]
    fn numeric_edge_cases() {
        // Clock overflow across blocks.
        let clock_max = [1, 1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f, BLOCK_GC, 1, 0];
        assert_eq!(
            check_update_v1(&clock_max),
            Err(UpdateCheckError::ClockOverflow)
        );
        // Delete-set range past u32::MAX.
        let ds = [0, 1, 5, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1];
        assert_eq!(check_update_v1(&ds), Err(UpdateCheckError::ClockOverflow));
        // Client id wider than 53 bits.
        let wide = [1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0];
        assert_eq!(
            check_update_v1(&wide),
            Err(UpdateCheckError::ClientIdTooLarge(1 << 53))
        );
        // A u32 field that yrs would wrap (parent info 2^32 + 1 reads as 1 in yrs).
        let wrap = [
            1,
            1,
            5,
            0,
            CONTENT_STRING,
            0x81,
            0x80,
            0x80,
            0x80,
            0x10,
            1,
            b't',
        ];
        assert!(matches!(
            check_update_v1(&wrap),
            Err(UpdateCheckError::IntegerTooLarge { .. })
        ));
        // Signed varints: 10 bytes with magnitude < 2^63 pass, 2^63 and an 11th byte fail.
        let mut max = vec![1, ANY_VAR_INT, 0xbf];
        max.extend_from_slice(&[0xff; 8]);
        max.push(0x01);
        assert_sound(&root_item(CONTENT_ANY, &max));
        let mut min = vec![1, ANY_VAR_INT, 0xc0];
        min.extend_from_slice(&[0x80; 8]);
        min.push(0x02);
        assert!(check_update_v1(&root_item(CONTENT_ANY, &min)).is_err());
        let mut long = vec![1, ANY_VAR_INT, 0x80];
        long.extend_from_slice(&[0x80; 9]);
        long.push(0x00);
        assert!(check_update_v1(&root_item(CONTENT_ANY, &long)).is_err());
        // Trailing bytes and invalid UTF-8.
        assert_eq!(
            check_update_v1(&[0, 0, 0]),
            Err(UpdateCheckError::TrailingBytes(1))
        );
        assert_eq!(
            check_update_v1(&root_item(CONTENT_STRING, &[1, 0xff])),
            Err(UpdateCheckError::InvalidUtf8)
        );
    }

    /// One random edit: (operation, two numbers, a string).
    type Edit = (u8, u32, u32, String);

    fn apply_edit(doc: &Doc, (op, a, b, s): &Edit) {
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        let xml = doc.get_or_insert_xml_fragment("xml");
        let mut txn = doc.transact_mut();
        let any = every_any()[*a as usize % every_any().len()].clone();
        match op % 10 {
            0 | 1 => {
                let len = text.len(&txn);
                text.insert(&mut txn, a % (len + 1), s);
            }
            2 => {
                let len = text.len(&txn);
                if len > 0 {
                    let at = a % len;
                    text.remove_range(&mut txn, at, 1 + b % (len - at));
                }
            }
            3 => {
                let len = text.len(&txn);
                if len > 0 {
                    let at = a % len;
                    let value = if b % 2 == 0 {
                        Any::Bool(true)
                    } else {
                        Any::Null
                    };
                    text.format(&mut txn, at, 1 + b % (len - at), attrs(&[("bold", value)]));
                }
            }
            4 => {
                let len = text.len(&txn);
                text.insert_embed(&mut txn, a % (len + 1), any);
            }
            5 => {
                map.insert(&mut txn, format!("k{}", b % 5), any);
            }
            6 => {
                if b % 3 == 0 {
                    map.insert(&mut txn, s.as_str(), MapPrelim::from([("v", any)]));
                } else {
                    map.remove(&mut txn, &format!("k{}", b % 5));
                }
            }
            7 => {
                let len = array.len(&txn);
                array.insert(&mut txn, a % (len + 1), any);
            }
            8 => {
                let len = array.len(&txn);
                if len > 0 {
                    let at = a % len;
                    array.remove_range(&mut txn, at, 1 + b % (len - at));
                }
            }
            _ => {
                let len = xml.len(&txn);
                if b % 2 == 0 {
                    xml.insert(&mut txn, a % (len + 1), XmlTextPrelim::new(s.as_str()));
                } else {
                    xml.insert(&mut txn, a % (len + 1), XmlElementPrelim::empty("div"));
                }
            }
        }
    }

    /// Real updates from two replicas editing and syncing: full states and an incremental diff.
    fn real_updates(edits: &[Edit]) -> Vec<Vec<u8>> {
        let docs = [Doc::with_client_id(11), Doc::with_client_id(1 << 40)];
        let mut mid_sv = None;
        for (i, edit) in edits.iter().enumerate() {
            let doc = &docs[usize::from(edit.0 >= 128)];
            apply_edit(doc, edit);
            if edit.1 % 4 == 0 {
                let (from, to) = (&docs[i % 2], &docs[1 - i % 2]);
                let diff = from
                    .transact()
                    .encode_state_as_update_v1(&to.transact().state_vector());
                to.transact_mut()
                    .apply_update(Update::decode_v1(&diff).unwrap())
                    .unwrap();
            }
            if i == edits.len() / 2 {
                mid_sv = Some(docs[0].transact().state_vector());
            }
        }
        let mid_sv = mid_sv.unwrap_or_default();
        let diff = docs[0].transact().encode_state_as_update_v1(&mid_sv);
        vec![full_update(&docs[0]), full_update(&docs[1]), diff]
    }

    /// Text edits stay ASCII: yrs indexes text by UTF-8 byte by default and panics on an index
    /// inside a character. Non-ASCII strings still reach the updates through `every_any`.
    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        proptest::collection::vec((any::<u8>(), 0u32..64, 0u32..64, "[a-z ]{0,6}"), 1..24)
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Xor(prop::sample::Index, u8),
        Set(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
        Truncate(prop::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Xor(i, x)),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
            any::<prop::sample::Index>().prop_map(Mutation::Remove),
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match mutation {
            Mutation::Xor(i, x) => bytes[i.index(len)] ^= x,
            Mutation::Set(i, x) => bytes[i.index(len)] = *x,
            Mutation::Insert(i, x) => bytes.insert(i.index(bytes.len() + 1), *x),
            Mutation::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }

    /// Every single-byte substitution (a spread of values), deletion, insertion and truncation
    /// of a rich real update: never a panic, and whatever is accepted decodes in yrs.
    #[test]
    fn every_small_corruption_of_a_real_update_stays_sound() {
        let good = full_update(&rich_doc());
        let mut accepted = 0;
        let mut check = |bad: &[u8]| {
            if check_update_v1(bad).is_ok() {
                accepted += 1;
                assert!(
                    Update::decode_v1(bad).is_ok(),
                    "accepted but yrs refused {bad:?}"
                );
            }
        };
        for i in 0..good.len() {
            let v = good[i];
            for new in [
                0,
                1,
                0x7f,
                0x80,
                0xff,
                v ^ 1,
                v ^ 0x80,
                v.wrapping_add(1),
                v.wrapping_sub(1),
            ] {
                let mut bad = good.clone();
                bad[i] = new;
                check(&bad);
            }
            let mut removed = good.clone();
            removed.remove(i);
            check(&removed);
            for byte in [0, 1, 0x80] {
                let mut inserted = good.clone();
                inserted.insert(i, byte);
                check(&inserted);
            }
            check(&good[..i]);
        }
        assert!(accepted > good.len(), "only {accepted} mutants accepted");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn every_real_update_is_accepted(edits in edits()) {
            for update in real_updates(&edits) {
                prop_assert!(check_update_v1(&update).is_ok(), "{:?}", check_update_v1(&update));
            }
        }

        #[test]
        fn accepted_mutants_decode_in_yrs(
            edits in edits(),
            which in 0usize..3,
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let mut bytes = real_updates(&edits).swap_remove(which);
            for m in &mutations {
                mutate(&mut bytes, m);
            }
            if check_update_v1(&bytes).is_ok() {
                prop_assert!(Update::decode_v1(&bytes).is_ok(), "accepted but yrs refused {:?}", bytes);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_sound(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if check_update_v1(&bytes).is_ok() {
                prop_assert!(Update::decode_v1(&bytes).is_ok(), "accepted but yrs refused {:?}", bytes);
            }
        }
    }
}
