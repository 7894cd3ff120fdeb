//! Configuration: one typed tree, read once from TOML, validated, passed down.
//!
//! Every key has a default (see [`Config::default`] and `config/aether.toml`, which documents each
//! one and is parsed by a test). Unknown keys are errors, so a typo never silently falls back to a
//! default. Relative paths are relative to the working directory.

use std::{
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub mod live;
mod mesh;

pub use self::{
    live::{Live, LiveConfig},
    mesh::{MeshConfig, MeshTlsConfig, NatsConfig, Transport},
};
use crate::{ledger::SyncMode, proxy::TrustedProxies};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: the HTTP + WebSocket listener.
    pub server: ServerConfig,
    /// `[ledger]`: where and how writes are persisted.
    pub ledger: LedgerConfig,
    /// `[limits]`: upstream's SecurityLimits, same names; defaults but the connection caps.
    pub limits: Limits,
    /// `[auth]`: shared secret and JWT verification for browsers.
    pub auth: AuthConfig,
    /// `[tls]`: serve `https://` and `wss://` on the listener.
    pub tls: TlsConfig,
    /// `[mesh]`: this node's identity and federation.
    pub mesh: MeshConfig,
    /// `[rooms]`: caps that keep rooms from being used to exhaust the relay.
    pub rooms: RoomsConfig,
    /// `[api]`: the HTTP API under `/api/v1/` (off without a key).
    pub api: ApiConfig,
}

/// `[api]`: the HTTP API for backends and operators (`crate::api`). Without a key every
/// `/api/v1/` path answers 404.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The API key (`Authorization: Bearer <key>`): every endpoint, every room. At least 16
    /// bytes. Empty: the API is off (unless `key_file` or `AETHER_API_KEY` supplies one).
    pub key: String,
    /// File holding the key (surrounding whitespace ignored). Exclusive with `key`;
    /// `AETHER_API_KEY` in the environment overrides both.
    pub key_file: Option<PathBuf>,
}

impl ApiConfig {
    /// Whether the API is on (a key is configured, once secrets are resolved).
    pub fn enabled(&self) -> bool {
        !self.key.is_empty()
    }
}

impl fmt::Debug for ApiConfig {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig").field("key", &redacted(&self.key)).field("key_file", &self.key_file).finish()
    }
}

/// Shortest API key accepted, in bytes.
pub const MIN_API_KEY_LEN: usize = 16;

/// `[rooms]`. Caps for client writes and joins; replay and peers' ops are never refused (they
/// are durable already, and refusing them would make replicas diverge).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Rooms held at once (a room is held while it has registers or members); a join that would
    /// make one more is closed (v1 1013, v2 4503 "too many rooms"). Default 100000.
    pub max_rooms: usize,
    /// Registers (keys, tombstones included) in one room; a client write of a new key beyond it is
    /// refused (v1 dropped, v2 nack `room_full`). Default 100000.
    pub max_keys: usize,
    /// Bytes of keys and values (as JSON) in one room; a client write that would grow the room
    /// beyond it is refused like `max_keys`. Default 64 MiB.
    pub max_bytes: usize,
    /// Rooms one source address may create per minute (burst: the same number); faster joins to
    /// new rooms are closed (v1 1008, v2 4429 "rate limit"). Default 60.
    pub created_per_minute: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig { max_rooms: 100_000, max_keys: 100_000, max_bytes: 64 << 20, created_per_minute: 60 }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one HTTP listener (static files, `/ws`, `/healthz`). Port 0 picks a free
    /// port; the bound address is logged. Default `127.0.0.1:8211`.
    pub bind: SocketAddr,
    /// Directory of the static files served at `/`. Default `static`.
    pub static_dir: PathBuf,
    /// Reverse proxies (addresses or CIDR blocks) whose `X-Forwarded-For` / `X-Real-IP` headers are
    /// believed for per-source caps and logs. Default: none.
    pub trusted_proxies: Vec<String>,
    /// Browser origins allowed to open the WebSocket (e.g. `https://app.example.com`). A request
    /// with another `Origin` is refused with 403 before the upgrade; requests without `Origin`
    /// (non-browser clients) are allowed. Default: empty, any origin.
    pub allowed_origins: Vec<String>,
    /// Seconds between pings to each client. A client that sends nothing at all (pongs included)
    /// for twice this plus `handshake_timeout_s` is closed with 1011. Default 20.
    pub ping_interval_s: f64,
    /// Connections the kernel may hold accepted but not yet taken by the relay (the `listen(2)`
    /// backlog); the kernel caps it at `net.core.somaxconn`. A burst of connects larger than the
    /// queue has SYNs dropped, and those clients retry only after a second. Default 65,535 (as
    /// much as the kernel allows; Rust's own default is 128). Needs a restart.
    pub listen_backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8211)),
            static_dir: PathBuf::from("static"),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            ping_interval_s: 20.0,
            listen_backlog: 65_535,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::ping_interval_s`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval_s)
    }
}

/// `[ledger]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The JSON-lines ledger file. Default `data/aether.jsonl`.
    pub path: PathBuf,
    /// `"always"` (default: fdatasync before anything is observable) or `"none"`.
    pub sync: SyncMode,
    /// Fold the ledger into the snapshot (online, without stopping) once it grows past this many
    /// bytes; 0 never compacts online. Default 64 MiB.
    pub compact_after_bytes: u64,
    /// Keep at most this many archives (the newest) after a compaction; 0: no count limit.
    /// Default 10.
    pub keep_archives: u64,
    /// Delete archives archived more than this many days ago, after a compaction; 0: no age
    /// limit. Default 30.
    pub keep_archive_days: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/aether.jsonl"),
            sync: SyncMode::Always,
            compact_after_bytes: 64 << 20,
            keep_archives: 10,
            keep_archive_days: 30,
        }
    }
}

