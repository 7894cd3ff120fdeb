//! Boot's replay: the snapshot file and the ledger read into every room's map, on every core, and
//! exactly as strictly as [`Ledger::open`](super::Ledger::open) reads them record by record.
//!
//! What makes it fast, and why each step reads the same:
//! - A line in exactly the layout we (and upstream) write is read by matching that layout
//!   ([`Fast`]); any other line, or one that layout could misread, goes through `serde`.
//! - A line is decoded with borrowed fields: key, room and node id point into the read buffer,
//!   and the value stays its JSON text. A value is kept as canonical text ([`Json`]: what
//!   `serde_json` writes for it), so a value whose text is canonical already
//!   ([`json::is_canonical`], which checks its syntax too) is copied, never parsed: per key,
//!   overwritten in place (no allocation once a key has a winner), and into the winner's
//!   register at the end. Any other value (whitespace, another escape or number form, a key
//!   twice) makes the line go through [`record::decode`], the record-by-record path, which
//!   parses it and writes it canonical, so a line is corrupt here exactly when it is there.
//! - The winners per key sit in a hash table during replay; the sorted persistent map is built
//!   once, from the winners: every core sorts a share of them and makes their registers in runs,
//!   which one thread merges into the map as they come ([`build`]).
//! - The ledger is read in windows of [`WINDOW`] bytes cut at newlines. Every core reads every
//!   line of a window and takes those whose key it owns (a fixed hash of room and key, read from
//!   the line's start without decoding it: [`route`]), in file order, into its own tables; so no
//!   key is in two cores' tables and they join without a lookup, and each core's table is a
//!   fraction of the whole, kinder to its cache. A line whose key cannot be read so is taken by
//!   one core by line number into a part of its own, merged into the key's owner at the end.
//!   Merging is a join on a total order (stamp, then tombstone first, then the value's JSON
//!   text: [`lww::beats`](crate::lww::beats)), so the order of merging cannot change the result.
//!   Corrupt lines are counted by the core that took them and named with their line number in
//!   the whole file; the torn last line is found before the cores start and cut as before.
//! - A snapshot laid out as ours are (one entry a line, keys unique and sorted) is read line by
//!   line on every core, in windows like the ledger, each value checked once where it is read; its
//!   keys are indexed only if a ledger line needs them. A file that deviates from that layout
//!   anywhere (upstream's indented ones, a hand-edited one, a damaged one) is read whole, as one
//!   JSON document, as before, which decides what is accepted and how a refusal is worded.
//! - The digest (see [`crate::digest`]) is made while the maps are built, on every core, and
//!   handed to the state with them.
//!
//! Plain Rust and blocking I/O, run before anything is served.

use std::{
    borrow::Cow,
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    fs::File,
    os::unix::fs::FileExt,
    path::Path,
    sync::Arc,
};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Value, value::RawValue};

use super::{
    file::{LedgerError, ReplayStats},
    record::{self, RecordError, lenient_u64},
};
use crate::{
    digest::{self, Digest},
    hlc::Stamp,
    json::{self, Json},
    lww::{LwwMap, Register},
    room::Room,
};

/// Bytes of ledger read (and shared by the cores) at a time.
const WINDOW: usize = 32 << 20;
/// A ledger (or a snapshot's body) smaller than this is read on one core: threads would cost
/// more than they save.
const MIN_SPLIT: usize = 1 << 20;
/// Deepest nesting of a snapshot value read by lines (`serde_json` stops at 128, the
/// document's own nesting included, which a value read alone would not count).
const MAX_DEPTH: usize = 64;
/// Registers of one room below which they are made on one core.
const PARALLEL_BUILD: usize = 1 << 14;
/// Corrupt lines named in the log (as record-by-record replay does).
const LOGGED_CORRUPT: usize = 10;

/// Every room's map after a boot's replay, and the greatest stamp seen.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Every room that has registers.
    pub rooms: HashMap<Room, LwwMap>,
    /// The greatest stamp of any record or snapshot entry (the clock witnesses it).
    pub newest: Option<Stamp>,
    /// The digest of every room's registers, made while the maps were built (equal to
    /// [`Digest::of`] over `rooms`).
    pub digest: Digest,
    /// Each room's XOR of its registers' hashes (what [`Digest::add`] returns for it).
    pub hashes: HashMap<Room, u64>,
}

/// A ledger line in exactly the layout [`record::encode`] writes, read by matching that layout
/// instead of through `serde`'s field machinery (which cost about a third of the scan):
///
/// `{"kind":"set","key":"K","value":V,"stamp":{"p":P,"l":L,"n":"N"}}`, or `{"room":"R","op":`
/// in place of `{"kind":`, `"del"` in place of `"set"`, and `,"by":"B"` before the last brace.
///
/// Only a line that surely reads the same both ways is taken: every string plain (valid UTF-8,
/// no escape, no control character), P and L plain integers that fit a `u64`, V one complete
/// JSON value in canonical form ([`json::is_canonical`]). Such a line is one JSON object with exactly these fields, so [`Line`] would read the same values
/// from it. Upstream writes this layout too. Anything else (a `\u` escape, whitespace, another
/// field order, a corrupt line) gives `None` and goes through [`Line`] as before, which decides.
struct Fast<'a> {
    room: Option<&'a str>,
    key: &'a str,
    offer: Offer<'a>,
}

impl<'a> Fast<'a> {
    fn read(line: &'a [u8]) -> Option<Self> {
        let (room, rest) = match line.strip_prefix(b"{\"kind\":\"") {
            Some(rest) => (None, rest),
            None => {
                let (room, rest) = plain_prefix(line.strip_prefix(b"{\"room\":\"")?)?;
                (Some(room), rest.strip_prefix(b",\"op\":\"")?)
            }
        };
        let tombstone = match rest.get(..3)? {
            b"set" => false,
            b"del" => true,
            _ => return None,
        };
        let (key, rest) = plain_prefix(rest[3..].strip_prefix(b"\",\"key\":\"")?)?;
        let rest = rest.strip_prefix(b",\"value\":")?;
        // The rest is read from its end: the author, the stamp, and the value is what is left.
        let (value, (p, l, n), by) = stamp_and_author(rest)?;
        let value = canonical_value(value)?;
        Some(Fast { room, key, offer: Offer { p, l, n, tombstone, value, by } })
    }
}

/// A stamp as a line writes it: physical time, logical counter, node.
type PlainStamp<'a> = (u64, u64, &'a str);

/// The end of a ledger line or snapshot entry in our layout, `,"stamp":{"p":P,"l":L,"n":"N"}`,
/// then `,"by":"B"` if there is an author, and the closing brace: (what precedes, the stamp,
/// the author; an empty one is none). Strings plain, integers plain and within `u64`.
fn stamp_and_author(rest: &[u8]) -> Option<(&[u8], PlainStamp<'_>, Option<&str>)> {
    let mut rest = rest.strip_suffix(b"}")?;
    let mut by = None;
    if let Some(body) = rest.strip_suffix(b"\"") {
        let (before, text) = plain_suffix(body)?;
        by = Some(text).filter(|by| !by.is_empty());
        rest = before.strip_suffix(b",\"by\":")?;
    }
    let (before, n) = plain_suffix(rest.strip_suffix(b"\"}")?)?;
    let (before, l) = integer_suffix(before.strip_suffix(b",\"n\":")?)?;
    let (before, p) = integer_suffix(before.strip_suffix(b",\"l\":")?)?;
    Some((before.strip_suffix(b",\"stamp\":{\"p\":")?, (p, l, n), by))
}

/// `bytes` as a value read raw: one complete JSON value, canonical ([`json::is_canonical`]:
/// exactly what `serde_json` writes for the value it holds, so it needs no parse).
fn canonical_value(bytes: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(bytes).ok()?;
    json::is_canonical(value).then_some(value)
}

/// A snapshot entry in exactly the layout [`super::snapshot::encode`] writes, read by matching
/// it, as [`Fast`] reads a ledger line: `{"key":"K","value":V,"tombstone":T,"stamp":{"p":P,
/// "l":L,"n":"N"}}`, with `,"by":"B"` before the last brace if there is an author. Every string
/// plain, the integers plain within `u64`, V one JSON value in canonical form
/// ([`json::is_canonical`]): such an entry is one JSON object with exactly these fields, so
/// [`SnapshotEntry`] would read the same from it. Anything else is `None`, and goes through
/// [`SnapshotEntry`] as before.
struct FastEntry<'a> {
    key: &'a str,
    value: &'a str,
    tombstone: bool,
    stamp: PlainStamp<'a>,
    by: Option<&'a str>,
}

impl<'a> FastEntry<'a> {
    fn read(line: &'a [u8]) -> Option<Self> {
        let (key, rest) = plain_prefix(line.strip_prefix(b"{\"key\":\"")?)?;
        let rest = rest.strip_prefix(b",\"value\":")?;
        let (before, stamp, by) = stamp_and_author(rest)?;
        let (value, tombstone) = match before.strip_suffix(b",\"tombstone\":false") {
            Some(value) => (value, false),
            None => (before.strip_suffix(b",\"tombstone\":true")?, true),
        };
        Some(FastEntry { key, value: canonical_value(value)?, tombstone, stamp, by })
    }
}

/// Is `bytes` the text of a JSON string without escapes, that is, valid UTF-8 without `"`, `\`
/// or control characters?
fn plain(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// `bytes` starts with a plain string's text and its closing quote: (the text, what follows).
fn plain_prefix(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = memchr::memchr(b'"', bytes)?;
    Some((plain(&bytes[..end])?, &bytes[end + 1..]))
}

/// `bytes` ends with a plain string's opening quote and text: (what precedes, the text).
fn plain_suffix(bytes: &[u8]) -> Option<(&[u8], &str)> {
    let start = memchr::memrchr(b'"', bytes)?;
    Some((&bytes[..start], plain(&bytes[start + 1..])?))
}

/// `bytes` ends with a JSON integer (no sign, no leading zero) that fits a `u64`: (what
/// precedes, the integer).
fn integer_suffix(bytes: &[u8]) -> Option<(&[u8], u64)> {
    let digits = bytes.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let start = bytes.len() - digits;
    let text = &bytes[start..];
    if digits == 0 || (digits > 1 && text[0] == b'0') {
        return None;
    }
    let n = text.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
    Some((&bytes[..start], n))
}

/// The register one key holds during replay.
#[derive(Debug)]
struct Winner {
    p: u64,
    l: u64,
    n: Arc<str>,
    tombstone: bool,
    /// The value's canonical text (empty for a tombstone).
    value: String,
    by: Option<Arc<str>>,
}

/// What a line or a snapshot entry offers a key.
struct Offer<'a> {
    p: u64,
    l: u64,
    n: &'a str,
    tombstone: bool,
    /// The value's canonical text.
    value: &'a str,
    by: Option<&'a str>,
}

