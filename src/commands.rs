//! The subcommands: `compact`, `ledger state`, `ledger log`, `ledger rooms` (offline), and
//! `reload` (finds the running relay for `reload`). The history commands read one room at a time
//! (the default room unless `--room` names another); `compact` keeps every room.
//!
//! Each reads the configuration's ledger and writes its report to the given writer; `main` maps
//! errors to exit codes.

use std::{collections::HashSet, io::Write, time::SystemTime};

use serde_json::{Map, Value};

use crate::{
    config::Config,
    hlc::Clock,
    ledger::{Ledger, LedgerError, history, lock_path, retention, snapshot, snapshot_path},
    lww::{LwwMap, Op, OpKind, RoomsReplay},
    room::Room,
};

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The ledger could not be read or compacted.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// Writing the report failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// `aether-actix compact`: folds the ledger into its snapshot while no relay runs on it.
///
/// # Errors
/// [`CommandError::Ledger`], e.g. when a relay holds the ledger (it compacts online by itself).
pub fn compact(config: &Config, out: &mut impl Write) -> Result<(), CommandError> {
    let path = &config.ledger.path;
    let mut rooms = RoomsReplay::default();
    let mut clock = Clock::new(config.mesh.node_id.clone());
    let (mut ledger, stats) = Ledger::open(path, config.ledger.sync, |op| {
        clock.witness(&op.stamp);
        rooms.apply(op);
    })
    .map_err(|err| match err {
        LedgerError::Locked(_) => CommandError::Usage(format!(
            "{err}: a running relay compacts online by itself ([ledger] compact_after_bytes); stop it to compact offline"
        )),
        other => other.into(),
    })?;
    let covered = ledger.len();
    let rooms: Vec<(Room, LwwMap)> = rooms.finish().into_iter().collect();
    let done = ledger.compact(&snapshot::encode(&rooms, path), covered)?;
    let live: usize = rooms.iter().map(|(_, map)| map.live_len()).sum();
    let registers: usize = rooms.iter().map(|(_, map)| map.len()).sum();
    let named = rooms.iter().filter(|(room, map)| !room.is_default() && !map.is_empty()).count();
    writeln!(
        out,
        "compacted {}: {} records and {} snapshot entries into {} ({} bytes, {} live keys, {} tombstones{}); old ledger kept as {}",
        path.display(),
        stats.records,
        stats.snapshot_entries,
        snapshot_path(path).display(),
        done.snapshot_bytes,
        live,
        registers - live,
        if named == 0 { String::new() } else { format!(", in the default room and {named} named rooms") },
        done.archive.display(),
    )?;
    let pruned = retention::prune(path, &config.ledger.retention(), SystemTime::now())?;
    if !pruned.removed.is_empty() {
        writeln!(
            out,
            "pruned {} archive(s) ([ledger] keep_archives = {}, keep_archive_days = {}), {} kept; history exact from {}",
            pruned.removed.len(),
            config.ledger.keep_archives,
            config.ledger.keep_archive_days,
            pruned.kept,
            pruned.horizon.map_or_else(|| "the first write".to_owned(), history::format_time),
        )?;
    }
    Ok(())
}

/// `aether-actix reload`: checks that the configuration loads as the relay would load it (TLS files
/// included) and finds the relay running on its ledger; returns that relay's process id, for
/// `main` to send SIGHUP to. The relay re-reads the same file itself and logs the outcome.
///
/// # Errors
/// [`CommandError::Usage`] when the configuration's TLS files cannot be used, or no relay runs on
/// the configured ledger (its lock is free, or it left no pid file).
pub fn reload_target(config: &Config) -> Result<u32, CommandError> {
    crate::config::Live::prepare(config.clone()).map_err(CommandError::Usage)?;
    let ledger = &config.ledger.path;
    let running = match std::fs::File::open(lock_path(ledger)) {
        // A relay holds this lock for as long as it runs (std's file locks are flock(2), as the
        // relay's): if we can take it, nobody is running.
        Ok(lock) => !matches!(lock.try_lock(), Ok(())),
        Err(_) => false,
    };
    if !running {
        return Err(CommandError::Usage(format!("no relay is running on the ledger {}", ledger.display())));
    }
    let pid_file = crate::relay::pid_path(ledger);
    let text = std::fs::read_to_string(&pid_file)
        .map_err(|err| CommandError::Usage(format!("cannot read {}: {err}", pid_file.display())))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| CommandError::Usage(format!("{}: not a process id: {:?}", pid_file.display(), text.trim())))
}

