//! Access (ours only): the relay CPU one connection's admission costs with each kind of token.
//!
//! Each case is a fresh relay that differs only in `[auth]`: none, the shared secret, an HS256
//! secret, an ES256 and an RS256 public key. The bench opens `conns` connections one after another
//! (`?room=bench&auth_token=…`, each reading `hello` and `snapshot`, then closing) and reads the
//! relay's CPU time (user + system, from `/proc`) before and after: the CPU per connect. The
//! difference to the case without auth is what verifying the token costs, inside a whole connect
//! (TCP accept, HTTP upgrade, join, hello and snapshot, close).

use std::{path::Path, time::Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::{
    ec::{EcGroup, EcKey},
    nid::Nid,
    pkey::PKey,
    rsa::Rsa,
};

use crate::{
    client::Client,
    procs::{Launch, OursConfig, Relay, stop_and_check},
    util::temp_dir,
};

/// One case's result.
pub struct Case {
    /// What was presented.
    pub name: &'static str,
    /// Relay CPU per connect, µs (`None` when the run failed).
    pub cpu_us: Option<f64>,
    /// Connects per second, one client after another.
    pub per_sec: Option<f64>,
}

const SECRET: &str = "a-bench-secret-of-more-than-32-bytes!!";

fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    serde_json::json!({"sub": "bench", "iat": now, "exp": now + 3600, "rooms": {"*": "write"}})
}

/// Runs every case with `conns` connects each (after `warmup` unmeasured ones).
pub fn run(launch: &Launch, conns: usize, warmup: usize, notes: &mut Vec<String>) -> Vec<Case> {
    let keys = temp_dir();
    let ec =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let public = |name: &str, pem: Vec<u8>| {
        let path = keys.path().join(name);
        std::fs::write(&path, pem).expect("write key");
        path
    };
    let (ec_pub, rsa_pub) = (
        public("ec.pub.pem", ec.public_key_to_pem().unwrap()),
        public("rsa.pub.pem", rsa.public_key_to_pem().unwrap()),
    );
    let mint = |alg: Algorithm, key: &EncodingKey| jsonwebtoken::encode(&Header::new(alg), &claims(), key).unwrap();
    let hs = mint(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap());
    let es = mint(Algorithm::ES256, &EncodingKey::from_ec_pem(&ec.private_key_to_pem_pkcs8().unwrap()).unwrap());
    let rs = mint(Algorithm::RS256, &EncodingKey::from_rsa_pem(&rsa.private_key_to_pem_pkcs8().unwrap()).unwrap());
    let file = |p: &Path| format!("{p:?}");
    let cases: [(&'static str, String, Option<String>); 5] = [
        ("no auth", String::new(), None),
        ("shared secret", "token = \"bench-shared-secret\"".into(), Some("bench-shared-secret".into())),
        ("HS256 JWT", format!("jwt_secret = \"{SECRET}\""), Some(hs)),
        ("ES256 JWT", format!("jwt_public_key_file = {}", file(&ec_pub)), Some(es)),
        ("RS256 JWT", format!("jwt_public_key_file = {}", file(&rsa_pub)), Some(rs)),
    ];
    cases
        .into_iter()
        .map(|(name, auth, token)| {
            let cfg = OursConfig { mesh: format!("[auth]\n{auth}\n"), ..OursConfig::default() };
            let mut relay = Relay::ours(launch, &cfg);
            relay.wait_healthy();
            let url = match &token {
                Some(token) => format!("{}?room=bench&auth_token={token}", relay.url()),
                None => format!("{}?room=bench", relay.url()),
            };
            let addr = relay.addr;
            let connect = || Client::connect(addr, &url).map(Client::close);
            let mut failed = None;
            for _ in 0..warmup {
                if let Err(e) = connect() {
                    failed = Some(e);
                }
            }
            let (cpu0, started) = (relay.cpu_secs(), Instant::now());
            for _ in 0..conns {
                if let Err(e) = connect() {
                    failed = Some(e);
                }
            }
            let (cpu, took) = (relay.cpu_secs() - cpu0, started.elapsed());
            if let Some(e) = &failed {
                notes.push(format!("access: {name}: a connect failed: {e}"));
            }
            notes.extend(stop_and_check(&mut relay, &format!("access: {name}"), None));
            let ok = failed.is_none();
            Case {
                name,
                cpu_us: ok.then(|| cpu * 1e6 / conns as f64),
                per_sec: ok.then(|| conns as f64 / took.as_secs_f64()),
            }
        })
        .collect()
}
