//! Micro-benchmarks of the hot core, with criterion: HLC tick, LWW merge into a 100,000-key map,
//! ledger record encode and decode, and admitting a connection's token (shared secret, JWT HS256,
//! ES256, RS256).
//!
//! `cargo bench --bench micro` (part of `cargo bench`). Each benchmark warms up for 1 s and
//! measures for 3 s; `AETHER_MICRO_SECS` changes the measurement time. Under `cargo test
//! --all-targets` criterion runs each benchmark once, as a smoke check.

use std::{hint::black_box, time::Duration};

use aether_actix::{
    access::Access,
    config::AuthConfig,
    hlc::{Clock, Stamp},
    ledger::record,
    lww::{LwwMap, Op},
    room::Room,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;

/// Keys in the map the merge benchmarks write into.
const KEYS: u64 = 100_000;
/// A late-2026 wall clock in nanoseconds, the base of every generated stamp.
const BASE_NS: u64 = 1_795_901_405_000_000_000;

/// The value every benchmark writes: the shape the load benchmarks send.
fn value(i: u64) -> serde_json::Value {
    json!({"i": i, "tag": "bench"})
}

fn key(i: u64) -> String {
    format!("obj:{:06}", i % KEYS)
}

/// A 100,000-key map, every key written once at a stamp below every stamp the benchmarks use.
fn full_map() -> LwwMap {
    let mut map = LwwMap::new();
    for i in 0..KEYS {
        map.apply(Op::set(key(i), value(i), Stamp::new(BASE_NS + i, 0, "bench")));
    }
    map
}

fn hlc(c: &mut Criterion) {
    let mut clock = Clock::new("alpha");
    c.bench_function("hlc/tick (reads the wall clock)", |b| b.iter(|| black_box(clock.tick())));
    let mut clock = Clock::new("alpha");
    let mut now = BASE_NS;
    c.bench_function("hlc/tick_at (given time)", |b| {
        b.iter(|| {
            now += 1;
            black_box(clock.tick_at(black_box(now)))
        })
    });
}

fn lww(c: &mut Criterion) {
    let mut map = full_map();
    // Scatter the keys so that successive merges do not walk the same path of the tree.
    let mut i = 0u64;
    let mut stamp = BASE_NS + KEYS;
    c.bench_function("lww/apply, newer stamp (wins), 100k keys", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % KEYS;
                stamp += 1;
                Op::set(key(i), value(i), Stamp::new(stamp, 0, "bench"))
            },
            |op| black_box(map.apply(op)),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("lww/apply, older stamp (loses), 100k keys", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % KEYS;
                Op::set(key(i), value(i), Stamp::new(BASE_NS, 0, "bench"))
            },
            |op| black_box(map.apply(op)),
            BatchSize::SmallInput,
        )
    });
    assert_eq!(map.len(), KEYS as usize, "merges only overwrite");
}

fn records(c: &mut Criterion) {
    let op = Op::set("obj:123456", value(123_456), Stamp::new(BASE_NS, 0, "alpha"));
    let mut line = Vec::with_capacity(256);
    c.bench_function("record/encode", |b| {
        b.iter(|| {
            line.clear();
            record::encode(black_box(&op), &mut line);
            black_box(line.len())
        })
    });
    line.clear();
    record::encode(&op, &mut line);
    let without_newline = &line[..line.len() - 1];
    c.bench_function("record/decode", |b| b.iter(|| black_box(record::decode(black_box(without_newline)))));
    assert_eq!(record::decode(without_newline).ok(), Some(op), "decode(encode(op)) == op");
}

/// What admitting one connection costs in the relay: the token checked (constant-time compare,
/// or a JWT's signature and claims) and the room's grant looked up. Keys are made here (openssl);
/// tokens are minted by jsonwebtoken, as an issuer would.
fn access(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use openssl::{ec, nid::Nid, pkey::PKey, rsa::Rsa};

    let dir = tempfile::tempdir().expect("temporary directory");
    let secret = "a-benchmark-secret-of-at-least-32-bytes";
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let claims =
        json!({"sub": "alice", "exp": exp, "iat": exp - 3600, "rooms": {"board-*": "read", "board-42": "write"}});
    let room = Room::parse("board-42").expect("room name");
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let ec_key = PKey::from_ec_key(ec::EcKey::generate(&group).expect("EC key")).expect("EC key");
    let rsa_key = PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("RSA key");
    let with_key = |name: &str, key: &PKey<openssl::pkey::Private>| {
        let path = dir.path().join(name);
        std::fs::write(&path, key.public_key_to_pem().expect("PEM")).expect("key file");
        AuthConfig { jwt_public_key_file: Some(path), ..AuthConfig::default() }
    };
    let cases = [
        (
            "HS256",
            AuthConfig { jwt_secret: secret.into(), ..AuthConfig::default() },
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        (
            "ES256",
            with_key("ec.pem", &ec_key),
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&ec_key.private_key_to_pem_pkcs8().expect("PEM")),
        ),
        (
            "RS256",
            with_key("rsa.pem", &rsa_key),
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&rsa_key.private_key_to_pem_pkcs8().expect("PEM")),
        ),
    ];
    for (name, auth, alg, key) in cases {
        let access = Access::from_config(&auth, None).expect("access");
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key.expect("key")).expect("token");
        let now = std::time::SystemTime::now();
        assert!(access.admit(Some(&token), &room, now).is_ok(), "{name} token admitted");
        c.bench_function(&format!("access/admit, JWT {name}"), |b| {
            b.iter(|| black_box(access.admit(black_box(Some(token.as_str())), &room, now)))
        });
    }
    let shared =
        Access::from_config(&AuthConfig { token: secret.into(), ..AuthConfig::default() }, None).expect("access");
    let now = std::time::SystemTime::now();
    c.bench_function("access/admit, shared secret", |b| {
        b.iter(|| black_box(shared.admit(black_box(Some(secret)), &room, now)))
    });
}

fn config() -> Criterion {
    let secs = std::env::var("AETHER_MICRO_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(3.0);
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs_f64(secs.max(0.1)))
        .sample_size(50)
}

criterion_group! { name = micro; config = config(); targets = hlc, lww, records, access }
criterion_main!(micro);
