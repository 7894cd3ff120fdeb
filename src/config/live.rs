//! The keys that change without a restart, and the one handle every new connection reads them from.
//!
//! SIGHUP (or `aether-actix reload`) re-reads the configuration file. Everything admission and a
//! new session need (the auth token and [`Access`] with its JWT key, allowed origins, trusted
//! proxies, limits, the ping interval, the TLS certificate and key; key files are read again) is
//! prepared into one [`Live`] value and published through one
//! [`LiveConfig`] handle, which the WebSocket route reads once per new connection and the TLS
//! layer reads once per handshake. Open connections keep what they were admitted with; nothing is
//! dropped. A configuration that does not load or prepare is refused whole, with the same one-line
//! error as at start, and the running one stays. Keys that need a restart ([`fixed_changes`]) are
//! named in the log and keep their running values.

use std::{
    path::Path,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use openssl::{
    hash::MessageDigest,
    ssl::{AlpnError, SslAcceptor, SslAcceptorBuilder, SslContext, SslFiletype, SslMethod},
};

use super::{Config, JWT_SECRET_ENV, Limits, TlsConfig};
use crate::{access::Access, proxy::TrustedProxies};

/// The live part of one configuration, prepared for use on the admission path.
pub struct Live {
    /// The configuration it was prepared from (secrets resolved), to compare the next one with.
    pub config: Config,
    /// Token verification and room grants (`[auth]`: the shared secret and the JWT key), built
    /// afresh, key files re-read, by each prepare.
    pub access: Arc<Access>,
    /// `[limits]`, as new sessions get them.
    pub limits: Arc<Limits>,
    /// Proxies whose forwarding headers are believed.
    pub proxies: TrustedProxies,
    /// Origins allowed to open the WebSocket, lowercased; empty allows any.
    pub allowed_origins: Vec<String>,
    /// `[server] ping_interval_s`.
    pub ping_interval: Duration,
    /// The certificate and key of `[tls]`, loaded, when TLS is on.
    pub tls: Option<SslContext>,
}

impl Live {
    /// Prepares `config` (already validated, secrets resolved): parses the proxies, loads the TLS
    /// files and the JWT key (`AETHER_JWT_SECRET` read here).
    ///
    /// # Errors
    /// One line naming `[tls]` or `[auth]` and the file when a certificate or key cannot be used.
    pub fn prepare(config: Config) -> Result<Live, String> {
        Self::prepare_with(config, std::env::var(JWT_SECRET_ENV).ok())
    }

    /// [`Live::prepare`] with `AETHER_JWT_SECRET` given (tests).
    ///
    /// # Errors
    /// As [`Live::prepare`].
    pub fn prepare_with(config: Config, env_jwt_secret: Option<String>) -> Result<Live, String> {
        let access = Arc::new(Access::from_config(&config.auth, env_jwt_secret)?);
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(tls_context(cert, key).map_err(|e| format!("[tls] {e}"))?),
            _ => None,
        };
        let proxies = TrustedProxies::parse(&config.server.trusted_proxies)
            .map_err(|e| format!("[server] trusted_proxies: {e}"))?;
        Ok(Live {
            access,
            limits: Arc::new(config.limits.clone()),
            proxies,
            allowed_origins: config.server.allowed_origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            ping_interval: config.server.ping_interval(),
            tls,
            config,
        })
    }

    /// May a WebSocket with this `Origin` header (if any) connect?
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true, // not a browser: Origin exists to stop cross-site pages, not scripts
            Some(_) if self.allowed_origins.is_empty() => true,
            Some(origin) => self.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin.trim())),
        }
    }

    /// SHA-256 fingerprint of the TLS certificate, as `AB:CD:…`, when TLS is on.
    pub fn tls_fingerprint(&self) -> Option<String> {
        let digest = self.tls.as_ref()?.certificate()?.digest(MessageDigest::sha256()).ok()?;
        Some(digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
    }
}

/// The one shared, swappable handle on the live configuration. Cheap to clone; readers take a
/// snapshot ([`LiveConfig::current`]) and use it for the whole connection.
#[derive(Clone)]
pub struct LiveConfig(Arc<RwLock<Arc<Live>>>);

impl LiveConfig {
    /// A handle holding `live`.
    pub fn new(live: Live) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(live))))
    }

    /// What a connection starting now gets.
    pub fn current(&self) -> Arc<Live> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Publishes `live` for every connection from now on; returns what it replaces.
    pub fn replace(&self, live: Live) -> Arc<Live> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(PoisonError::into_inner), Arc::new(live))
    }
}

/// An acceptor for `tls`'s certificate chain and key, if both are set (the peer listener's).
///
/// # Errors
/// One line naming the file that cannot be used.
pub fn acceptor(tls: &TlsConfig) -> Result<Option<SslAcceptorBuilder>, String> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else { return Ok(None) };
    load(cert, key).map(Some)
}