impl Winner {
    fn offer(&self) -> Offer<'_> {
        Offer {
            p: self.p,
            l: self.l,
            n: &self.n,
            tombstone: self.tombstone,
            value: &self.value,
            by: self.by.as_deref(),
        }
    }
}

/// Does `offer` beat `current`? The same order as [`crate::lww::beats`]: stamp, then tombstone
/// first, then (equal stamps, both live, different values) the greater JSON text.
///
/// Sets `ambiguous` when neither beats the other yet they differ (equal stamps and equal values
/// with different authors, or values equal as JSON but written with their keys in another
/// order): then which one stays depends on the order of the lines, and only a replay in file
/// order gives what record-by-record replay gives.
fn beats(offer: &Offer<'_>, current: &Winner, ambiguous: &mut bool) -> bool {
    match (offer.p, offer.l, offer.n).cmp(&(current.p, current.l, &*current.n)) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => match offer.tombstone.cmp(&current.tombstone) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal if offer.tombstone => {
                *ambiguous |= offer.by != current.by.as_deref();
                false
            }
            Ordering::Equal => {
                let (ours, theirs) = (offer.value, current.value.as_str());
                if json::same_value(ours, theirs) {
                    *ambiguous |= offer.by != current.by.as_deref() || ours != theirs;
                    false
                } else {
                    ours > theirs
                }
            }
        },
    }
}

/// Shares one `Arc<str>` per distinct node id or author.
#[derive(Debug, Default)]
struct Interner {
    last: Option<Arc<str>>,
    all: HashSet<Arc<str>, Hasher>,
}

impl Interner {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(last) = self.last.as_ref().filter(|last| &***last == text) {
            return Arc::clone(last);
        }
        let shared = match self.all.get(text) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = Arc::from(text);
                self.all.insert(Arc::clone(&shared));
                shared
            }
        };
        self.last = Some(Arc::clone(&shared));
        shared
    }
}

/// The hash tables' hasher: seeded per table (keys come from clients), cheap on short keys.
type Hasher = foldhash::quality::RandomState;

/// One room's winners: keys in first-seen order, indexed by a hash table.
///
/// A snapshot's keys come unique and sorted: they wait in `unindexed` (slot order) and go into
/// the index only when a ledger line needs to look one up, so a boot from a snapshot alone never
/// builds one. The parts' tables, joined, wait there too (unique, not sorted). Either
/// `unindexed` or `index` is empty.
#[derive(Debug, Default)]
struct Table {
    index: HashMap<String, usize, Hasher>,
    unindexed: Vec<String>,
    winners: Vec<Winner>,
}

impl Table {
    /// The index, with every key in it.
    fn index(&mut self) -> &mut HashMap<String, usize, Hasher> {
        if !self.unindexed.is_empty() {
            self.index.reserve(self.unindexed.len());
            for (at, key) in self.unindexed.drain(..).enumerate() {
                self.index.insert(key, at);
            }
        }
        &mut self.index
    }

    /// The keys in the order of their slots.
    fn into_keys(self) -> (Vec<String>, Vec<Winner>) {
        if self.index.is_empty() {
            return (self.unindexed, self.winners);
        }
        let mut keys = vec![String::new(); self.index.len()];
        for (key, at) in self.index {
            keys[at] = key;
        }
        (keys, self.winners)
    }
}

/// Every room's table.
#[derive(Debug, Default)]
struct Tables {
    default: Table,
    named: HashMap<String, (Room, Table), Hasher>,
}

impl Tables {
    /// Every room's table, the default room's (named `None`) first.
    fn into_rooms(self) -> impl Iterator<Item = (Option<String>, Table)> {
        std::iter::once((None, self.default))
            .chain(self.named.into_iter().map(|(name, (_, table))| (Some(name), table)))
    }

    /// The table of the room named `name` (the default room for `None`), or why it is not a room.
    fn get(&mut self, name: Option<&str>) -> Result<&mut Table, RecordError> {
        let Some(name) = name else { return Ok(&mut self.default) };
        if !self.named.contains_key(name) {
            let room = Room::parse(name).map_err(|_| RecordError::Room)?;
            self.named.insert(name.to_owned(), (room, Table::default()));
        }
        // Just made sure it is there.
        self.named.get_mut(name).map(|(_, table)| table).ok_or(RecordError::Room)
    }
}

/// The tables of one part of the replay (one core's), every room's.
#[derive(Debug, Default)]
struct Part {
    tables: Tables,
    nodes: Interner,
    users: Interner,
    /// Two lines met whose order decides (see [`beats`]).
    ambiguous: bool,
}

impl Part {
    /// Merges `offer` at `key` of the room named `room`.
    fn merge(&mut self, room: Option<&str>, key: &str, offer: &Offer<'_>) -> Result<(), RecordError> {
        let table = self.tables.get(room)?;
        match table.index().get(key) {
            Some(&at) => {
                let current = &mut table.winners[at];
                if beats(offer, current, &mut self.ambiguous) {
                    current.p = offer.p;
                    current.l = offer.l;
                    if &*current.n != offer.n {
                        current.n = self.nodes.get(offer.n);
                    }
                    current.tombstone = offer.tombstone;
                    // The text's buffer is reused: no allocation once a key has a winner.
                    current.value.clear();
                    if !offer.tombstone {
                        current.value.push_str(offer.value);
                    }
                    current.by = match (offer.by, current.by.as_deref()) {
                        (None, _) => None,
                        (Some(new), Some(old)) if new == old => current.by.take(),
                        (Some(new), _) => Some(self.users.get(new)),
                    };
                }
            }
            None => {
                let winner = Winner {
                    p: offer.p,
                    l: offer.l,
                    n: self.nodes.get(offer.n),
                    tombstone: offer.tombstone,
                    value: if offer.tombstone { String::new() } else { offer.value.to_owned() },
                    by: offer.by.map(|by| self.users.get(by)),
                };
                table.index.insert(key.to_owned(), table.winners.len());
                table.winners.push(winner);
            }
        }
        Ok(())
    }

    /// Moves every entry of `parts[0]` (the snapshot's) to the part that owns its key.
    fn distribute(parts: &mut [Part]) {
        let of = parts.len();
        let Some((first, _)) = parts.split_first_mut() else { return };
        let tables = std::mem::take(&mut first.tables);
        for (name, table) in tables.into_rooms() {
            let room = name.as_deref().unwrap_or_default().as_bytes();
            let (keys, winners) = table.into_keys();
            for (key, winner) in keys.into_iter().zip(winners) {
                let part = &mut parts[owner(key_hash(room, key.as_bytes()), of)];
                // The room was valid where it was read. Each key goes to one part, in the order
                // they came (sorted, for a snapshot of ours).
                if let Ok(table) = part.tables.get(name.as_deref()) {
                    table.unindexed.push(key);
                    table.winners.push(winner);
                }
            }
        }
    }

    /// One part of `parts`, whose keys are their owners' (no key in two), and of `strays`, the
    /// lines no owner could be told for, merged into the owners' tables first.
    fn join(mut parts: Vec<Part>, strays: Vec<Part>) -> Part {
        let of = parts.len();
        for stray in strays {
            for (name, table) in stray.tables.into_rooms() {
                let room = name.as_deref().unwrap_or_default().as_bytes();
                let (keys, winners) = table.into_keys();
                for (key, winner) in keys.into_iter().zip(winners) {
                    let part = &mut parts[owner(key_hash(room, key.as_bytes()), of)];
                    part.ambiguous |= stray.ambiguous;
                    // The room was valid in the stray part: it is valid here.
                    let _ = part.merge(name.as_deref(), &key, &winner.offer());
                }
            }
        }
        let mut parts = parts.into_iter();
        let mut joined = parts.next().unwrap_or_default();
        for part in parts {
            joined.ambiguous |= part.ambiguous;
            for (name, table) in part.tables.into_rooms().filter(|(_, table)| !table.winners.is_empty()) {
                let (keys, winners) = table.into_keys();
                // The room was valid in its part: it is valid here.
                if let Ok(into) = joined.tables.get(name.as_deref()) {
                    let (mut all, mut all_winners) = std::mem::take(into).into_keys();
                    all.extend(keys);
                    all_winners.extend(winners);
                    *into = Table { index: HashMap::default(), unindexed: all, winners: all_winners };
                }
            }
        }
        joined
    }

    /// Merges one ledger line; `Err` when it is not a record (the line is then skipped).
    fn line(&mut self, line: &[u8]) -> Result<(), RecordError> {
        if let Some(fast) = Fast::read(line) {
            return self.merge(fast.room, fast.key, &fast.offer);
        }
        let raw: Line<'_> = serde_json::from_slice(line)?;
        let (kind, room) = match (raw.kind, raw.room, raw.op) {
            (Some(kind), ..) => (kind, None),
            (None, Some(room), Some(kind)) => {
                let _ = self.tables.get(Some(&room))?;
                (kind, Some(room))
            }
            _ => return Err(RecordError::Room),
        };
        let tombstone = match &*kind {
            "set" => false,
            "del" => true,
            _ => return Err(RecordError::Kind(kind.into_owned())),
        };
        let mut offer = Offer {
            p: raw.stamp.p,
            l: raw.stamp.l,
            n: &raw.stamp.n,
            tombstone,
            value: "null",
            by: raw.by.as_deref().filter(|by| !by.is_empty()),
        };
        let parsed;
        match raw.value {
            Some(value) if !json::is_canonical(value.get()) => {
                // Not canonical: the record-by-record decoder decides, and writes it canonical.
                parsed = record::decode(line)?.value;
                offer.value = parsed.as_str();
            }
            Some(value) => offer.value = value.get(),
            None => {}
        }
        self.merge(room.as_deref(), &raw.key, &offer)
    }

