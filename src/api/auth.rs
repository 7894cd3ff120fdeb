//! Who calls the API: `Authorization: Bearer <credential>`, where the credential is the `[api]`
//! key (every endpoint, every room; compared in constant time) or a JWT that `[auth]` verifies
//! (`crate::access`), whose `rooms` claim grants `read` (the GETs) or `write` (also PUT and
//! DELETE) per room. Admin endpoints need the key. The browsers' shared `[auth] token` is not an
//! API credential. Nothing here logs a credential.

use std::{sync::Arc, time::SystemTime};

use actix_web::{HttpRequest, http::StatusCode, http::header};

use super::ApiError;
use crate::{
    access::{self, Identity, Level, Refusal},
    config::Live,
    room::Room,
};

/// What the ledger records as the writer (`by`) of a write made with the API key.
pub const API_KEY_WRITER: &str = "api";

/// An authenticated caller.
pub(super) enum Caller {
    /// The `[api]` key.
    Key,
    /// A verified JWT (always with a `sub`).
    Jwt(Identity),
}

impl Caller {
    /// Admin endpoints: the key only.
    pub(super) fn admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Key => Ok(()),
            Caller::Jwt(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this endpoint needs the API key")),
        }
    }

    /// Whether the caller may do `level` in `room`.
    pub(super) fn may(&self, room: &Room, level: Level) -> Result<(), ApiError> {
        let granted = match self {
            Caller::Key => Some(Level::Write),
            Caller::Jwt(identity) => identity.grant(room),
        };
        if granted.is_some_and(|g| g >= level) {
            return Ok(());
        }
        let message = match granted {
            Some(_) => format!("the token grants only read in room {room}"),
            None => format!("the token grants nothing in room {room}"),
        };
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message))
    }

    /// The JWT `sub`, if the caller presented a JWT.
    pub(super) fn user(&self) -> Option<Arc<str>> {
        match self {
            Caller::Jwt(identity) => identity.user().cloned(),
            Caller::Key => None,
        }
    }

    /// When the caller's JWT expires (`None` for the API key).
    pub(super) fn expires(&self) -> Option<SystemTime> {
        match self {
            Caller::Jwt(identity) => identity.expires(),
            Caller::Key => None,
        }
    }

    /// The writer recorded in the ledger: the JWT `sub`, or [`API_KEY_WRITER`].
    pub(super) fn by(&self) -> Arc<str> {
        match self {
            Caller::Jwt(identity) => identity.user().cloned().unwrap_or_else(|| Arc::from(API_KEY_WRITER)),
            Caller::Key => Arc::from(API_KEY_WRITER),
        }
    }
}

/// The caller of `req` under `live`; `from_query` is a credential the URL carried
/// (`?access_token=`, the change feed only), used when there is no `Authorization` header.
///
/// # Errors
/// `401 unauthorized` with no `Authorization: Bearer`, a wrong key, a JWT that does not verify or
/// has expired, or the browsers' shared token.
pub(super) fn authenticate(req: &HttpRequest, live: &Live, from_query: Option<&str>) -> Result<Caller, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credential)| credential.trim())
        .filter(|credential| !credential.is_empty())
        .or_else(|| from_query.map(str::trim).filter(|c| !c.is_empty()));
    let Some(credential) = presented else {
        return Err(unauthorized("send Authorization: Bearer <API key or JWT>"));
    };
    if access::token_matches(&live.config.api.key, credential) {
        return Ok(Caller::Key);
    }
    if live.access.jwt_kind().is_none() {
        return Err(unauthorized("wrong API key"));
    }
    match live.access.verify(credential, SystemTime::now()) {
        Ok(identity) if identity.user().is_some() => Ok(Caller::Jwt(identity)),
        Ok(_) => Err(unauthorized("the browsers' [auth] token is not an API credential")),
        Err(Refusal::Expired) => Err(unauthorized("token expired")),
        Err(_) => Err(unauthorized("wrong API key or a JWT that does not verify")),
    }
}
