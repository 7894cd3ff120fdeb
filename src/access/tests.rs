//! Every refusal of the module doc, the grant patterns, the key loading errors, and tokens minted
//! by a foreign client (Python PyJWT).

use std::{path::PathBuf, sync::OnceLock};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::{
    ec::{EcGroup, EcKey},
    nid::Nid,
    pkey::{PKey, Private},
    rsa::Rsa,
};
use serde_json::json;

use super::*;

const SECRET: &str = "a-test-secret-of-more-than-32-bytes!";
/// A fixed "now": 2027-01-15T08:00:00Z.
const NOW_S: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_S)
}

fn room(name: &str) -> Room {
    Room::from_written(name).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes).replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned()
}

/// The usual claims: alice, ten minutes left, write in `board-42`.
fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW_S + 600, "iat": NOW_S, "rooms": {"board-42": "write"}})
}

fn with(changes: Value) -> Value {
    let mut claims = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

struct Keys {
    rsa: PKey<Private>,
    ec: PKey<Private>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
        ec: ec_key(Nid::X9_62_PRIME256V1),
    })
}

fn ec_key(curve: Nid) -> PKey<Private> {
    PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(curve).unwrap()).unwrap()).unwrap()
}

fn public_pem(key: &PKey<Private>) -> Vec<u8> {
    key.public_key_to_pem().unwrap()
}

fn mint(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&keys().rsa.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&keys().ec.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        _ => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

fn auth(change: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
    let mut auth = AuthConfig::default();
    change(&mut auth);
    auth
}

fn hs256() -> Access {
    Access::from_config(&auth(|a| a.jwt_secret = SECRET.into()), None).unwrap()
}

/// Access verifying with the public key in a file (kept alive by the returned directory).
fn with_key_file(pem: &[u8]) -> (Result<Access, String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    std::fs::write(&path, pem).unwrap();
    (Access::from_config(&auth(|a| a.jwt_public_key_file = Some(path)), None), dir)
}

fn bad(access: &Access, token: &str) -> &'static str {
    match access.verify(token, now()) {
        Err(Refusal::BadToken(why)) => why,
        other => panic!("{token}: expected a bad token, got {other:?}"),
    }
}

#[test]
fn no_auth_admits_everyone_to_every_room_for_writing() {
    let access = Access::default();
    assert!(!access.required());
    let open = Admitted { user: None, level: Level::Write, expires: None };
    for token in [None, Some("junk")] {
        assert_eq!(access.admit(token, &Room::DEFAULT, now()), Ok(open.clone()));
        assert_eq!(access.admit(token, &room("x"), now()), Ok(open.clone()));
    }
}

#[test]
fn shared_secret_is_every_room_write_without_user_or_expiry() {
    let access = Access::from_config(&auth(|a| a.token = "hunter2".into()), None).unwrap();
    assert!(access.required() && access.jwt_kind().is_none());
    let everything = Admitted { user: None, level: Level::Write, expires: None };
    assert_eq!(access.admit(Some("hunter2"), &Room::DEFAULT, now()), Ok(everything.clone()));
    assert_eq!(access.admit(Some("hunter2"), &room("board-42"), now()), Ok(everything));
    assert_eq!(access.admit(Some("hunter"), &Room::DEFAULT, now()), Err(Refusal::BadToken("not the shared secret")));
    assert_eq!(access.admit(None, &Room::DEFAULT, now()), Err(Refusal::BadToken("no token")));
    // Beside a JWT key, the secret still works and is tried first.
    let both = Access::from_config(&auth(|a| (a.token, a.jwt_secret) = ("hunter2".into(), SECRET.into())), None);
    let both = both.unwrap();
    assert_eq!(both.verify("hunter2", now()).unwrap().grant(&room("any")), Some(Level::Write));
    assert_eq!(both.verify(&mint(Algorithm::HS256, &claims()), now()).unwrap().user().unwrap().as_ref(), "alice");
    assert_eq!(bad(&both, "hunter3"), "malformed");
}

