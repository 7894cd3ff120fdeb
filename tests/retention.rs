//! Archive retention (`[ledger] keep_archives`, `keep_archive_days`) against the real binary and
//! its history commands: pruning deletes the oldest archives only, never state, and history stays
//! exact from the horizon it reports, refusing to tell what it can no longer see.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aether_actix::ledger::history;
use common::{Client, Server};
use serde_json::{Value, json};

const FAST: &str = "[limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n";

fn metric(server: &Server, name: &str) -> u64 {
    let text = server.get("/metrics").1;
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

fn archives(ledger: &Path) -> Vec<PathBuf> {
    history::archives(ledger).unwrap().into_iter().map(|a| a.path).collect()
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(config).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The horizon the history commands report ("history exact from <time>"), if any.
fn horizon(err: &str) -> Option<u64> {
    let at = err.split("history exact from ").nth(1)?.split_whitespace().next()?;
    history::parse_time(at).ok()
}

/// Sets and deletes on seven keys, each waited for (so stamps follow the order of the writes),
/// in rounds of 40 until the relay has compacted `compactions` times; returns how many were made.
/// (How many compactions a number of writes gives depends on how the writes batch.)
fn write_history(server: &Server, compactions: u64) -> usize {
    let mut c = server.client();
    let mut i = 0;
    for _ in 0..50 {
        for _ in 0..40 {
            match i % 4 {
                3 => c.delete(&format!("t{}", i % 7)),
                _ => c.set(&format!("t{}", i % 7), json!(i)),
            }
            c.recv_until(|f| f["key"] == format!("t{}", i % 7));
            i += 1;
        }
        if metric(server, "aether_compactions_total") >= compactions {
            return i;
        }
    }
    panic!("{compactions} compactions did not happen in {i} writes");
}

/// Every record in `files`, once each, in stamp order.
fn all_records(files: &[PathBuf]) -> Vec<Value> {
    let mut records: Vec<Value> = Vec::new();
    for file in files {
        for line in fs::read_to_string(file).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            if !records.contains(&record) {
                records.push(record);
            }
        }
    }
    records.sort_by_key(|r| r["stamp"]["p"].as_u64().unwrap());
    records
}

fn replay_until(records: &[Value], at: u64) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for r in records.iter().filter(|r| r["stamp"]["p"].as_u64().unwrap() <= at) {
        let key = r["key"].as_str().unwrap().to_owned();
        if r["kind"] == "del" {
            state.remove(&key);
        } else {
            state.insert(key, r["value"].clone());
        }
    }
    state
}

