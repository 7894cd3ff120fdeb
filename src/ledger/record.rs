//! The ledger's JSON-lines record: upstream's format, one op a line.
//!
//! `{"kind":"set"|"del","key":K,"value":V,"stamp":{"p":<ns>,"l":<n>,"n":"<node>"}}` followed by
//! `\n`. We write compact JSON with fields in that order; we write non-ASCII text as UTF-8 where
//! upstream writes `\uXXXX` escapes, which every JSON reader (upstream's included) reads the same.
//! Reading is as lenient as upstream's: `p`/`l` may be integers, floats (truncated) or numeric
//! strings, `n` may be a string or a number, a missing `value` is `null`, extra fields are ignored.
//!
//! Rooms and authors extend it without changing a byte of what upstream writes:
//! - an op of the default room with no author is exactly upstream's record;
//! - an author (the writer's token `sub`) adds `"by":"<sub>"` last, which upstream ignores;
//! - an op of a named room is `{"room":"<name>","op":"set"|"del","key":…,"value":…,"stamp":…}`
//!   (`by` last, if any). It has no `kind`, so upstream skips the line as one it does not know
//!   and never mixes a room into its one map.

use std::{fmt, sync::Arc};

use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};
use serde_json::Value;

use crate::{
    hlc::Stamp,
    json::Json,
    lww::{Op, OpKind},
    room::Room,
};

/// Why a line is not a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or JSON without the record's fields.
    #[error("not a ledger record: {0}")]
    Json(#[from] serde_json::Error),
    /// `kind` is neither `set` nor `del`.
    #[error("unknown op kind {0:?}")]
    Kind(String),
    /// A record without `kind` whose `room` or `op` is missing or not valid.
    #[error("bad room record")]
    Room,
}

/// Appends the record for `op`, newline included, to `out`.
pub fn encode(op: &Op, out: &mut Vec<u8>) {
    encode_object(op, out);
    out.push(b'\n');
}

/// Appends the record for `op` as one JSON object, without a newline (mesh frames carry it so).
pub fn encode_object(op: &Op, out: &mut Vec<u8>) {
    match op.room.name() {
        None => out.extend_from_slice(b"{\"kind\":\""),
        Some(room) => {
            out.extend_from_slice(b"{\"room\":");
            write_json(room, out);
            out.extend_from_slice(b",\"op\":\"");
        }
    }
    out.extend_from_slice(op.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"key\":");
    write_json(&op.key, out);
    out.extend_from_slice(b",\"value\":");
    out.extend_from_slice(op.value.as_str().as_bytes());
    out.extend_from_slice(b",\"stamp\":");
    encode_stamp(&op.stamp, out);
    if let Some(by) = &op.by {
        out.extend_from_slice(b",\"by\":");
        write_json(&**by, out);
    }
    out.push(b'}');
}

/// Appends `{"p":..,"l":..,"n":".."}` for `stamp` to `out`.
pub fn encode_stamp(stamp: &Stamp, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{{\"p\":{},\"l\":{},\"n\":", stamp.p, stamp.l).as_bytes());
    write_json(&stamp.n, out);
    out.push(b'}');
}

fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // unwrap: serializing a string into a Vec cannot fail (no I/O).
    #[allow(clippy::unwrap_used)]
    serde_json::to_writer(&mut *out, value).unwrap();
}

/// Parses one line (without its newline) into an op.
///
/// # Errors
/// [`RecordError`] when the line is not a record.
pub fn decode(line: &[u8]) -> Result<Op, RecordError> {
    from_raw(serde_json::from_slice(line)?)
}

/// Reads a record already parsed as JSON (an op inside a mesh frame), as leniently as a line.
///
/// # Errors
/// [`RecordError`] when the value is not a record.
pub fn decode_value(value: Value) -> Result<Op, RecordError> {
    from_raw(RawRecord::deserialize(value)?)
}

fn from_raw(raw: RawRecord) -> Result<Op, RecordError> {
    let (kind, room) = match (raw.kind, raw.room, raw.op) {
        // A `kind` makes it upstream's record, whatever else it carries (as upstream reads it).
        (Some(kind), ..) => (kind, Room::DEFAULT),
        (None, Some(room), Some(kind)) => (kind, Room::parse(&room).map_err(|_| RecordError::Room)?),
        _ => return Err(RecordError::Room),
    };
    let kind = match kind.as_str() {
        "set" => OpKind::Set,
        "del" => OpKind::Del,
        _ => return Err(RecordError::Kind(kind)),
    };
    let value = match raw.value {
        Some(value) if kind == OpKind::Set => Json::from_value(&value),
        _ => Json::null(),
    };
    let by = raw.by.filter(|by| !by.is_empty()).map(Arc::from);
    Ok(Op { kind, key: raw.key, value, stamp: raw.stamp.into(), room, by })
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    room: Option<String>,
    /// A named room's record names its kind here (see the module's notes).
    #[serde(default)]
    op: Option<String>,
    key: String,
    #[serde(default)]
    value: Option<Value>,
    stamp: RawStamp,
    #[serde(default)]
    by: Option<String>,
}

/// A stamp as upstream reads it: `int(p)`, `int(l)`, `str(n)`.
#[derive(Deserialize)]
pub(crate) struct RawStamp {
    #[serde(deserialize_with = "lenient_u64")]
    p: u64,
    #[serde(deserialize_with = "lenient_u64")]
    l: u64,
    #[serde(deserialize_with = "lenient_string")]
    n: String,
}

