//! `/healthz` tells the ledger's health both ways, against the real binary: a long compaction is
//! not a failure (the probe never waits behind the ledger thread), a ledger that cannot write is
//! (503 `degraded` with the reason and since when), and it is `ok` again once a write succeeds,
//! without a restart.

mod common;

use std::{
    ffi::CString,
    fs,
    io::Read,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use common::{
    Client, Server,
    disk::{Tmpfs, fill},
};
use serde_json::{Value, json};

fn health(server: &Server) -> (u16, Value) {
    let (status, body) = server.get("/healthz");
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("healthz JSON: {body}")))
}

/// Sends a v2 write with `reference` and returns the ack or nack that answers it.
fn write(client: &mut Client, key: &str, value: Value, reference: u64) -> Value {
    client.send(json!({"type": "set", "key": key, "value": value, "ref": reference}));
    client.recv_until(|f| (f["type"] == "ack" || f["type"] == "nack") && f["ref"] == reference)
}

/// Compaction is held up for longer than the old 2 s probe timeout: the snapshot's staging file is
/// a FIFO nobody reads yet, so the thread that stages the snapshot blocks opening it. That thread
/// is neither the state actor nor the ledger thread: `/healthz` stays 200 all along, and writes
/// made meanwhile are acknowledged as usual.
#[test]
fn a_long_compaction_keeps_healthz_ok() {
    let server = Server::start(
        "[ledger]\ncompact_after_bytes = 1\n[limits]\nmessages_per_second = 100000.0\nmessages_burst = 100000\n",
    );
    let staging = PathBuf::from(format!("{}.snapshot.json.tmp", server.ledger_path().display()));
    let name = CString::new(staging.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that lives for the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", staging.display());
    let mut client = Client::connect(&format!("{}?v=2", server.url()));
    assert_eq!(write(&mut client, "first", json!(1), 1)["type"], "ack");
    common::wait_until("the compaction to start", || server.log().contains("compaction started"));

    let held = Instant::now();
    let mut writes = 1;
    while held.elapsed() < Duration::from_secs(3) {
        let (status, body) = health(&server);
        assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
        writes += 1;
        assert_eq!(write(&mut client, "during", json!(writes), writes)["type"], "ack", "acknowledged mid-compaction");
    }
    assert!(writes > 3);
    client.send(json!({"type": "set", "key": "during", "value": 2, "ref": 10_000}));

    // Let the compaction go on: it then fails (a FIFO cannot be fsynced), which loses nothing.
    let reader = thread::spawn(move || {
        let mut drained = Vec::new();
        fs::File::open(&staging).unwrap().read_to_end(&mut drained).unwrap();
        drained.len()
    });
    let ack = client.recv_until(|f| f["ref"] == 10_000);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert!(reader.join().unwrap() > 0);
    common::wait_until("the compaction to fail", || server.log().contains("compaction failed (nothing lost"));
    let (status, body) = health(&server);
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    assert!(body["ledger"]["last_compaction_error"].is_string(), "{body}");
    assert!(server.log().contains("compaction failed (nothing lost"), "{}", server.log());
}

/// A really full file system: appends fail with ENOSPC, `/healthz` answers 503 `degraded` with
/// the reason and since when, every refused write gets a nack and none reaches the file; once space
/// comes back, the next write succeeds and `/healthz` is `ok` again, without a restart; a restart
/// then replays cleanly (no torn or corrupt line) exactly the writes that were acknowledged.
#[test]
fn a_full_disk_is_degraded_then_recovers_and_replays_cleanly() {
    let Some(disk) = Tmpfs::mount_or_skip(512 << 10, "a_full_disk_is_degraded_then_recovers_and_replays_cleanly")
    else {
        return;
    };
    let dir = disk.dir();
    let server = Server::start_in(Arc::clone(&dir), "");
    let mut client = Client::connect(&format!("{}?v=2", server.url()));
    assert_eq!(write(&mut client, "before", json!("fits"), 0)["type"], "ack");
    assert_eq!(health(&server).0, 200);

    let filler = dir.path().join("filler");
    assert!(fill(&filler, 0) > 0);
    let pad = "x".repeat(1000);
    let (mut acked, mut refused) = (vec!["before".to_owned()], Vec::new());
    for i in 1..=50 {
        let key = format!("k{i}");
        let reply = write(&mut client, &key, json!({"i": i, "pad": pad}), i);
        if reply["type"] == "ack" {
            acked.push(key);
        } else {
            assert_eq!(reply["reason"], "ledger_failed", "{reply}");
            refused.push(key);
            break;
        }
    }
    assert_eq!(refused.len(), 1, "no write was refused on a full disk");
    let (status, body) = health(&server);
    assert_eq!((status, &body["status"]), (503, &json!("degraded")), "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("No space left on device"), "{body}");
    let since = body["since"].as_str().unwrap().to_owned();
    assert_eq!(body["ledger"]["failing_since"], json!(since), "{body}");
    // curl, a client that is not ours, sees the same status.
    let curl = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/healthz", server.addr))
        .output();
    if let Ok(curl) = curl {
        assert_eq!(String::from_utf8_lossy(&curl.stdout), "503");
    }
    // Still full: refused again, and still failing since the first failure.
    assert_eq!(write(&mut client, "again", json!({"pad": pad}), 100)["type"], "nack");
    refused.push("again".to_owned());
    let body = health(&server).1;
    assert_eq!((&body["since"], body["ledger"]["failed_appends"].as_u64()), (&json!(since), Some(2)), "{body}");
    // Nothing of a refused batch is in the file: every line is a whole record.
    let text = fs::read_to_string(server.ledger_path()).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    assert_eq!(text.lines().count(), acked.len());

    // Space comes back: the next write goes through and health is ok again, same process.
    fs::remove_file(&filler).unwrap();
    assert_eq!(health(&server).0, 503, "no write succeeded yet");
    assert_eq!(write(&mut client, "after", json!("space again"), 200)["type"], "ack");
    acked.push("after".to_owned());
    let (status, body) = health(&server);
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    assert!(body["ledger"]["failing_since"].is_null() && body["reason"].is_null(), "{body}");
    assert!(server.log().contains("ledger writes again after 2 failed batches"), "{}", server.log());

    drop(client);
    let (status, _) = server.terminate();
    assert!(status.success());
    let restarted = Server::start_in(Arc::clone(&dir), "");
    let log = restarted.log();
    assert!(log.contains("0 corrupt lines skipped, 0 torn bytes cut"), "{log}");
    let data = restarted.client().snapshot["data"].clone();
    let mut keys: Vec<String> = data.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    acked.sort();
    assert_eq!(keys, acked, "exactly the acknowledged writes survive; refused: {refused:?}");
    // The servers stop before the mount guard (declared first) unmounts.
}

/// A compaction that runs out of space on a nearly full disk gives the space back: its staging
/// file is removed, so appends carry on (health stays `ok`) instead of failing for the bytes a
/// half-written snapshot holds.
#[test]
fn a_compaction_that_runs_out_of_space_gives_the_space_back() {
    let Some(disk) = Tmpfs::mount_or_skip(512 << 10, "a_compaction_that_runs_out_of_space_gives_the_space_back") else {
        return;
    };
    let dir = disk.dir();
    let server = Server::start_in(Arc::clone(&dir), "[ledger]\ncompact_after_bytes = 30000\n");
    let mut client = Client::connect(&format!("{}?v=2", server.url()));
    let pad = "x".repeat(1000);
    for i in 0..25 {
        assert_eq!(write(&mut client, &format!("k{i}"), json!({"pad": pad}), i)["type"], "ack");
    }
    // Leave 8 KiB free: enough for a few more appends, far from enough for a ~30 KB snapshot.
    fill(&dir.path().join("filler"), 8192);
    let mut reference = 100;
    common::wait_until("a compaction to fail for want of space", || {
        reference += 1;
        let reply = write(&mut client, &format!("more{reference}"), json!({"pad": "y".repeat(200)}), reference);
        assert_eq!(reply["type"], "ack", "{reply}\n{}", server.log());
        server.log().contains("compaction failed")
    });
    let staging = format!("{}.snapshot.json.tmp", server.ledger_path().display());
    assert!(!Path::new(&staging).exists(), "the half-written snapshot is gone");
    assert_eq!(write(&mut client, "after", json!("small"), 999)["type"], "ack", "{}", server.log());
    let (status, body) = health(&server);
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    assert!(body["ledger"]["last_compaction_error"].as_str().unwrap().contains("No space left"), "{body}");
}
