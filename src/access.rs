//! Access: the one place where a presented token becomes a decision: who the client is, which
//! rooms it may read or write, and until when. Plain Rust, no actix.
//!
//! Two kinds of token, both from `[auth]` ([`crate::config::AuthConfig`]):
//! - the shared secret (`token`): every room, read and write, no user, no expiry. It is compared
//!   first, in constant time ([`token_matches`]);
//! - a JWT, verified with the one configured key ([`keys`]): HS256 for a secret, RS256 for an RSA
//!   public key, ES256 for an EC P-256 one. No other algorithm is accepted: not `none`, not HS256
//!   over a public key's PEM (algorithm confusion). Claims: `sub` (string, 1 to [`MAX_SUB_LEN`]
//!   bytes, the user), `exp` (required), `nbf` and `iat` (honoured when present), `iss` and `aud`
//!   (checked when configured), `rooms` (the grants: [`Identity::grant`]).
//!
//! [`Access::admit`] answers for one connection and one room; a [`Refusal`] knows its close code
//! and text ([`Refusal::close`]). Secrets never appear in `Debug` output or in refusals.

mod keys;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

pub use self::keys::KeyKind;
use crate::{
    config::AuthConfig,
    protocol::{Version, close},
    room::{self, Room},
};

/// Longest `sub` (user) accepted, in bytes.
pub const MAX_SUB_LEN: usize = 256;

/// Largest `exp`, `nbf` or `iat` accepted (9999-12-31T23:59:59Z): later is a malformed token.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// What a grant allows in a room. `Write` includes reading; the stronger grant is the greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Snapshot, ops and presence; its writes are refused.
    Read,
    /// Everything.
    Write,
}

impl Level {
    /// `"read"` or `"write"`, as in the `rooms` claim and the v2 `hello`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
        }
    }

    fn parse(text: &str) -> Option<Level> {
        match text {
            "read" => Some(Level::Read),
            "write" => Some(Level::Write),
            _ => None,
        }
    }
}

/// Why a token (or its room) is refused. Carries no part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, a wrong secret, or a JWT that does not verify (malformed, `alg` not the
    /// configured one, wrong key, tampered, not yet valid, issued in the future, missing or bad
    /// `sub`/`exp`, wrong `iss`/`aud`). The text says which, for logs.
    #[error("bad token: {0}")]
    BadToken(&'static str),
    /// A JWT that verifies but whose `exp` (plus leeway) has passed.
    #[error("token expired")]
    Expired,
    /// A valid token that grants nothing in the room asked for.
    #[error("room not granted")]
    Forbidden,
}

impl Refusal {
    /// The close code and text for a client of `version`: v2 4401 `auth failed` / 4401 `token
    /// expired` / 4403 `forbidden`; v1 1008 with the same texts.
    pub fn close(self, version: Version) -> (u16, &'static str) {
        let (v2, text) = match self {
            Refusal::BadToken(_) => (close::V2_AUTH_FAILED, "auth failed"),
            Refusal::Expired => (close::V2_AUTH_FAILED, "token expired"),
            Refusal::Forbidden => (close::V2_FORBIDDEN, "forbidden"),
        };
        match version {
            Version::V1 => (close::POLICY, text),
            Version::V2 => (v2, text),
        }
    }
}

/// One connection's admission to one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The JWT `sub`; `None` for the shared secret or when no auth is configured.
    pub user: Option<Arc<str>>,
    /// What the connection may do in the room.
    pub level: Level,
    /// When the relay stops honouring the token (its `exp` plus `jwt_leeway_s`); `None`: never.
    pub expires: Option<SystemTime>,
}

/// Who presented a verified token, and what it grants.
#[derive(Clone, Debug)]
pub struct Identity {
    user: Option<Arc<str>>,
    expires: Option<SystemTime>,
    grants: Grants,
}

#[derive(Clone, Debug)]
enum Grants {
    /// The shared secret: every room, write.
    Everything,
    /// A JWT's `rooms` claim, valid entries only.
    Listed(Arc<[(Pattern, Level)]>),
}

impl Identity {
    fn everything() -> Identity {
        Identity { user: None, expires: None, grants: Grants::Everything }
    }

    /// The JWT `sub`; `None` for the shared secret.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// When the relay stops honouring the token (`exp` plus `jwt_leeway_s`); `None`: never.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// What this identity may do in `room`: the strongest of the grants whose pattern matches,
    /// `None` when none does. Patterns (keys of the `rooms` claim): an exact room name; `_`, the
    /// default room; `prefix*`, every named room starting with `prefix` (never the default room);
    /// `*`, every room. Values: `"read"` or `"write"`. Entries with an invalid pattern or value
    /// are ignored; a missing or non-object `rooms` claim grants nothing.
    pub fn grant(&self, room: &Room) -> Option<Level> {
        match &self.grants {
            Grants::Everything => Some(Level::Write),
            Grants::Listed(grants) => {
                grants.iter().filter(|(pattern, _)| pattern.matches(room)).map(|(_, level)| *level).max()
            }
        }
    }