    /// The maps of every room, each built once from its winners.
    fn finish(self) -> Replayed {
        // Each key's winner has the greatest stamp of its key: the greatest of the winners' is
        // the greatest of every line's.
        let newest = std::iter::once(&self.tables.default)
            .chain(self.tables.named.values().map(|(_, table)| table))
            .flat_map(|table| &table.winners)
            .max_by(|a, b| (a.p, a.l, &a.n).cmp(&(b.p, b.l, &b.n)))
            .map(|w| Stamp { p: w.p, l: w.l, n: String::from(&*w.n) });
        let (mut rooms, mut hashes, mut digest) = (HashMap::new(), HashMap::new(), Digest::default());
        let tables = std::iter::once((Room::DEFAULT, self.tables.default)).chain(self.tables.named.into_values());
        for (room, table) in tables {
            if !table.winners.is_empty() {
                let (map, xor) = build(&room, table, &mut digest, cores());
                hashes.insert(room.clone(), xor);
                rooms.insert(room, map);
            }
        }
        Replayed { rooms, newest, digest, hashes }
    }
}

/// Entries of a map, sorted by key.
type Run = Vec<(String, Register)>;

/// Entries a core hands over at a time: small, so that the map starts early.
const RUN: usize = 2048;

/// Keys and their winners that one core makes registers of.
type Share<'a> = (&'a mut [String], &'a mut [Winner]);

/// The persistent map of one room's winners: registers made and hashed into `digest` on every
/// core, entries sorted by key. Returns the map and the XOR of its registers' hashes.
///
/// Each core takes a share of the winners, sorts it by key (a snapshot's come sorted) and makes
/// its registers in that order, a run at a time; this thread merges the cores' runs into the
/// persistent map as they come, one key at a time (the map has no bulk constructor).
fn build(room: &Room, table: Table, digest: &mut Digest, cores: usize) -> (LwwMap, u64) {
    let (mut keys, mut winners) = table.into_keys();
    // Each core takes its keys and winners out of place (leaving empty strings and values,
    // which cost no allocation) and makes their registers.
    let convert = |key: &mut String, winner: &mut Winner, digest: &mut Digest, xor: &mut u64| {
        let made = Register {
            value: if winner.tombstone { Json::null() } else { Json::trusted(&std::mem::take(&mut winner.value)) },
            stamp: Stamp { p: winner.p, l: winner.l, n: String::from(&*winner.n) },
            tombstone: winner.tombstone,
            by: winner.by.take(),
        };
        let key = std::mem::take(key);
        let hash = digest::hash_of(room, &key, &made);
        digest.replace(room, &key, None, hash);
        *xor ^= hash;
        (key, made)
    };
    // Small rooms (there may be thousands) are not worth a thread each.
    if winners.len() < PARALLEL_BUILD || cores == 1 {
        let mut xor = 0;
        let mut entries: Run = keys
            .iter_mut()
            .zip(winners.iter_mut())
            .map(|(key, winner)| convert(key, winner, digest, &mut xor))
            .collect();
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        return (LwwMap::from_sorted(entries), xor);
    }
    // Keys in first-seen order: every core sorts and converts one share. Keys sorted (a
    // snapshot's, or a ledger written in key order): converting is cheap and the map is the
    // bound, so one core fewer makes the runs, round robin, and none takes time from the map.
    let sorted = keys.is_sorted_by(|a, b| a < b);
    let makers = if sorted { cores - 1 } else { cores };
    let size = if sorted { RUN } else { winners.len().div_ceil(makers) };
    let mut shares: Vec<Vec<Share<'_>>> = (0..makers).map(|_| Vec::new()).collect();
    for (i, share) in keys.chunks_mut(size).zip(winners.chunks_mut(size)).enumerate() {
        shares[i % makers].push(share);
    }
    let convert = &convert;
    let (map, done) = std::thread::scope(|s| {
        let (handles, queues): (Vec<_>, Vec<_>) = shares
            .into_iter()
            .map(|shares| {
                let (tx, rx) = std::sync::mpsc::channel::<Run>();
                let handle = s.spawn(move || {
                    let (mut digest, mut xor) = (Digest::default(), 0);
                    for (keys, winners) in shares {
                        let mut order: Vec<usize> = (0..keys.len()).collect();
                        if !sorted {
                            order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
                        }
                        for piece in order.chunks(RUN) {
                            let run =
                                piece.iter().map(|&i| convert(&mut keys[i], &mut winners[i], &mut digest, &mut xor));
                            if tx.send(run.collect()).is_err() {
                                return (xor, digest);
                            }
                        }
                    }
                    (xor, digest)
                });
                (handle, Merging { runs: rx, current: Vec::new().into_iter().peekable() })
            })
            .unzip();
        let map = LwwMap::from_sorted_iter(merged(queues));
        let done: Vec<(u64, Digest)> = handles.into_iter().map(joined).collect();
        (map, done)
    });
    let mut xor = 0;
    for (part, part_digest) in done {
        xor ^= part;
        digest.absorb(&part_digest);
    }
    (map, xor)
}

/// One core's runs, as [`merged`] takes them.
struct Merging {
    runs: std::sync::mpsc::Receiver<Run>,
    current: std::iter::Peekable<std::vec::IntoIter<(String, Register)>>,
}

impl Merging {
    /// The next entry this core offers, waiting for its next run (`None` once it has no more).
    fn peek(&mut self) -> Option<&(String, Register)> {
        while self.current.peek().is_none() {
            // A core gone before its last run panicked: resumed when it is joined.
            self.current = self.runs.recv().ok()?.into_iter().peekable();
        }
        self.current.peek()
    }
}

/// The entries of every core's runs (each sorted, no key in two), in key order.
fn merged(mut queues: Vec<Merging>) -> impl Iterator<Item = (String, Register)> {
    std::iter::from_fn(move || {
        let mut least: Option<(usize, &String)> = None;
        for (at, queue) in queues.iter_mut().enumerate() {
            if let Some((key, _)) = queue.peek()
                && least.is_none_or(|(_, least)| key < least)
            {
                least = Some((at, key));
            }
        }
        let (at, _) = least?;
        queues[at].current.next()
    })
}

/// Threads replay uses: the cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}

/// A ledger line, fields borrowed from the buffer where they need no unescaping.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    stamp: LineStamp<'a>,
    #[serde(default, borrow)]
    by: Option<Cow<'a, str>>,
}

/// A stamp as upstream reads it (as [`record`] does), the node id borrowed.
#[derive(Deserialize)]
struct LineStamp<'a> {
    #[serde(deserialize_with = "lenient_u64")]
    p: u64,
    #[serde(deserialize_with = "lenient_u64")]
    l: u64,
    #[serde(borrow, deserialize_with = "lenient_str")]
    n: Cow<'a, str>,
}

fn lenient_str<'de: 'a, 'a, D: Deserializer<'de>>(de: D) -> Result<Cow<'a, str>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a node id")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }
    }
    de.deserialize_any(V)
}

/// What one part's scan of a slice of lines found.
#[derive(Default)]
struct Scan {
    lines: u64,
    records: u64,
    corrupt: u64,
    /// The first corrupt lines: (line number within the slice, why).
    named: Vec<(u64, String)>,
}

/// Which lines of a window a core takes.
#[derive(Clone, Copy)]
enum Take {
    /// Every line (one core).
    All,
    /// The lines of the keys this core owns (see [`owner`]), and its share of the lines that
    /// name no key plainly (by line number), which go to a part of their own.
    Owned { me: usize, of: usize },
}

fn scan(part: &mut Part, stray: &mut Part, slice: &[u8], take: Take) -> Scan {
    let mut out = Scan::default();
    let mut rest = slice;
    while let Some(end) = memchr::memchr(b'\n', rest) {
        out.lines += 1;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let into = match take {
            Take::All => &mut *part,
            Take::Owned { me, of } => match route(line) {
                Some(hash) if owner(hash, of) == me => &mut *part,
                None if (out.lines % of as u64) as usize == me => &mut *stray,
                _ => continue,
            },
        };
        match into.line(line) {
            Ok(()) => out.records += 1,
            Err(err) => {
                out.corrupt += 1;
                if out.named.len() < LOGGED_CORRUPT {
                    out.named.push((out.lines, err.to_string()));
                }
            }
        }
    }
    out
}

/// The hash that decides which core owns a key of a room (the default room: no bytes).
fn key_hash(room: &[u8], key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    // Fixed: every core must agree. A ledger whose keys all land on one core is only slower.
    foldhash::fast::FixedState::with_seed(0x0ae7_4e12).hash_one((room, key))
}

/// The core of `of` that owns a key with `hash`.
fn owner(hash: u64, of: usize) -> usize {
    (hash % of as u64) as usize
}

/// The owner hash of the key a line names, read without decoding the line: `None` unless it
/// begins as [`record::encode`] writes (`{"kind":"…","key":"K"` or `{"room":"R","op":"…","key":"K"`)
/// with room and key free of escapes, so that their bytes are what the line decodes to.
fn route(line: &[u8]) -> Option<u64> {
    let (room, rest) = match line.strip_prefix(b"{\"kind\":\"") {
        Some(rest) => (&b""[..], rest),
        None => {
            let rest = line.strip_prefix(b"{\"room\":\"")?;
            let end = memchr::memchr(b'"', rest)?;
            (&rest[..end], rest[end + 1..].strip_prefix(b",\"op\":\"")?)
        }
    };
    let rest = rest.get(3..)?.strip_prefix(b"\",\"key\":\"")?;
    let key = &rest[..memchr::memchr(b'"', rest)?];
    if memchr::memchr(b'\\', room).is_some() || memchr::memchr(b'\\', key).is_some() {
        return None;
    }
    Some(key_hash(room, key))
}

/// The boot's replay of the snapshot (if any) and the ledger `file` at `path`: every room's map.
/// Cuts a torn last line as record-by-record replay does; returns the length of the good prefix.
pub(super) fn replay(path: &Path, file: &File, stats: &mut ReplayStats) -> Result<(u64, Replayed), LedgerError> {
    replay_in(path, file, stats, WINDOW, MIN_SPLIT)
}

/// [`replay`] reading `window` bytes at a time, on every core from a ledger of `min_split`.
fn replay_in(
    path: &Path,
    file: &File,
    stats: &mut ReplayStats,
    window: usize,
    min_split: usize,
) -> Result<(u64, Replayed), LedgerError> {
    let mut pass = read_all(path, file, window, min_split, cores())?;
    if pass.split && pass.part.ambiguous {
        // Lines whose order decides met in different parts: again, in file order.
        log::info!("ledger {}: equal stamps on differing records; replaying in file order", path.display());
        pass = read_all(path, file, window, usize::MAX, 1)?;
    }
    for (line, why) in &pass.named {
        log::warn!("ledger {}: line {line} skipped: {why}", path.display());
    }
    stats.snapshot_entries = pass.snapshot_entries;
    stats.records = pass.records;
    stats.corrupt = pass.corrupt;
    if pass.torn > 0 {
        // A torn last write: cut it off and make the cut durable before anyone relies on it.
        let io =
            |what: &'static str| move |source: std::io::Error| LedgerError::Io { what, path: path.to_owned(), source };
        log::warn!("ledger {}: torn last line {} ({} bytes) cut off", path.display(), pass.lines + 1, pass.torn);
        file.set_len(pass.good).map_err(io("cannot truncate torn tail of"))?;
        file.sync_all().map_err(io("cannot fsync"))?;
        stats.truncated_bytes = pass.torn;
    }
    let started = std::time::Instant::now();
    let replayed = pass.part.finish();
    log::debug!(
        "ledger {}: snapshot read in {} ms, ledger in {} ms, maps built in {} ms",
        path.display(),
        pass.timings.0.as_millis(),
        pass.timings.1.as_millis(),
        started.elapsed().as_millis()
    );
    Ok((pass.good, replayed))
}

