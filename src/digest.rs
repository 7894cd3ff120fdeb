//! Bucketed digests of a map, for anti-entropy between nodes.
//!
//! Every register hashes (room, key, stamp, tombstone, value) to 64 bits; a key falls into one of
//! [`BUCKETS`] buckets by the hash of its room and key; one digest covers every room, so rooms
//! cost nothing here and a difference in one room costs only its buckets. The default room hashes
//! its keys alone (as before rooms existed), a named room prefixes its name; a bucket's digest is the XOR of its
//! registers' hashes. XOR makes the digest independent of merge order and cheap to keep current:
//! replacing a register XORs the old hash out and the new one in. Two nodes that exchange their
//! digests learn which buckets differ and send each other only the registers in those, so nodes
//! that are already equal exchange a few kilobytes, and a node that missed a handful of writes
//! gets those buckets, not the whole map.
//!
//! The hash is fixed (FNV-1a, then a 64-bit finaliser), so nodes of different builds agree. It
//! is not a cryptographic hash: it detects divergence between honest nodes, and authenticated
//! peers are trusted with state anyway.
//!
//! Plain Rust: no actix, no I/O.

use crate::{
    hlc::Stamp,
    json::Json,
    lww::{LwwMap, Op, OpKind, Register},
    room::Room,
};

/// Number of buckets: a digest is 4096 numbers (about 80 KiB of JSON). More buckets mean fewer
/// registers sent per differing bucket: two nodes of 100,000 keys that differ in 100 exchange
/// about 2,500 registers, not the 10,000 that 1,024 buckets would cost.
pub const BUCKETS: usize = 4096;

/// FNV-1a over bytes, streamed.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// The hash, mixed so that every input bit moves every output bit (splitmix64's finaliser).
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A hasher that has taken in `room` (nothing for the default room).
fn in_room(room: &Room) -> Fnv {
    let mut h = Fnv::new();
    if let Some(name) = room.name() {
        h.bytes(name.as_bytes()).bytes(&[0xfe]);
    }
    h
}

/// The bucket `key` of `room` belongs to.
pub fn bucket_of(room: &Room, key: &str) -> usize {
    // The modulo keeps the value below BUCKETS, so the cast cannot truncate.
    (in_room(room).bytes(key.as_bytes()).finish() % BUCKETS as u64) as usize
}

/// The hash of the register (`stamp`, `tombstone`, `value`) at `key` of `room`.
pub fn register_hash(room: &Room, key: &str, stamp: &Stamp, tombstone: bool, value: &Json) -> u64 {
    let mut h = in_room(room);
    h.bytes(key.as_bytes())
        .bytes(&[0xff])
        .bytes(&stamp.p.to_le_bytes())
        .bytes(&stamp.l.to_le_bytes())
        .bytes(stamp.n.as_bytes())
        .bytes(&[0xff, u8::from(tombstone)]);
    if !tombstone {
        h.bytes(value.as_str().as_bytes());
    }
    h.finish()
}

/// The hash of the register `op` would write.
pub fn op_hash(op: &Op) -> u64 {
    register_hash(&op.room, &op.key, &op.stamp, op.kind == OpKind::Del, &op.value)
}

/// The digest of a whole map, kept current as registers change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    buckets: Box<[u64]>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { buckets: vec![0; BUCKETS].into_boxed_slice() }
    }
}

impl Digest {
    /// The digest of every register of every room.
    pub fn of<'a>(rooms: impl IntoIterator<Item = (&'a Room, &'a LwwMap)>) -> Digest {
        let mut digest = Digest::default();
        for (room, map) in rooms {
            digest.add(room, map);
        }
        digest
    }

    /// Takes in every register of `map`, the map of `room`; returns the XOR of their hashes
    /// (the room's own fingerprint, see [`room_fingerprint`]).
    pub fn add(&mut self, room: &Room, map: &LwwMap) -> u64 {
        let mut all = 0;
        for (key, register) in map.registers() {
            let hash = hash_of(room, key, register);
            self.buckets[bucket_of(room, key)] ^= hash;
            all ^= hash;
        }
        all
    }

    /// A register at `key` of `room` changed from hash `old` (if it existed) to `new`.
    pub fn replace(&mut self, room: &Room, key: &str, old: Option<u64>, new: u64) {
        self.buckets[bucket_of(room, key)] ^= old.unwrap_or(0) ^ new;
    }

    /// Takes in every register `other` holds (XORs its buckets into these): the digest of two
    /// disjoint sets of registers from the digests of each.
    pub fn absorb(&mut self, other: &Digest) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine ^= theirs;
        }
    }

    /// The buckets, in order.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Buckets whose digest differs from `theirs` (all of them when `theirs` has another length).
    pub fn differing(&self, theirs: &[u64]) -> Vec<usize> {
        if theirs.len() != BUCKETS {
            return (0..BUCKETS).collect();
        }
        (0..BUCKETS).filter(|&b| self.buckets[b] != theirs[b]).collect()
    }

    /// One number for the whole map: equal maps give equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for b in self.buckets.iter() {
            h.bytes(&b.to_le_bytes());
        }
        h.finish()
    }
}