impl LedgerConfig {
    /// The archive retention these keys ask for.
    pub fn retention(&self) -> crate::ledger::Retention {
        crate::ledger::Retention { keep_archives: self.keep_archives, keep_archive_days: self.keep_archive_days }
    }
}

/// `[limits]`: upstream's `SecurityLimits`, with its names and defaults, except the connection caps
/// (sized for a deployment: see `config/aether.toml`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest inbound WebSocket message (all its frames together); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Largest inbound message that is parsed; larger is dropped.
    pub max_message_bytes: usize,
    /// Largest key, in UTF-8 bytes; larger is dropped.
    pub max_key_bytes: usize,
    /// Largest value, in UTF-8 bytes of its compact JSON; larger is dropped.
    pub max_value_bytes: usize,
    /// Most simultaneous WebSocket connections; more are closed with 1013. Default 10,000.
    pub max_connections_total: usize,
    /// Most simultaneous WebSocket connections from one source address; more are closed with 1013.
    /// Default 256.
    pub max_connections_per_source: usize,
    /// Sustained messages per second per connection (token bucket refill).
    pub messages_per_second: f64,
    /// Burst of messages per connection (token bucket capacity); overrun closes with 1008.
    pub messages_burst: u32,
    /// Seconds a client has to authenticate (first-frame auth).
    pub handshake_timeout_s: f64,
    /// Capacity of the mesh's seen-stamp dedup cache.
    pub max_seen_stamps: usize,
    /// Capacity of the diagnostic op log.
    pub max_oplog_size: usize,
    /// Bytes of frames queued for one client before it counts as too slow and is closed with
    /// 1013 (not in upstream, which stalled everyone instead). Default 8 MiB.
    pub max_outbound_bytes: usize,
    /// Seconds one write may wait for a client's socket to take anything (not in upstream): then
    /// the connection is closed with 1013 `too slow`, or dropped if even that cannot be sent.
    /// Default 30.
    pub write_timeout_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 256 * 1024,
            max_message_bytes: 64 * 1024,
            max_key_bytes: 256,
            max_value_bytes: 32 * 1024,
            // Not upstream's 256 and 32: why, in config/aether.toml.
            max_connections_total: 10_000,
            max_connections_per_source: 256,
            messages_per_second: 100.0,
            messages_burst: 200,
            handshake_timeout_s: 5.0,
            max_seen_stamps: 100_000,
            max_oplog_size: 10_000,
            max_outbound_bytes: 8 << 20,
            write_timeout_s: 30.0,
        }
    }
}

impl Limits {
    /// [`Limits::handshake_timeout_s`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handshake_timeout_s)
    }

    /// [`Limits::write_timeout_s`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.write_timeout_s)
    }
}

/// Environment variable that, when set and non-empty, supplies the auth token.
pub const TOKEN_ENV: &str = "AETHER_AUTH_TOKEN";

