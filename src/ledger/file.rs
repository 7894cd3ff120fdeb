//! The ledger file: exclusive ownership, replay with torn-tail repair, and durable appends.
//!
//! Plain Rust and blocking I/O: the [`LedgerActor`](super::LedgerActor) runs it on its own thread.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;

use super::{Replayed, record, snapshot};
use crate::lww::Op;

/// When an appended batch counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// `fdatasync` every batch before any client or peer sees it (the default). A crash of the
    /// process, the OS or the power loses nothing anyone was shown.
    Always,
    /// Hand each batch to the OS (`write`) before anyone sees it, never `fdatasync`. A crash of the
    /// process loses nothing; an OS crash or power loss can lose the last seconds of writes.
    None,
}

/// What replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records read from the ledger and merged.
    pub records: u64,
    /// Unparseable lines skipped (the file keeps them).
    pub corrupt: u64,
    /// Bytes of a torn last line cut off the file.
    pub truncated_bytes: u64,
    /// Entries loaded from the snapshot file.
    pub snapshot_entries: u64,
    /// Wall time replay took, in milliseconds.
    pub millis: u64,
}

/// Why the ledger cannot be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An I/O call on a ledger file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the ledger's lock.
    #[error("ledger {0} is in use by another process (lock file {0}.lock is held)")]
    Locked(PathBuf),
    /// The snapshot file exists but cannot be loaded; booting without it could lose state.
    #[error("snapshot {path} cannot be loaded: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier failure left the file in an unknown state and it could not be repaired yet
    /// (every later append tries again; see [`Ledger::append`]).
    #[error("ledger {0} failed earlier and cannot be repaired yet")]
    Poisoned(PathBuf),
    /// A compaction was prepared against an older generation of the ledger file.
    #[error("snapshot prepared for ledger generation {got}, but the ledger is at generation {expected}")]
    Stale {
        /// The ledger's generation.
        expected: u64,
        /// The snapshot's.
        got: u64,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io { what, path: path.to_owned(), source }
}

/// The path of the lock file for `ledger`.
pub fn lock_path(ledger: &Path) -> PathBuf {
    suffixed(ledger, ".lock")
}

/// The path of upstream's snapshot file for `ledger`: `<ledger>.snapshot.json`.
pub fn snapshot_path(ledger: &Path) -> PathBuf {
    suffixed(ledger, ".snapshot.json")
}

/// Where compaction stages the snapshot before renaming it into place.
fn snapshot_tmp_path(ledger: &Path) -> PathBuf {
    suffixed(&snapshot_path(ledger), ".tmp")
}

/// Where compaction stages the new ledger (the tail past the snapshot) before renaming it.
fn next_path(ledger: &Path) -> PathBuf {
    suffixed(ledger, ".next")
}

/// The archive name prefix: archives are `<ledger>.archived.<unix seconds>-<n>`. Upstream's
/// `<ledger>.archived.<unix seconds>` share the prefix and sort among ours.
pub fn archive_prefix(ledger: &Path) -> PathBuf {
    suffixed(ledger, ".archived.")
}

pub(super) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// An open ledger, owned exclusively by this process.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    /// Length of the durable prefix: everything before it was appended successfully.
    len: u64,
    sync: SyncMode,
    /// Set when a failure left the file in an unknown state: what must succeed before the next
    /// append may go ahead.
    poisoned: Option<Repair>,
    /// Compactions since this ledger was opened: which file `len` refers to.
    generation: u64,
    /// Held for the lifetime of the ledger; the OS releases the lock when it closes.
    _lock: File,
}

impl Ledger {
    /// Locks and opens the ledger at `path` (creating it and its directory), loads the snapshot
    /// file beside it if there is one, then replays every record through `apply`, in file order.
    ///
    /// A torn last line (no newline) is cut off and the cut made durable; a corrupt line in the
    /// middle is skipped and counted.
    ///
    /// # Errors
    /// [`LedgerError`] if the file cannot be locked, opened, read or repaired, or the snapshot
    /// file is unreadable.
    pub fn open(path: &Path, sync: SyncMode, mut apply: impl FnMut(Op)) -> Result<(Ledger, ReplayStats), LedgerError> {
        let started = Instant::now();
        let lock = lock_and_clean(path)?;
        let mut stats = ReplayStats {
            snapshot_entries: snapshot::load(&snapshot_path(path), &mut apply)?,
            ..ReplayStats::default()
        };
        let file = open_file(path)?;
        let len = replay(path, &file, &mut stats, &mut apply)?;
        stats.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok((Ledger { path: path.to_owned(), file, len, sync, poisoned: None, generation: 0, _lock: lock }, stats))
    }