/// The hash of a register already in the map of `room`.
pub fn hash_of(room: &Room, key: &str, register: &Register) -> u64 {
    register_hash(room, key, &register.stamp, register.tombstone, &register.value)
}

/// A room's fingerprint from the XOR of its registers' hashes (kept current by the state actor):
/// equal rooms on two nodes give equal fingerprints.
pub fn room_fingerprint(xor: u64) -> u64 {
    Fnv::new().bytes(&xor.to_le_bytes()).finish()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::json;

    use super::*;

    fn op(key: &str, p: u64, value: Option<Value>) -> Op {
        let stamp = Stamp::new(p, 0, "n");
        match value {
            Some(v) => Op::set(key, v, stamp),
            None => Op::del(key, stamp),
        }
    }

    /// Applies `op` to `map` and keeps `digest` current, as the state actor does.
    fn apply(map: &mut LwwMap, digest: &mut Digest, op: Op) {
        let old = map.register(&op.key).map(|r| hash_of(&op.room, &op.key, r));
        let (room, key, new) = (op.room.clone(), op.key.clone(), op_hash(&op));
        if map.apply(op) {
            digest.replace(&room, &key, old, new);
        }
    }

    fn of(map: &LwwMap) -> Digest {
        Digest::of([(&Room::DEFAULT, map)])
    }

    #[test]
    fn incremental_digest_equals_recomputed() {
        let (mut map, mut digest) = (LwwMap::new(), Digest::default());
        for (i, v) in [(1, Some(json!(1))), (2, Some(json!("x"))), (3, None), (4, Some(json!({"a": [1]})))] {
            apply(&mut map, &mut digest, op("k", i, v.clone()));
            apply(&mut map, &mut digest, op(&format!("k{i}"), i, v));
        }
        assert_eq!(digest, of(&map));
    }

    #[test]
    fn any_difference_shows_in_its_bucket() {
        let mut a = LwwMap::new();
        a.apply(op("k", 1, Some(json!(1))));
        let mut b = a.clone();
        b.apply(op("k", 2, Some(json!(1))));
        let differing = of(&a).differing(of(&b).buckets());
        assert_eq!(differing, vec![bucket_of(&Room::DEFAULT, "k")]);
        // Same stamp, other value (only a reused node id produces this): still visible.
        let mut c = LwwMap::new();
        c.apply(op("k", 1, Some(json!(2))));
        assert_ne!(of(&a), of(&c));
        assert_eq!(of(&a).differing(&[0; 3]).len(), BUCKETS);
        // The same register in another room is another register.
        let board = Room::parse("board").unwrap();
        assert_ne!(of(&a), Digest::of([(&board, &a)]));
        assert_eq!(bucket_of(&Room::DEFAULT, "k"), (Fnv::new().bytes(b"k").finish() % BUCKETS as u64) as usize);
    }

    proptest! {
        /// Digests depend on the merged state only, not on the order ops arrived in.
        #[test]
        fn digest_is_order_independent(ops in proptest::collection::vec((0u8..8, 0u64..20, proptest::option::of(0i64..5)), 0..40)) {
            let ops: Vec<Op> = ops.into_iter().map(|(k, p, v)| op(&format!("k{k}"), p, v.map(Value::from))).collect();
            let (mut m1, mut d1) = (LwwMap::new(), Digest::default());
            let (mut m2, mut d2) = (LwwMap::new(), Digest::default());
            for o in ops.iter().cloned() { apply(&mut m1, &mut d1, o); }
            for o in ops.iter().rev().cloned() { apply(&mut m2, &mut d2, o); }
            prop_assert_eq!(&m1, &m2);
            prop_assert_eq!(d1.fingerprint(), d2.fingerprint());
            prop_assert_eq!(d1, of(&m1));
        }
    }
}
