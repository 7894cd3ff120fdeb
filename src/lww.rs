//! The Last-Writer-Wins map: every key holds the register with the greatest stamp.
//!
//! Deletes are tombstones that stay in the map, so a late write with an older stamp can never
//! resurrect a deleted key. `null` is an ordinary value (upstream could not replay it; we can).
//!
//! Merge is a join on a total order, so any order of any ops, with duplicates, ends in the same map:
//! registers compare by stamp, and in the one case upstream leaves to arrival order (two different
//! ops carrying the same stamp, which only a misconfigured node with a reused id can produce) by
//! tombstone-first and then the value's JSON text. Plain Rust: no actix, no I/O.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
};

use imbl::OrdMap;

use std::sync::Arc;

use crate::{hlc::Stamp, json::Json, room::Room};

/// What an op does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Write `value` (any JSON, `null` included).
    Set,
    /// Delete: leave a tombstone.
    Del,
}

impl OpKind {
    /// The ledger's name for the kind: `"set"` or `"del"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Set => "set",
            OpKind::Del => "del",
        }
    }
}

/// One stamped write, as stored in the ledger and exchanged between nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// Set or delete.
    pub kind: OpKind,
    /// The key; opaque to the server.
    pub key: String,
    /// The value; `null` for deletes.
    pub value: Json,
    /// When and where the op was made.
    pub stamp: Stamp,
    /// The room whose map it writes.
    pub room: Room,
    /// Who wrote it: the `sub` of the writer's token, when it had one (kept in the ledger).
    pub by: Option<Arc<str>>,
}

impl Op {
    /// A set of `key` to `value` at `stamp`, in the default room.
    pub fn set(key: impl Into<String>, value: impl Into<Json>, stamp: Stamp) -> Self {
        Self { kind: OpKind::Set, key: key.into(), value: value.into(), stamp, room: Room::DEFAULT, by: None }
    }

    /// A delete of `key` at `stamp`, in the default room.
    pub fn del(key: impl Into<String>, stamp: Stamp) -> Self {
        Self { kind: OpKind::Del, key: key.into(), value: Json::null(), stamp, room: Room::DEFAULT, by: None }
    }

    /// The same op in `room`.
    #[must_use]
    pub fn in_room(mut self, room: Room) -> Self {
        self.room = room;
        self
    }

    /// The same op, written by `user`.
    #[must_use]
    pub fn by(mut self, user: Option<Arc<str>>) -> Self {
        self.by = user;
        self
    }
}

/// The state of one key: its winning value and stamp, or a tombstone.
#[derive(Clone, Debug, PartialEq)]
pub struct Register {
    /// The value (`null` for tombstones).
    pub value: Json,
    /// Stamp of the op that wrote this register.
    pub stamp: Stamp,
    /// True when the key was deleted.
    pub tombstone: bool,
    /// Who wrote it (the op's `by`), kept so that catch-up, snapshots and replicas still say so.
    pub by: Option<Arc<str>>,
}

impl Register {
    /// The register an op would write.
    pub fn from_op(op: Op) -> (String, Register) {
        let tombstone = op.kind == OpKind::Del;
        let value = if tombstone { Json::null() } else { op.value };
        (op.key, Register { value, stamp: op.stamp, tombstone, by: op.by })
    }

    /// The op that writes this register at `key` of the default room (a delete for a tombstone).
    pub fn to_op(&self, key: &str) -> Op {
        let kind = if self.tombstone { OpKind::Del } else { OpKind::Set };
        Op {
            kind,
            key: key.to_owned(),
            value: self.value.clone(),
            stamp: self.stamp.clone(),
            room: Room::DEFAULT,
            by: self.by.clone(),
        }
    }
}

/// Does a write of (`stamp`, `tombstone`, `value`) beat the register `current`?
///
/// Strictly greater stamps win. Equal stamps fall back to a deterministic order so that merging
/// stays commutative even for conflicting ops that share a stamp.
pub fn beats(stamp: &Stamp, tombstone: bool, value: &Json, current: &Register) -> bool {
    match stamp.cmp(&current.stamp) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => match tombstone.cmp(&current.tombstone) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => {
                !tombstone && !value.same_value(&current.value) && value.as_str() > current.value.as_str()
            }
        },
    }
}

/// Builds an [`LwwMap`] from many ops (a replay at boot): merges into a plain B-tree, which is
/// several times cheaper per op than the persistent one, and builds the persistent map once, from
/// the winners only, at the end.
#[derive(Debug, Default)]
pub struct Replay {
    entries: BTreeMap<String, Register>,
}

impl Replay {
    /// Merges `op`; returns true if it won.
    pub fn apply(&mut self, op: Op) -> bool {
        let current = self.entries.get(&op.key);
        let wins = current.is_none_or(|c| beats(&op.stamp, op.kind == OpKind::Del, &op.value, c));
        if wins {
            let (key, register) = Register::from_op(op);
            self.entries.insert(key, register);
        }
        wins
    }

    /// The map of everything merged.
    pub fn finish(self) -> LwwMap {
        let live = self.entries.values().filter(|r| !r.tombstone).count();
        LwwMap { entries: self.entries.into_iter().collect(), live }
    }
}