/// The acceptor for the HTTP listener when `[tls]` is on: it starts with the certificate in
/// `live`, and every handshake switches to the one `live` holds then, so a reload rotates the
/// certificate for new connections while open ones keep theirs. (The switch happens in the
/// server-name callback, which OpenSSL calls for every ClientHello, with or without SNI.)
///
/// # Errors
/// As [`acceptor`].
pub fn switching_acceptor(live: &LiveConfig) -> Result<Option<SslAcceptorBuilder>, String> {
    let Some(mut builder) = acceptor(&live.current().config.tls)? else { return Ok(None) };
    let handle = live.clone();
    builder.set_servername_callback(move |ssl, _alert| {
        if let Some(context) = handle.current().tls.as_ref()
            && let Err(err) = ssl.set_ssl_context(context)
        {
            log::warn!("TLS: cannot switch to the current certificate, using the one from start: {err}");
        }
        Ok(())
    });
    Ok(Some(builder))
}

/// A TLS context for this certificate chain and key, with the same ALPN choice as actix-web's
/// (h2 when offered, else http/1.1), so a handshake switched to it behaves like one that was not.
///
/// # Errors
/// One line naming the file that cannot be used.
pub fn tls_context(cert: &Path, key: &Path) -> Result<SslContext, String> {
    let mut builder = load(cert, key)?;
    builder.set_alpn_select_callback(|_, offered| {
        let has = |proto: &[u8]| offered.windows(proto.len()).any(|w| w == proto);
        if has(b"\x02h2") {
            Ok(b"h2")
        } else if has(b"\x08http/1.1") {
            Ok(b"http/1.1")
        } else {
            Err(AlpnError::NOACK)
        }
    });
    Ok(builder.build().into_context())
}

/// Mozilla's intermediate settings with this certificate chain and its key, checked to match.
fn load(cert: &Path, key: &Path) -> Result<SslAcceptorBuilder, String> {
    let fail = |what: &str, path: &Path, err: openssl::error::ErrorStack| format!("{what} {}: {err}", path.display());
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|err| format!("cannot set up TLS: {err}"))?;
    builder.set_certificate_chain_file(cert).map_err(|e| fail("cannot load certificate", cert, e))?;
    builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| fail("cannot load key", key, e))?;
    builder.check_private_key().map_err(|e| fail("key does not match the certificate in", cert, e))?;
    Ok(builder)
}