#[test]
fn good_tokens_of_each_algorithm_name_the_user_expiry_and_grant() {
    let (rs, _d1) = with_key_file(&public_pem(&keys().rsa));
    let (es, _d2) = with_key_file(&public_pem(&keys().ec));
    let cases = [(hs256(), Algorithm::HS256, KeyKind::Hs256), (rs.unwrap(), Algorithm::RS256, KeyKind::Rs256)];
    let cases = cases.into_iter().chain([(es.unwrap(), Algorithm::ES256, KeyKind::Es256)]);
    for (access, alg, kind) in cases {
        assert_eq!(access.jwt_kind(), Some(kind));
        let token = mint(alg, &claims());
        let admitted = access.admit(Some(&token), &room("board-42"), now()).unwrap();
        let expires = UNIX_EPOCH + Duration::from_secs(NOW_S + 600);
        assert_eq!(admitted, Admitted { user: Some(Arc::from("alice")), level: Level::Write, expires: Some(expires) });
        assert_eq!(access.admit(Some(&token), &room("board-43"), now()), Err(Refusal::Forbidden), "{alg:?}");
        assert_eq!(access.admit(Some(&token), &Room::DEFAULT, now()), Err(Refusal::Forbidden), "{alg:?}");
    }
}

#[test]
fn alg_none_is_refused_signed_or_not() {
    let payload = b64(claims().to_string().as_bytes());
    for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#, r#"{"alg":"NONE"}"#] {
        let unsigned = format!("{}.{payload}.", b64(header.as_bytes()));
        assert!(bad(&hs256(), &unsigned).starts_with("malformed"), "{header}");
        // With the signature of a real HS256 token over other bytes: still refused.
        let signature = mint(Algorithm::HS256, &claims()).rsplit('.').next().unwrap().to_owned();
        assert!(bad(&hs256(), &format!("{unsigned}{signature}")).starts_with("malformed"));
    }
}

#[test]
fn algorithm_confusion_hs256_over_the_public_key_pem_is_refused() {
    for key in [&keys().rsa, &keys().ec] {
        let pem = public_pem(key);
        let (access, _dir) = with_key_file(&pem);
        let access = access.unwrap();
        // What an attacker holding the (public) PEM can mint: HS256 with the PEM as the secret.
        let forged =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(&pem).unwrap())
                .unwrap();
        assert_eq!(bad(&access, &forged), "algorithm not accepted");
        // The other public-key algorithm, and HS256 with the real secret, are refused too.
        assert_eq!(bad(&access, &mint(Algorithm::HS256, &claims())), "algorithm not accepted");
    }
    let (es, _dir) = with_key_file(&public_pem(&keys().ec));
    assert_eq!(bad(&es.unwrap(), &mint(Algorithm::RS256, &claims())), "algorithm not accepted");
    // HS384 with the configured secret: the algorithm is pinned, not just the family.
    assert_eq!(bad(&hs256(), &mint(Algorithm::HS384, &claims())), "algorithm not accepted");
}

#[test]
fn wrong_keys_are_refused() {
    let other = Access::from_config(&auth(|a| a.jwt_secret = format!("{SECRET}-other")), None).unwrap();
    assert_eq!(bad(&other, &mint(Algorithm::HS256, &claims())), "bad signature");
    let (es, _dir) = with_key_file(&public_pem(&ec_key(Nid::X9_62_PRIME256V1)));
    assert_eq!(bad(&es.unwrap(), &mint(Algorithm::ES256, &claims())), "bad signature");
    let (rs, _dir) = with_key_file(&public_pem(&PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()));
    assert_eq!(bad(&rs.unwrap(), &mint(Algorithm::RS256, &claims())), "bad signature");
}

