//! Archive retention: after each successful compaction, the oldest archives past `[ledger]
//! keep_archives`, or archived longer ago than `keep_archive_days`, are folded into the history
//! base (`<ledger>.history.json`) and deleted. Never the live ledger, never the snapshot.
//!
//! The base is the state as of the end of the newest pruned archive (snapshot format, version 1,
//! every room: named rooms under `rooms`, as in the snapshot), so history stays exact after pruning: the state at any moment at or after the base's newest
//! stamp (the *horizon*) is the base merged with every later record still on disk. Before the
//! horizon, history can no longer be told, and the history commands say so.
//!
//! Crash-safe: the new base is durable (temporary name, fsync, rename, fsync the directory) before
//! any archive is deleted; a crash in between leaves records both in the base and in an archive,
//! which merge idempotently, and the next prune folds them again.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    file::{LedgerError, suffixed, sync_dir, write_staged},
    history, snapshot,
};
use crate::{
    lww::{Op, RoomsReplay},
    room::Room,
};

/// How many archives to keep; an archive goes as soon as either limit says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many archives, the newest; 0: no limit on the count.
    pub keep_archives: u64,
    /// Keep archives archived less than this many days ago; 0: no limit on age.
    pub keep_archive_days: u64,
}

impl Retention {
    /// No limit: every archive is kept.
    pub const KEEP_ALL: Retention = Retention { keep_archives: 0, keep_archive_days: 0 };

    /// Neither limit is set: archives are kept forever.
    pub fn keeps_all(&self) -> bool {
        self.keep_archives == 0 && self.keep_archive_days == 0
    }

    /// How many of `archives` (oldest first) go: always the oldest ones, so what stays is one
    /// unbroken stretch of history up to the live ledger.
    pub fn doomed(&self, archives: &[history::Archive], now_secs: u64) -> usize {
        let count = usize::try_from(self.keep_archives).unwrap_or(usize::MAX);
        let by_count = if self.keep_archives == 0 { 0 } else { archives.len().saturating_sub(count) };
        let by_age = if self.keep_archive_days == 0 {
            0
        } else {
            let cutoff = now_secs.saturating_sub(self.keep_archive_days.saturating_mul(86_400));
            archives.iter().take_while(|a| a.order.0 < cutoff).count()
        };
        by_count.max(by_age)
    }
}

/// The history base beside `ledger`: `<ledger>.history.json`.
pub fn base_path(ledger: &Path) -> PathBuf {
    suffixed(ledger, ".history.json")
}

/// What a prune did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The archives deleted, oldest first.
    pub removed: Vec<PathBuf>,
    /// Archives left.
    pub kept: usize,
    /// The new horizon (ns since 1970): history is exact from here on. `None` if nothing was pruned.
    pub horizon: Option<u64>,
}

/// Applies `retention` to the archives beside `ledger` (see the module docs).
///
/// # Errors
/// [`LedgerError`] when the archives cannot be listed or read, or the base cannot be loaded or
/// written; then nothing was deleted.
pub fn prune(ledger: &Path, retention: &Retention, now: SystemTime) -> Result<Pruned, LedgerError> {
    let archives = history::archives(ledger)?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let n = retention.doomed(&archives, now_secs);
    if n == 0 {
        return Ok(Pruned { kept: archives.len(), ..Pruned::default() });
    }
    let (doomed, kept) = archives.split_at(n);
    let doomed: Vec<PathBuf> = doomed.iter().map(|a| a.path.clone()).collect();
    let base = base_path(ledger);
    // Every room folds into its own map: the base keeps each room apart, as the snapshot does.
    let mut rooms = RoomsReplay::default();
    snapshot::load(&base, &mut |op| {
        rooms.apply(op);
    })?;
    for op in history::records(&doomed)? {
        rooms.apply(op);
    }
    let rooms: Vec<(Room, _)> = rooms.finish().into_iter().collect();
    let horizon = rooms.iter().filter_map(|(_, map)| map.max_stamp()).map(|s| s.p).max();
    let tmp = suffixed(&base, ".tmp");
    write_staged(&tmp, &snapshot::encode(&rooms, ledger))?;
    fs::rename(&tmp, &base).map_err(|source| LedgerError::Io {
        what: "cannot rename history base into place:",
        path: base.clone(),
        source,
    })?;
    let dir = ledger.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(dir)?;
    for path in &doomed {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LedgerError::Io { what: "cannot delete archive", path: path.clone(), source }),
        }
    }
    sync_dir(dir)?;
    Ok(Pruned { removed: doomed, kept: kept.len(), horizon })
}