    /// [`Ledger::open`] for a boot: the snapshot file and the ledger read into every room's map
    /// at once, on every core, as strictly as `open` reads them (see [`super::replay`]), instead
    /// of op by op in file order.
    ///
    /// # Errors
    /// As [`Ledger::open`].
    pub fn open_replayed(path: &Path, sync: SyncMode) -> Result<(Ledger, ReplayStats, Replayed), LedgerError> {
        let started = Instant::now();
        let lock = lock_and_clean(path)?;
        let file = open_file(path)?;
        let mut stats = ReplayStats::default();
        let (len, replayed) = super::replay::replay(path, &file, &mut stats)?;
        stats.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ledger = Ledger { path: path.to_owned(), file, len, sync, poisoned: None, generation: 0, _lock: lock };
        Ok((ledger, stats, replayed))
    }

    /// Appends `bytes` (whole records) and, in [`SyncMode::Always`], makes them durable.
    ///
    /// On failure the file is cut back to its last durable length, so a failed batch never shows
    /// up at the next boot. If even that fails, every later append first retries the repair and
    /// is refused while it fails: a full disk that gets space back writes again, no restart needed.
    ///
    /// # Errors
    /// [`LedgerError::Io`] for the failed call (or the failed repair).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.repair()?;
        let result =
            self.file.write_all(bytes).map_err(io_err("cannot write", &self.path)).and_then(|()| match self.sync {
                SyncMode::Always => self.file.sync_data().map_err(io_err("cannot fdatasync", &self.path)),
                SyncMode::None => Ok(()),
            });
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                if self.file.set_len(self.len).and_then(|()| self.file.sync_all()).is_err() {
                    self.poisoned = Some(Repair::CutBack);
                }
                Err(err)
            }
        }
    }

    /// Folds the ledger's first `covered` bytes into a snapshot: `snapshot` (from
    /// [`snapshot::encode`]) must hold the whole state of every room as of exactly that prefix,
    /// previous snapshot included (a room left out is lost at the next boot). Records past `covered` stay in the live ledger; the old ledger is kept as an
    /// archive (for history, until [`super::retention`] prunes it), under a name no other archive
    /// has. A staging file whose write fails is removed.
    ///
    /// Every step is durable before the next, and the files are in a state that boots to the same
    /// data after a crash between any two steps (see [`CompactStep`]).
    ///
    /// # Errors
    /// [`LedgerError::Io`] when a step fails; the ledger stays usable, except after a failed final
    /// reopen, which every later append retries first.
    pub fn compact(&mut self, snapshot: &[u8], covered: u64) -> Result<Compacted, LedgerError> {
        stage_snapshot(&self.path, snapshot)?;
        self.compact_staged(snapshot.len() as u64, covered)
    }

    /// [`Ledger::compact`] with its first step already done by [`stage_snapshot`] (off the
    /// ledger's thread: writing and fsyncing a large snapshot would hold appends back):
    /// `snapshot_bytes` long, durable under its staging name.
    ///
    /// # Errors
    /// As [`Ledger::compact`].
    pub fn compact_staged(&mut self, snapshot_bytes: u64, covered: u64) -> Result<Compacted, LedgerError> {
        match self.fold(snapshot_bytes, covered, None)? {
            Some(done) => Ok(done),
            None => Err(LedgerError::Poisoned(self.path.clone())), // unreachable without a stop step
        }
    }

    /// [`Ledger::compact`], stopping right after `stop_after` (to test crashes between steps).
    #[cfg(test)]
    pub(crate) fn compact_until(
        &mut self,
        snapshot: &[u8],
        covered: u64,
        stop_after: Option<CompactStep>,
    ) -> Result<Option<Compacted>, LedgerError> {
        // 1. The new snapshot, durable under a temporary name. Boot: old snapshot + full ledger.
        stage_snapshot(&self.path, snapshot)?;
        if stop_after == Some(CompactStep::SnapshotWritten) {
            return Ok(None);
        }
        self.fold(snapshot.len() as u64, covered, stop_after)
    }

    /// Steps 2 to 5 of a compaction, the snapshot being staged.
    fn fold(
        &mut self,
        snapshot_bytes: u64,
        covered: u64,
        stop_after: Option<CompactStep>,
    ) -> Result<Option<Compacted>, LedgerError> {
        self.repair()?;
        let started = Instant::now();
        let covered = covered.min(self.len);
        let (ledger, snap, tmp, next) =
            (self.path.clone(), snapshot_path(&self.path), snapshot_tmp_path(&self.path), next_path(&self.path));
        let dir = ledger.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let stop = |step| stop_after == Some(step);

        // 2. In place. Boot: new snapshot + full ledger (records it covers merge idempotently).
        fs::rename(&tmp, &snap).map_err(io_err("cannot rename snapshot into place:", &snap))?;
        sync_dir(&dir)?;
        if stop(CompactStep::SnapshotInPlace) {
            return Ok(None);
        }
        // 3. The tail the snapshot does not cover, durable as the next ledger.
        let mut tail = vec![0; usize::try_from(self.len - covered).unwrap_or(usize::MAX)];
        self.file.read_exact_at(&mut tail, covered).map_err(io_err("cannot read tail of", &ledger))?;
        write_staged(&next, &tail)?;
        if stop(CompactStep::TailWritten) {
            return Ok(None);
        }
        // 4. The old ledger kept as an archive: a second name for the same file, which cannot
        //    overwrite an existing archive (hard_link refuses existing names).
        let archive = link_archive(&ledger)?;
        sync_dir(&dir)?;
        if stop(CompactStep::Archived) {
            return Ok(None);
        }
        // 5. The tail replaces the ledger atomically. Boot: new snapshot + tail.
        fs::rename(&next, &ledger).map_err(io_err("cannot rename new ledger into place:", &ledger))?;
        sync_dir(&dir)?;
        match OpenOptions::new().read(true).append(true).open(&ledger) {
            Ok(file) => self.file = file,
            Err(source) => {
                // Our handle now points at the archive: refuse writes rather than lose them.
                self.poisoned = Some(Repair::Reopen);
                return Err(LedgerError::Io { what: "cannot reopen ledger", path: ledger, source });
            }
        }
        let folded = covered;
        self.len = tail.len() as u64;
        self.generation += 1;
        Ok(Some(Compacted {
            archive,
            snapshot_bytes,
            folded_bytes: folded,
            tail_bytes: self.len,
            elapsed: started.elapsed(),
        }))
    }

    /// Brings a poisoned ledger back to a known state, if it can now; a no-op otherwise.
    fn repair(&mut self) -> Result<(), LedgerError> {
        match self.poisoned {
            None => {}
            Some(Repair::CutBack) => {
                // Bytes of a failed batch may still sit past `len`: cut them before anything else.
                self.file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all())
                    .map_err(io_err("cannot cut back to its last durable length the ledger", &self.path))?;
                log::warn!("ledger {}: cut back to {} bytes; appends resume", self.path.display(), self.len);
            }
            Some(Repair::Reopen) => {
                // The compaction renamed the tail over the ledger, then could not open it.
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(io_err("cannot reopen ledger", &self.path))?;
                let len = file.metadata().map_err(io_err("cannot stat ledger", &self.path))?.len();
                (self.file, self.len) = (file, len);
                self.generation += 1;
                log::warn!("ledger {}: reopened after a compaction; appends resume", self.path.display());
            }
        }
        self.poisoned = None;
        Ok(())
    }

    /// True while an earlier failure left the file in a state that must be repaired first.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Compactions since the ledger was opened.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes in the ledger file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the ledger file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ledger's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sync mode appends use.
    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }
}