/// Keys whose values differ between `running` and `new` that only a restart applies.
pub fn fixed_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (running, new);
    let (am, bm) = (&a.mesh, &b.mesh);
    [
        ("[server] bind", a.server.bind != b.server.bind),
        ("[server] static_dir", a.server.static_dir != b.server.static_dir),
        ("[server] listen_backlog", a.server.listen_backlog != b.server.listen_backlog),
        ("[ledger] path", a.ledger.path != b.ledger.path),
        ("[ledger] sync", a.ledger.sync != b.ledger.sync),
        ("[ledger] compact_after_bytes", a.ledger.compact_after_bytes != b.ledger.compact_after_bytes),
        ("[ledger] keep_archives", a.ledger.keep_archives != b.ledger.keep_archives),
        ("[ledger] keep_archive_days", a.ledger.keep_archive_days != b.ledger.keep_archive_days),
        ("[limits] max_seen_stamps", a.limits.max_seen_stamps != b.limits.max_seen_stamps),
        ("[limits] max_oplog_size", a.limits.max_oplog_size != b.limits.max_oplog_size),
        ("[tls] (switching TLS on or off)", a.tls.cert.is_some() != b.tls.cert.is_some()),
        ("[mesh] node_id", am.node_id != bm.node_id),
        ("[mesh] transport", am.transport != bm.transport),
        ("[mesh] bind", am.bind != bm.bind),
        ("[mesh] peers", am.peers != bm.peers),
        ("[mesh] token", am.token != bm.token || am.token_file != bm.token_file),
        ("[mesh] token_in_hello", am.token_in_hello != bm.token_in_hello),
        ("[mesh] max_clock_drift_s", am.max_clock_drift_s != bm.max_clock_drift_s),
        ("[mesh] redial_min_s", am.redial_min_s != bm.redial_min_s),
        ("[mesh] redial_max_s", am.redial_max_s != bm.redial_max_s),
        ("[mesh] anti_entropy_interval_s", am.anti_entropy_interval_s != bm.anti_entropy_interval_s),
        ("[mesh] max_peers", am.max_peers != bm.max_peers),
        ("[mesh] max_peer_queue_bytes", am.max_peer_queue_bytes != bm.max_peer_queue_bytes),
        ("[mesh.tls]", am.tls != bm.tls),
        ("[mesh.nats]", am.nats != bm.nats),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// Live keys whose values differ between `running` and `new` (names only: never a secret). The
/// TLS certificate is compared by content, not here: a rotation usually keeps the file names.
pub fn live_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.limits, &new.limits);
    [
        ("[auth] token", running.auth.token != new.auth.token),
        ("[auth] jwt_secret", running.auth.jwt_secret != new.auth.jwt_secret),
        ("[auth] jwt_secret_file", running.auth.jwt_secret_file != new.auth.jwt_secret_file),
        ("[auth] jwt_public_key_file", running.auth.jwt_public_key_file != new.auth.jwt_public_key_file),
        ("[auth] jwt_issuer", running.auth.jwt_issuer != new.auth.jwt_issuer),
        ("[auth] jwt_audience", running.auth.jwt_audience != new.auth.jwt_audience),
        ("[auth] jwt_leeway_s", running.auth.jwt_leeway_s != new.auth.jwt_leeway_s),
        ("[api] key", running.api.key != new.api.key),
        ("[server] allowed_origins", running.server.allowed_origins != new.server.allowed_origins),
        ("[server] trusted_proxies", running.server.trusted_proxies != new.server.trusted_proxies),
        ("[server] ping_interval_s", running.server.ping_interval_s != new.server.ping_interval_s),
        ("[limits] max_frame_bytes", a.max_frame_bytes != b.max_frame_bytes),
        ("[limits] max_message_bytes", a.max_message_bytes != b.max_message_bytes),
        ("[limits] max_key_bytes", a.max_key_bytes != b.max_key_bytes),
        ("[limits] max_value_bytes", a.max_value_bytes != b.max_value_bytes),
        ("[limits] max_connections_total", a.max_connections_total != b.max_connections_total),
        ("[limits] max_connections_per_source", a.max_connections_per_source != b.max_connections_per_source),
        ("[limits] messages_per_second", a.messages_per_second != b.messages_per_second),
        ("[limits] messages_burst", a.messages_burst != b.messages_burst),
        ("[limits] handshake_timeout_s", a.handshake_timeout_s != b.handshake_timeout_s),
        ("[limits] max_outbound_bytes", a.max_outbound_bytes != b.max_outbound_bytes),
        // Sessions take the new value; the kernel's TCP_USER_TIMEOUT behind it is set at start.
        ("[limits] write_timeout_s", a.write_timeout_s != b.write_timeout_s),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("c.toml")).unwrap()
    }

    #[test]
    fn changes_are_sorted_into_live_and_fixed() {
        let running = parse("[auth]\ntoken = \"a\"\n[limits]\nmax_connections_total = 10\n");
        let new = parse(
            "[server]\nbind = \"127.0.0.1:9\"\n[auth]\ntoken = \"b\"\n[limits]\nmax_connections_total = 20\n\
             [mesh]\nnode_id = \"beta\"\n",
        );
        assert_eq!(live_changes(&running, &new), ["[auth] token", "[limits] max_connections_total"]);
        assert_eq!(fixed_changes(&running, &new), ["[server] bind", "[mesh] node_id"]);
        assert!(fixed_changes(&running, &running).is_empty() && live_changes(&running, &running).is_empty());
    }

    #[test]
    fn prepared_origins_and_token() {
        let live = Live::prepare(parse("[server]\nallowed_origins = [\"https://A.example\"]\n")).unwrap();
        assert!(live.origin_allowed(Some("https://a.example")) && live.origin_allowed(None));
        assert!(!live.origin_allowed(Some("https://b.example")));
        assert!(!live.access.required() && live.tls.is_none() && live.tls_fingerprint().is_none());
        let handle = LiveConfig::new(live);
        let old = handle.replace(Live::prepare(parse("[auth]\ntoken = \"t\"\n")).unwrap());
        assert!(!old.access.required());
        let now = std::time::SystemTime::now();
        assert!(handle.current().access.verify("t", now).is_ok() && handle.current().access.verify("u", now).is_err());
        assert!(handle.current().origin_allowed(Some("https://b.example")));
    }

    #[test]
    fn a_reload_rereads_the_jwt_key_and_a_bad_one_keeps_the_running_access() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwt.secret");
        let text = format!("[auth]\njwt_secret_file = {file:?}\n");
        std::fs::write(&file, "first-secret-of-at-least-32-bytes\n").unwrap();
        let handle = LiveConfig::new(Live::prepare_with(parse(&text), None).unwrap());
        let first = handle.current();
        assert!(
            first.access.required()
                && first.access.verify("first-secret-of-at-least-32-bytes", std::time::SystemTime::now()).is_err()
        );
        std::fs::write(&file, "second-secret-of-at-least-32-bytes\n").unwrap();
        handle.replace(Live::prepare_with(parse(&text), None).unwrap());
        assert!(!handle.current().access.same_jwt_key(&first.access), "the file is read again");
        std::fs::write(&file, "short\n").unwrap();
        let err = Live::prepare_with(parse(&text), None).err().unwrap();
        assert!(err.starts_with("[auth] jwt_secret_file: the HS256 secret is 5 bytes"), "{err}");
        let err = Live::prepare_with(parse(&text), Some("env-secret-of-at-least-32-bytes!!".into())).err().unwrap();
        assert_eq!(err, "[auth] set one JWT key, not several: jwt_secret_file, AETHER_JWT_SECRET");
        assert!(!handle.current().access.same_jwt_key(&first.access), "a failed prepare changes nothing");
    }

    #[test]
    fn missing_tls_files_are_refused_naming_the_section_and_file() {
        let err =
            Live::prepare(parse("[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n")).err().unwrap();
        assert!(err.starts_with("[tls] cannot load certificate /nonexistent/c.pem"), "{err}");
    }
}