/// What the ledger's files can tell of the past, of one room or of all.
pub(crate) struct History {
    /// State from before the horizon: the history base (pruned archives) and snapshot entries no
    /// record explains (an upstream snapshot, archives deleted by hand). Every stamp is at or
    /// before `horizon`.
    pub(crate) base: Vec<Op>,
    /// Every record still on disk, in file order.
    pub(crate) records: Vec<Op>,
    /// History is exact from here on (ns since 1970); `None`: from the first write.
    pub(crate) horizon: Option<u64>,
}

/// Reads every record of history of `room` (every room's for `None`), and says on `err` how far
/// back it can see.
pub(crate) fn history(config: &Config, room: Option<&Room>, err: &mut impl Write) -> Result<History, CommandError> {
    let path = &config.ledger.path;
    let ours = |op: &Op| room.is_none_or(|room| op.room == *room);
    let files = history::files(path)?;
    let mut records = history::records(&files)?;
    records.retain(ours);
    let (mut base, _) = retention::base(path)?;
    base.retain(ours);
    // A room the pruned archives never wrote has its whole history on disk.
    let pruned_horizon = base.iter().map(|op| op.stamp.p).max();
    if let Some(horizon) = pruned_horizon {
        writeln!(
            err,
            "note: older archives were pruned into {} ([ledger] keep_archives = {}, keep_archive_days = {}); before {} only the state then is known, not each write",
            retention::base_path(path).display(),
            config.ledger.keep_archives,
            config.ledger.keep_archive_days,
            history::format_time(horizon),
        )?;
    }
    // A snapshot entry that neither a record nor the base explains is state from before the oldest
    // file we have (an upstream snapshot, or archives deleted by hand): it joins the base.
    let mut unexplained = Vec::new();
    {
        let known: HashSet<_> = records.iter().chain(&base).map(|op| (&op.stamp, &op.room, &op.key)).collect();
        let _ = snapshot::load(&snapshot_path(path), &mut |op| {
            if ours(&op) && !known.contains(&(&op.stamp, &op.room, &op.key)) {
                unexplained.push(op);
            }
        });
    }
    let unexplained_horizon = unexplained.iter().map(|op| op.stamp.p).max();
    if let Some(newest) = unexplained_horizon {
        writeln!(
            err,
            "note: {} entries of {} come from before the oldest archive; history before {} is incomplete",
            unexplained.len(),
            snapshot_path(path).display(),
            history::format_time(newest)
        )?;
    }
    base.extend(unexplained);
    let horizon = pruned_horizon.max(unexplained_horizon);
    writeln!(
        err,
        "read {} records{} from {} files ({} archives and the live ledger); history exact from {}",
        records.len(),
        match room {
            Some(room) if !room.is_default() => format!(" of room {room}"),
            _ => String::new(),
        },
        files.len(),
        files.len().saturating_sub(usize::from(path.exists())),
        horizon.map_or_else(|| "the first write".to_owned(), history::format_time),
    )?;
    Ok(History { base, records, horizon })
}

/// `aether-actix ledger state [--at T] [--room NAME]`: the live state of `room` as of `at` (now
/// without it) as a JSON object.
///
/// # Errors
/// [`CommandError::Usage`] for a bad time or one before the horizon, [`CommandError::Ledger`] for
/// unreadable files.
pub fn state_at(
    config: &Config,
    at: Option<&str>,
    room: &Room,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), CommandError> {
    let at_ns = at.map(history::parse_time).transpose().map_err(CommandError::Usage)?;
    let history = history(config, Some(room), err)?;
    if let Some((at_ns, horizon)) = at_ns.zip(history.horizon).filter(|(at_ns, horizon)| at_ns < horizon) {
        return Err(CommandError::Usage(format!(
            "cannot tell the state at {}: history is exact only from {} (older archives were pruned or are missing)",
            history::format_time(at_ns),
            history::format_time(horizon)
        )));
    }
    let map = history::state_at(&history.base, &history.records, room, at_ns.unwrap_or(u64::MAX));
    let state: Map<String, Value> = map.live().map(|(k, v)| (k.clone(), v.to_value())).collect();
    writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(state)).unwrap_or_default())?;
    Ok(())
}