#[test]
fn tampered_payload_or_header_is_refused() {
    let (es, _dir) = with_key_file(&public_pem(&keys().ec));
    let es = es.unwrap();
    for (access, alg) in [(&hs256(), Algorithm::HS256), (&es, Algorithm::ES256)] {
        let token = mint(alg, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let escalated = b64(with(json!({"rooms": {"*": "write"}})).to_string().as_bytes());
        assert_eq!(bad(access, &format!("{}.{escalated}.{}", parts[0], parts[2])), "bad signature");
        let header = b64(format!(r#"{{"alg":"{alg:?}","typ":"JWT","kid":"x"}}"#).as_bytes());
        assert_eq!(bad(access, &format!("{header}.{}.{}", parts[1], parts[2])), "bad signature");
        // A flipped signature byte.
        let mut signature = parts[2].to_owned();
        let flipped = if signature.ends_with('A') { 'B' } else { 'A' };
        signature.replace_range(signature.len() - 1.., &flipped.to_string());
        assert!(access.verify(&format!("{}.{}.{signature}", parts[0], parts[1]), now()).is_err());
    }
}

#[test]
fn malformed_tokens_are_refused() {
    let token = mint(Algorithm::HS256, &claims());
    let header = token.split('.').next().unwrap();
    let garbage = [
        String::new(),
        "x".into(),
        "a.b".into(),
        "a.b.c".into(),
        format!("{token}.x"),
        format!("{header}.!!!.abc"),
        format!("{}.{}.sig", b64(b"not json"), b64(b"{}")),
        format!("{header}.{}.sig", b64(b"[1,2]")),
        token.replacen('.', "..", 1),
    ];
    for token in garbage {
        assert!(matches!(hs256().verify(&token, now()), Err(Refusal::BadToken(_))), "{token:?}");
    }
}

#[test]
fn time_claims() {
    let access = hs256();
    let verify = |changes: Value| access.verify(&mint(Algorithm::HS256, &with(changes)), now());
    assert_eq!(verify(json!({"exp": NOW_S - 1})).unwrap_err(), Refusal::Expired);
    assert_eq!(verify(json!({"exp": NOW_S})).unwrap_err(), Refusal::Expired);
    assert!(verify(json!({"exp": NOW_S + 1})).is_ok());
    assert!(verify(json!({"exp": NOW_S as f64 + 0.5})).is_ok(), "NumericDate may be fractional");
    for exp in [json!(null), json!("1900000000"), json!(-1), json!(1e300), json!(true)] {
        assert!(matches!(verify(json!({"exp": exp.clone()})), Err(Refusal::BadToken(_))), "{exp}");
    }
    assert_eq!(verify(json!({"nbf": NOW_S + 1})).unwrap_err(), Refusal::BadToken("not yet valid (nbf)"));
    assert!(verify(json!({"nbf": NOW_S})).is_ok());
    assert_eq!(verify(json!({"iat": NOW_S + 1})).unwrap_err(), Refusal::BadToken("issued in the future (iat)"));
    assert_eq!(verify(json!({"iat": "now"})).unwrap_err(), Refusal::BadToken("iat not a date"));
    assert_eq!(verify(json!({"nbf": "now"})).unwrap_err(), Refusal::BadToken("nbf not a date"));
    assert!(verify(json!({"iat": null})).is_ok(), "iat is optional");
    // An expired token with a bad sub is a bad token first.
    assert!(matches!(verify(json!({"exp": NOW_S - 1, "sub": 7})), Err(Refusal::BadToken(_))));
}

#[test]
fn leeway_applies_to_exp_nbf_and_iat() {
    let access = Access::from_config(&auth(|a| (a.jwt_secret, a.jwt_leeway_s) = (SECRET.into(), 30)), None).unwrap();
    let verify = |changes: Value| access.verify(&mint(Algorithm::HS256, &with(changes)), now());
    let identity = verify(json!({"exp": NOW_S - 10})).unwrap();
    assert_eq!(identity.expires(), Some(UNIX_EPOCH + Duration::from_secs(NOW_S + 20)));
    assert_eq!(verify(json!({"exp": NOW_S - 30})).unwrap_err(), Refusal::Expired);
    assert!(verify(json!({"nbf": NOW_S + 30, "iat": NOW_S + 30})).is_ok());
    assert!(matches!(verify(json!({"nbf": NOW_S + 31})), Err(Refusal::BadToken(_))));
    assert!(matches!(verify(json!({"iat": NOW_S + 31})), Err(Refusal::BadToken(_))));
}

#[test]
fn sub_is_a_string_of_1_to_256_bytes() {
    let access = hs256();
    let verify = |sub: Value| access.verify(&mint(Algorithm::HS256, &with(json!({"sub": sub}))), now());
    for sub in [json!(null), json!(""), json!("x".repeat(MAX_SUB_LEN + 1))] {
        assert_eq!(verify(sub.clone()).unwrap_err(), Refusal::BadToken("sub missing, not a string, or too long"));
    }
    // Not a string: the crate's own claim parsing already refuses some shapes (as malformed).
    for sub in [json!(42), json!(["alice"]), json!({"name": "alice"}), json!(true)] {
        assert!(matches!(verify(sub.clone()), Err(Refusal::BadToken(_))), "{sub}");
    }
    assert_eq!(verify(json!("é".repeat(MAX_SUB_LEN / 2))).unwrap().user().unwrap().len(), MAX_SUB_LEN);
}

#[test]
fn issuer_and_audience_when_configured() {
    let access = Access::from_config(
        &auth(|a| {
            a.jwt_secret = SECRET.into();
            a.jwt_issuer = Some("https://id.example".into());
            a.jwt_audience = Some("aether".into());
        }),
        None,
    )
    .unwrap();
    let verify = |changes: Value| access.verify(&mint(Algorithm::HS256, &with(changes)), now());
    assert!(verify(json!({"iss": "https://id.example", "aud": "aether"})).is_ok());
    assert!(verify(json!({"iss": "https://id.example", "aud": ["other", "aether"]})).is_ok());
    for wrong in [
        json!({"aud": "aether"}),
        json!({"iss": "https://evil.example", "aud": "aether"}),
        json!({"iss": ["https://id.example"], "aud": "aether"}),
        json!({"iss": "https://id.example"}),
        json!({"iss": "https://id.example", "aud": "other"}),
        json!({"iss": "https://id.example", "aud": ["other"]}),
    ] {
        assert!(matches!(verify(wrong.clone()), Err(Refusal::BadToken(_))), "{wrong}");
    }
    // Not configured: iss is ignored, but a token made for an audience is not ours.
    assert!(hs256().verify(&mint(Algorithm::HS256, &with(json!({"iss": "anyone"}))), now()).is_ok());
    let for_someone = mint(Algorithm::HS256, &with(json!({"aud": "billing"})));
    assert_eq!(bad(&hs256(), &for_someone), "wrong, missing or unexpected aud");
}

/// The grants a token with this `rooms` claim gives in each room.
fn grants_in(rooms: Value, names: &[&str]) -> Vec<Option<Level>> {
    let identity = hs256().verify(&mint(Algorithm::HS256, &with(json!({"rooms": rooms}))), now()).unwrap();
    names.iter().map(|name| identity.grant(&room(name))).collect()
}

#[test]
fn grant_patterns() {
    use Level::{Read, Write};
    let rooms = ["_", "board-42", "board-", "board", "boardx", "other"];
    assert_eq!(grants_in(json!({"board-42": "read"}), &rooms), [None, Some(Read), None, None, None, None]);
    assert_eq!(grants_in(json!({"_": "write"}), &rooms), [Some(Write), None, None, None, None, None]);
    let prefix = [None, Some(Read), Some(Read), None, None, None];
    assert_eq!(grants_in(json!({"board-*": "read"}), &rooms), prefix);
    assert_eq!(grants_in(json!({"*": "read"}), &rooms), [Some(Read); 6]);
    // The strongest match wins, whatever the order.
    let strongest = [Some(Read), Some(Write), Some(Read), Some(Read), Some(Read), Some(Read)];
    assert_eq!(grants_in(json!({"*": "read", "board-42": "write"}), &rooms), strongest);
    assert_eq!(grants_in(json!({"board-*": "write", "board-42": "read"}), &["board-42"]), [Some(Write)]);
    // Invalid entries are ignored, valid ones beside them still count.
    let invalid = json!({"_x": "write", "_*": "write", "": "write", "a b": "write", "**": "write", "b*d": "write",
        "a*b*": "write", "other": "admin", "board": 1, "boardx": "Write", "board-42": "read"});
    assert_eq!(grants_in(invalid, &rooms), [None, Some(Read), None, None, None, None]);
    // No claim, or not an object: nothing.
    assert_eq!(grants_in(json!(null), &rooms), [None; 6]);
    assert_eq!(grants_in(json!(["*"]), &rooms), [None; 6]);
    assert_eq!(grants_in(json!("*"), &rooms), [None; 6]);
}

#[test]
fn refusals_close_with_the_documented_codes() {
    use Version::{V1, V2};
    assert_eq!(Refusal::BadToken("x").close(V2), (4401, "auth failed"));
    assert_eq!(Refusal::Expired.close(V2), (4401, "token expired"));
    assert_eq!(Refusal::Forbidden.close(V2), (4403, "forbidden"));
    assert_eq!(Refusal::BadToken("x").close(V1), (1008, "auth failed"));
    assert_eq!(Refusal::Expired.close(V1), (1008, "token expired"));
    assert_eq!(Refusal::Forbidden.close(V1), (1008, "forbidden"));
}

#[test]
fn key_configuration_errors_name_the_key() {
    let load = |auth: AuthConfig, env: Option<&str>| Access::from_config(&auth, env.map(str::to_owned)).unwrap_err();
    let err = load(auth(|a| a.jwt_secret = SECRET.into()), Some(SECRET));
    assert_eq!(err, "[auth] set one JWT key, not several: jwt_secret, AETHER_JWT_SECRET");
    let err = load(auth(|a| a.jwt_secret = "short-secret".into()), None);
    assert_eq!(err, "[auth] jwt_secret: the HS256 secret is 12 bytes, at least 32 are needed");
    assert!(!load(auth(|_| ()), Some("hunter2-short")).contains("hunter2"));
    let err = load(auth(|a| a.jwt_public_key_file = Some(PathBuf::from("/nonexistent/k.pem"))), None);
    assert!(err.starts_with("[auth] jwt_public_key_file /nonexistent/k.pem: cannot read"), "{err}");
    let err = load(auth(|a| a.jwt_issuer = Some("me".into())), None);
    assert!(err.starts_with("[auth] jwt_issuer and jwt_audience need a JWT key"), "{err}");
    let file_errors = [
        (keys().ec.private_key_to_pem_pkcs8().unwrap(), "holds a private key"),
        (public_pem(&ec_key(Nid::SECP384R1)), "curve secp384r1; only P-256"),
        (public_pem(&PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap()), "RSA key of 1024 bits"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(), "not a PEM public key"),
        (b"hello".to_vec(), "not a PEM public key"),
    ];
    for (pem, expected) in file_errors {
        let err = with_key_file(&pem).0.unwrap_err();
        assert!(err.starts_with("[auth] jwt_public_key_file ") && err.contains(expected), "{err}");
    }
}

#[test]
fn env_and_file_secrets_and_other_pem_forms() {
    let from_env = Access::from_config(&AuthConfig::default(), Some(format!("  {SECRET}\n"))).unwrap();
    assert!(from_env.verify(&mint(Algorithm::HS256, &claims()), now()).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let from_file = Access::from_config(&auth(|a| a.jwt_secret_file = Some(file)), None).unwrap();
    assert!(from_file.verify(&mint(Algorithm::HS256, &claims()), now()).is_ok());
    assert!(from_file.same_jwt_key(&from_env) && !from_file.same_jwt_key(&Access::default()));
    // PKCS#1 `RSA PUBLIC KEY`.
    let pkcs1 = keys().rsa.rsa().unwrap().public_key_to_pem_pkcs1().unwrap();
    let (rs, _dir) = with_key_file(&pkcs1);
    assert!(rs.unwrap().verify(&mint(Algorithm::RS256, &claims()), now()).is_ok());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let access = Access::from_config(&auth(|a| (a.token, a.jwt_secret) = ("hunter2".into(), SECRET.into())), None);
    let shown = format!("{:?}", access.unwrap());
    assert!(!shown.contains("hunter2") && !shown.contains(SECRET), "{shown}");
    assert!(shown.contains("Hs256"), "{shown}");
    let token = mint(Algorithm::HS256, &claims());
    let shown = format!("{:?}", hs256().verify(&token, now()).unwrap());
    assert!(!shown.contains(&token), "{shown}");
}

/// Tokens minted by Python PyJWT (a foreign client) with keys it made, recorded by
/// `tests/fixtures/jwt/mint.py`: each verifies at the time the script stamped them.
#[test]
fn tokens_minted_by_pyjwt_verify() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let minted: Value = serde_json::from_str(&read("pyjwt-tokens.json")).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(minted["iat"].as_u64().unwrap() + 1);
    let hs = Access::from_config(&auth(|a| a.jwt_secret = minted["hs256_secret"].as_str().unwrap().into()), None);
    let (rs, _d1) = with_key_file(read("pyjwt-rsa-public.pem").as_bytes());
    let (es, _d2) = with_key_file(read("pyjwt-ec-public.pem").as_bytes());
    for (access, alg) in [(hs.unwrap(), "HS256"), (rs.unwrap(), "RS256"), (es.unwrap(), "ES256")] {
        let token = minted[alg].as_str().unwrap();
        let admitted = access.admit(Some(token), &room("board-42"), at).unwrap();
        assert_eq!((admitted.user.as_deref(), admitted.level), (Some("alice"), Level::Write), "{alg}");
        assert_eq!(access.admit(Some(token), &room("board-7"), at).unwrap().level, Level::Read, "{alg}");
        assert_eq!(access.admit(Some(token), &Room::DEFAULT, at), Err(Refusal::Forbidden), "{alg}");
        let later = at + Duration::from_secs(3600);
        assert_eq!(access.admit(Some(token), &room("board-42"), later), Err(Refusal::Expired), "{alg}");
    }
}
