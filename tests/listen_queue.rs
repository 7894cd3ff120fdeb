//! The listener's queue of connects not yet accepted (`[server] listen_backlog`): the kernel holds
//! what the configuration asks, up to `net.core.somaxconn`, not the standard library's 128. A
//! burst of connects past the queue has SYNs dropped and waits a second for each retry
//! (benches/README.md, "Dense connections").
//!
//! Read back through `ss` (iproute2), the kernel's own report of a listening socket's queue; the
//! test says so and passes when `ss` is not installed.

mod common;

use std::process::Command;

use common::Server;

/// The queue size `ss` reports for the listener on `port` (its Send-Q column).
fn queue_of(port: u16) -> Option<u32> {
    let out = Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next()?.split_whitespace().nth(2)?.parse().ok()
}

fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}

#[test]
fn the_listen_queue_is_the_configured_one_capped_by_somaxconn() {
    for (extra, asked) in [("", 65_535), ("[server]\nlisten_backlog = 300\n", 300)] {
        let server = Server::start(extra);
        let Some(queue) = queue_of(server.addr.port()) else {
            eprintln!("`ss` is not available: the listen queue cannot be read back, not checked");
            return;
        };
        assert_eq!(queue, asked.min(somaxconn()), "listen_backlog = {asked}");
        let log = server.log();
        assert!(log.contains(&format!("listen queue: {queue}")) || log.contains("net.core.somaxconn caps"), "{log}");
    }
}