/// `aether-actix ledger log KEY [--room NAME]`: every write to the key in `room`, oldest first, one
/// a line: time, node, logical counter, `by=<user>` when the writer's token named one, `set`/`del`,
/// value; the current winner is marked `*`. A line marked `~` is the key's value at the history
/// horizon (its earlier writes were pruned).
///
/// # Errors
/// [`CommandError::Ledger`] for unreadable files.
pub fn key_log(
    config: &Config,
    key: &str,
    room: &Room,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), CommandError> {
    let history = history(config, Some(room), err)?;
    let writes = key_writes(&history, room, key);
    if writes.is_empty() {
        match room.name() {
            None => writeln!(err, "no writes to {key:?} in the ledger or its archives")?,
            Some(name) => writeln!(err, "no writes to {key:?} in room {name} in the ledger or its archives")?,
        }
    }
    let last = writes.len().saturating_sub(1);
    for (i, (op, from_base)) in writes.iter().enumerate() {
        let value = match op.kind {
            OpKind::Set => op.value.to_string(),
            OpKind::Del => String::new(),
        };
        let mark = if i == last {
            '*'
        } else if *from_base {
            '~'
        } else {
            ' '
        };
        let by = op.by.as_deref().map_or_else(String::new, |by| format!("by={}  ", written_user(by)));
        writeln!(
            out,
            "{mark} {}  {}  l={}  {by}{}  {value}",
            history::format_time(op.stamp.p),
            op.stamp.n,
            op.stamp.l,
            op.kind.as_str()
        )?;
    }
    Ok(())
}

/// Every write to `key` in `room` that `history` knows, in stamp order; `true` marks the value at
/// the history horizon (its earlier writes were pruned), unless a record still on disk is that
/// very write. What `ledger log` prints and the HTTP API's key history answers.
pub(crate) fn key_writes<'a>(history: &'a History, room: &Room, key: &str) -> Vec<(&'a Op, bool)> {
    let mut writes: Vec<(&Op, bool)> =
        history::key_log(&history.records, room, key).into_iter().map(|op| (op, false)).collect();
    for op in history.base.iter().filter(|op| op.key == key && op.room == *room) {
        if !writes.iter().any(|(w, _)| w.stamp == op.stamp) {
            writes.push((op, true));
        }
    }
    writes.sort_by(|a, b| a.0.stamp.cmp(&b.0.stamp));
    writes
}

/// A user (`by`) as one word on a line: as recorded when it is plain printable text, else quoted
/// as a JSON string (spaces, quotes, control characters).
fn written_user(by: &str) -> String {
    if by.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\') {
        by.to_owned()
    } else {
        Value::from(by).to_string()
    }
}

/// `aether-actix ledger rooms`: every room with registers now, the default room (`_`) first and
/// always, with its live keys and registers (tombstones included), one a line under a header.
///
/// # Errors
/// [`CommandError::Ledger`] for unreadable files.
pub fn rooms(config: &Config, out: &mut impl Write, err: &mut impl Write) -> Result<(), CommandError> {
    let history = history(config, None, err)?;
    let mut rooms: Vec<(Room, LwwMap)> = history::rooms_at(&history.base, &history.records, u64::MAX)
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .collect();
    if !rooms.iter().any(|(room, _)| room.is_default()) {
        rooms.push((Room::DEFAULT, LwwMap::new()));
    }
    rooms.sort_by(|a, b| a.0.cmp(&b.0));
    let width = rooms.iter().map(|(room, _)| room.written().len()).max().unwrap_or(0).max("ROOM".len());
    writeln!(out, "{:<width$}  {:>9}  {:>9}", "ROOM", "LIVE KEYS", "REGISTERS")?;
    for (room, map) in &rooms {
        writeln!(out, "{:<width$}  {:>9}  {:>9}", room.written(), map.live_len(), map.len())?;
    }
    Ok(())
}
