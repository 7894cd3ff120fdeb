//! Compaction (online and offline) and history, against the real binary.

mod common;

use std::{collections::BTreeMap, fs, path::Path, process::Command, thread};

use common::{Client, Server};
use serde_json::{Value, json};

const FAST: &str = "[limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n";

fn metric(server: &Server, name: &str) -> u64 {
    let text = server.get("/metrics").1;
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// The archives beside `ledger`, oldest first (the relay's own listing, minus the live ledger).
fn archives(ledger: &Path) -> Vec<std::path::PathBuf> {
    aether_actix::ledger::history::files(ledger).unwrap().into_iter().filter(|f| f != ledger).collect()
}

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(config).args(args).output().unwrap()
}

/// Writers keep writing while the relay compacts again and again; then kill -9 and restart.
#[test]
fn online_compaction_under_load_loses_nothing() {
    let server = Server::start(&format!("{FAST}[ledger]\ncompact_after_bytes = 16384\n"));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = server.url();
            thread::spawn(move || {
                let mut c = Client::connect(&url);
                for i in 0..400 {
                    // Overwrites and deletes too, so folding has something to fold.
                    if i % 10 == 9 {
                        c.delete(&format!("w{w}:{}", i % 50));
                    } else {
                        c.set(&format!("w{w}:{}", i % 50), json!({"i": i, "pad": "x".repeat(40)}));
                    }
                }
                // Every earlier write is applied before this one (per-connection order).
                c.set(&format!("done:{w}"), json!(true));
                c.recv_set(&format!("done:{w}"));
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    common::wait_until("compactions to run", || metric(&server, "aether_compactions_total") >= 1);
    let before = server.client().snapshot["data"].clone();
    assert_eq!(before.as_object().unwrap().len(), 4 * 45 + 4, "{before}");
    let ledger = server.ledger_path();
    common::wait_until("the live ledger to be folded", || fs::metadata(&ledger).unwrap().len() < 16384);
    assert!(!archives(&ledger).is_empty());

    let log = server.log();
    let restarted = Server::start_in(server.kill9(), "");
    let after = restarted.client().snapshot["data"].clone();
    if after != before {
        let diff: Vec<String> = before
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| after.get(k.as_str()) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: before {} after {}",
                    v["i"],
                    after.get(k.as_str()).map_or(json!(null), |a| a["i"].clone())
                )
            })
            .collect();
        let files: Vec<String> = fs::read_dir(restarted.dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| format!("{} {}", e.file_name().to_string_lossy(), e.metadata().unwrap().len()))
            .collect();
        panic!(
            "lost {} keys: {diff:?}\nfiles {files:?}\nlog before kill:\n{log}\nrestart log:\n{}",
            diff.len(),
            restarted.log()
        );
    }
}

/// Offline compaction refuses a ledger a relay holds, and otherwise folds it; twice in a row and
/// with nothing new, state stays whole.
#[test]
fn offline_compact_respects_the_lock_and_keeps_every_key() {
    let server = Server::start("");
    let mut c = server.client();
    for i in 0..30 {
        c.set(&format!("k{}", i % 10), json!(i));
    }
    c.delete("k3");
    c.recv_until(|f| f["type"] == "delete");
    let expected = server.client().snapshot["data"].clone();
    let config = server.config.clone();

    let refused = cli(&config, &["compact"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("compacts online"), "{refused:?}");

    let dir = std::sync::Arc::clone(&server.dir);
    let (status, _) = server.terminate();
    assert!(status.success());
    for _ in 0..3 {
        let done = cli(&config, &["compact"]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        assert!(String::from_utf8_lossy(&done.stdout).contains("compacted"));
    }
    let restarted = Server::start_in(dir, "");
    assert_eq!(fs::metadata(restarted.ledger_path()).unwrap().len(), 0);
    assert_eq!(restarted.client().snapshot["data"], expected);
}

/// `ledger state --at T` equals a replay of every record stamped at or before T, across archives,
/// and `ledger log` lists every write to a key.
#[test]
fn time_travel_equals_a_replay_cut_at_that_moment() {
    // Every archive is kept: the test reads the whole history from them.
    let server = Server::start(&format!("{FAST}[ledger]\ncompact_after_bytes = 2048\nkeep_archives = 0\n"));
    let mut c = server.client();
    for i in 0..120 {
        match i % 4 {
            3 => c.delete(&format!("t{}", i % 7)),
            _ => c.set(&format!("t{}", i % 7), json!(i)),
        }
        c.recv_until(|f| f["key"] == format!("t{}", i % 7));
    }
    common::wait_until("a compaction", || metric(&server, "aether_compactions_total") >= 1);
    let ledger = server.ledger_path();
    // Every record ever written, from the archives and the live ledger, in stamp order.
    let mut records: Vec<Value> = Vec::new();
    for file in archives(&ledger).iter().chain([&ledger]) {
        for line in fs::read_to_string(file).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            if !records.contains(&record) {
                records.push(record);
            }
        }
    }
    assert_eq!(records.len(), 120);
    let p = |r: &Value| r["stamp"]["p"].as_u64().unwrap();
    records.sort_by_key(p);
    for cut in [0, 1, 37, 60, 119] {
        let at = p(&records[cut]);
        let mut expected = BTreeMap::new();
        for r in records.iter().filter(|r| p(r) <= at) {
            let key = r["key"].as_str().unwrap().to_owned();
            if r["kind"] == "del" {
                expected.remove(&key);
            } else {
                expected.insert(key, r["value"].clone());
            }
        }
        let out = cli(&server.config, &["ledger", "state", "--at", &at.to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let state: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(state, expected, "state at record {cut}");
    }
    let log = cli(&server.config, &["ledger", "log", "t2"]);
    let text = String::from_utf8_lossy(&log.stdout);
    let writes = records.iter().filter(|r| r["key"] == "t2").count();
    assert_eq!(text.lines().count(), writes, "{text}");
    assert!(text.lines().last().unwrap().starts_with('*'), "{text}");
    assert!(text.contains("  alpha  ") && text.contains(" set "), "{text}");
    // RFC 3339 works too, and a bad time is a usage error.
    let now = cli(&server.config, &["ledger", "state", "--at", "2100-01-01T00:00:00Z"]);
    let state: Value = serde_json::from_slice(&now.stdout).unwrap();
    assert_eq!(state, server.client().snapshot["data"]);
    assert_eq!(cli(&server.config, &["ledger", "state", "--at", "yesterday"]).status.code(), Some(2));
}