/// A relay keeps every archive (`keep_archives = 0`); the whole history is read from them. Then
/// offline `compact` with `keep_archives = 1` prunes: state at every moment from the reported
/// horizon on still equals a replay of the whole history; before it, `ledger state` refuses
/// (exit 2) instead of answering wrong; the relay boots to the same state.
#[test]
fn pruned_history_is_exact_from_its_horizon_and_refuses_before_it() {
    let server = Server::start(&format!("{FAST}[ledger]\ncompact_after_bytes = 2048\nkeep_archives = 0\n"));
    let written = write_history(&server, 3);
    let ledger = server.ledger_path();
    let kept_all = archives(&ledger);
    assert!(kept_all.len() >= 3, "{kept_all:?}");
    let full = all_records(&history::files(&ledger).unwrap());
    assert_eq!(full.len(), written);
    let expected_now = server.client().snapshot["data"].clone();
    let everything = cli(&server.config, &["ledger", "state", "--at", "0"]);
    assert!(everything.status.success(), "{}", stderr(&everything));
    assert!(stderr(&everything).contains("history exact from the first write"), "{}", stderr(&everything));

    let config = server.config.clone();
    let dir = Arc::clone(&server.dir);
    assert!(server.terminate().0.success());
    let text = fs::read_to_string(&config).unwrap().replace("keep_archives = 0", "keep_archives = 1");
    fs::write(&config, text).unwrap();
    let compacted = cli(&config, &["compact"]);
    assert!(compacted.status.success(), "{}", stderr(&compacted));
    let stdout = String::from_utf8_lossy(&compacted.stdout).into_owned();
    assert!(stdout.contains(&format!("pruned {} archive(s)", kept_all.len())), "{stdout}");
    assert_eq!(archives(&ledger).len(), 1, "the archive this compaction made stays");
    assert!(kept_all.iter().all(|a| !a.exists()), "the oldest archives are gone");
    assert!(ledger.exists() && PathBuf::from(format!("{}.snapshot.json", ledger.display())).exists());

    let probe = cli(&config, &["ledger", "state", "--at", "2100-01-01T00:00:00Z"]);
    assert!(probe.status.success(), "{}", stderr(&probe));
    assert_eq!(serde_json::from_slice::<Value>(&probe.stdout).unwrap(), expected_now);
    let horizon = horizon(&stderr(&probe)).unwrap_or_else(|| panic!("no horizon in {}", stderr(&probe)));
    assert!(stderr(&probe).contains("were pruned into"), "{}", stderr(&probe));
    let p = |r: &Value| r["stamp"]["p"].as_u64().unwrap();
    let mut checked = 0;
    // Every 7th write, and the last one: the writes after the last compaction the relay made
    // (what `compact` archived and kept) may be fewer than 7, and the last is always among them.
    let samples: Vec<&Value> = full.iter().step_by(7).chain(full.last()).collect();
    for &record in &samples {
        let at = p(record);
        let out = cli(&config, &["ledger", "state", "--at", &at.to_string()]);
        if at < horizon {
            assert_eq!(out.status.code(), Some(2), "before the horizon: {}", stderr(&out));
            assert!(stderr(&out).contains("history is exact only from"), "{}", stderr(&out));
        } else {
            assert!(out.status.success(), "{}", stderr(&out));
            let state: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(state, replay_until(&full, at), "state at {at}");
            checked += 1;
        }
    }
    assert!(
        checked > 0 && checked < samples.len(),
        "some moments on each side of the horizon: {checked} of {} sampled at or after {horizon}",
        samples.len()
    );
    // The log of a key says what it was at the horizon (~) and marks the current value (*).
    let log = cli(&config, &["ledger", "log", "t2"]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(text.lines().last().unwrap().starts_with('*'), "{text}");
    assert!(horizon > 0);

    let restarted = Server::start_in(dir, "");
    assert_eq!(restarted.client().snapshot["data"], expected_now);
}

/// The running relay prunes after its own compactions: never more than `keep_archives` archives,
/// and a kill -9 afterwards loses nothing.
#[test]
fn the_relay_prunes_after_each_compaction() {
    let server = Server::start(&format!("{FAST}[ledger]\ncompact_after_bytes = 2048\nkeep_archives = 2\n"));
    write_history(&server, 4);
    let ledger = server.ledger_path();
    common::wait_until("pruning down to two archives", || archives(&ledger).len() <= 2);
    common::wait_until("the prune to be logged", || server.log().contains("pruned "));
    assert!(PathBuf::from(format!("{}.history.json", ledger.display())).exists());
    let before = server.client().snapshot["data"].clone();
    let restarted = Server::start_in(server.kill9(), "");
    assert_eq!(restarted.client().snapshot["data"], before);
}

/// `keep_archive_days`: archives archived longer ago are pruned at the next compaction (one of
/// them named as upstream names archives), newer ones stay; history then starts after them.
#[test]
fn archives_older_than_keep_archive_days_go() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ledger = dir.path().join("ledger.jsonl");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let day = 86_400;
    let record = |key: &str, secs: u64| {
        format!(
            "{{\"kind\":\"set\",\"key\":\"{key}\",\"value\":\"{key}\",\"stamp\":{{\"p\":{},\"l\":0,\"n\":\"x\"}}}}\n",
            secs * 1_000_000_000
        )
    };
    let old = PathBuf::from(format!("{}.archived.{}", ledger.display(), now - 40 * day));
    let recent = PathBuf::from(format!("{}.archived.{}-0", ledger.display(), now - 10 * day));
    fs::write(&old, record("old", now - 41 * day)).unwrap();
    fs::write(&recent, record("recent", now - 11 * day)).unwrap();
    let server = Server::start_in(
        Arc::clone(&dir),
        &format!("{FAST}[ledger]\ncompact_after_bytes = 2048\nkeep_archives = 0\nkeep_archive_days = 30\n"),
    );
    write_history(&server, 1);
    common::wait_until("the 40-day-old archive to go", || !old.exists());
    assert!(recent.exists());
    assert_eq!(archives(&ledger).first(), Some(&recent));
    // The pruned write is history's horizon: the state then is known, earlier moments are refused.
    let at_old = ((now - 41 * day) * 1_000_000_000).to_string();
    let out = cli(&server.config, &["ledger", "state", "--at", &at_old]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!({"old": "old"}));
    let before = ((now - 42 * day) * 1_000_000_000).to_string();
    assert_eq!(cli(&server.config, &["ledger", "state", "--at", &before]).status.code(), Some(2));
    let log = cli(&server.config, &["ledger", "log", "old"]);
    assert!(String::from_utf8_lossy(&log.stdout).starts_with('*'), "{log:?}");
    // The live state never depended on archives.
    let c = Client::connect(&server.url());
    assert!(c.snapshot["data"].get("old").is_none(), "archives are history, not state");
}
