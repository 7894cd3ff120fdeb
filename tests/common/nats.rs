//! `nats-server` processes for the NATS JetStream transport's tests (`tests/nats.rs`, and the
//! NATS fault run in `tests/faults.rs`), and relays configured to use them.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use super::{Server, free_port, wait_within};

/// The `nats-server` binary: on PATH, or where Debian puts it.
pub fn nats_server_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("nats-server not found: run tests/run.sh (installs Debian's nats-server)"))
}

/// One `nats-server` with JetStream, storing under its own directory; killed on drop.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
    _dir: Arc<tempfile::TempDir>,
}

impl Nats {
    /// A single server.
    pub fn single() -> Nats {
        Nats::start(free_port(), &[])
    }

    /// Three servers in one cluster (JetStream replicated across them).
    pub fn cluster() -> Vec<Nats> {
        let (ports, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
        let all_routes: Vec<String> = routes.iter().map(|r| format!("nats://127.0.0.1:{r}")).collect();
        (0..3)
            .map(|i| {
                let extra = [
                    "--name".to_owned(),
                    format!("s{i}"),
                    "--cluster_name".to_owned(),
                    "aether".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".to_owned(),
                    all_routes.join(","),
                ];
                Nats::start(ports[i], &extra)
            })
            .collect()
    }

    pub fn start(port: u16, extra: &[String]) -> Nats {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p"].iter().map(|s| s.to_string()).collect();
        args.push(port.to_string());
        args.push("-sd".into());
        args.push(dir.path().display().to_string());
        args.extend(extra.iter().cloned());
        let mut nats = Nats { child: None, port, args, log: Arc::default(), _dir: dir };
        nats.restart();
        nats
    }

    /// (Re)starts the server with the same port and store.
    pub fn restart(&mut self) {
        let mut child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        let port = self.port;
        wait_within(Duration::from_secs(20), "nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Config of a relay on the NATS transport.
pub fn relay_toml(id: &str, servers: &[String], extra: &str) -> String {
    format!(
        "[mesh]\nnode_id = \"{id}\"\ntransport = \"nats\"\n[mesh.nats]\nservers = {servers:?}\nsnapshot_interval_s = 0.5\n{extra}\n\
         [limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n"
    )
}

pub fn relay(id: &str, servers: &[String], extra: &str) -> Server {
    Server::start(&relay_toml(id, servers, extra))
}

pub fn relay_in(dir: Arc<tempfile::TempDir>, id: &str, servers: &[String]) -> Server {
    Server::start_in(dir, &relay_toml(id, servers, ""))
}

pub fn position(server: &Server) -> serde_json::Value {
    let path = Path::new(&format!("{}.nats.json", server.ledger_path().display())).to_owned();
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}