/// Environment variable that, when set and non-empty, supplies the HS256 JWT secret (one of the
/// `[auth]` JWT key sources: setting it beside another is an error).
pub const JWT_SECRET_ENV: &str = "AETHER_JWT_SECRET";

/// Environment variable that, when set and non-empty, supplies the `[api]` key.
pub const API_KEY_ENV: &str = "AETHER_API_KEY";

/// Environment variable that, when set and non-empty, supplies the mesh token.
pub const MESH_TOKEN_ENV: &str = "AETHER_MESH_TOKEN";

/// `[auth]`: who may connect, and to which rooms (see [`crate::access`]).
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret browsers must present (`?auth_token=` or a first `auth` frame): every room,
    /// read and write, no user. Empty: no shared secret.
    pub token: String,
    /// File holding the token (surrounding whitespace ignored), so the secret need not sit in the
    /// config. Exclusive with `token`. `AETHER_AUTH_TOKEN` in the environment overrides both.
    pub token_file: Option<PathBuf>,
    /// HS256 secret that signs the JWTs clients present (at least 32 bytes). One JWT key source
    /// at most: this, `jwt_secret_file`, `AETHER_JWT_SECRET` or `jwt_public_key_file`.
    pub jwt_secret: String,
    /// File holding the HS256 secret (surrounding whitespace ignored), re-read on reload.
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (or certificate) of the token issuer, re-read on reload: an RSA key (2048
    /// bits or more) accepts RS256 tokens, an EC P-256 key ES256 tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud` (a string, or an array holding it). When not set,
    /// tokens carrying any `aud` are refused (RFC 7519 §4.1.3).
    pub jwt_audience: Option<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat` (at most 3600). Default 0.
    pub jwt_leeway_s: u64,
}

impl AuthConfig {
    /// The JWT key sources set in the file, by key name.
    pub fn jwt_key_sources(&self) -> Vec<&'static str> {
        [
            ("jwt_secret", !self.jwt_secret.is_empty()),
            ("jwt_secret_file", self.jwt_secret_file.is_some()),
            ("jwt_public_key_file", self.jwt_public_key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

impl fmt::Debug for AuthConfig {
    /// Never prints a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("jwt_secret", &redacted(&self.jwt_secret))
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway_s", &self.jwt_leeway_s)
            .finish()
    }
}

/// `[tls]`: both or neither.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// Why a configuration file cannot be used. Each displays as one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, bad value).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line, key and what is wrong.
        message: String,
    },
    /// A value parses but makes no sense.
    #[error("{path}: {message}")]
    Invalid {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// Key and what is wrong.
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and the line and key where there is one.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`, reporting errors against `path`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|err| ConfigError::Parse { path: path.to_owned(), message: describe(&err, text) })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Semantic checks that parsing cannot make.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let positive = [
            ("max_frame_bytes", l.max_frame_bytes),
            ("max_message_bytes", l.max_message_bytes),
            ("max_key_bytes", l.max_key_bytes),
            ("max_value_bytes", l.max_value_bytes),
            ("max_connections_total", l.max_connections_total),
            ("max_connections_per_source", l.max_connections_per_source),
            ("messages_burst", l.messages_burst as usize),
            ("max_seen_stamps", l.max_seen_stamps),
            ("max_oplog_size", l.max_oplog_size),
            ("max_outbound_bytes", l.max_outbound_bytes),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("[limits] {key} must be greater than 0"));
        }
        let seconds = [
            ("messages_per_second", l.messages_per_second),
            ("handshake_timeout_s", l.handshake_timeout_s),
            ("write_timeout_s", l.write_timeout_s),
        ];
        for (key, v) in seconds {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return Err(format!("[limits] {key} must be a positive number of reasonable size, got {v}"));
            }
        }
        self.mesh.validate()?;
        if self.ledger.path.as_os_str().is_empty() {
            return Err("[ledger] path must not be empty".to_owned());
        }
        let ping = self.server.ping_interval_s;
        if !(ping.is_finite() && (0.05..=3600.0).contains(&ping)) {
            return Err(format!("[server] ping_interval_s must be between 0.05 and 3600, got {ping}"));
        }
        let backlog = self.server.listen_backlog;
        if backlog == 0 || i32::try_from(backlog).is_err() {
            return Err(format!("[server] listen_backlog must be between 1 and {}, got {backlog}", i32::MAX));
        }
        if let Err(err) = TrustedProxies::parse(&self.server.trusted_proxies) {
            return Err(format!("[server] trusted_proxies: {err}"));
        }
        if let Some(origin) = self.server.allowed_origins.iter().find(|o| !o.contains("://") || o.ends_with('/')) {
            return Err(format!("[server] allowed_origins: {origin:?} is not an origin like \"https://example.com\""));
        }
        if !self.auth.token.is_empty() && self.auth.token_file.is_some() {
            return Err("[auth] set token or token_file, not both".to_owned());
        }
        if let sources @ [_, _, ..] = self.auth.jwt_key_sources().as_slice() {
            return Err(format!("[auth] set one JWT key, not several: {}", sources.join(", ")));
        }
        if self.auth.jwt_leeway_s > 3600 {
            return Err(format!("[auth] jwt_leeway_s must be at most 3600, got {}", self.auth.jwt_leeway_s));
        }
        if !self.api.key.is_empty() && self.api.key_file.is_some() {
            return Err("[api] set key or key_file, not both".to_owned());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("[tls] cert and key go together".to_owned());
        }
        Ok(())
    }

    /// Fills `[auth] token` from `AETHER_AUTH_TOKEN` or `[auth] token_file`, and `[mesh] token`
    /// from `AETHER_MESH_TOKEN` or `[mesh] token_file`, in that order; `[api] key` from
    /// `AETHER_API_KEY` (read here) or `[api] key_file`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when a token file cannot be read, [`ConfigError::Invalid`] when it is
    /// empty.
    pub fn resolve_secrets(
        &mut self,
        env_token: Option<String>,
        env_mesh_token: Option<String>,
    ) -> Result<(), ConfigError> {
        resolve_secret(&mut self.auth.token, self.auth.token_file.as_deref(), env_token)?;
        resolve_secret(&mut self.mesh.token, self.mesh.token_file.as_deref(), env_mesh_token)?;
        let env_api_key = std::env::var(API_KEY_ENV).ok().filter(|k| !k.trim().is_empty());
        let from_env = env_api_key.is_some();
        resolve_secret(&mut self.api.key, self.api.key_file.as_deref(), env_api_key)?;
        if self.api.enabled() && self.api.key.len() < MIN_API_KEY_LEN {
            let path = match &self.api.key_file {
                _ if from_env => PathBuf::from(API_KEY_ENV),
                Some(file) => file.clone(),
                None => PathBuf::from("[api] key"),
            };
            return Err(ConfigError::Invalid {
                path,
                message: format!("the API key must be at least {MIN_API_KEY_LEN} bytes"),
            });
        }
        Ok(())
    }
}

