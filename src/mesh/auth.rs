//! Peer authentication: a challenge-response over the shared token, which never crosses the wire.
//!
//! The dialler sends a random nonce in its `hello`; the listener answers with its own nonce and
//! `HMAC-SHA256(token, "listener" | dialler nonce | listener nonce | dialler id | listener id)`;
//! the dialler checks it (so it never talks to a listener that does not hold the token) and
//! answers with the same HMAC labelled `"dialler"`. Binding both node ids into the proofs means a
//! proof cannot be replayed for another identity, and fresh nonces mean it cannot be replayed at
//! all. Proofs are compared in constant time.
//!
//! Upstream's scheme (the token itself in `hello`) is only accepted or used with
//! `[mesh] token_in_hello = true`, for Python `MeshNode` peers; [`same_token`] compares those in
//! constant time too.

use openssl::{hash::MessageDigest, memcmp, pkey::PKey, sign::Signer};
use uuid::Uuid;

/// Which side a proof is from.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The side that accepted the connection.
    Listener,
    /// The side that dialled.
    Dialler,
}

/// The nonces and ids of one handshake.
#[derive(Debug, Clone)]
pub struct Transcript<'a> {
    /// The dialler's nonce.
    pub dialler_nonce: &'a str,
    /// The listener's nonce.
    pub listener_nonce: &'a str,
    /// The dialler's node id.
    pub dialler: &'a str,
    /// The listener's node id.
    pub listener: &'a str,
}

/// A fresh random nonce (128 bits, hex).
pub fn nonce() -> String {
    Uuid::new_v4().simple().to_string()
}

/// The proof `role` gives for `transcript`, hex-encoded.
pub fn proof(token: &str, role: Role, t: &Transcript<'_>) -> String {
    let label = match role {
        Role::Listener => "aether-mesh listener",
        Role::Dialler => "aether-mesh dialler",
    };
    let mut message = Vec::new();
    for part in [label, t.dialler_nonce, t.listener_nonce, t.dialler, t.listener] {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part.as_bytes());
    }
    hmac_sha256(token.as_bytes(), &message).iter().map(|b| format!("{b:02x}")).collect()
}

/// Does `given` equal the proof `role` should give? Constant time in the proof's content.
pub fn verify(token: &str, role: Role, t: &Transcript<'_>, given: &str) -> bool {
    same_token(&proof(token, role, t), given)
}

/// Constant-time equality of two secrets (the length alone may leak, as it does anywhere).
pub fn same_token(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && memcmp::eq(expected.as_bytes(), given.as_bytes())
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC-SHA256 with an in-memory key cannot fail short of memory exhaustion; an empty proof
    // then simply fails verification.
    let sign = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let key = PKey::hmac(key)?;
        let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
        signer.update(message)?;
        signer.sign_to_vec()
    };
    sign().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_token_role_nonces_and_ids() {
        let t = Transcript { dialler_nonce: "a", listener_nonce: "b", dialler: "x", listener: "y" };
        let p = proof("secret", Role::Listener, &t);
        assert_eq!(p.len(), 64);
        assert!(verify("secret", Role::Listener, &t, &p));
        assert!(!verify("other", Role::Listener, &t, &p));
        assert!(!verify("secret", Role::Dialler, &t, &p));
        let swapped = Transcript { dialler: "y", listener: "x", ..t.clone() };
        assert!(!verify("secret", Role::Listener, &swapped, &p));
        // Length-prefixed parts: moving a boundary changes the proof.
        let shifted = Transcript { dialler_nonce: "ab", listener_nonce: "", ..t.clone() };
        assert_ne!(proof("secret", Role::Listener, &shifted), p);
        assert!(!verify("secret", Role::Listener, &t, ""));
    }

    #[test]
    fn known_hmac_vector() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