    /// This identity's admission to `room`.
    ///
    /// # Errors
    /// [`Refusal::Forbidden`] when nothing is granted there.
    pub fn admit(&self, room: &Room) -> Result<Admitted, Refusal> {
        let level = self.grant(room).ok_or(Refusal::Forbidden)?;
        Ok(Admitted { user: self.user.clone(), level, expires: self.expires })
    }
}

/// One key of the `rooms` claim.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// `_`.
    Default,
    /// `*`.
    Any,
    /// A room name.
    Exact(Box<str>),
    /// `prefix*`, without the star.
    Prefix(Box<str>),
}

impl Pattern {
    fn parse(text: &str) -> Option<Pattern> {
        match text {
            room::DEFAULT_NAME => Some(Pattern::Default),
            "*" => Some(Pattern::Any),
            _ => match text.strip_suffix('*') {
                Some(prefix) => room::is_valid(prefix).then(|| Pattern::Prefix(prefix.into())),
                None => room::is_valid(text).then(|| Pattern::Exact(text.into())),
            },
        }
    }

    fn matches(&self, room: &Room) -> bool {
        match (self, room.name()) {
            (Pattern::Any, _) | (Pattern::Default, None) => true,
            (Pattern::Exact(name), Some(room)) => **name == *room,
            (Pattern::Prefix(prefix), Some(room)) => room.starts_with(&**prefix),
            _ => false,
        }
    }
}

/// The valid entries of a `rooms` claim.
fn grants(claim: Option<&Value>) -> Vec<(Pattern, Level)> {
    let Some(Value::Object(rooms)) = claim else { return Vec::new() };
    rooms
        .iter()
        .filter_map(|(pattern, level)| Some((Pattern::parse(pattern)?, Level::parse(level.as_str()?)?)))
        .collect()
}

/// Constant-time token check that reveals neither content nor length.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    let a = openssl::sha::sha256(expected.as_bytes());
    let b = openssl::sha::sha256(presented.as_bytes());
    openssl::memcmp::eq(&a, &b)
}

/// The decision maker built from `[auth]`. Immutable; a reload builds a new one.
#[derive(Default)]
pub struct Access {
    /// `[auth] token` (resolved), when set.
    shared: Option<Arc<str>>,
    jwt: Option<Jwt>,
}

/// The JWT half: one key, its one algorithm, and the claim checks configured.
struct Jwt {
    kind: KeyKind,
    key: DecodingKey,
    /// Pins the algorithm; claims are checked here, against the `now` given.
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: f64,
    /// SHA-256 of the key material, to tell a reload whether the key changed.
    fingerprint: [u8; 32],
}

impl fmt::Debug for Access {
    /// Never prints a secret: whether each kind of token is on, the algorithm and the checks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Access");
        out.field("shared_secret", &self.shared.is_some());
        if let Some(jwt) = &self.jwt {
            out.field("jwt", &jwt.kind)
                .field("issuer", &jwt.issuer)
                .field("audience", &jwt.audience)
                .field("leeway_s", &jwt.leeway);
        }
        out.finish()
    }
}

impl Access {
    /// Builds access from `[auth]` (its `token` already resolved, see
    /// [`crate::config::Config::resolve_secrets`]) and `AETHER_JWT_SECRET` (`env_secret`). Reads
    /// `jwt_secret_file` or `jwt_public_key_file`, so a reload that calls this again re-reads them.
    ///
    /// # Errors
    /// One line starting with `[auth]` that names the key or file: several JWT key sources, an
    /// unreadable or empty file, an HS256 secret under 32 bytes, a key that is not an RSA (2048
    /// bits or more) or EC P-256 public key, `jwt_issuer`/`jwt_audience` without a JWT key.
    pub fn from_config(auth: &AuthConfig, env_secret: Option<String>) -> Result<Access, String> {
        let shared = (!auth.token.is_empty()).then(|| Arc::from(auth.token.as_str()));
        let jwt = match keys::load(auth, env_secret)? {
            Some(key) => Some(Jwt::new(key, auth)),
            None if auth.jwt_issuer.is_some() || auth.jwt_audience.is_some() => {
                return Err("[auth] jwt_issuer and jwt_audience need a JWT key (jwt_secret, jwt_secret_file, \
                            AETHER_JWT_SECRET or jwt_public_key_file)"
                    .to_owned());
            }
            None => None,
        };
        Ok(Access { shared, jwt })
    }

