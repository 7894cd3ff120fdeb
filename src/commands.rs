//! The offline subcommands: `compact`, `ledger state --at`, `ledger log`.
//!
//! Each reads the configuration's ledger and writes its report to the given writer; `main` maps
//! errors to exit codes.

use std::{collections::HashSet, io::Write};

use serde_json::{Map, Value};

use crate::{
    config::Config,
    hlc::Clock,
    ledger::{Ledger, LedgerError, history, snapshot, snapshot_path},
    lww::{LwwMap, OpKind},
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
    let mut map = LwwMap::new();
    let mut clock = Clock::new(config.mesh.node_id.clone());
    let (mut ledger, stats) = Ledger::open(path, config.ledger.sync, |op| {
        clock.witness(&op.stamp);
        map.apply(op);
    })
    .map_err(|err| match err {
        LedgerError::Locked(_) => CommandError::Usage(format!(
            "{err}: a running relay compacts online by itself ([ledger] compact_after_bytes); stop it to compact offline"
        )),
        other => other.into(),
    })?;
    let covered = ledger.len();
    let done = ledger.compact(&snapshot::encode(&map, path), covered)?;
    writeln!(
        out,
        "compacted {}: {} records and {} snapshot entries into {} ({} bytes, {} live keys, {} tombstones); old ledger kept as {}",
        path.display(),
        stats.records,
        stats.snapshot_entries,
        snapshot_path(path).display(),
        done.snapshot_bytes,
        map.live_len(),
        map.len() - map.live_len(),
        done.archive.display(),
    )?;
    Ok(())
}

/// Reads every record of history, and warns on `err` when older history was folded away.
fn history_records(config: &Config, err: &mut impl Write) -> Result<Vec<crate::lww::Op>, CommandError> {
    let path = &config.ledger.path;
    let files = history::files(path)?;
    let records = history::records(&files)?;
    // A snapshot entry no record explains means state from before the oldest file we have
    // (an upstream snapshot, or archives deleted): history before that is incomplete.
    let known: HashSet<_> = records.iter().map(|op| (&op.stamp, &op.key)).collect();
    let mut unexplained = Vec::new();
    let _ = snapshot::load(&snapshot_path(path), &mut |op| {
        if !known.contains(&(&op.stamp, &op.key)) {
            unexplained.push(op.stamp.p);
        }
    });
    if let Some(newest) = unexplained.iter().max() {
        writeln!(
            err,
            "note: {} entries of {} come from before the oldest archive; history up to {} is incomplete",
            unexplained.len(),
            snapshot_path(path).display(),
            history::format_time(*newest)
        )?;
    }
    writeln!(err, "read {} records from {} files", records.len(), files.len())?;
    Ok(records)
}

/// `aether-actix ledger state --at T`: the live state as of `at` as a JSON object.
///
/// # Errors
/// [`CommandError::Usage`] for a bad time, [`CommandError::Ledger`] for unreadable files.
pub fn state_at(config: &Config, at: &str, out: &mut impl Write, err: &mut impl Write) -> Result<(), CommandError> {
    let at_ns = history::parse_time(at).map_err(CommandError::Usage)?;
    let records = history_records(config, err)?;
    let map = history::state_at(&records, at_ns);
    let state: Map<String, Value> = map.live().map(|(k, v)| (k.clone(), v.clone())).collect();
    writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(state)).unwrap_or_default())?;
    Ok(())
}

/// `aether-actix ledger log KEY`: every write to the key, oldest first, one a line:
/// time, node, logical counter, `set`/`del`, value; the current winner is marked `*`.
///
/// # Errors
/// [`CommandError::Ledger`] for unreadable files.
pub fn key_log(config: &Config, key: &str, out: &mut impl Write, err: &mut impl Write) -> Result<(), CommandError> {
    let records = history_records(config, err)?;
    let writes = history::key_log(&records, key);
    if writes.is_empty() {
        writeln!(err, "no writes to {key:?} in the ledger or its archives")?;
    }
    let last = writes.len().saturating_sub(1);
    for (i, op) in writes.iter().enumerate() {
        let value = match op.kind {
            OpKind::Set => op.value.to_string(),
            OpKind::Del => String::new(),
        };
        let mark = if i == last { '*' } else { ' ' };
        writeln!(
            out,
            "{mark} {}  {}  l={}  {}  {value}",
            history::format_time(op.stamp.p),
            op.stamp.n,
            op.stamp.l,
            op.kind.as_str()
        )?;
    }
    Ok(())
}
