//! History from the ledger files: the state at a past moment, and one key's writes over time, of
//! one room (every record carries its room; see [`super::record`]).
//!
//! Reads the history base that retention leaves (see [`super::retention`]), the archives that
//! compaction leaves (`<ledger>.archived.*`, oldest first) and then the live ledger, without taking the ledger's lock: it only reads, so it is safe beside a running relay
//! (a torn last line, a write in progress, is ignored).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use super::{
    file::{LedgerError, archive_prefix},
    record,
};
use crate::{
    lww::{LwwMap, Op, RoomsReplay},
    room::Room,
};

/// One archive compaction left: `<ledger>.archived.<secs>-<n>` (ours) or `.<secs>` (upstream's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Archive {
    /// When it was archived (seconds since 1970), then our number within that second.
    pub order: (u64, u64),
    /// The file.
    pub path: PathBuf,
}

/// The archives beside `ledger`, oldest first.
///
/// # Errors
/// [`LedgerError::Io`] when the directory cannot be listed.
pub fn archives(ledger: &Path) -> Result<Vec<Archive>, LedgerError> {
    let prefix = archive_prefix(ledger);
    let dir = ledger.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name_prefix = prefix.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let entries = std::fs::read_dir(dir).map_err(|source| LedgerError::Io {
        what: "cannot list",
        path: dir.to_owned(),
        source,
    })?;
    let mut archives: Vec<Archive> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let order = archive_order(name.strip_prefix(&name_prefix)?)?;
            Some(Archive { order, path: entry.path() })
        })
        .collect();
    archives.sort();
    Ok(archives)
}

/// The ledger files holding history, oldest first: archives, then the live ledger.
///
/// # Errors
/// [`LedgerError::Io`] when the directory cannot be listed.
pub fn files(ledger: &Path) -> Result<Vec<PathBuf>, LedgerError> {
    let mut files: Vec<PathBuf> = archives(ledger)?.into_iter().map(|a| a.path).collect();
    if ledger.exists() {
        files.push(ledger.to_owned());
    }
    Ok(files)
}

/// `<secs>-<n>` (ours) or `<secs>` (upstream's) as a sort key.
fn archive_order(suffix: &str) -> Option<(u64, u64)> {
    match suffix.split_once('-') {
        Some((secs, n)) => Some((secs.parse().ok()?, n.parse().ok()?)),
        None => Some((suffix.parse().ok()?, 0)),
    }
}

/// Every record in `files`, in order, once each (a crash during compaction can leave the same
/// record in an archive and in the live ledger). Corrupt lines and a torn last line are skipped.
///
/// # Errors
/// [`LedgerError::Io`] when a file cannot be read.
pub fn records(files: &[PathBuf]) -> Result<Vec<Op>, LedgerError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for path in files {
        let file =
            File::open(path).map_err(|source| LedgerError::Io { what: "cannot open", path: path.clone(), source })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(|source| LedgerError::Io {
                what: "cannot read",
                path: path.clone(),
                source,
            })?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(op) = record::decode(&line[..n - 1])
                && seen.insert((op.stamp.clone(), op.room.clone(), op.key.clone(), op.kind))
            {
                out.push(op);
            }
        }
    }
    Ok(out)
}

/// The state of `room` as of wall time `at_ns`: the history base (see [`super::retention`]; empty
/// when nothing was pruned), then every record stamped at or before `at_ns`, merged; ops of other
/// rooms are left out. Exact for any `at_ns` at or after the base's horizon.
pub fn state_at(base: &[Op], records: &[Op], room: &Room, at_ns: u64) -> LwwMap {
    let mut map = LwwMap::new();
    for op in base.iter().chain(records.iter().filter(|op| op.stamp.p <= at_ns)).filter(|op| op.room == *room) {
        map.apply(op.clone());
    }
    map
}

/// [`state_at`] for every room at once: each room that has a register then, with its map.
pub fn rooms_at(base: &[Op], records: &[Op], at_ns: u64) -> HashMap<Room, LwwMap> {
    let mut rooms = RoomsReplay::default();
    for op in base.iter().chain(records.iter().filter(|op| op.stamp.p <= at_ns)) {
        rooms.apply(op.clone());
    }
    rooms.finish()
}