/// What a poisoned ledger must do before it may append again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repair {
    /// Cut the file back to its durable length (a failed batch may be partly in it).
    CutBack,
    /// Open the ledger path again (a compaction replaced the file but could not reopen it).
    Reopen,
}

/// The steps of [`Ledger::compact`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactStep {
    /// The new snapshot is durable under `<snapshot>.tmp`.
    SnapshotWritten,
    /// The new snapshot replaced the old one.
    SnapshotInPlace,
    /// The uncovered tail is durable as `<ledger>.next`.
    TailWritten,
    /// The old ledger is also linked as an archive.
    Archived,
}

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct Compacted {
    /// Where the old ledger was kept.
    pub archive: PathBuf,
    /// Size of the new snapshot.
    pub snapshot_bytes: u64,
    /// Ledger bytes folded into the snapshot.
    pub folded_bytes: u64,
    /// Bytes left in the live ledger (written after the snapshot was taken).
    pub tail_bytes: u64,
    /// How long the fold took (writes wait this long).
    pub elapsed: std::time::Duration,
}

/// Step 1 of a compaction of `ledger`: `snapshot` (from [`snapshot::encode`]) durable under the
/// snapshot's staging name, where [`Ledger::compact_staged`] takes it. Safe beside a live ledger:
/// nothing reads the staging file but the compaction that wrote it (one at a time).
///
/// # Errors
/// [`LedgerError::Io`] when it cannot be written (the partial file is removed).
pub fn stage_snapshot(ledger: &Path, snapshot: &[u8]) -> Result<(), LedgerError> {
    // Appends go on while this runs: never take the disk space they need. Without room for the
    // snapshot and a reserve beyond it, the compaction fails before writing anything.
    let staging = snapshot_tmp_path(ledger);
    let dir = ledger.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(dir).map_err(|e| LedgerError::Io {
        what: "cannot read the free space of",
        path: dir.to_owned(),
        source: e.into(),
    })?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < snapshot.len() as u64 + STAGING_RESERVE {
        let source = rustix::io::Errno::NOSPC.into();
        return Err(LedgerError::Io { what: "not enough free space to stage a compaction as", path: staging, source });
    }
    write_staged(&staging, snapshot)
}