/// One read of the snapshot and the ledger into tables.
struct Pass {
    part: Part,
    /// Whether the lines were shared by several parts (strays then merge out of file order).
    split: bool,
    snapshot_entries: u64,
    records: u64,
    corrupt: u64,
    /// The first corrupt lines: (line number, why).
    named: Vec<(u64, String)>,
    /// Whole lines.
    lines: u64,
    /// Length of the whole lines; bytes of a torn last line past it.
    good: u64,
    torn: u64,
    /// Time reading the snapshot, then the ledger.
    timings: (std::time::Duration, std::time::Duration),
}

/// Reads the snapshot and every whole line of `file`, `window` bytes at a time; a ledger of at
/// least `min_split` bytes by `cores` parts, each taking the keys it owns, joined at the end.
fn read_all(path: &Path, file: &File, window: usize, min_split: usize, cores: usize) -> Result<Pass, LedgerError> {
    let io = |what: &'static str| move |source: std::io::Error| LedgerError::Io { what, path: path.to_owned(), source };
    let started = std::time::Instant::now();
    let mut parts: Vec<Part> = (0..cores.max(1)).map(|_| Part::default()).collect();
    let snapshot_entries = load_snapshot(&super::snapshot_path(path), &mut parts[0], cores)?;
    let snapshot_read = started.elapsed();
    let mut pass = Pass {
        part: Part::default(),
        split: false,
        snapshot_entries,
        records: 0,
        corrupt: 0,
        named: Vec::new(),
        lines: 0,
        good: 0,
        torn: 0,
        timings: (snapshot_read, std::time::Duration::ZERO),
    };
    let size = file.metadata().map_err(io("cannot stat ledger"))?.len();
    // A ledger worth the threads is read by every core, each taking the lines of the keys it
    // owns: no key is in two parts, so the parts join without looking keys up. The snapshot's
    // entries go to their owners first.
    let routed = parts.len() > 1 && size >= min_split as u64;
    pass.split = routed;
    if routed {
        Part::distribute(&mut parts);
    }
    let mut strays: Vec<Part> = (0..parts.len()).map(|_| Part::default()).collect();
    // The window's buffer, allocated once and reused.
    let mut buf: Vec<u8> = Vec::new();
    let (mut len, mut eof) = fill(file, &mut buf, 0, 0, window, size).map_err(io("cannot read ledger"))?;
    loop {
        let whole = memchr::memrchr(b'\n', &buf[..len]).map_or(0, |i| i + 1);
        if whole == 0 && !eof {
            // One line longer than the window: read on.
            (len, eof) = fill(file, &mut buf, len, pass.good, window, size).map_err(io("cannot read ledger"))?;
            continue;
        }
        let window_bytes = &buf[..whole];
        let mut scans: Vec<Scan> = if routed {
            std::thread::scope(|s| {
                let of = parts.len();
                let mut work = parts.iter_mut().zip(strays.iter_mut()).enumerate();
                let first = work.next();
                let handles: Vec<_> = work
                    .map(|(me, (part, stray))| s.spawn(move || scan(part, stray, window_bytes, Take::Owned { me, of })))
                    .collect();
                let mut scans: Vec<Scan> = first
                    .map(|(me, (part, stray))| scan(part, stray, window_bytes, Take::Owned { me, of }))
                    .into_iter()
                    .collect();
                scans.extend(handles.into_iter().map(joined));
                scans
            })
        } else {
            vec![scan(&mut parts[0], &mut Part::default(), window_bytes, Take::All)]
        };
        // Every core counted every line of the window; each named its own corrupt ones.
        let mut named: Vec<(u64, String)> = Vec::new();
        for scan in &mut scans {
            pass.records += scan.records;
            pass.corrupt += scan.corrupt;
            named.append(&mut scan.named);
        }
        named.sort_by_key(|&(line, _)| line);
        for (line, why) in named {
            if pass.named.len() < LOGGED_CORRUPT {
                pass.named.push((pass.lines + line, why));
            }
        }
        pass.lines += scans.first().map_or(0, |scan| scan.lines);
        pass.good += whole as u64;
        if eof {
            pass.torn = (len - whole) as u64;
            break;
        }
        // The line the window cut goes first in the next.
        buf.copy_within(whole..len, 0);
        (len, eof) = fill(file, &mut buf, len - whole, pass.good, window, size).map_err(io("cannot read ledger"))?;
    }
    pass.timings.1 = started.elapsed() - snapshot_read;
    pass.part = Part::join(parts, strays);
    Ok(pass)
}

/// What a scoped thread returned (its panic, resumed here).
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Reads the window that starts at byte `at` of `file` (of `size` bytes) into `buf`, whose
/// first `filled` bytes hold the start of it already: up to `window` bytes more, no more than
/// what is left plus one byte (to see the end), so a short ledger does not pay for a whole
/// window. Returns the bytes in `buf` and whether they reach the end of the file.
fn fill(
    file: &File,
    buf: &mut Vec<u8>,
    filled: usize,
    at: u64,
    window: usize,
    size: u64,
) -> std::io::Result<(usize, bool)> {
    let left = usize::try_from(size.saturating_sub(at + filled as u64)).unwrap_or(usize::MAX);
    let want = filled + window.max(1).min(left.saturating_add(1));
    if buf.is_empty() {
        // Zeroed by the system, not by a pass over it.
        *buf = vec![0; want];
    } else if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut len = filled;
    while len < want {
        let n = file.read_at(&mut buf[len..want], at + len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok((len, len < want))
}

/// Loads the snapshot file at `path` (version 1, ours or upstream's) into `part`, if it exists;
/// returns how many entries it had. Refuses it exactly when [`super::snapshot::load`] does.
fn load_snapshot(path: &Path, part: &mut Part, cores: usize) -> Result<u64, LedgerError> {
    let io = |source| LedgerError::Io { what: "cannot read snapshot", path: path.to_owned(), source };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(io(source)),
    };
    if let Some((loaded, count)) = snapshot_by_lines(&file, cores, MIN_SPLIT, WINDOW).map_err(io)? {
        *part = loaded;
        return Ok(count);
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let (loaded, count) = document(&bytes, path)?;
    *part = loaded;
    Ok(count)
}

/// The snapshot `bytes` (of the file at `path`) read as one JSON document, the way that accepts
/// anything upstream's loader does.
fn document(bytes: &[u8], path: &Path) -> Result<(Part, u64), LedgerError> {
    let bad = |reason: String| LedgerError::Snapshot { path: path.to_owned(), reason };
    let mut loaded = Part::default();
    // About 100 bytes an entry (ours and upstream's): a table sized once, not rehashed as it grows.
    let estimate = bytes.len() / 128;
    loaded.tables.default.index.reserve(estimate);
    loaded.tables.default.winners.reserve(estimate);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut failed = None;
    let file = SnapshotSeed { part: &mut loaded, failed: &mut failed }.deserialize(&mut de).map_err(|err| {
        bad(match failed.take() {
            Some((at, err)) => at_in(bytes, at.wrapping_sub(bytes.as_ptr() as usize), &err),
            None => err.to_string(),
        })
    })?;
    de.end().map_err(|err| bad(err.to_string()))?;
    if file.version != 1 {
        return Err(bad(format!("unsupported version {}", file.version)));
    }
    if let Some(name) = file.bad_room {
        return Err(bad(format!("bad room name {name:?}")));
    }
    Ok((loaded, file.count))
}

/// The top of a snapshot as our encoder writes it: the header object's fields before `entries`.
#[derive(Deserialize)]
struct Header {
    version: Value,
}

/// One line of a snapshot read by [`snapshot_by_lines`].
enum Item<'a> {
    /// An entry, and whether a comma followed it.
    Entry(String, Winner, bool),
    /// Any other line (`]}`, `],"rooms":{`, `"name":[`, `],`, `]}}`).
    Other(&'a [u8]),
}

/// The snapshot `file` read as [`super::snapshot::encode`] lays it out (the header and
/// `"entries":[` on the first line, then one entry a line, each room's keys unique and sorted,
/// rooms sorted by name), `window` bytes at a time into one buffer, each window's entry lines
/// parsed on `cores` threads. `None` as soon as anything deviates from that layout or fails to
/// parse: the caller then reads the file as one JSON document, which accepts, refuses and words
/// its errors as always. Where this returns a part, the document read gives the same registers
/// and count (every check here is as strict as the document's or stricter; keys unique, so no
/// entry replaces another).
fn snapshot_by_lines(
    file: &File,
    cores: usize,
    min_split: usize,
    window: usize,
) -> std::io::Result<Option<(Part, u64)>> {
    let size = file.metadata()?.len();
    let mut buf = Vec::new();
    let (mut len, mut eof) = fill(file, &mut buf, 0, 0, window, size)?;
    let first = loop {
        if let Some(at) = memchr::memchr(b'\n', &buf[..len]) {
            break at;
        }
        if eof {
            return Ok(None);
        }
        (len, eof) = fill(file, &mut buf, len, 0, window, size)?;
    };
    let Some(header) = buf[..first].strip_suffix(b",\"entries\":[") else { return Ok(None) };
    // Fields named twice, escapes that could spell `entries` or `rooms`: the document decides.
    let suspicious = |word: &[u8]| header.windows(word.len()).any(|w| w == word);
    if suspicious(b"entries") || suspicious(b"rooms") || suspicious(b"\\u") || !header.starts_with(b"{") {
        return Ok(None);
    }
    let mut top = header.to_vec();
    top.push(b'}');
    if serde_json::from_slice::<Header>(&top).ok().is_none_or(|header| header.version != 1) {
        return Ok(None);
    }
    let mut lines = Lines::default();
    let mut at = first as u64 + 1;
    buf.copy_within(first + 1..len, 0);
    len -= first + 1;
    loop {
        let whole = memchr::memrchr(b'\n', &buf[..len]).map_or(0, |i| i + 1);
        if whole == 0 && !eof {
            // One line longer than the window: read on.
            (len, eof) = fill(file, &mut buf, len, at, window, size)?;
            continue;
        }
        if eof && whole != len {
            return Ok(None); // the file does not end with a newline
        }
        if whole > 0 {
            // The window's lines, without the newline after the last.
            let body = &buf[..whole - 1];
            let slices = if body.len() < min_split { vec![body] } else { split_lines(body, cores) };
            let read: Vec<Option<Vec<Item<'_>>>> = std::thread::scope(|s| {
                let mut slices = slices.into_iter();
                let first = slices.next().unwrap_or_default();
                let handles: Vec<_> = slices.map(|slice| s.spawn(move || entry_lines(slice))).collect();
                let mut all = vec![entry_lines(first)];
                all.extend(handles.into_iter().map(joined));
                all
            });
            // One part that failed fails the whole.
            let Some(read) = read.into_iter().collect::<Option<Vec<_>>>() else { return Ok(None) };
            if lines.count == 0 {
                // Sized once for the whole file, from the first window's lines.
                let expected = read.iter().map(Vec::len).sum::<usize>() as u64 * size / (at + whole as u64);
                let expected = usize::try_from(expected + expected / 16).unwrap_or(0);
                lines.part.tables.default.winners.reserve_exact(expected);
                lines.part.tables.default.unindexed.reserve_exact(expected);
            }
            if !read.into_iter().flatten().all(|item| lines.take(item)) {
                return Ok(None);
            }
        }
        at += whole as u64;
        if eof {
            break;
        }
        buf.copy_within(whole..len, 0);
        (len, eof) = fill(file, &mut buf, len - whole, at, window, size)?;
    }
    Ok(lines.ended.then_some((lines.part, lines.count)))
}

