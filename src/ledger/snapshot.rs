//! Upstream's snapshot file (version 1): the whole state, tombstones and stamps included.
//!
//! `{"version":1,"compacted_at":<ns>,"ledger_path":"…","max_stamp":{…}|null,"stats":{…},
//! "entries":[{"key":K,"value":V,"tombstone":bool,"stamp":{p,l,n}},…]}` with entries sorted by key.
//! We write one entry a line (still one JSON document), which upstream's loader reads unchanged.
//!
//! Rooms: `entries`, `max_stamp` and `stats` are the default room's (upstream's one map; upstream
//! uses `max_stamp` as its replay frontier). Named rooms, when there are any, follow under
//! `"rooms":{"<name>":[entries…],…}`, rooms sorted by name, entries in the same shape. Upstream's
//! loader ignores the extra key; a snapshot without named rooms has no `rooms` key at all. An entry
//! whose register was written with a token ends with `"by":"<sub>"`, which upstream ignores too.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use serde_json::Value;

use super::{
    file::LedgerError,
    record::{self, RawStamp},
};
use crate::{
    hlc::wall_clock_ns,
    json::Json,
    lww::{LwwMap, Op, OpKind},
    room::Room,
};

/// Encodes every room's map as a version-1 snapshot of the ledger at `ledger_path` (see the
/// module's notes). `rooms` may come in any order, each room once; a room with no registers is
/// left out, and a missing default room is written as an empty one.
pub fn encode(rooms: &[(Room, LwwMap)], ledger_path: &Path) -> Vec<u8> {
    let mut sorted: Vec<&(Room, LwwMap)> = rooms.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let empty = LwwMap::new();
    let default = sorted.iter().find(|(room, _)| room.is_default()).map_or(&empty, |(_, map)| map);
    let registers: usize = rooms.iter().map(|(_, map)| map.len()).sum();
    let mut out = Vec::with_capacity(64 * registers + 256);
    let tombstones = default.registers().filter(|(_, r)| r.tombstone).count();
    let header = serde_json::json!({
        "version": 1,
        "compacted_at": wall_clock_ns(),
        "ledger_path": ledger_path.display().to_string(),
        "max_stamp": default.max_stamp(),
        "stats": {
            "records_read": default.len(),
            "skipped_corrupt": 0,
            "live_keys": default.len() - tombstones,
            "tombstones": tombstones,
        },
    });
    let header = header.to_string();
    // The header object without its closing brace, then the entries array.
    out.extend_from_slice(&header.as_bytes()[..header.len() - 1]);
    out.extend_from_slice(b",\"entries\":[");
    push_entries(&mut out, default);
    out.extend_from_slice(b"\n]");
    let mut named = sorted.iter().filter_map(|(room, map)| Some((room.name()?, map))).filter(|(_, m)| !m.is_empty());
    if let Some((name, map)) = named.next() {
        out.extend_from_slice(b",\"rooms\":{\n");
        push_json(&mut out, name);
        out.extend_from_slice(b":[");
        push_entries(&mut out, map);
        out.extend_from_slice(b"\n]");
        for (name, map) in named {
            out.extend_from_slice(b",\n");
            push_json(&mut out, name);
            out.extend_from_slice(b":[");
            push_entries(&mut out, map);
            out.extend_from_slice(b"\n]");
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}\n");
    out
}

/// Appends `map`'s registers as snapshot entries, one a line, comma-separated.
fn push_entries(out: &mut Vec<u8>, map: &LwwMap) {
    for (i, (key, register)) in map.registers().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        out.extend_from_slice(b"{\"key\":");
        push_json(out, key);
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(register.value.as_str().as_bytes());
        out.extend_from_slice(if register.tombstone {
            b",\"tombstone\":true,\"stamp\":"
        } else {
            b",\"tombstone\":false,\"stamp\":"
        });
        record::encode_stamp(&register.stamp, out);
        if let Some(by) = &register.by {
            out.extend_from_slice(b",\"by\":");
            push_json(out, &**by);
        }
        out.push(b'}');
    }
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // A string always serializes into a Vec.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[derive(Deserialize)]
struct SnapshotFile {
    version: Value,
    #[serde(default)]
    entries: Vec<SnapshotEntry>,
    /// Named rooms' entries (ours only; upstream's snapshots have none).
    #[serde(default)]
    rooms: BTreeMap<String, Vec<SnapshotEntry>>,
}

#[derive(Deserialize)]
struct SnapshotEntry {
    key: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    tombstone: bool,
    stamp: RawStamp,
    /// Who wrote it (ours only; upstream ignores the field).
    #[serde(default)]
    by: Option<String>,
}

impl SnapshotEntry {
    fn into_op(self, room: Room) -> Op {
        let kind = if self.tombstone { OpKind::Del } else { OpKind::Set };
        let value = if self.tombstone { Json::null() } else { Json::from_value(&self.value) };
        let by = self.by.filter(|by| !by.is_empty()).map(std::sync::Arc::from);
        Op { kind, key: self.key, value, stamp: self.stamp.into(), room, by }
    }
}

/// Loads a snapshot file (version 1, ours or upstream's) if it exists, feeding every entry to
/// `apply` as an op of its room; returns how many entries it had (every room's).
///
/// A room under `rooms` whose name is not a valid room name makes the whole file unloadable
/// ([`LedgerError::Snapshot`]), as any other damage does: booting without it could lose state.
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
    let rooms = snapshot
        .rooms
        .into_iter()
        .map(|(name, entries)| Ok((Room::parse(&name).map_err(|_| bad(format!("bad room name {name:?}")))?, entries)))
        .collect::<Result<Vec<_>, LedgerError>>()?;
    let mut count = snapshot.entries.len() as u64;
    for entry in snapshot.entries {
        apply(entry.into_op(Room::DEFAULT));
    }
    for (room, entries) in rooms {
        count += entries.len() as u64;
        for entry in entries {
            apply(entry.into_op(room.clone()));
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hlc::Stamp;

    fn default_only(map: &LwwMap) -> Vec<(Room, LwwMap)> {
        vec![(Room::DEFAULT, map.clone())]
    }

    #[test]
    fn encoded_snapshot_loads_back_identically_and_parses_as_upstreams_format() {
        let mut map = LwwMap::new();
        map.apply(Op::set("b", json!({"x": [1, "é"]}), Stamp::new(5, 1, "n1")));
        map.apply(Op::set("a", Value::Null, Stamp::new(6, 0, "n2")));
        map.apply(Op::del("gone", Stamp::new(7, 0, "n1")));
        map.apply(Op::set("mine", json!(2), Stamp::new(4, 0, "n1")).by(Some("alice".into())));
        let bytes = encode(&default_only(&map), Path::new("data/l.jsonl"));
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["max_stamp"], json!({"p": 7, "l": 0, "n": "n1"}));
        assert_eq!(doc["stats"]["tombstones"], 1);
        assert_eq!(
            doc["entries"][0],
            json!({"key": "a", "value": null, "tombstone": false, "stamp": {"p": 6, "l": 0, "n": "n2"}})
        );
        assert_eq!(doc["entries"][3]["by"], "alice", "the author survives compaction: {}", doc["entries"][3]);
        assert!(doc.get("rooms").is_none(), "no named rooms: upstream's exact shape");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, &bytes).unwrap();
        let mut loaded = LwwMap::new();
        assert_eq!(
            load(&path, &mut |op| {
                assert!(op.room.is_default());
                loaded.apply(op);
            })
            .unwrap(),
            4
        );
        assert_eq!(loaded.fingerprint(), map.fingerprint());
        assert_eq!(loaded.register("mine").unwrap().by.as_deref(), Some("alice"));
    }

    #[test]
    fn empty_map_makes_a_valid_empty_snapshot() {
        for rooms in [vec![], default_only(&LwwMap::new()), vec![(Room::parse("r").unwrap(), LwwMap::new())]] {
            let bytes = encode(&rooms, Path::new("l"));
            let doc: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(doc["entries"], json!([]));
            assert_eq!(doc["max_stamp"], Value::Null);
            assert!(doc.get("rooms").is_none());
        }
    }

    #[test]
    fn named_rooms_go_under_rooms_and_load_into_their_rooms() {
        let (a, b) = (Room::parse("a.room").unwrap(), Room::parse("b:room").unwrap());
        let mut default = LwwMap::new();
        default.apply(Op::set("k", json!(1), Stamp::new(5, 0, "n")));
        let mut in_a = LwwMap::new();
        in_a.apply(Op::set("k", json!("a"), Stamp::new(50, 0, "n")));
        in_a.apply(Op::del("d", Stamp::new(51, 0, "n")));
        let mut in_b = LwwMap::new();
        in_b.apply(Op::set("x", json!([true]), Stamp::new(9, 2, "m")));
        // Any order in; rooms sorted out, the default room's frontier only.
        let rooms = vec![(b.clone(), in_b.clone()), (Room::DEFAULT, default.clone()), (a.clone(), in_a.clone())];
        let bytes = encode(&rooms, Path::new("l"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.find("\"a.room\"").unwrap() < text.find("\"b:room\"").unwrap(), "{text}");
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["max_stamp"], json!({"p": 5, "l": 0, "n": "n"}));
        assert_eq!(doc["stats"]["live_keys"], 1);
        assert_eq!(doc["entries"].as_array().unwrap().len(), 1);
        assert_eq!(
            doc["rooms"]["a.room"][1],
            json!({"key": "k", "value": "a", "tombstone": false, "stamp": {"p": 50, "l": 0, "n": "n"}})
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, &bytes).unwrap();
        let mut loaded = crate::lww::RoomsReplay::default();
        assert_eq!(
            load(&path, &mut |op| {
                loaded.apply(op);
            })
            .unwrap(),
            4
        );
        let loaded = loaded.finish();
        assert_eq!(loaded.len(), 3);
        for (room, map) in &rooms {
            assert_eq!(loaded[room].fingerprint(), map.fingerprint(), "{room}");
        }
    }

    #[test]
    fn a_bad_room_name_makes_the_snapshot_unloadable() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["_", "_x", "", "a b"] {
            let path = dir.path().join("s.json");
            let doc = json!({"version": 1, "entries": [], "rooms": {name: [
                {"key": "k", "value": 1, "tombstone": false, "stamp": {"p": 1, "l": 0, "n": "n"}}]}});
            std::fs::write(&path, doc.to_string()).unwrap();
            let err = load(&path, &mut |_| panic!("nothing applies from a damaged snapshot")).unwrap_err();
            assert!(err.to_string().contains("bad room name"), "{err}");
        }
    }
}