fn resolve_secret(token: &mut String, file: Option<&Path>, env: Option<String>) -> Result<(), ConfigError> {
    if let Some(from_env) = env.filter(|t| !t.trim().is_empty()) {
        *token = from_env.trim().to_owned();
    } else if let Some(path) = file {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        if text.trim().is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), message: "the token file is empty".into() });
        }
        *token = text.trim().to_owned();
    }
    Ok(())
}

/// How a secret shows in `Debug` output: whether it is set, never what it is.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

/// One line from a TOML error: line number, key and section where known, and the message.
fn describe(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else { return message };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('['));
    let section = text
        .lines()
        .take(line_no)
        .filter_map(|l| l.trim().strip_prefix('[').and_then(|l| l.split_once(']')).map(|(s, _)| s.trim()))
        .last();
    match (key, section) {
        (Some(key), Some(section)) => format!("line {line_no}: key `{key}` in [{section}]: {message}"),
        (Some(key), None) => format!("line {line_no}: key `{key}`: {message}"),
        _ => format!("line {line_no}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("", Path::new("x.toml")).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse("[server]\nbnd = \"127.0.0.1:1\"\n", Path::new("c.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("c.toml: line 2: key `bnd` in [server]"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Config::parse("[limits]\nmax_key_bytes = \"big\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("key `max_key_bytes` in [limits]"), "{err}");
        let err = Config::parse("[limits]\nmax_key_bytes = 0\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("max_key_bytes must be greater than 0"), "{err}");
        let err = Config::parse("[ledger]\nsync = \"sometimes\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("key `sync` in [ledger]"), "{err}");
    }

    #[test]
    fn shipped_example_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/aether.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn server_lists_are_validated() {
        let bad = [
            ("[server]\ntrusted_proxies = [\"10.0.0.0/40\"]\n", "trusted_proxies"),
            ("[server]\nallowed_origins = [\"example.com\"]\n", "allowed_origins"),
            ("[server]\nping_interval_s = 0.0\n", "ping_interval_s"),
            ("[server]\nlisten_backlog = 0\n", "listen_backlog"),
            ("[auth]\ntoken = \"a\"\ntoken_file = \"/x\"\n", "not both"),
            ("[tls]\ncert = \"/c.pem\"\n", "go together"),
            (
                "[auth]\njwt_secret = \"s\"\njwt_public_key_file = \"/k.pem\"\n",
                "set one JWT key, not several: jwt_secret, jwt_public_key_file",
            ),
            ("[auth]\njwt_leeway_s = 3601\n", "jwt_leeway_s must be at most 3600"),
            ("[mesh]\npeers = [\"http://x:1\"]\n", "not a ws:// or wss:// URL"),
            ("[mesh]\nredial_min_s = 5.0\nredial_max_s = 1.0\n", "redial_max_s"),
            ("[mesh.tls]\nkey = \"/k.pem\"\n", "go together"),
        ];
        for (text, expected) in bad {
            let err = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn token_comes_from_env_then_file_then_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        fs::write(&file, "  from-file\n").unwrap();
        let mut config = Config::parse(&format!("[auth]\ntoken_file = {file:?}\n"), Path::new("c.toml")).unwrap();
        config.resolve_secrets(None, None).unwrap();
        assert_eq!(config.auth.token, "from-file");
        config.resolve_secrets(Some("from-env".into()), None).unwrap();
        assert_eq!(config.auth.token, "from-env");
        fs::write(&file, "\n").unwrap();
        let mut config = Config::parse(&format!("[auth]\ntoken_file = {file:?}\n"), Path::new("c.toml")).unwrap();
        assert!(config.resolve_secrets(None, None).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn nats_names_derive_from_the_cluster_unless_set() {
        let config = Config::parse("[mesh.nats]\ncluster = \"Prod-1\"\n", Path::new("c.toml")).unwrap();
        let n = &config.mesh.nats;
        assert_eq!(
            [n.stream_name(), n.subject_name(), n.presence_subject_name(), n.bucket_name()],
            ["AETHER_PROD_1", "aether.Prod-1.ops", "aether.Prod-1.presence", "aether_prod_1_snapshots"]
        );
        let config =
            Config::parse("[mesh.nats]\nstream = \"S\"\nsnapshot_bucket = \"b\"\n", Path::new("c.toml")).unwrap();
        assert_eq!((config.mesh.nats.stream_name(), config.mesh.nats.bucket_name()), ("S".into(), "b".into()));
    }

    #[test]
    fn api_key_from_a_file_at_least_16_bytes_never_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        fs::write(&file, "  a-key-of-sixteen-bytes-or-more\n").unwrap();
        let mut config = Config::parse(&format!("[api]\nkey_file = {file:?}\n"), Path::new("c.toml")).unwrap();
        assert!(!config.api.enabled(), "off until resolved");
        config.resolve_secrets(None, None).unwrap();
        assert_eq!(config.api.key, "a-key-of-sixteen-bytes-or-more");
        assert!(!format!("{config:?}").contains("sixteen"));
        let mut short = Config::parse("[api]\nkey = \"short\"\n", Path::new("c.toml")).unwrap();
        assert!(short.resolve_secrets(None, None).unwrap_err().to_string().contains("at least 16 bytes"));
        let both = Config::parse(&format!("[api]\nkey = \"x\"\nkey_file = {file:?}\n"), Path::new("c.toml"));
        assert!(both.unwrap_err().to_string().contains("not both"));
        assert!(!Config::default().api.enabled(), "off by default");
    }

    #[test]
    fn token_never_shows_in_debug_output() {
        let text = "[auth]\ntoken = \"hunter2\"\njwt_secret = \"opensesame\"\n[mesh]\ntoken = \"swordfish\"\n";
        let config = Config::parse(text, Path::new("c.toml")).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("swordfish") && !shown.contains("opensesame"), "{shown}");
    }
}
