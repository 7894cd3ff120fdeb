//! Bucketed digests of a map, for anti-entropy between nodes.
//!
//! Every register hashes (key, stamp, tombstone, value) to 64 bits; a key falls into one of
//! [`BUCKETS`] buckets by the hash of the key alone; a bucket's digest is the XOR of its
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

use std::io::Write;

use serde_json::Value;

use crate::{
    hlc::Stamp,
    lww::{LwwMap, Op, OpKind, Register},
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

impl Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bucket `key` belongs to.
pub fn bucket_of(key: &str) -> usize {
    // The modulo keeps the value below BUCKETS, so the cast cannot truncate.
    (Fnv::new().bytes(key.as_bytes()).finish() % BUCKETS as u64) as usize
}

/// The hash of the register (`stamp`, `tombstone`, `value`) at `key`.
pub fn register_hash(key: &str, stamp: &Stamp, tombstone: bool, value: &Value) -> u64 {
    let mut h = Fnv::new();
    h.bytes(key.as_bytes())
        .bytes(&[0xff])
        .bytes(&stamp.p.to_le_bytes())
        .bytes(&stamp.l.to_le_bytes())
        .bytes(stamp.n.as_bytes())
        .bytes(&[0xff, u8::from(tombstone)]);
    if !tombstone {
        // Serialising a Value into a hasher cannot fail.
        let _ = serde_json::to_writer(&mut h, value);
    }
    h.finish()
}

/// The hash of the register `op` would write.
pub fn op_hash(op: &Op) -> u64 {
    register_hash(&op.key, &op.stamp, op.kind == OpKind::Del, &op.value)
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
    /// The digest of every register of `map`.
    pub fn of(map: &LwwMap) -> Digest {
        let mut digest = Digest::default();
        for (key, register) in map.registers() {
            digest.buckets[bucket_of(key)] ^= hash_of(key, register);
        }
        digest
    }

    /// A register at `key` changed from hash `old` (if it existed) to `new`.
    pub fn replace(&mut self, key: &str, old: Option<u64>, new: u64) {
        self.buckets[bucket_of(key)] ^= old.unwrap_or(0) ^ new;
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

/// The hash of a register already in a map.
pub fn hash_of(key: &str, register: &Register) -> u64 {
    register_hash(key, &register.stamp, register.tombstone, &register.value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
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
        let old = map.register(&op.key).map(|r| hash_of(&op.key, r));
        let (key, new) = (op.key.clone(), op_hash(&op));
        if map.apply(op) {
            digest.replace(&key, old, new);
        }
    }

    #[test]
    fn incremental_digest_equals_recomputed() {
        let (mut map, mut digest) = (LwwMap::new(), Digest::default());
        for (i, v) in [(1, Some(json!(1))), (2, Some(json!("x"))), (3, None), (4, Some(json!({"a": [1]})))] {
            apply(&mut map, &mut digest, op("k", i, v.clone()));
            apply(&mut map, &mut digest, op(&format!("k{i}"), i, v));
        }
        assert_eq!(digest, Digest::of(&map));
    }

    #[test]
    fn any_difference_shows_in_its_bucket() {
        let mut a = LwwMap::new();
        a.apply(op("k", 1, Some(json!(1))));
        let mut b = a.clone();
        b.apply(op("k", 2, Some(json!(1))));
        let differing = Digest::of(&a).differing(Digest::of(&b).buckets());
        assert_eq!(differing, vec![bucket_of("k")]);
        // Same stamp, other value (only a reused node id produces this): still visible.
        let mut c = LwwMap::new();
        c.apply(op("k", 1, Some(json!(2))));
        assert_ne!(Digest::of(&a), Digest::of(&c));
        assert_eq!(Digest::of(&a).differing(&[0; 3]).len(), BUCKETS);
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
            prop_assert_eq!(d1, Digest::of(&m1));
        }
    }
}
