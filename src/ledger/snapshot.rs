//! Upstream's snapshot file (version 1): the whole state, tombstones and stamps included.
//!
//! `{"version":1,"compacted_at":<ns>,"ledger_path":"…","max_stamp":{…}|null,"stats":{…},
//! "entries":[{"key":K,"value":V,"tombstone":bool,"stamp":{p,l,n}},…]}` with entries sorted by key.
//! We write one entry a line (still one JSON document), which upstream's loader reads unchanged.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{
    file::LedgerError,
    record::{self, RawStamp},
};
use crate::{
    hlc::wall_clock_ns,
    lww::{LwwMap, Op, OpKind},
};

/// Encodes the whole map as a version-1 snapshot of the ledger at `ledger_path`.
pub fn encode(map: &LwwMap, ledger_path: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * map.len() + 256);
    let tombstones = map.registers().filter(|(_, r)| r.tombstone).count();
    let header = serde_json::json!({
        "version": 1,
        "compacted_at": wall_clock_ns(),
        "ledger_path": ledger_path.display().to_string(),
        "max_stamp": map.max_stamp(),
        "stats": {
            "records_read": map.len(),
            "skipped_corrupt": 0,
            "live_keys": map.len() - tombstones,
            "tombstones": tombstones,
        },
    });
    let header = header.to_string();
    // The header object without its closing brace, then the entries array.
    out.extend_from_slice(&header.as_bytes()[..header.len() - 1]);
    out.extend_from_slice(b",\"entries\":[");
    for (i, (key, register)) in map.registers().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        out.extend_from_slice(b"{\"key\":");
        push_json(&mut out, key);
        out.extend_from_slice(b",\"value\":");
        push_json(&mut out, &register.value);
        out.extend_from_slice(if register.tombstone {
            b",\"tombstone\":true,\"stamp\":"
        } else {
            b",\"tombstone\":false,\"stamp\":"
        });
        record::encode_stamp(&register.stamp, &mut out);
        out.push(b'}');
    }
    out.extend_from_slice(b"\n]}\n");
    out
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // A String or a serde_json::Value always serializes into a Vec.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[derive(Deserialize)]
struct SnapshotFile {
    version: Value,
    #[serde(default)]
    entries: Vec<SnapshotEntry>,
}

#[derive(Deserialize)]
struct SnapshotEntry {
    key: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    tombstone: bool,
    stamp: RawStamp,
}

/// Loads a snapshot file (version 1, ours or upstream's) if it exists, feeding every entry to
/// `apply` as an op; returns how many entries it had.
pub(crate) fn load(path: &Path, apply: &mut impl FnMut(Op)) -> Result<u64, LedgerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(LedgerError::Io { what: "cannot read snapshot", path: path.to_owned(), source }),
    };
    let bad = |reason: String| LedgerError::Snapshot { path: path.to_owned(), reason };
    let snapshot: SnapshotFile = serde_json::from_slice(&bytes).map_err(|err| bad(err.to_string()))?;
    if snapshot.version != 1 {
        return Err(bad(format!("unsupported version {}", snapshot.version)));
    }
    let count = snapshot.entries.len() as u64;
    for entry in snapshot.entries {
        let kind = if entry.tombstone { OpKind::Del } else { OpKind::Set };
        let value = if entry.tombstone { Value::Null } else { entry.value };
        apply(Op {
            kind,
            key: entry.key,
            value,
            stamp: entry.stamp.into(),
            room: crate::room::Room::DEFAULT,
            by: None,
        });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hlc::Stamp;

    #[test]
    fn encoded_snapshot_loads_back_identically_and_parses_as_upstreams_format() {
        let mut map = LwwMap::new();
        map.apply(Op::set("b", json!({"x": [1, "é"]}), Stamp::new(5, 1, "n1")));
        map.apply(Op::set("a", Value::Null, Stamp::new(6, 0, "n2")));
        map.apply(Op::del("gone", Stamp::new(7, 0, "n1")));
        let bytes = encode(&map, Path::new("data/l.jsonl"));
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["max_stamp"], json!({"p": 7, "l": 0, "n": "n1"}));
        assert_eq!(doc["stats"]["tombstones"], 1);
        assert_eq!(
            doc["entries"][0],
            json!({"key": "a", "value": null, "tombstone": false, "stamp": {"p": 6, "l": 0, "n": "n2"}})
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, &bytes).unwrap();
        let mut loaded = LwwMap::new();
        assert_eq!(
            load(&path, &mut |op| {
                loaded.apply(op);
            })
            .unwrap(),
            3
        );
        assert_eq!(loaded.fingerprint(), map.fingerprint());
    }

    #[test]
    fn empty_map_makes_a_valid_empty_snapshot() {
        let bytes = encode(&LwwMap::new(), Path::new("l"));
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["entries"], json!([]));
        assert_eq!(doc["max_stamp"], Value::Null);
    }
}