/// Free space a compaction leaves to appends beyond its snapshot.
const STAGING_RESERVE: u64 = 1 << 20;

pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    let mut file = File::create(path).map_err(io_err("cannot create", path))?;
    file.write_all(bytes).map_err(io_err("cannot write", path))?;
    file.sync_all().map_err(io_err("cannot fsync", path))
}

/// [`write_durably`] for a staging file of a compaction: on failure the file is removed, so a
/// compaction that ran out of disk space does not leave the space taken (and the next append
/// failing for want of it).
pub(super) fn write_staged(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    write_durably(path, bytes).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("cannot fsync directory", dir))
}

fn link_archive(ledger: &Path) -> Result<PathBuf, LedgerError> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    link_archive_at(ledger, secs)
}

/// Links `ledger` as the archive `<ledger>.archived.<secs>-<n>`, `n` past every archive of that
/// second still on disk, so the newest archive always sorts last (retention may have pruned the
/// lower numbers of the same second: reusing one would sort a new archive before older ones).
fn link_archive_at(ledger: &Path, secs: u64) -> Result<PathBuf, LedgerError> {
    let prefix = archive_prefix(ledger);
    let first = super::history::archives(ledger)?
        .iter()
        .filter(|a| a.order.0 == secs)
        .map(|a| a.order.1.saturating_add(1))
        .max()
        .unwrap_or(0);
    for n in first.. {
        let mut name = prefix.clone().into_os_string();
        name.push(format!("{secs}-{n}"));
        let archive = PathBuf::from(name);
        match fs::hard_link(ledger, &archive) {
            Ok(()) => return Ok(archive),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(LedgerError::Io { what: "cannot archive ledger as", path: archive, source }),
        }
    }
    unreachable!("u64 archive numbers exhausted")
}

