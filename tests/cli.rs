//! The command line: flags, configuration errors and their exit codes.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aether-actix")).args(args).output().expect("run aether-actix")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--config <FILE>") && text.contains("127.0.0.1:8211"), "{text}");
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("aether-actix {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn config_errors_are_one_line_naming_file_and_key_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nbnd = \"127.0.0.1:0\"\n", "line 2: key `bnd` in [server]: unknown field `bnd`"),
        ("[server]\nbind = \"not an address\"\n", "key `bind` in [server]"),
        ("[limits]\nmessages_burst = -1\n", "key `messages_burst` in [limits]"),
        ("[limits]\nmax_frame_bytes = 0\n", "[limits] max_frame_bytes must be greater than 0"),
        ("[ledger]\nsync = \"maybe\"\n", "key `sync` in [ledger]"),
        ("[nope]\n", "unknown field `nope`"),
        ("[server\n", "line 1"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = run(&["--config", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{text}");
        let err = stderr(&output);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(path.to_str().unwrap()) && err.contains(expected), "{text:?} gave {err}");
    }
    let missing = run(&["--config", "/nonexistent/aether.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/aether.toml: cannot read"), "{}", stderr(&missing));
    let unknown_flag = run(&["--bogus"]);
    assert_eq!(unknown_flag.status.code(), Some(2));
}

#[test]
fn reload_needs_the_config_and_a_running_relay() {
    let without = run(&["reload"]);
    assert_eq!(without.status.code(), Some(2));
    assert!(stderr(&without).contains("reload needs --config FILE"), "{}", stderr(&without));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("[ledger]\npath = {:?}\n", dir.path().join("l.jsonl"))).unwrap();
    let nobody = run(&["--config", path.to_str().unwrap(), "reload"]);
    assert_eq!(nobody.status.code(), Some(2));
    assert!(stderr(&nobody).contains("no relay is running on the ledger"), "{}", stderr(&nobody));
    assert!(!dir.path().join("l.jsonl").exists(), "reload never creates a ledger");
}

#[test]
fn unreadable_ledger_location_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[server]\nbind = \"127.0.0.1:0\"\n[ledger]\npath = {:?}\n", blocker.join("l.jsonl")),
    )
    .unwrap();
    let output = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot create directory for"), "{}", stderr(&output));
}

#[test]
fn json_logs_on_request() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[server]\nbind = \"127.0.0.1:0\"\n[ledger]\npath = {:?}\n", dir.path().join("l.jsonl")),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .args(["--config", path.to_str().unwrap()])
        .env("AETHER_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first["level"], "INFO");
    assert!(first["msg"].as_str().unwrap().contains("replayed"), "{first}");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_bad_room_name_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let ledger = dir.path().join("l.jsonl");
    std::fs::write(&path, format!("[ledger]\npath = {ledger:?}\n")).unwrap();
    let config = path.to_str().unwrap();
    for bad in ["", "_x", "a b", "a/b", "é", &"x".repeat(129)] {
        for args in [&["ledger", "state", "--room", bad][..], &["ledger", "log", "k", "--room", bad]] {
            let output = run(&[&["--config", config][..], args].concat());
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            let err = stderr(&output);
            assert!(err.contains("--room") && err.contains("bad room name"), "{args:?}: {err}");
        }
    }
    assert!(!ledger.exists(), "nothing was read or created");
    // `_` names the default room; an empty ledger has an empty state and only that room.
    let state = run(&["--config", config, "ledger", "state", "--room", "_"]);
    assert!(state.status.success(), "{}", stderr(&state));
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "{}");
    let rooms = run(&["--config", config, "ledger", "rooms"]);
    assert!(rooms.status.success(), "{}", stderr(&rooms));
    let text = String::from_utf8_lossy(&rooms.stdout);
    assert_eq!(
        text.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["_", "0", "0"]),
        "{text}"
    );
}