/// A [`Replay`] per room: builds every room's map from the ops of one ledger, in any order.
#[derive(Debug, Default)]
pub struct RoomsReplay {
    rooms: HashMap<Room, Replay>,
}

impl RoomsReplay {
    /// Merges `op` into its room's map; returns true if it won.
    pub fn apply(&mut self, op: Op) -> bool {
        match self.rooms.get_mut(&op.room) {
            Some(replay) => replay.apply(op),
            None => self.rooms.entry(op.room.clone()).or_default().apply(op),
        }
    }

    /// Every room's map.
    pub fn finish(self) -> HashMap<Room, LwwMap> {
        self.rooms.into_iter().map(|(room, replay)| (room, replay.finish())).collect()
    }
}

/// A Last-Writer-Wins map from string keys to registers, ordered by key.
///
/// The entries are a persistent B-tree ([`imbl::OrdMap`]): `clone` is O(1) and shares structure,
/// so the state actor can hand a consistent copy of a million keys to a snapshot or compaction
/// thread without pausing. The number of live keys is kept as the map changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LwwMap {
    entries: OrdMap<String, Register>,
    live: usize,
}

impl LwwMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The map of `entries`, sorted by key, each key once (a boot's replay builds it so).
    pub fn from_sorted(entries: Vec<(String, Register)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "sorted, each key once");
        let live = entries.iter().filter(|(_, r)| !r.tombstone).count();
        LwwMap { entries: entries.into_iter().collect(), live }
    }

    /// The map of `entries`, which come sorted by key, each key once.
    pub fn from_sorted_iter(entries: impl IntoIterator<Item = (String, Register)>) -> Self {
        let (mut live, mut last) = (0, None::<String>);
        let entries = entries
            .into_iter()
            .inspect(|(key, r)| {
                if cfg!(debug_assertions) {
                    debug_assert!(last.as_ref().is_none_or(|last| last < key), "sorted, each key once");
                    last = Some(key.clone());
                }
                live += usize::from(!r.tombstone);
            })
            .collect();
        LwwMap { entries, live }
    }

    /// The register for `key`, tombstones included.
    pub fn register(&self, key: &str) -> Option<&Register> {
        self.entries.get(key)
    }

    /// The live value of `key` (`None` if absent or deleted).
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.entries.get(key).filter(|r| !r.tombstone).map(|r| &r.value)
    }

    /// Would `op` change this map?
    pub fn would_win(&self, op: &Op) -> bool {
        match self.entries.get(&op.key) {
            None => true,
            Some(current) => beats(&op.stamp, op.kind == OpKind::Del, &op.value, current),
        }
    }

    /// Merges `op`; returns true if it won (the map changed).
    pub fn apply(&mut self, op: Op) -> bool {
        if !self.would_win(&op) {
            return false;
        }
        let (key, register) = Register::from_op(op);
        self.put(key, register);
        true
    }

    /// Stores a register that won, keeping the live count.
    fn put(&mut self, key: String, register: Register) {
        let now_live = usize::from(!register.tombstone);
        let was_live = self.entries.insert(key, register).map_or(0, |old| usize::from(!old.tombstone));
        self.live = self.live + now_live - was_live;
    }

    /// Merges a whole register (from a snapshot file); returns true if it won.
    pub fn apply_register(&mut self, key: String, register: Register) -> bool {
        let wins = match self.entries.get(&key) {
            None => true,
            Some(current) => beats(&register.stamp, register.tombstone, &register.value, current),
        };
        if wins {
            self.put(key, register);
        }
        wins
    }

    /// Live (non-deleted) entries in key order; `null` values included.
    pub fn live(&self) -> impl Iterator<Item = (&String, &Json)> {
        self.entries.iter().filter(|(_, r)| !r.tombstone).map(|(k, r)| (k, &r.value))
    }

    /// Every register, tombstones included, in key order.
    pub fn registers(&self) -> impl Iterator<Item = (&String, &Register)> {
        self.entries.iter()
    }

    /// Number of live keys.
    pub fn live_len(&self) -> usize {
        self.live
    }

    /// Number of registers, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map holds no register at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registers written by `node` and stamped after `after` (all of them when `None`), as
    /// ops in stamp order: what a node must (re)publish after an outage or a crash.
    pub fn written_by(&self, node: &str, after: Option<&Stamp>) -> Vec<Op> {
        let mut ops: Vec<Op> = self
            .registers()
            .filter(|(_, r)| r.stamp.n == node && after.is_none_or(|after| r.stamp > *after))
            .map(|(key, r)| r.to_op(key))
            .collect();
        ops.sort_by(|a, b| a.stamp.cmp(&b.stamp));
        ops
    }

    /// The greatest stamp in the map.
    pub fn max_stamp(&self) -> Option<&Stamp> {
        self.entries.values().map(|r| &r.stamp).max()
    }

    /// A canonical byte encoding of the whole map (keys, stamps, tombstones, values), for
    /// comparing replicas: equal maps give equal bytes.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, r) in &self.entries {
            let line = serde_json::json!([key, r.stamp, r.tombstone, r.value]);
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::json;

    use super::*;

    fn st(p: u64, n: &str) -> Stamp {
        Stamp::new(p, 0, n)
    }

    #[test]
    fn newer_write_wins_older_is_ignored() {
        let mut map = LwwMap::new();
        assert!(map.apply(Op::set("k", json!(1), st(2, "a"))));
        assert!(!map.apply(Op::set("k", json!(0), st(1, "a"))));
        assert_eq!(map.get("k"), Some(&Json::from(json!(1))));
    }

    #[test]
    fn tombstone_beats_older_write_and_stays() {
        let mut map = LwwMap::new();
        map.apply(Op::del("k", st(5, "a")));
        assert!(!map.apply(Op::set("k", json!("late"), st(4, "b"))));
        assert_eq!(map.get("k"), None);
        assert!(map.register("k").is_some_and(|r| r.tombstone));
        assert!(map.apply(Op::set("k", json!("new"), st(6, "b"))));
        assert_eq!(map.get("k"), Some(&Json::from(json!("new"))));
    }

    #[test]
    fn equal_physical_and_logical_tie_breaks_by_node_id() {
        let mut ab = LwwMap::new();
        ab.apply(Op::set("k", json!("from a"), st(7, "a")));
        ab.apply(Op::set("k", json!("from b"), st(7, "b")));
        let mut ba = LwwMap::new();
        ba.apply(Op::set("k", json!("from b"), st(7, "b")));
        ba.apply(Op::set("k", json!("from a"), st(7, "a")));
        assert_eq!(ab.get("k"), Some(&Json::from(json!("from b"))));
        assert_eq!(ab, ba);
    }

    #[test]
    fn null_is_a_live_value() {
        let mut map = LwwMap::new();
        map.apply(Op::set("k", Value::Null, st(1, "a")));
        assert_eq!(map.get("k"), Some(&Json::null()));
        assert_eq!(map.live().count(), 1);
    }

    #[test]
    fn same_stamp_conflict_resolves_identically_in_both_orders() {
        let x = Op::set("k", json!("x"), st(3, "a"));
        let y = Op::set("k", json!("y"), st(3, "a"));
        let d = Op::del("k", st(3, "a"));
        for ops in [[&x, &y, &d], [&d, &y, &x], [&y, &d, &x]] {
            let mut map = LwwMap::new();
            for op in ops {
                map.apply((*op).clone());
            }
            assert!(map.register("k").is_some_and(|r| r.tombstone));
        }
        let mut m1 = LwwMap::new();
        m1.apply(x.clone());
        m1.apply(y.clone());
        let mut m2 = LwwMap::new();
        m2.apply(y);
        m2.apply(x);
        assert_eq!(m1.fingerprint(), m2.fingerprint());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-c]{0,3}".prop_map(Value::from),
            prop::collection::vec(any::<u8>(), 0..3).prop_map(|v| json!(v)),
        ]
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        ("[a-d]", 0u64..6, 0u64..3, prop::sample::select(vec!["n1", "n2", "n3"]), any::<bool>(), arb_value()).prop_map(
            |(key, p, l, n, del, value)| {
                let stamp = Stamp::new(p, l, n);
                if del { Op::del(key, stamp) } else { Op::set(key, value, stamp) }
            },
        )
    }

    proptest! {
        /// Any permutation of any ops, with any duplicates, yields byte-identical maps.
        #[test]
        fn merge_converges_in_any_order_with_duplicates(
            ops in prop::collection::vec(arb_op(), 0..40),
            seed in any::<u64>(),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut reference = LwwMap::new();
            for op in &ops {
                reference.apply(op.clone());
            }
            let mut shuffled: Vec<Op> = ops.clone();
            for idx in &dups {
                if !ops.is_empty() {
                    shuffled.push(ops[idx.index(ops.len())].clone());
                }
            }
            // Deterministic Fisher-Yates from the seed.
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                let j = (state % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let mut other = LwwMap::new();
            for op in shuffled {
                other.apply(op);
            }
            prop_assert_eq!(reference.fingerprint(), other.fingerprint());
            // The live count kept on every change equals a count of the entries.
            prop_assert_eq!(other.live_len(), other.registers().filter(|(_, r)| !r.tombstone).count());
            // A boot's replay (a plain B-tree, then the persistent map) merges the same way.
            let mut replay = Replay::default();
            for op in &ops {
                replay.apply(op.clone());
            }
            let replayed = replay.finish();
            prop_assert_eq!(replayed.fingerprint(), reference.fingerprint());
            prop_assert_eq!(replayed.live_len(), reference.live_len());
        }

        /// The winner of every key is the op with the greatest stamp written to it.
        #[test]
        fn winner_has_the_greatest_stamp(ops in prop::collection::vec(arb_op(), 1..40)) {
            let mut map = LwwMap::new();
            for op in &ops {
                map.apply(op.clone());
            }
            for (key, reg) in map.registers() {
                let max = ops.iter().filter(|o| &o.key == key).map(|o| &o.stamp).max();
                prop_assert_eq!(Some(&reg.stamp), max);
            }
        }
    }
}