/// Where [`snapshot_by_lines`] is in the snapshot's layout, and what it read.
struct Lines {
    part: Part,
    /// The room whose array the lines are in (`None`: the default room's).
    room: Option<String>,
    /// In an array (else between rooms).
    in_array: bool,
    /// Right after an array's `[`.
    opened: bool,
    /// The last entry had its comma, so an entry must follow.
    need_value: bool,
    /// The closing line was read: nothing may follow.
    ended: bool,
    /// The last named room.
    last_room: Option<String>,
    /// Entries read.
    count: u64,
}

impl Default for Lines {
    fn default() -> Self {
        Lines {
            part: Part::default(),
            room: None,
            in_array: true,
            opened: true,
            need_value: false,
            ended: false,
            last_room: None,
            count: 0,
        }
    }
}

impl Lines {
    /// Takes the next line; false when it breaks the layout.
    fn take(&mut self, item: Item<'_>) -> bool {
        self.take_checked(item).is_some()
    }

    fn take_checked(&mut self, item: Item<'_>) -> Option<()> {
        if self.ended {
            return None;
        }
        match item {
            Item::Entry(key, winner, comma) => {
                // Right after `[` or after a comma; an entry after one without its comma is not.
                if !self.in_array || !(self.opened || self.need_value) {
                    return None;
                }
                self.opened = false;
                let table = match &self.room {
                    None => &mut self.part.tables.default,
                    Some(name) => &mut self.part.tables.named.get_mut(name.as_str())?.1,
                };
                if table.unindexed.last().is_some_and(|last| *last >= key) {
                    return None; // not sorted, or a key twice
                }
                table.unindexed.push(key);
                table.winners.push(winner);
                self.need_value = comma;
                self.count += 1;
            }
            Item::Other(line) if self.in_array => {
                if self.need_value {
                    return None;
                }
                match (line, self.room.is_some()) {
                    (b"]}", false) | (b"]}}", true) => self.ended = true,
                    (b"],\"rooms\":{", false) | (b"],", true) => self.in_array = false,
                    _ => return None,
                }
            }
            Item::Other(line) => {
                let name = line.strip_suffix(b":[")?;
                let name: String = serde_json::from_slice(name).ok()?;
                let parsed = Room::parse(&name).ok()?;
                if parsed.is_default() || self.last_room.as_ref().is_some_and(|last| *last >= name) {
                    return None;
                }
                self.part.tables.named.insert(name.clone(), (parsed, Table::default()));
                self.last_room = Some(name.clone());
                self.room = Some(name);
                self.in_array = true;
                self.opened = true;
            }
        }
        Some(())
    }
}

/// The lines of `slice` (a part of a snapshot's body), entries parsed; `None` if one fails.
fn entry_lines(slice: &[u8]) -> Option<Vec<Item<'_>>> {
    let (mut nodes, mut users) = (Interner::default(), Interner::default());
    let mut items = Vec::with_capacity(slice.iter().filter(|&&b| b == b'\n').count() + 1);
    for line in slice.split(|&b| b == b'\n') {
        if !line.starts_with(b"{") {
            items.push(Item::Other(line));
            continue;
        }
        let (entry, comma) = match line.strip_suffix(b",") {
            Some(entry) => (entry, true),
            None => (line, false),
        };
        let (key, value, tombstone, (p, l, n), by) = match FastEntry::read(entry) {
            Some(fast) => {
                // Canonical already: a value as it would read inside the document.
                let value = fast.value.to_owned();
                let (p, l, n) = fast.stamp;
                (Cow::Borrowed(fast.key), value, fast.tombstone, (p, l, Cow::Borrowed(n)), fast.by.map(Cow::Borrowed))
            }
            None => {
                let entry: SnapshotEntry<'_> = serde_json::from_slice(entry).ok()?;
                // Every value must parse, a tombstone's too (as the document read requires).
                // Nested deeper than a plain value may be, the document's own depth could
                // count: not here.
                let value = match entry.value {
                    None => String::from("null"),
                    Some(raw) if json::is_canonical(raw.get()) => raw.get().to_owned(),
                    Some(raw) if json::depth(raw.get()) > MAX_DEPTH => return None,
                    Some(raw) => serde_json::from_str::<Value>(raw.get()).ok()?.to_string(),
                };
                let stamp = entry.stamp;
                (entry.key, value, entry.tombstone, (stamp.p, stamp.l, stamp.n), entry.by)
            }
        };
        let winner = Winner {
            p,
            l,
            n: nodes.get(&n),
            tombstone,
            value: if tombstone { String::new() } else { value },
            by: by.as_deref().filter(|by| !by.is_empty()).map(|by| users.get(by)),
        };
        items.push(Item::Entry(key.into_owned(), winner, comma));
    }
    Some(items)
}

/// Splits `buf` into at most `n` slices at newlines, the newlines between them dropped.
fn split_lines(buf: &[u8], n: usize) -> Vec<&[u8]> {
    let mut slices = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..n {
        let target = (buf.len() * i / n).max(start);
        match buf[target..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                slices.push(&buf[start..target + at]);
                start = target + at + 1;
            }
            None => break,
        }
    }
    slices.push(&buf[start..]);
    slices
}

/// `err`, from parsing a value on its own that starts at byte `start` of `bytes`, placed where
/// it is in `bytes` (as a parse of the whole file reports it).
fn at_in(bytes: &[u8], start: usize, err: &serde_json::Error) -> String {
    let message = err.to_string();
    let (what, _) = message.rsplit_once(" at line ").unwrap_or((&message, ""));
    let before = &bytes[..start.min(bytes.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count();
    let (line, column) =
        if err.line() <= 1 { (line, column + err.column()) } else { (line + err.line() - 1, err.column()) };
    format!("{what} at line {line} column {column}")
}

/// What the snapshot's top level held besides its entries.
struct SnapshotTop {
    version: Value,
    count: u64,
    /// The first name under `rooms` that is not a room's (the file is then refused).
    bad_room: Option<String>,
}

/// Reads the snapshot document straight into a part's tables.
struct SnapshotSeed<'p> {
    part: &'p mut Part,
    failed: &'p mut Failed,
}

/// A value that failed to parse: where its text starts (an address in the file's bytes) and why.
type Failed = Option<(usize, serde_json::Error)>;

impl<'de> DeserializeSeed<'de> for SnapshotSeed<'_> {
    type Value = SnapshotTop;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<SnapshotTop, D::Error> {
        de.deserialize_struct("SnapshotFile", &["version", "entries", "rooms"], self)
    }
}

impl<'de> Visitor<'de> for SnapshotSeed<'_> {
    type Value = SnapshotTop;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("struct SnapshotFile")
    }
    /// The document as an array of the fields, in order (serde reads any struct so).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SnapshotTop, A::Error> {
        let version = seq
            .next_element::<Value>()?
            .ok_or_else(|| de::Error::invalid_length(0, &"struct SnapshotFile with 3 elements"))?;
        let entries = seq.next_element_seed(EntriesSeed { part: self.part, failed: &mut *self.failed, room: None })?;
        let rooms = seq.next_element_seed(RoomsSeed { part: self.part, failed: &mut *self.failed })?;
        let (rooms_count, bad_room) = rooms.unwrap_or((0, None));
        Ok(SnapshotTop { version, count: entries.unwrap_or(0) + rooms_count, bad_room })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SnapshotTop, A::Error> {
        let (mut version, mut entries, mut rooms) = (None, None, None);
        while let Some(field) = map.next_key::<Cow<'de, str>>()? {
            match &*field {
                "version" => {
                    if version.is_some() {
                        return Err(de::Error::duplicate_field("version"));
                    }
                    version = Some(map.next_value::<Value>()?);
                }
                "entries" => {
                    if entries.is_some() {
                        return Err(de::Error::duplicate_field("entries"));
                    }
                    entries = Some(map.next_value_seed(EntriesSeed {
                        part: self.part,
                        failed: &mut *self.failed,
                        room: None,
                    })?);
                }
                "rooms" => {
                    if rooms.is_some() {
                        return Err(de::Error::duplicate_field("rooms"));
                    }
                    rooms = Some(map.next_value_seed(RoomsSeed { part: self.part, failed: &mut *self.failed })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let version = version.ok_or_else(|| de::Error::missing_field("version"))?;
        let (rooms_count, bad_room) = rooms.unwrap_or((0, None));
        Ok(SnapshotTop { version, count: entries.unwrap_or(0) + rooms_count, bad_room })
    }
}

/// `rooms`: each name's entries into its room's table. A name repeated keeps its last entries
/// only (as a map of names read whole would); a bad name is remembered, its entries dropped.
struct RoomsSeed<'p> {
    part: &'p mut Part,
    failed: &'p mut Failed,
}

impl<'de> DeserializeSeed<'de> for RoomsSeed<'_> {
    type Value = (u64, Option<String>);
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RoomsSeed<'_> {
    type Value = (u64, Option<String>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut bad_room = None;
        while let Some(name) = map.next_key::<String>()? {
            if Room::parse(&name).is_err() {
                let mut scratch = Part::default();
                let n =
                    map.next_value_seed(EntriesSeed { part: &mut scratch, failed: &mut *self.failed, room: None })?;
                counts.insert(name.clone(), n);
                if bad_room.is_none() {
                    bad_room = Some(name);
                }
                continue;
            }
            if let Some((_, table)) = self.part.tables.named.get_mut(&name) {
                *table = Table::default(); // the name again: its last entries replace the first
            }
            let n =
                map.next_value_seed(EntriesSeed { part: self.part, failed: &mut *self.failed, room: Some(&name) })?;
            counts.insert(name, n);
        }
        Ok((counts.values().sum(), bad_room))
    }
}