/// The history base's entries as ops of their rooms (empty when nothing was ever pruned), and its
/// horizon (the newest stamp of any room; a room's own is the newest of its ops).
///
/// # Errors
/// [`LedgerError::Snapshot`] when the base exists but cannot be read.
pub fn base(ledger: &Path) -> Result<(Vec<Op>, Option<u64>), LedgerError> {
    let mut ops = Vec::new();
    snapshot::load(&base_path(ledger), &mut |op| ops.push(op))?;
    let horizon = ops.iter().map(|op| op.stamp.p).max();
    Ok((ops, horizon))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        hlc::Stamp,
        ledger::{Ledger, SyncMode, record},
    };

    fn archive(secs: u64, n: u64) -> history::Archive {
        history::Archive { order: (secs, n), path: PathBuf::from(format!("l.archived.{secs}-{n}")) }
    }

    #[test]
    fn limits_take_the_oldest_and_zero_keeps_all() {
        let day = 86_400;
        let now = 100 * day;
        let list: Vec<_> = (0..6).map(|i| archive(now - (10 - i) * day, 0)).collect(); // 10..5 days old
        let keep = |keep_archives, keep_archive_days| Retention { keep_archives, keep_archive_days };
        assert_eq!(keep(0, 0).doomed(&list, now), 0);
        assert!(keep(0, 0).keeps_all());
        assert_eq!(keep(4, 0).doomed(&list, now), 2);
        assert_eq!(keep(10, 0).doomed(&list, now), 0);
        assert_eq!(keep(0, 8).doomed(&list, now), 2); // 10 and 9 days old; 8 days is not older
        assert_eq!(keep(5, 7).doomed(&list, now), 3); // either limit
        assert_eq!(keep(1, 365).doomed(&list, now), 5);
        assert_eq!(keep(1, 1).doomed(&[], now), 0);
    }

    /// Compacts after each of three batches, prunes down to one archive, and checks that the base
    /// plus what is left gives the exact state of every room at every moment from the horizon on.
    #[test]
    fn pruned_history_stays_exact_from_the_horizon_in_every_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let (mut ledger, _) = Ledger::open(&path, SyncMode::Always, |_| {}).unwrap();
        let rooms = [Room::DEFAULT, Room::parse("r1").unwrap(), Room::parse("r2").unwrap()];
        let mut all = Vec::new();
        for batch in 0..3u64 {
            let mut bytes = Vec::new();
            for i in 0..10u64 {
                let p = batch * 100 + i + 1;
                let op = if i == 7 {
                    Op::del(format!("k{}", i % 4), Stamp::new(p, 0, "n"))
                } else {
                    Op::set(format!("k{}", (i + batch) % 4), json!(p), Stamp::new(p, 0, "n"))
                };
                // Room r2 is written in the first batch only: it lives on in the base alone.
                let room = rooms[usize::try_from(i % 3).unwrap()].clone();
                let op = if batch > 0 && room == rooms[2] { op } else { op.in_room(room) };
                record::encode(&op, &mut bytes);
                all.push(op);
            }
            ledger.append(&bytes).unwrap();
            let maps: Vec<_> = state_now(&all).into_iter().collect();
            ledger.compact(&snapshot::encode(&maps, &path), ledger.len()).unwrap();
        }
        assert_eq!(history::archives(&path).unwrap().len(), 3);
        let done = prune(&path, &Retention { keep_archives: 1, keep_archive_days: 0 }, SystemTime::now()).unwrap();
        assert_eq!((done.removed.len(), done.kept), (2, 1));
        assert!(done.removed.iter().all(|p| !p.exists()));
        assert!(path.exists() && crate::ledger::snapshot_path(&path).exists());
        let (base, horizon) = base(&path).unwrap();
        assert_eq!((horizon, done.horizon), (Some(110), Some(110)));
        for room in &rooms {
            assert!(base.iter().any(|op| op.room == *room), "{room} in the base");
        }
        let records = history::records(&history::files(&path).unwrap()).unwrap();
        for at in [110, 111, 205, 300, 310] {
            for room in &rooms {
                let want = history::state_at(&[], &all, room, at);
                assert_eq!(
                    history::state_at(&base, &records, room, at).fingerprint(),
                    want.fingerprint(),
                    "{room} at {at}"
                );
            }
            let every = history::rooms_at(&base, &records, at);
            for (room, map) in history::rooms_at(&[], &all, at) {
                assert_eq!(every[&room].fingerprint(), map.fingerprint(), "{room} at {at}");
            }
        }
        // Nothing left to prune: a no-op that keeps the base.
        let again = prune(&path, &Retention { keep_archives: 1, keep_archive_days: 0 }, SystemTime::now()).unwrap();
        assert_eq!((again.removed.len(), again.kept, again.horizon), (0, 1, None));
        assert_eq!(self::base(&path).unwrap().1, Some(110));
    }

    fn state_now(ops: &[Op]) -> std::collections::HashMap<Room, crate::lww::LwwMap> {
        history::rooms_at(&[], ops, u64::MAX)
    }
}