impl From<RawStamp> for Stamp {
    fn from(raw: RawStamp) -> Self {
        Stamp { p: raw.p, l: raw.l, n: raw.n }
    }
}

pub(super) fn lenient_u64<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer, float or numeric string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("negative stamp field"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // Python's int() truncates toward zero.
            if v.is_finite() && v > -1.0 && v < 18_446_744_073_709_551_616.0 {
                Ok(v.trunc() as u64)
            } else {
                Err(E::custom("stamp field out of range"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim().parse().map_err(|_| E::custom("stamp field is not an integer"))
        }
    }
    de.deserialize_any(V)
}

fn lenient_string<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a node id")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    de.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn encodes_upstreams_exact_shape() {
        let mut out = Vec::new();
        encode(&Op::set("k", json!(1), Stamp::new(1795901405318830271, 0, "a")), &mut out);
        encode(&Op::del("k2", Stamp::new(1795901405318948142, 0, "a")), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"kind\":\"set\",\"key\":\"k\",\"value\":1,\"stamp\":{\"p\":1795901405318830271,\"l\":0,\"n\":\"a\"}}\n\
             {\"kind\":\"del\",\"key\":\"k2\",\"value\":null,\"stamp\":{\"p\":1795901405318948142,\"l\":0,\"n\":\"a\"}}\n"
        );
    }

    #[test]
    fn decodes_upstream_lines_including_escapes_and_nulls() {
        let op =
            decode(br#"{"kind":"set","key":"uni","value":"\u00e9","stamp":{"p":1795901405318978710,"l":0,"n":"a"}}"#)
                .unwrap();
        assert_eq!(op.value, json!("é"));
        let op = decode(br#"{"kind":"set","key":"x","value":null,"stamp":{"p":1,"l":0,"n":"a"}}"#).unwrap();
        assert_eq!(op.value, Value::Null);
        let op = decode(br#"{"kind":"set","key":"x","stamp":{"p":1,"l":0,"n":"a"}}"#).unwrap();
        assert_eq!(op.value, Value::Null);
    }

    #[test]
    fn reads_stamp_fields_as_leniently_as_upstream() {
        let op = decode(br#"{"kind":"del","key":"x","value":null,"stamp":{"p":"123","l":12.9,"n":7}}"#).unwrap();
        assert_eq!(op.stamp, Stamp::new(123, 12, "7"));
    }

    #[test]
    fn rejects_what_is_not_a_record() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"kind":"put","key":"k","stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":5,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k"}"#,
            br#"{"kind":"set","key":"k","stamp":{"p":-1,"l":0,"n":"a"}}"#,
            b"",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rooms_and_authors_extend_the_record_without_changing_the_default_rooms() {
        let stamp = Stamp::new(5, 1, "a");
        let mut out = Vec::new();
        encode(&Op::set("k", json!(1), stamp.clone()).by(Some(Arc::from("alice"))), &mut out);
        let board = Room::parse("board-42").unwrap();
        encode(&Op::del("k", stamp.clone()).in_room(board.clone()), &mut out);
        encode(&Op::set("k", json!([2]), stamp.clone()).in_room(board.clone()).by(Some(Arc::from("bob"))), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"kind\":\"set\",\"key\":\"k\",\"value\":1,\"stamp\":{\"p\":5,\"l\":1,\"n\":\"a\"},\"by\":\"alice\"}\n\
             {\"room\":\"board-42\",\"op\":\"del\",\"key\":\"k\",\"value\":null,\"stamp\":{\"p\":5,\"l\":1,\"n\":\"a\"}}\n\
             {\"room\":\"board-42\",\"op\":\"set\",\"key\":\"k\",\"value\":[2],\"stamp\":{\"p\":5,\"l\":1,\"n\":\"a\"},\"by\":\"bob\"}\n"
        );
        let ops: Vec<Op> = text.lines().map(|l| decode(l.as_bytes()).unwrap()).collect();
        assert_eq!(ops[0].by.as_deref(), Some("alice"));
        assert!(ops[0].room.is_default());
        assert_eq!((ops[1].room.clone(), ops[1].kind), (board.clone(), OpKind::Del));
        assert_eq!((ops[2].room.clone(), ops[2].by.as_deref()), (board, Some("bob")));
        let upstream = br#"{"room":"ok","kind":"set","key":"k","stamp":{"p":1,"l":0,"n":"a"}}"#;
        assert!(decode(upstream).unwrap().room.is_default(), "a kind makes it upstream's, as upstream reads it");
        for bad in [
            &br#"{"room":"_x","op":"set","key":"k","stamp":{"p":1,"l":0,"n":"a"}}"#[..],
            br#"{"room":"ok","key":"k","stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"op":"set","key":"k","stamp":{"p":1,"l":0,"n":"a"}}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(key in ".{0,20}", p in any::<u64>(), l in any::<u64>(), n in "[a-z0-9-]{1,8}",
                                     v in prop_oneof![Just(json!(null)), any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
                                                      ".{0,10}".prop_map(|s| json!({"s": s, "a": [1, 2]}))]) {
            let op = Op::set(key, v, Stamp::new(p, l, n));
            let mut out = Vec::new();
            encode(&op, &mut out);
            prop_assert_eq!(out.last(), Some(&b'\n'));
            prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
            prop_assert_eq!(decode(&out[..out.len() - 1]).unwrap(), op);
        }
    }
}
