//! The one JWT key of `[auth]`: from `jwt_secret`, `jwt_secret_file`, `AETHER_JWT_SECRET` (HS256)
//! or `jwt_public_key_file` (PEM: RSA → RS256, EC P-256 → ES256), checked once when loaded so a
//! bad key fails the start or the reload, never each token.

use std::{fs, path::Path};

use jsonwebtoken::{Algorithm, DecodingKey};
use openssl::{
    bn::BigNumContext,
    ec::PointConversionForm,
    nid::Nid,
    pkey::{Id, PKey, Public},
    rsa::Rsa,
    x509::X509,
};

use crate::config::{AuthConfig, JWT_SECRET_ENV};

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash's size).
pub const MIN_SECRET_LEN: usize = 32;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// The kind of key, and so the one algorithm accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A shared secret: HS256.
    Hs256,
    /// An RSA public key: RS256.
    Rs256,
    /// An EC P-256 public key: ES256.
    Es256,
}

impl KeyKind {
    /// The algorithm tokens must name in their header.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Hs256 => Algorithm::HS256,
            KeyKind::Rs256 => Algorithm::RS256,
            KeyKind::Es256 => Algorithm::ES256,
        }
    }
}

/// A loaded key.
pub(super) struct Key {
    pub kind: KeyKind,
    pub decoding: DecodingKey,
    /// SHA-256 of the key material.
    pub fingerprint: [u8; 32],
}

impl Key {
    fn new(kind: KeyKind, decoding: DecodingKey, material: &[u8]) -> Key {
        Key { kind, decoding, fingerprint: openssl::sha::sha256(material) }
    }
}

/// The key `auth` and `env_secret` name, `None` when none is set.
pub(super) fn load(auth: &AuthConfig, env_secret: Option<String>) -> Result<Option<Key>, String> {
    let env_secret = env_secret.filter(|s| !s.trim().is_empty());
    let mut sources = auth.jwt_key_sources();
    if env_secret.is_some() {
        sources.push(JWT_SECRET_ENV);
    }
    if sources.len() > 1 {
        return Err(format!("[auth] set one JWT key, not several: {}", sources.join(", ")));
    }
    if let Some(secret) = env_secret {
        return secret_key(secret.trim(), JWT_SECRET_ENV).map(Some);
    }
    if !auth.jwt_secret.is_empty() {
        return secret_key(&auth.jwt_secret, "jwt_secret").map(Some);
    }
    if let Some(path) = &auth.jwt_secret_file {
        let text = read(path, "jwt_secret_file")?;
        return secret_key(String::from_utf8_lossy(&text).trim(), "jwt_secret_file").map(Some);
    }
    match &auth.jwt_public_key_file {
        Some(path) => public_key(&read(path, "jwt_public_key_file")?)
            .map(Some)
            .map_err(|e| format!("[auth] jwt_public_key_file {}: {e}", path.display())),
        None => Ok(None),
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("[auth] {key} {}: cannot read: {e}", path.display()))
}

fn secret_key(secret: &str, source: &str) -> Result<Key, String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "[auth] {source}: the HS256 secret is {} bytes, at least {MIN_SECRET_LEN} are needed",
            secret.len()
        ));
    }
    let decoding =
        DecodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("[auth] {source}: unusable secret: {e}"))?;
    Ok(Key::new(KeyKind::Hs256, decoding, secret.as_bytes()))
}

/// An RSA or EC P-256 public key (`PUBLIC KEY`, `RSA PUBLIC KEY`, or a `CERTIFICATE`), handed
/// to the verifier in the one encoding it reads (PKCS#1 DER, uncompressed SEC1 point).
fn public_key(pem: &[u8]) -> Result<Key, String> {
    let text = String::from_utf8_lossy(pem);
    let pkey: PKey<Public> = if text.contains("PRIVATE KEY-----") {
        return Err("holds a private key; give the relay only the public key (openssl pkey -pubout)".into());
    } else if text.contains("-----BEGIN CERTIFICATE-----") {
        X509::from_pem(pem).and_then(|cert| cert.public_key())
    } else if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        Rsa::public_key_from_pem_pkcs1(pem).and_then(PKey::from_rsa)
    } else {
        PKey::public_key_from_pem(pem)
    }
    .map_err(|e| format!("not a PEM public key or certificate: {e}"))?;
    let key = match pkey.id() {
        Id::RSA => {
            let rsa = pkey.rsa().map_err(|e| e.to_string())?;
            let bits = rsa.size() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits, at least {MIN_RSA_BITS} are needed"));
            }
            let der = rsa.public_key_to_der_pkcs1().map_err(|e| e.to_string())?;
            Key::new(KeyKind::Rs256, DecodingKey::from_rsa_der(&der), &der)
        }
        Id::EC => {
            let ec = pkey.ec_key().map_err(|e| e.to_string())?;
            let curve = ec.group().curve_name();
            if curve != Some(Nid::X9_62_PRIME256V1) {
                let name = curve.and_then(|c| c.short_name().ok()).unwrap_or("unnamed");
                return Err(format!("EC key on curve {name}; only P-256 (prime256v1, ES256) is accepted"));
            }
            let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
            let point = ec
                .public_key()
                .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
                .map_err(|e| e.to_string())?;
            Key::new(KeyKind::Es256, DecodingKey::from_ec_der(&point), &point)
        }
        _ => return Err("neither an RSA nor an EC P-256 key".into()),
    };
    // The verifier parses the key for each token: make sure it can, once, now.
    jsonwebtoken::crypto::verify("", b"", &key.decoding, key.kind.algorithm())
        .map_err(|e| format!("the verifier cannot use this key: {e}"))?;
    Ok(key)
}