/// Creates the ledger's directory, takes its lock and removes what an interrupted compaction
/// left; returns the held lock file.
fn lock_and_clean(path: &Path) -> Result<File, LedgerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err("cannot create directory for", path))?;
    }
    let lock_file = lock_path(path);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(io_err("cannot open lock file", &lock_file))?;
    lock.try_lock().map_err(|_| LedgerError::Locked(path.to_owned()))?;
    // Leftovers of a compaction that stopped half way: never authoritative (see `compact`).
    for stale in [snapshot_tmp_path(path), next_path(path)] {
        match fs::remove_file(&stale) {
            Ok(()) => log::warn!("removed {} left by an interrupted compaction", stale.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LedgerError::Io { what: "cannot remove", path: stale, source }),
        }
    }
    Ok(lock)
}

fn open_file(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io_err("cannot open ledger", path))
}

/// Reads every line of `file`; returns the length of the good prefix (after any repair).
fn replay(path: &Path, file: &File, stats: &mut ReplayStats, apply: &mut impl FnMut(Op)) -> Result<u64, LedgerError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(512);
    let mut offset = 0u64;
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err("cannot read ledger", path))?;
        if n == 0 {
            return Ok(offset);
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            // A torn last write: cut it off and make the cut durable before anyone relies on it.
            log::warn!("ledger {}: torn last line {line_no} ({n} bytes) cut off", path.display());
            file.set_len(offset).map_err(io_err("cannot truncate torn tail of", path))?;
            file.sync_all().map_err(io_err("cannot fsync", path))?;
            stats.truncated_bytes = n as u64;
            return Ok(offset);
        }
        offset += n as u64;
        match record::decode(&line[..n - 1]) {
            Ok(op) => {
                stats.records += 1;
                apply(op);
            }
            Err(err) => {
                stats.corrupt += 1;
                if stats.corrupt <= 10 {
                    log::warn!("ledger {}: line {line_no} skipped: {err}", path.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::json::Json;
    use std::io::Write as _;

    use serde_json::json;

    use super::*;
    use crate::{
        hlc::Stamp,
        lww::{LwwMap, RoomsReplay},
        room::Room,
    };
    use serde_json::Value;

    type Rooms = std::collections::HashMap<Room, LwwMap>;

    /// Opens the ledger; returns its default room's map.
    fn open(path: &Path) -> (Ledger, ReplayStats, LwwMap) {
        let (ledger, stats, mut rooms) = open_rooms(path);
        (ledger, stats, rooms.remove(&Room::DEFAULT).unwrap_or_default())
    }

    /// Opens the ledger; returns every room's map.
    fn open_rooms(path: &Path) -> (Ledger, ReplayStats, Rooms) {
        let mut rooms = RoomsReplay::default();
        let (ledger, stats) = Ledger::open(path, SyncMode::Always, |op| {
            rooms.apply(op);
        })
        .unwrap();
        (ledger, stats, rooms.finish())
    }

    fn encode(rooms: &Rooms, path: &Path) -> Vec<u8> {
        let rooms: Vec<(Room, LwwMap)> = rooms.iter().map(|(r, m)| (r.clone(), m.clone())).collect();
        snapshot::encode(&rooms, path)
    }

    fn apply(rooms: &mut Rooms, ops: &[Op]) {
        for op in ops {
            rooms.entry(op.room.clone()).or_default().apply(op.clone());
        }
    }

    /// Every room's fingerprint, by room.
    fn fingerprints(rooms: &Rooms) -> std::collections::BTreeMap<Room, Vec<u8>> {
        rooms.iter().filter(|(_, m)| !m.is_empty()).map(|(r, m)| (r.clone(), m.fingerprint())).collect()
    }

    #[test]
    fn appended_records_replay_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.jsonl");
        let (mut ledger, stats, _) = open(&path);
        assert_eq!(stats, ReplayStats { millis: stats.millis, ..ReplayStats::default() });
        let mut bytes = Vec::new();
        record::encode(&Op::set("a", json!({"x": 1}), Stamp::new(1, 0, "n")), &mut bytes);
        record::encode(&Op::del("a", Stamp::new(2, 0, "n")), &mut bytes);
        record::encode(&Op::set("b", Value::Null, Stamp::new(3, 0, "n")), &mut bytes);
        ledger.append(&bytes).unwrap();
        drop(ledger);
        let (_, stats, map) = open(&path);
        assert_eq!(stats.records, 3);
        assert_eq!(map.get("a"), None);
        assert_eq!(map.get("b"), Some(&Json::null()));
    }

    #[test]
    fn torn_tail_is_cut_and_corrupt_middle_line_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let good = "{\"kind\":\"set\",\"key\":\"k\",\"value\":1,\"stamp\":{\"p\":1,\"l\":0,\"n\":\"a\"}}\n";
        let torn = "{\"kind\":\"set\",\"key\":\"t\",\"va";
        fs::write(&path, format!("{good}garbage\n{good}{torn}")).unwrap();
        let (mut ledger, stats, map) = open(&path);
        assert_eq!((stats.records, stats.corrupt, stats.truncated_bytes), (2, 1, torn.len() as u64));
        assert_eq!(map.get("k"), Some(&Json::from(json!(1))));
        let expected_len = (2 * good.len() + "garbage\n".len()) as u64;
        assert_eq!(fs::metadata(&path).unwrap().len(), expected_len);
        // Appends continue cleanly after the repaired tail.
        let mut bytes = Vec::new();
        record::encode(&Op::set("z", json!(2), Stamp::new(9, 0, "a")), &mut bytes);
        ledger.append(&bytes).unwrap();
        drop(ledger);
        let (_, stats, map) = open(&path);
        assert_eq!((stats.records, stats.truncated_bytes), (3, 0));
        assert_eq!(map.get("z"), Some(&Json::from(json!(2))));
    }

    #[test]
    fn a_poisoned_ledger_repairs_itself_at_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let (mut ledger, _, _) = open(&path);
        append_ops(&mut ledger, &ops("a", 1, 3));
        // A failed batch left bytes past the durable length, and cutting them failed too.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"kind\":\"set\",\"ke").unwrap();
        ledger.poisoned = Some(Repair::CutBack);
        append_ops(&mut ledger, &ops("b", 10, 2));
        assert!(!ledger.is_poisoned());
        // A compaction renamed a new file over the ledger and could not open it.
        let tail = dir.path().join("tail");
        let mut bytes = Vec::new();
        record::encode(&Op::set("t", json!(1), Stamp::new(50, 0, "n")), &mut bytes);
        fs::write(&tail, &bytes).unwrap();
        fs::rename(&tail, &path).unwrap();
        ledger.poisoned = Some(Repair::Reopen);
        append_ops(&mut ledger, &ops("c", 60, 1));
        assert_eq!((ledger.generation(), ledger.len()), (1, fs::metadata(&path).unwrap().len()));
        drop(ledger);
        let (_, stats, map) = open(&path);
        assert_eq!((stats.records, stats.corrupt, stats.truncated_bytes), (2, 0, 0));
        assert_eq!(map.get("t"), Some(&Json::from(json!(1))));
    }

    #[test]
    fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let (_held, _, _) = open(&path);
        let err = Ledger::open(&path, SyncMode::Always, |_| {}).unwrap_err();
        assert!(matches!(err, LedgerError::Locked(_)), "{err}");
    }

    #[test]
    fn upstream_snapshot_file_loads_before_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let snapshot = json!({"version": 1, "compacted_at": 5, "ledger_path": "l.jsonl",
            "max_stamp": {"p": 20, "l": 0, "n": "a"},
            "stats": {"records_read": 3, "skipped_corrupt": 0, "live_keys": 1, "tombstones": 1},
            "entries": [
                {"key": "gone", "value": null, "tombstone": true, "stamp": {"p": 10, "l": 0, "n": "a"}},
                {"key": "kept", "value": [1, 2], "tombstone": false, "stamp": {"p": 20, "l": 0, "n": "a"}}]});
        fs::write(snapshot_path(&path), serde_json::to_vec_pretty(&snapshot).unwrap()).unwrap();
        // A late op with a stamp below the snapshot's max_stamp still applies (no frontier skip).
        let mut f = File::create(&path).unwrap();
        writeln!(f, "{{\"kind\":\"set\",\"key\":\"late\",\"value\":true,\"stamp\":{{\"p\":5,\"l\":0,\"n\":\"b\"}}}}")
            .unwrap();
        let (_, stats, map) = open(&path);
        assert_eq!((stats.snapshot_entries, stats.records), (2, 1));
        assert_eq!(map.get("kept"), Some(&Json::from(json!([1, 2]))));
        assert_eq!(map.get("late"), Some(&Json::from(json!(true))));
        assert!(map.register("gone").is_some_and(|r| r.tombstone));
    }

    #[test]
    fn unreadable_snapshot_refuses_to_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        fs::write(snapshot_path(&path), b"{\"version\": 2}").unwrap();
        let err = Ledger::open(&path, SyncMode::Always, |_| {}).unwrap_err();
        assert!(err.to_string().contains("unsupported version 2"), "{err}");
    }

    fn append_ops(ledger: &mut Ledger, ops: &[Op]) {
        let mut bytes = Vec::new();
        for op in ops {
            record::encode(op, &mut bytes);
        }
        ledger.append(&bytes).unwrap();
    }

    fn ops(prefix: &str, from: u64, n: u64) -> Vec<Op> {
        (from..from + n)
            .map(|i| {
                if i % 7 == 3 {
                    Op::del(format!("{prefix}{}", i % 5), Stamp::new(i, 0, "n"))
                } else {
                    Op::set(format!("{prefix}{}", i % 5), json!(i), Stamp::new(i, 0, "n"))
                }
            })
            .collect()
    }

    /// [`ops`] spread over the default room and rooms `r1`, `r2`.
    fn room_ops(prefix: &str, from: u64, n: u64) -> Vec<Op> {
        let rooms = [Room::DEFAULT, Room::parse("r1").unwrap(), Room::parse("r2").unwrap()];
        ops(prefix, from, n)
            .into_iter()
            .zip(rooms.into_iter().cycle())
            .map(|(op, room)| op.in_room(room).by(Some("alice".into())))
            .collect()
    }

    fn archives(path: &Path) -> Vec<PathBuf> {
        let prefix = archive_prefix(path).file_name().unwrap().to_string_lossy().into_owned();
        let mut found: Vec<PathBuf> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
            .collect();
        found.sort();
        found
    }

    /// Compacts what `rooms` hold (`covered` bytes), after `late` ops were appended past it,
    /// stopping after `stop`; a reopen must give the state of every op, in every room.
    fn crash_during_compaction(stop: Option<CompactStep>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let (mut ledger, _, mut rooms) = open_rooms(&path);
        // A first compaction, so a previous snapshot exists and must be kept. Room `only-first`
        // is written before it only: it lives on in that snapshot alone.
        let mut first = room_ops("a", 1, 20);
        first.push(Op::set("x", json!(1), Stamp::new(21, 0, "n")).in_room(Room::parse("only-first").unwrap()));
        append_ops(&mut ledger, &first);
        apply(&mut rooms, &first);
        ledger.compact(&encode(&rooms, &path), ledger.len()).unwrap();
        let second = room_ops("b", 100, 20);
        append_ops(&mut ledger, &second);
        apply(&mut rooms, &second);
        let covered = ledger.len();
        let snapshot = encode(&rooms, &path);
        // Writes that land while the snapshot is being made: not in it, must survive in the tail.
        let late = room_ops("c", 200, 10);
        append_ops(&mut ledger, &late);
        apply(&mut rooms, &late);
        let done = ledger.compact_until(&snapshot, covered, stop).unwrap();
        assert_eq!(done.is_some(), stop.is_none());
        drop(ledger);
        let (_, _, reopened) = open_rooms(&path);
        assert_eq!(fingerprints(&reopened).len(), 4);
        assert_eq!(fingerprints(&reopened), fingerprints(&rooms), "state after a crash after {stop:?}");
        assert!(!snapshot_tmp_path(&path).exists() && !next_path(&path).exists(), "leftovers removed at boot");
    }

    #[test]
    fn a_crash_after_any_compaction_step_loses_nothing() {
        for stop in [
            Some(CompactStep::SnapshotWritten),
            Some(CompactStep::SnapshotInPlace),
            Some(CompactStep::TailWritten),
            Some(CompactStep::Archived),
            None,
        ] {
            crash_during_compaction(stop);
        }
    }

    #[test]
    fn compaction_twice_in_a_row_and_of_an_empty_ledger_keeps_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let (mut ledger, _, mut rooms) = open_rooms(&path);
        let all = room_ops("k", 1, 40);
        append_ops(&mut ledger, &all);
        apply(&mut rooms, &all);
        let first = ledger.compact(&encode(&rooms, &path), ledger.len()).unwrap();
        assert_eq!((first.tail_bytes, ledger.len()), (0, 0));
        // Again at once (same second: archive names must still differ), then with nothing new.
        let second = ledger.compact(&encode(&rooms, &path), ledger.len()).unwrap();
        let third = ledger.compact(&encode(&rooms, &path), ledger.len()).unwrap();
        assert!(first.archive != second.archive && second.archive != third.archive);
        assert_eq!(archives(&path).len(), 3);
        drop(ledger);
        let (_, stats, reopened) = open_rooms(&path);
        assert_eq!(fingerprints(&reopened).len(), 3);
        assert_eq!(fingerprints(&reopened), fingerprints(&rooms));
        let registers: usize = rooms.values().map(LwwMap::len).sum();
        assert_eq!((stats.records, stats.snapshot_entries), (0, registers as u64));
        // The first archive still holds every record ever written (history), authors included.
        let archived = fs::read_to_string(&archives(&path)[0]).unwrap();
        assert_eq!(archived.lines().count(), 40);
        assert_eq!(archived.lines().filter(|l| l.ends_with(",\"by\":\"alice\"}")).count(), 40);
    }

    #[test]
    fn rooms_replay_apart_and_bad_room_records_are_skipped_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let stamp = r#""stamp":{"p":1,"l":0,"n":"a"}"#;
        let lines = [
            format!(r#"{{"kind":"set","key":"k","value":"default",{stamp}}}"#),
            // Upstream's record with a stray `room`: `kind` makes it the default room's.
            format!(r#"{{"kind":"set","room":"r1","key":"u","value":1,{stamp}}}"#),
            format!(r#"{{"room":"r1","op":"set","key":"k","value":"r1",{stamp},"by":"bob"}}"#),
            format!(r#"{{"room":"_bad","op":"set","key":"k","value":"lost",{stamp}}}"#),
            format!(r#"{{"room":"a b","op":"set","key":"k","value":"lost",{stamp}}}"#),
            format!(r#"{{"room":"r1","op":"nope","key":"k","value":"lost",{stamp}}}"#),
            format!(r#"{{"room":"r2","op":"del","key":"k",{stamp}}}"#),
        ];
        let torn = r#"{"room":"r3","op":"set","key":"t","va"#;
        fs::write(&path, format!("{}\n{torn}", lines.join("\n"))).unwrap();
        let (_, stats, rooms) = open_rooms(&path);
        assert_eq!((stats.records, stats.corrupt, stats.truncated_bytes), (4, 3, torn.len() as u64));
        assert_eq!(rooms.len(), 3, "{rooms:?}");
        let default = &rooms[&Room::DEFAULT];
        assert_eq!(
            (default.get("k"), default.get("u")),
            (Some(&Json::from(json!("default"))), Some(&Json::from(json!(1))))
        );
        let r1 = &rooms[&Room::parse("r1").unwrap()];
        assert_eq!((r1.get("k"), r1.get("u")), (Some(&Json::from(json!("r1"))), None));
        assert!(rooms[&Room::parse("r2").unwrap()].register("k").is_some_and(|r| r.tombstone));
    }

    #[test]
    fn a_new_archive_sorts_after_every_archive_of_its_second_even_after_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        fs::write(&path, b"").unwrap();
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        let a0 = link_archive_at(&path, 1000).unwrap();
        let a1 = link_archive_at(&path, 1000).unwrap();
        assert_eq!((name(&a0), name(&a1)), ("l.jsonl.archived.1000-0".into(), "l.jsonl.archived.1000-1".into()));
        fs::remove_file(&a0).unwrap(); // pruned
        assert_eq!(name(&link_archive_at(&path, 1000).unwrap()), "l.jsonl.archived.1000-2");
        assert_eq!(name(&link_archive_at(&path, 1001).unwrap()), "l.jsonl.archived.1001-0");
    }
}