/// Every write to `key` in `room`, in stamp order.
pub fn key_log<'a>(records: &'a [Op], room: &Room, key: &str) -> Vec<&'a Op> {
    let mut writes: Vec<&Op> = records.iter().filter(|op| op.key == key && op.room == *room).collect();
    writes.sort_by(|a, b| a.stamp.cmp(&b.stamp));
    writes
}

/// Parses a moment: RFC 3339 (`2026-11-28T22:30:00Z`, `2026-11-28T23:30:00.5+01:00`), or a
/// number of nanoseconds since the Unix epoch.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ns) = text.parse::<u64>() {
        return Ok(ns);
    }
    let bad = || format!("{text:?} is not an RFC 3339 time (like 2026-11-28T22:30:00Z) or nanoseconds since 1970");
    let (date, rest) = text.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(mo)), Some(Ok(d))) = (ymd.next(), ymd.next(), ymd.next()) else { return Err(bad()) };
    let (clock, offset_s) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (clock, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':').ok_or_else(bad)?;
        (clock, sign * (oh.parse::<i64>().map_err(|_| bad())? * 3600 + om.parse::<i64>().map_err(|_| bad())? * 60))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.splitn(3, ':').map(str::parse::<i64>);
    let (Some(Ok(h)), Some(Ok(mi)), Some(Ok(s))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 || frac.len() > 9 {
        return Err(bad());
    }
    let nanos: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset_s;
    u64::try_from(secs * 1_000_000_000 + nanos).map_err(|_| bad())
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nanoseconds.
pub fn format_time(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3600, rem % 3600 / 60, rem % 60, ns % 1_000_000_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2026-11-28T22:30:00Z"), Ok(1_795_905_000_000_000_000));
        assert_eq!(parse_time("2026-11-28T23:30:00.5+01:00"), Ok(1_795_905_000_500_000_000));
        assert_eq!(parse_time("2024-02-29T12:00:00.000000001Z"), Ok(1_709_208_000_000_000_001));
        assert_eq!(parse_time("123"), Ok(123));
        for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-28", "2026-11-28T25:00:00Z", "-5"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time(1_709_208_000_000_000_001), "2024-02-29T12:00:00.000000001Z");
        for ns in [0, 1_795_905_000_123_456_789, 951_782_400_000_000_000] {
            assert_eq!(parse_time(&format_time(ns)), Ok(ns));
        }
    }

    #[test]
    fn archives_sort_by_time_then_number_upstream_names_included() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("l.jsonl");
        for name in ["l.jsonl.archived.200-1", "l.jsonl.archived.1000", "l.jsonl.archived.200-0", "l.jsonl", "other"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> =
            files(&ledger).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["l.jsonl.archived.200-0", "l.jsonl.archived.200-1", "l.jsonl.archived.1000", "l.jsonl"]);
    }

    #[test]
    fn the_same_write_in_two_rooms_is_two_writes_and_each_room_keeps_its_own() {
        use serde_json::json;

        use crate::hlc::Stamp;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let room = Room::parse("r").unwrap();
        let mut bytes = Vec::new();
        let set = Op::set("k", json!(1), Stamp::new(5, 0, "n"));
        super::record::encode(&set, &mut bytes);
        super::record::encode(&set.clone().in_room(room.clone()), &mut bytes);
        super::record::encode(&Op::set("k", json!(2), Stamp::new(6, 0, "n")).in_room(room.clone()), &mut bytes);
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap(); // a crash during compaction: every record twice
        let records = records(&[a, b]).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(state_at(&[], &records, &Room::DEFAULT, u64::MAX).get("k"), Some(&Json::from(json!(1))));
        assert_eq!(state_at(&[], &records, &room, 5).get("k"), Some(&Json::from(json!(1))));
        assert_eq!(state_at(&[], &records, &room, 6).get("k"), Some(&Json::from(json!(2))));
        assert_eq!(key_log(&records, &room, "k").len(), 2);
        assert_eq!(key_log(&records, &Room::DEFAULT, "k").len(), 1);
        assert_eq!(rooms_at(&[], &records, u64::MAX).len(), 2);
    }
}