/// One room's entries array into its table; the number of entries.
struct EntriesSeed<'p, 'n> {
    part: &'p mut Part,
    failed: &'p mut Failed,
    room: Option<&'n str>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<u64, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut count = 0;
        while let Some(entry) = seq.next_element::<SnapshotEntry<'de>>()? {
            count += 1;
            let parsed;
            let value = match entry.value {
                None => "null",
                Some(raw) if json::is_canonical(raw.get()) => raw.get(),
                Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
                    Ok(value) => {
                        parsed = value.to_string();
                        parsed.as_str()
                    }
                    Err(err) => {
                        *self.failed = Some((raw.get().as_ptr() as usize, err));
                        return Err(de::Error::custom("a snapshot value does not parse"));
                    }
                },
            };
            let offer = Offer {
                p: entry.stamp.p,
                l: entry.stamp.l,
                n: &entry.stamp.n,
                tombstone: entry.tombstone,
                value,
                by: entry.by.as_deref().filter(|by| !by.is_empty()),
            };
            // A bad room name never gets here (see `RoomsSeed`).
            self.part.merge(self.room, &entry.key, &offer).map_err(de::Error::custom)?;
        }
        Ok(count)
    }
}

/// A snapshot entry, fields borrowed where they can be.
#[derive(Deserialize)]
struct SnapshotEntry<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    tombstone: bool,
    #[serde(borrow)]
    stamp: LineStamp<'a>,
    #[serde(default, borrow)]
    by: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::{
        hlc::Clock,
        ledger::{Ledger, SyncMode, snapshot_path},
        lww::{Op, RoomsReplay},
    };

    /// Values that read raw, values that do not, and values that are not JSON at all.
    const VALUES: &[&str] = &[
        "1",
        "\"x\"",
        "{\"a\":[1,2]}",
        "null",
        "1.0",
        "-0",
        "[]",
        "{\"b\":1,\"a\":2}",
        "{\"a\":2,\"b\":1}",
        "1e5",
        "1E400",
        "\"\\u00e9\"",
        "\"\\ud800\"",
        "\"\\ud83d\\ude00\"",
        "\"a\\nb\"",
        "1.5e-7",
        "tru",
        "\"\\x\"",
        "01",
        "[1,]",
        "\"\u{7}\"",
    ];

    #[allow(clippy::too_many_arguments)] // one per field of the line
    fn line(kind: u8, room: u8, key: u8, p: u64, l: u64, node: u8, value: Option<usize>, by: u8) -> Vec<u8> {
        let kind = ["\"set\"", "\"del\"", "\"put\""][usize::from(kind % 3)];
        let head = match room % 7 {
            0 | 1 => format!("{{\"kind\":{kind}"),
            2 => format!("{{\"room\":\"r1\",\"op\":{kind}"),
            3 => format!("{{\"room\":\"r2\",\"op\":{kind}"),
            // Not as we write them (no core can tell their key's owner without decoding).
            4 => format!("{{ \"kind\":{kind}"),
            5 => format!("{{\"room\":\"r\\u0031\",\"op\":{kind}"),
            _ => format!("{{\"room\":\"_bad\",\"op\":{kind}"),
        };
        let value = value.map_or(String::new(), |v| format!(",\"value\":{}", VALUES[v % VALUES.len()]));
        let node = ["\"a\"", "\"b\"", "7", "\"\\u0061\""][usize::from(node % 4)];
        let by = ["", ",\"by\":\"alice\"", ",\"by\":\"\"", ",\"by\":\"bob\""][usize::from(by % 4)];
        // "k\u0031" is "k1" written another way.
        let key = ["\"k0\"", "\"k1\"", "\"k2\"", "\"k3\"", "\"k\\u0031\""][usize::from(key % 5)];
        format!("{head},\"key\":{key}{value},\"stamp\":{{\"p\":{p},\"l\":{l},\"n\":{node}}}{by}}}").into_bytes()
    }

    fn arb_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => (any::<u8>(), any::<u8>(), any::<u8>(), 0u64..4, 0u64..2, any::<u8>(), prop::option::of(any::<usize>()), any::<u8>())
                .prop_map(|(k, r, key, p, l, n, v, by)| line(k, r, key, p, l, n, v, by)),
            1 => prop_oneof![Just(b"garbage".to_vec()), Just(Vec::new()), Just(b"{\"kind\":\"set\",\"key\":\"k\",\"value\":\"\xff\",\"stamp\":{\"p\":1,\"l\":0,\"n\":\"a\"}}".to_vec())],
        ]
    }

    /// Replays `bytes` (and `snapshot`, if any) record by record and with [`replay_in`]
    /// (`window`, `min_split`); both must give the same rooms, stats, clock and file.
    fn same_either_way(bytes: &[u8], snapshot: Option<&[u8]>, window: usize, min_split: usize) {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.jsonl"), dir.path().join("new.jsonl"));
        for path in [&old, &new] {
            fs::write(path, bytes).unwrap();
            if let Some(snapshot) = snapshot {
                fs::write(snapshot_path(path), snapshot).unwrap();
            }
        }
        let mut rooms = RoomsReplay::default();
        let mut clock = Clock::new("z");
        let expected = Ledger::open(&old, SyncMode::Always, |op| {
            clock.witness(&op.stamp);
            rooms.apply(op);
        });
        let file = fs::OpenOptions::new().read(true).append(true).open(&new).unwrap();
        let mut stats = ReplayStats::default();
        let got = replay_in(&new, &file, &mut stats, window, min_split);
        let ((ledger, expected_stats), (len, replayed)) = match (expected, got) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => return assert_eq!(a.to_string(), b.to_string().replace("new.jsonl", "old.jsonl")),
            (a, b) => panic!("one way failed: {:?} / {:?}", a.map(|_| ()).err(), b.map(|_| ()).err()),
        };
        assert_eq!(len, ledger.len());
        assert_eq!(
            (stats.records, stats.corrupt, stats.truncated_bytes, stats.snapshot_entries),
            (
                expected_stats.records,
                expected_stats.corrupt,
                expected_stats.truncated_bytes,
                expected_stats.snapshot_entries
            )
        );
        assert_eq!(fs::read(&old).unwrap(), fs::read(&new).unwrap(), "the same torn tail cut");
        let fingerprints = |rooms: &HashMap<Room, LwwMap>| -> BTreeMap<Room, Vec<u8>> {
            rooms.iter().filter(|(_, m)| !m.is_empty()).map(|(r, m)| (r.clone(), m.fingerprint())).collect()
        };
        let rooms = rooms.finish();
        assert_eq!(fingerprints(&replayed.rooms), fingerprints(&rooms));
        assert_eq!(replayed.digest, Digest::of(replayed.rooms.iter()), "the digest made while building");
        for (room, map) in &replayed.rooms {
            assert_eq!(map.live_len(), rooms[room].live_len());
            for (key, register) in map.registers() {
                assert_eq!(register.by, rooms[room].register(key).unwrap().by, "{room} {key}");
            }
        }
        let mut witnessed = Clock::new("z");
        if let Some(newest) = &replayed.newest {
            witnessed.witness(newest);
        }
        assert_eq!(witnessed.last(), clock.last());
    }

    fn ledger_of(lines: &[Vec<u8>], torn: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line);
            bytes.push(b'\n');
        }
        if torn {
            bytes.extend_from_slice(b"{\"kind\":\"set\",\"key\":\"t\",\"va");
        }
        bytes
    }

    /// What the general path reads from `line` where it reads the value raw: (room, key, p, l,
    /// n, tombstone, value, by); `None` where it refuses the line or parses the value.
    #[allow(clippy::type_complexity)]
    fn general(line: &[u8]) -> Option<(Option<String>, String, u64, u64, String, bool, String, Option<String>)> {
        let raw: Line<'_> = serde_json::from_slice(line).ok()?;
        let (kind, room) = match (raw.kind, raw.room, raw.op) {
            (Some(kind), ..) => (kind, None),
            (None, Some(room), Some(kind)) => (kind, Some(room.into_owned())),
            _ => return None,
        };
        let tombstone = match &*kind {
            "set" => false,
            "del" => true,
            _ => return None,
        };
        let value = raw.value.map_or("null", RawValue::get);
        let by = raw.by.filter(|by| !by.is_empty()).map(Cow::into_owned);
        json::is_canonical(value).then(|| {
            (
                room,
                raw.key.into_owned(),
                raw.stamp.p,
                raw.stamp.l,
                raw.stamp.n.into_owned(),
                tombstone,
                value.to_owned(),
                by,
            )
        })
    }

    /// Asserts that where [`Fast::read`] takes `line`, it reads what [`general`] reads.
    fn fast_agrees(line: &[u8]) -> bool {
        let Some(fast) = Fast::read(line) else { return false };
        let value = fast.offer.value;
        let got = (
            fast.room.map(str::to_owned),
            fast.key.to_owned(),
            fast.offer.p,
            fast.offer.l,
            fast.offer.n.to_owned(),
            fast.offer.tombstone,
            value.to_owned(),
            fast.offer.by.map(str::to_owned),
        );
        assert_eq!(Some(got), general(line), "{}", String::from_utf8_lossy(line));
        true
    }

    #[test]
    fn the_fast_read_takes_our_own_records_and_nothing_it_could_misread() {
        let mut line = Vec::new();
        for op in [
            Op::set("k", json!({"a": [1, 2.5, "x"]}), Stamp::new(1_795_901_405_000_000_000, 3, "node")),
            Op::del("ké", Stamp::new(0, 0, "n")).in_room(Room::parse("r1").unwrap()),
            Op::set("k", json!("é"), Stamp::new(u64::MAX, u64::MAX, "n")).by(Some(Arc::from("alice"))),
        ] {
            line.clear();
            record::encode_object(&op, &mut line);
            assert!(fast_agrees(&line), "{}", String::from_utf8_lossy(&line));
        }
        for refused in [
            // upstream's escapes, whitespace, another order, an exponent, a leading zero, a float
            &br#"{"kind":"set","key":"\u00e9","value":1,"stamp":{"p":1,"l":0,"n":"a"}}"#[..],
            br#"{"kind":"set","key":"k","value": 1,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"key":"k","kind":"set","value":1,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k","value":1e3,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k","value":1,"stamp":{"p":01,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k","value":1,"stamp":{"p":1.0,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k","value":1,"stamp":{"p":18446744073709551616,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k","value":1,"key":"j","stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"kind":"set","key":"k","value":1,"stamp":{"p":1,"l":0,"n":"a"},"by":"b\"c"}"#,
        ] {
            assert!(!fast_agrees(refused), "{}", String::from_utf8_lossy(refused));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any line, and any line with one byte changed, cut short or lengthened: the fast read
        /// either leaves it to the general path or reads exactly what that path reads.
        #[test]
        fn the_fast_read_agrees_with_the_general_one(line in arb_line(), at in any::<usize>(), byte in any::<u8>(),
                                                     how in 0u8..4) {
            fast_agrees(&line);
            fast_agrees(&changed(&line, at, byte, how));
        }
    }

    /// `line` with one byte changed (`how` 0), added (1) or removed (2), or cut short (3), at
    /// `at` (modulo its length).
    fn changed(line: &[u8], at: usize, byte: u8, how: u8) -> Vec<u8> {
        let mut line = line.to_vec();
        if !line.is_empty() {
            let at = at % line.len();
            match how {
                0 => line[at] = byte,
                1 => line.insert(at, byte),
                2 => {
                    line.remove(at);
                }
                _ => line.truncate(at),
            }
        }
        line
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any ledger, corrupt lines, odd values, equal stamps and a torn tail included, replays
        /// to the same state as record by record, whole or cut into windows over the cores.
        #[test]
        fn replays_exactly_as_record_by_record(lines in prop::collection::vec(arb_line(), 0..60), torn in any::<bool>(),
                                               window in 1usize..400) {
            let bytes = ledger_of(&lines, torn);
            same_either_way(&bytes, None, WINDOW, MIN_SPLIT);
            same_either_way(&bytes, None, window, 0);
        }

        /// The same beside a snapshot file made of records' registers (ours, rooms included).
        #[test]
        fn replays_a_snapshot_and_a_ledger_exactly(before in prop::collection::vec(arb_line(), 0..40),
                                                  after in prop::collection::vec(arb_line(), 0..20), window in 1usize..400) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("l.jsonl");
            fs::write(&path, ledger_of(&before, false)).unwrap();
            let mut rooms = RoomsReplay::default();
            drop(Ledger::open(&path, SyncMode::Always, |op| { rooms.apply(op); }).unwrap());
            let rooms: Vec<(Room, LwwMap)> = rooms.finish().into_iter().collect();
            let snapshot = crate::ledger::snapshot::encode(&rooms, &path);
            let bytes = ledger_of(&after, false);
            same_either_way(&bytes, Some(&snapshot), WINDOW, MIN_SPLIT);
            same_either_way(&bytes, Some(&snapshot), window, 0);
        }
    }

    /// What a part holds, compared: each room's fingerprint, authors and live count, the
    /// newest stamp, the digest made while building.
    /// Per room: fingerprint, live count, each register's author.
    type Rooms = BTreeMap<Room, (Vec<u8>, usize, Vec<Option<String>>)>;

    fn summary(part: Part) -> (Rooms, Option<Stamp>, Digest) {
        let replayed = part.finish();
        assert_eq!(replayed.digest, Digest::of(replayed.rooms.iter()), "the digest made while building");
        for (room, map) in &replayed.rooms {
            assert_eq!(replayed.hashes[room], Digest::default().add(room, map));
        }
        let rooms = replayed
            .rooms
            .iter()
            .map(|(room, map)| {
                let by = map.registers().map(|(_, r)| r.by.as_deref().map(String::from)).collect();
                (room.clone(), (map.fingerprint(), map.live_len(), by))
            })
            .collect();
        (rooms, replayed.newest, replayed.digest)
    }

    /// Reads `bytes` by lines on 1 to 3 threads and as a document: wherever the lines read takes
    /// the file, the document read accepts it with the same registers and count. Returns
    /// whether the lines read took it.
    fn by_lines_agrees(bytes: &[u8]) -> bool {
        let document = document(bytes, Path::new("s.json"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut took = None;
        // Whole, and in windows down to a few bytes (lines longer than the window included).
        for (cores, window) in [(1, WINDOW), (2, WINDOW), (3, WINDOW), (1, 16), (2, 64), (3, 5)] {
            let lines = snapshot_by_lines(&file, cores, 0, window).unwrap();
            if let Some(took) = took {
                assert_eq!(took, lines.is_some(), "the same verdict on {cores} threads, windows of {window}");
            }
            took = Some(lines.is_some());
            let Some((lines, count)) = lines else { continue };
            let Ok((document, expected)) = &document else {
                panic!("taken by lines, refused as a document: {:?}", document.as_ref().err());
            };
            assert_eq!(count, *expected);
            let document = Part {
                tables: Tables {
                    default: copy_table(&document.tables.default),
                    named: document
                        .tables
                        .named
                        .iter()
                        .map(|(n, (r, t))| (n.clone(), (r.clone(), copy_table(t))))
                        .collect(),
                },
                ..Part::default()
            };
            assert_eq!(summary(lines), summary(document));
        }
        took.unwrap_or(false)
    }

    fn copy_table(table: &Table) -> Table {
        let mut copy = Table::default();
        let mut keys: Vec<(&String, usize)> = table.index.iter().map(|(k, &at)| (k, at)).collect();
        keys.sort_by_key(|&(_, at)| at);
        for (key, at) in keys {
            let w = &table.winners[at];
            copy.unindexed.push(key.clone());
            copy.winners.push(Winner {
                p: w.p,
                l: w.l,
                n: Arc::clone(&w.n),
                tombstone: w.tombstone,
                value: w.value.clone(),
                by: w.by.clone(),
            });
        }
        copy
    }

    /// Snapshots of random rooms (ours, as compaction writes them).
    fn arb_snapshot() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(arb_line(), 0..60).prop_map(|lines| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("l.jsonl");
            fs::write(&path, ledger_of(&lines, false)).unwrap();
            let mut rooms = RoomsReplay::default();
            drop(Ledger::open(&path, SyncMode::Always, |op| {
                rooms.apply(op);
            }));
            let rooms: Vec<(Room, LwwMap)> = rooms.finish().into_iter().collect();
            crate::ledger::snapshot::encode(&rooms, &path)
        })
    }

    /// Whether [`FastEntry`] takes `line` (a snapshot entry without its comma); when it does,
    /// asserts that it reads what [`SnapshotEntry`] reads.
    fn entry_agrees(line: &[u8]) -> bool {
        let Some(fast) = FastEntry::read(line) else { return false };
        let general: SnapshotEntry<'_> = serde_json::from_slice(line).expect("taken fast, refused by serde");
        let got = (fast.key, fast.value, fast.tombstone, fast.stamp, fast.by);
        let want = (
            &*general.key,
            // `null` is no value to an `Option`: both read it as `null`.
            general.value.map_or("null", RawValue::get),
            general.tombstone,
            (general.stamp.p, general.stamp.l, &*general.stamp.n),
            general.by.as_deref().filter(|by| !by.is_empty()),
        );
        assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
        true
    }

    #[test]
    fn the_fast_entry_read_takes_our_own_entries_and_nothing_it_could_misread() {
        for taken in [
            &br#"{"key":"k","value":{"a":[1,2.5,"x"]},"tombstone":false,"stamp":{"p":1,"l":3,"n":"node"}}"#[..],
            r#"{"key":"ké","value":null,"tombstone":true,"stamp":{"p":0,"l":0,"n":"n"},"by":"alice"}"#.as_bytes(),
            br#"{"key":"k","value":"\"","tombstone":false,"stamp":{"p":18446744073709551615,"l":0,"n":"n"},"by":""}"#,
        ] {
            assert!(entry_agrees(taken), "{}", String::from_utf8_lossy(taken));
        }
        for refused in [
            // escapes, whitespace, another order, an exponent, a leading zero, a float, too big,
            // a field twice, an escaped author, no value
            &br#"{"key":"\u00e9","value":1,"tombstone":false,"stamp":{"p":1,"l":0,"n":"a"}}"#[..],
            br#"{"key":"k","value": 1,"tombstone":false,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"value":1,"key":"k","tombstone":false,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"key":"k","value":1e3,"tombstone":false,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"key":"k","value":1,"tombstone":false,"stamp":{"p":01,"l":0,"n":"a"}}"#,
            br#"{"key":"k","value":1,"tombstone":false,"stamp":{"p":1.0,"l":0,"n":"a"}}"#,
            br#"{"key":"k","value":1,"tombstone":false,"stamp":{"p":18446744073709551616,"l":0,"n":"a"}}"#,
            br#"{"key":"k","value":1,"key":"j","tombstone":false,"stamp":{"p":1,"l":0,"n":"a"}}"#,
            br#"{"key":"k","value":1,"tombstone":false,"stamp":{"p":1,"l":0,"n":"a"},"by":"b\"c"}"#,
            br#"{"key":"k","tombstone":false,"stamp":{"p":1,"l":0,"n":"a"}}"#,
        ] {
            assert!(!entry_agrees(refused), "{}", String::from_utf8_lossy(refused));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every entry of our snapshots, and each with one byte changed, added, removed or cut:
        /// the fast read leaves it to `serde` (a value outside the plain subset, say) or reads
        /// exactly what `serde` reads.
        #[test]
        fn the_fast_entry_read_agrees_with_serde(snapshot in arb_snapshot(), at in any::<usize>(),
                                                 byte in any::<u8>(), how in 0u8..4) {
            for line in snapshot.split(|&b| b == b'\n').filter(|line| line.starts_with(b"{\"key\"")) {
                let line = line.strip_suffix(b",").unwrap_or(line);
                entry_agrees(line);
                entry_agrees(&changed(line, at, byte, how));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Our own snapshots are read by lines, on any number of threads, to what the document
        /// read gives.
        #[test]
        fn our_snapshots_read_by_lines_as_the_document(snapshot in arb_snapshot()) {
            prop_assert!(by_lines_agrees(&snapshot), "{}", String::from_utf8_lossy(&snapshot));
        }

        /// A snapshot changed anywhere (a byte gone, one added, lines swapped, repeated or
        /// dropped) is read by lines only where the document read gives the same; everywhere
        /// else the document read decides (and refuses what it always refused).
        #[test]
        fn changed_snapshots_fall_back_to_the_document(snapshot in arb_snapshot(), at in any::<prop::sample::Index>(),
                                                       other in any::<prop::sample::Index>(), how in 0u8..7,
                                                       byte in prop_oneof![Just(b' '), Just(b'\n'), Just(b','), Just(b'}'), Just(b'"'), any::<u8>()]) {
            let mut bytes = snapshot;
            let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            let (i, j) = (at.index(lines.len()), other.index(lines.len()));
            match how {
                0 => { let k = at.index(bytes.len()); bytes.remove(k); }
                1 => { let k = at.index(bytes.len() + 1); bytes.insert(k, byte); }
                2 => { lines.swap(i, j); bytes = lines.join(&b'\n'); }
                3 => { let line = lines[i].clone(); lines.insert(j, line); bytes = lines.join(&b'\n'); }
                4 => { lines.remove(i); bytes = lines.join(&b'\n'); }
                5 => { let k = at.index(bytes.len()); bytes[k] = byte; }
                _ => bytes.extend_from_slice(b"\n"),
            }
            by_lines_agrees(&bytes);
        }
    }

    #[test]
    fn snapshots_outside_our_layout_are_read_as_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let mut map = LwwMap::new();
        let room = Room::parse("r").unwrap();
        for (i, value) in ["1", "{\"a\":[1,2]}", "\"x\"", "null", "1.5e300", "\"\\u00e9\""].iter().enumerate() {
            let value: Value = serde_json::from_str(value).unwrap();
            map.apply(crate::lww::Op::set(format!("k{i}"), value, Stamp::new(i as u64 + 1, 0, "n")));
        }
        map.apply(crate::lww::Op::del("gone", Stamp::new(9, 0, "n")));
        let ours = crate::ledger::snapshot::encode(&[(Room::DEFAULT, map.clone()), (room.clone(), map.clone())], &path);
        assert!(by_lines_agrees(&ours), "ours, exponents and escapes in values included");
        let doc: Value = serde_json::from_slice(&ours).unwrap();
        let text = String::from_utf8(ours.clone()).unwrap();
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        for (what, other) in [
            ("indented, as upstream writes", serde_json::to_vec_pretty(&doc).unwrap()),
            ("on one line", serde_json::to_vec(&doc).unwrap()),
            ("no newline at the end", text.trim_end().as_bytes().to_vec()),
            ("version 2", text.replacen("\"version\":1", "\"version\":2", 1).into_bytes()),
            ("version 1.0", text.replacen("\"version\":1", "\"version\":1.0", 1).into_bytes()),
            ("version twice", text.replacen("\"version\":1", "\"version\":1,\"version\":1", 1).into_bytes()),
            ("entries in the header", text.replacen("\"version\":1", "\"version\":1,\"entries\":null", 1).into_bytes()),
            (
                "an escaped field name",
                text.replacen("\"version\":1", "\"version\":1,\"entr\\u0069es\":[]", 1).into_bytes(),
            ),
            ("a bad room name", text.replacen("\"r\":[", "\"_r\":[", 1).into_bytes()),
            ("a value too deep", text.replacen("\"value\":1,", &format!("\"value\":{deep},"), 1).into_bytes()),
            ("a value out of range", text.replacen("\"value\":1,", "\"value\":1e400,", 1).into_bytes()),
            ("a lone surrogate", text.replacen("\"value\":1,", "\"value\":\"\\ud800\",", 1).into_bytes()),
            (
                "a tombstone's bad value",
                text.replacen("\"value\":null,\"tombstone\":true", "\"value\":1e400,\"tombstone\":true", 1)
                    .into_bytes(),
            ),
        ] {
            let took = by_lines_agrees(&other);
            assert!(!took, "{what}: read by lines");
        }
        // Refused exactly as before, with the same words.
        for bad in [text.replacen("\"r\":[", "\"_r\":[", 1), text.replacen("\"value\":1,", "\"value\":1e400,", 1)] {
            fs::write(snapshot_path(&path), &bad).unwrap();
            let mut part = Part::default();
            let err = load_snapshot(&snapshot_path(&path), &mut part, 2).unwrap_err().to_string();
            assert_eq!(err, document(bad.as_bytes(), &snapshot_path(&path)).err().unwrap().to_string());
        }
    }

    #[test]
    fn snapshots_load_and_fail_exactly_as_before() {
        let entry = |key: &str, value: &str| {
            format!(
                "{{\"key\":\"{key}\",\"value\":{value},\"tombstone\":false,\"stamp\":{{\"p\":1,\"l\":0,\"n\":\"a\"}}}}"
            )
        };
        let ok = entry("k", "1");
        for snapshot in [
            format!("{{\"version\":1,\"entries\":[{ok}]}}"),
            format!("{{\"entries\":[{ok}],\"version\":1,\"extra\":[1e400]}}"),
            format!("{{\"version\":1,\"entries\":[{ok}],\"rooms\":{{\"a\":[{ok}],\"a\":[{}]}}}}", entry("j", "2")),
            format!("{{\"version\":1,\"entries\":[{}]}}", entry("k", "1e400")),
            format!("{{\"version\":1,\"entries\":[{}]}}", entry("k", "\"\\ud800\"")),
            format!("{{\"version\":2,\"entries\":[{ok}]}}"),
            format!("{{\"entries\":[{ok}]}}"),
            String::from("{\"version\":1,\"version\":1}"),
            format!("{{\"version\":1,\"rooms\":{{\"_x\":[{ok}]}}}}"),
            format!("{{\"version\":1,\"rooms\":{{\"_x\":[{ok}]}},\"entries\":[1]}}"),
            String::from("{\"version\":1,\"entries\":null}"),
            String::from("{\"version\":1} x"),
            String::from("[]"),
            format!("[1,[{ok}],{{\"r\":[{ok}]}}]"),
            format!("[1,[{ok}]]"),
            format!("[1,[{ok}],{{}},5]"),
            String::new(),
        ] {
            same_either_way(b"", Some(snapshot.as_bytes()), WINDOW, MIN_SPLIT);
        }
    }

    /// Rooms big enough to be built on every core: keys written in order (the map built while
    /// the runs are made) and out of order (runs sorted at the end), with a snapshot or without.
    #[test]
    fn big_rooms_build_on_every_core_as_record_by_record() {
        let keys = PARALLEL_BUILD as u64 * 2 + 7;
        for sorted in [true, false] {
            let key = |i: u64| if sorted { i } else { (i * 7919) % keys };
            let lines: Vec<Vec<u8>> = (0..keys + keys / 2)
                .map(|i| {
                    let value = if i % 3 == 0 { "{\"a\":[1,\"x\"]}" } else { "1" };
                    let del = i % 11 == 0;
                    let kind = if del { "del" } else { "set" };
                    let value = if del { String::new() } else { format!(",\"value\":{value}") };
                    format!(
                        "{{\"kind\":\"{kind}\",\"key\":\"k{:08}\"{value},\"stamp\":{{\"p\":{},\"l\":0,\"n\":\"a\"}}}}",
                        key(i % keys),
                        i + 1
                    )
                    .into_bytes()
                })
                .collect();
            let bytes = ledger_of(&lines, false);
            same_either_way(&bytes, None, WINDOW, MIN_SPLIT);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("l.jsonl");
            fs::write(&path, &bytes).unwrap();
            let mut rooms = RoomsReplay::default();
            drop(Ledger::open(&path, SyncMode::Always, |op| {
                rooms.apply(op);
            }));
            let rooms: Vec<(Room, LwwMap)> = rooms.finish().into_iter().collect();
            let snapshot = crate::ledger::snapshot::encode(&rooms, &path);
            assert!(by_lines_agrees(&snapshot));
            same_either_way(&ledger_of(&lines[..100], false), Some(&snapshot), WINDOW, MIN_SPLIT);
        }
    }

    /// The map, digest and hash one core builds, whatever the number of cores that make and
    /// merge the runs (more than this machine may have), keys sorted or not.
    #[test]
    fn runs_merged_from_any_number_of_cores_build_the_same_map() {
        let keys = PARALLEL_BUILD + RUN * 3 + 5;
        let table = |sorted: bool| {
            let mut table = Table::default();
            for i in 0..keys {
                let k = if sorted { i } else { (i * 7919) % keys };
                table.unindexed.push(format!("k{k:08}"));
                table.winners.push(Winner {
                    p: i as u64 + 1,
                    l: 0,
                    n: Arc::from("a"),
                    tombstone: i % 11 == 0,
                    value: (if i % 3 == 0 { format!("{{\"a\":[{i},\"x\"]}}") } else { i.to_string() }),
                    by: (i % 5 == 0).then(|| Arc::from("u")),
                });
            }
            table
        };
        let room = Room::DEFAULT;
        for sorted in [true, false] {
            let mut one = Digest::default();
            let (map, xor) = build(&room, table(sorted), &mut one, 1);
            assert_eq!(map.len(), keys);
            for cores in 2..=5 {
                let mut digest = Digest::default();
                assert_eq!(build(&room, table(sorted), &mut digest, cores), (map.clone(), xor), "{cores} cores");
                assert_eq!(digest, one);
            }
        }
    }

    #[test]
    fn long_lines_and_many_windows_replay_whole() {
        let long = format!(
            "{{\"kind\":\"set\",\"key\":\"long\",\"value\":\"{}\",\"stamp\":{{\"p\":9,\"l\":0,\"n\":\"a\"}}}}",
            "x".repeat(5000)
        );
        let lines: Vec<Vec<u8>> = (0..300u64)
            .map(|i| {
                if i == 150 {
                    long.clone().into_bytes()
                } else {
                    line(0, (i % 4) as u8, i as u8, i / 3, 0, 0, Some(i as usize), 1)
                }
            })
            .collect();
        let bytes = ledger_of(&lines, true);
        for (window, split) in [(WINDOW, MIN_SPLIT), (WINDOW, 0), (64, 0), (1, 0), (4096, 0)] {
            same_either_way(&bytes, None, window, split);
        }
    }
}
