//! Connecting to NATS and making the stream and the snapshot bucket ready.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    object_store::{self, ObjectStore},
    stream,
};

use crate::config::NatsConfig;

/// A connection to NATS with the stream and bucket ready.
pub struct Connection {
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    pub(super) stream: stream::Stream,
    pub(super) store: ObjectStore,
    pub(super) subject: String,
    pub(super) presence_subject: String,
    /// Stream creation time (identifies the stream across recreations).
    pub(super) created: i128,
    pub(super) connected: Arc<AtomicBool>,
}

/// Connects to NATS and creates (or verifies) the stream and the snapshot bucket. Runs before
/// the relay serves anything, so a wrong URL, credentials or an incompatible existing stream stop
/// it with one clear line.
///
/// # Errors
/// What is wrong, for the operator.
pub async fn connect(cfg: &NatsConfig, node: &str) -> Result<Connection, String> {
    let connected = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&connected);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("aether-actix {node}"))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let flag = Arc::clone(&flag);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        flag.store(true, Ordering::Relaxed);
                        log::info!("nats: connected");
                    }
                    async_nats::Event::Disconnected => {
                        flag.store(false, Ordering::Relaxed);
                        log::warn!("nats: disconnected; serving local clients, queueing what to publish");
                    }
                    other => log::info!("nats: {other}"),
                }
            }
        });
    if !cfg.token.is_empty() {
        options = options.token(cfg.token.clone());
    }
    if !cfg.user.is_empty() {
        options = options.user_and_password(cfg.user.clone(), cfg.password.clone());
    }
    if let Some(creds) = &cfg.creds_file {
        options = options.credentials_file(creds).await.map_err(|e| format!("{}: {e}", creds.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let addrs = cfg
        .servers
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>().map_err(|e| format!("servers: {url:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let servers = cfg.servers.join(", ");
    let client = options.connect(addrs).await.map_err(|e| format!("cannot connect to NATS at {servers}: {e}"))?;
    connected.store(true, Ordering::Relaxed);
    // Short timeouts: an ack lost in an outage is retried after a few seconds, not 30.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .ack_timeout(Duration::from_secs(5))
        .build(client.clone());
    let (name, subject) = (cfg.stream_name(), cfg.subject_name());
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        max_bytes: i64::try_from(cfg.max_bytes).ok().filter(|b| *b > 0).unwrap_or(-1),
        max_age: Duration::from_secs_f64(cfg.max_age_s),
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(120),
        description: Some(format!("aether-actix ops of federation {}", cfg.cluster)),
        ..Default::default()
    };
    // A cluster that starts with us may need a few seconds to elect a JetStream leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(err) if Instant::now() < deadline => {
                log::info!("nats: stream {name} not available yet ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                return Err(format!("NATS stream {name}: cannot create or open it: {err} (is JetStream enabled?)"));
            }
        }
    };
    let info = stream.info().await.map_err(|e| format!("NATS stream {name}: {e}"))?.clone();
    if !info.config.subjects.contains(&subject) {
        return Err(format!(
            "NATS stream {name} exists with subjects {:?}, not {subject:?}; set [mesh.nats] stream or subject to match",
            info.config.subjects
        ));
    }
    if info.config.num_replicas != cfg.replicas {
        log::warn!(
            "nats: stream {name} has {} replica(s), [mesh.nats] replicas says {}; keeping the stream's",
            info.config.num_replicas,
            cfg.replicas
        );
    }
    let bucket = cfg.bucket_name();
    let store = match js.get_object_store(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                description: Some("aether-actix snapshots".into()),
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("NATS object store {bucket}: cannot create it: {e}"))?,
    };
    log::info!(
        "nats: stream {name} on {subject} ({} ops, sequences {}..={}), snapshots in {bucket}",
        info.state.messages,
        info.state.first_sequence,
        info.state.last_sequence
    );
    Ok(Connection {
        client,
        js,
        stream,
        store,
        subject,
        presence_subject: cfg.presence_subject_name(),
        created: info.created.unix_timestamp_nanos(),
        connected,
    })
}