    /// Whether any auth is configured (shared secret or JWT). Without, everyone may do everything.
    pub fn required(&self) -> bool {
        self.shared.is_some() || self.jwt.is_some()
    }

    /// The kind of JWT key configured, if any.
    pub fn jwt_kind(&self) -> Option<KeyKind> {
        self.jwt.as_ref().map(|jwt| jwt.kind)
    }

    /// Whether `other` verifies JWTs with the same key (for a reload to say whether it changed).
    pub fn same_jwt_key(&self, other: &Access) -> bool {
        self.jwt.as_ref().map(|j| j.fingerprint) == other.jwt.as_ref().map(|j| j.fingerprint)
    }

    /// Who `token` names, at `now`: the shared secret first (constant time), then a JWT.
    ///
    /// # Errors
    /// [`Refusal::BadToken`] or [`Refusal::Expired`] (never `Forbidden`).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, Refusal> {
        if let Some(shared) = &self.shared
            && token_matches(shared, token)
        {
            return Ok(Identity::everything());
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token, now),
            None => Err(Refusal::BadToken("not the shared secret")),
        }
    }

    /// Admission of a connection that presented `token` (if any) to `room`, at `now`. Without
    /// auth configured: everything, write, no user, whatever the token.
    ///
    /// # Errors
    /// [`Refusal::BadToken`] (no token included), [`Refusal::Expired`], [`Refusal::Forbidden`].
    pub fn admit(&self, token: Option<&str>, room: &Room, now: SystemTime) -> Result<Admitted, Refusal> {
        if !self.required() {
            return Ok(Admitted { user: None, level: Level::Write, expires: None });
        }
        self.verify(token.ok_or(Refusal::BadToken("no token"))?, now)?.admit(room)
    }
}

impl Jwt {
    fn new(key: keys::Key, auth: &AuthConfig) -> Jwt {
        let mut validation = Validation::new(key.kind.algorithm());
        // Every claim but the signature is checked in `verify`, against the `now` it is given
        // (the crate reads the system clock and does not know `sub`, `iat` or `rooms`).
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Jwt {
            kind: key.kind,
            key: key.decoding,
            validation,
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
            leeway: auth.jwt_leeway_s as f64,
            fingerprint: key.fingerprint,
        }
    }

    fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, Refusal> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|err| Refusal::BadToken(why(err.kind())))?
            .claims;
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if (1..=MAX_SUB_LEN).contains(&sub.len()) => sub,
            _ => return Err(Refusal::BadToken("sub missing, not a string, or too long")),
        };
        let exp = date(claims.get("exp")).flatten().ok_or(Refusal::BadToken("exp missing or not a date"))?;
        let nbf = date(claims.get("nbf")).ok_or(Refusal::BadToken("nbf not a date"))?;
        let iat = date(claims.get("iat")).ok_or(Refusal::BadToken("iat not a date"))?;
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer)
        {
            return Err(Refusal::BadToken("wrong or missing iss"));
        }
        if !audience_ok(claims.get("aud"), self.audience.as_deref()) {
            return Err(Refusal::BadToken("wrong, missing or unexpected aud"));
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        if nbf.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(Refusal::BadToken("not yet valid (nbf)"));
        }
        if iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(Refusal::BadToken("issued in the future (iat)"));
        }
        let expires = exp + self.leeway;
        if now >= expires {
            return Err(Refusal::Expired);
        }
        Ok(Identity {
            user: Some(Arc::from(sub.as_str())),
            expires: Some(UNIX_EPOCH + Duration::from_secs_f64(expires)),
            grants: Grants::Listed(grants(claims.get("rooms")).into()),
        })
    }
}

/// A NumericDate claim: `Some(None)` when absent, `None` when present but not a number of seconds
/// between 0 and year 9999.
fn date(claim: Option<&Value>) -> Option<Option<f64>> {
    match claim {
        None => Some(None),
        Some(value) => value.as_f64().filter(|s| (0.0..=MAX_NUMERIC_DATE).contains(s)).map(Some),
    }
}

/// `aud` against `[auth] jwt_audience`: when configured, the claim must be it or an array holding
/// it; when not, the token must carry no `aud` (it was made for someone else).
fn audience_ok(claim: Option<&Value>, configured: Option<&str>) -> bool {
    match (claim, configured) {
        (None, None) => true,
        (Some(Value::String(aud)), Some(want)) => aud == want,
        (Some(Value::Array(auds)), Some(want)) => auds.iter().any(|aud| aud.as_str() == Some(want)),
        _ => false,
    }
}

/// What a decoding error says about the token, for logs.
fn why(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            "algorithm not accepted"
        }
        ErrorKind::Json(_) => "malformed (header or claims not JSON of the expected shape)",
        _ => "malformed",
    }
}
