//! The HTTP API for backends and operators, under `/api/v1/` on the one listener (issue #13):
//! read a room's state and keys, write and delete keys (durable, broadcast and replicated like a
//! browser's write), read a key's history and a room's past state from the ledger, disconnect a
//! room's members, compact now. The guide with curl examples is `src/api/README.md`; the OpenAPI
//! description is `static/api/openapi.json`.
//!
//! Off unless `[api] key` (or `key_file`, or `AETHER_API_KEY`) is set: then every `/api/v1/` path
//! answers 404. One route catches every `/api/v1/` path and [`route`] picks the endpoint from the
//! raw (still percent-encoded) path, so a key may hold `/` (as `/` or `%2F`) and every unknown
//! path or method gets a JSON answer (404, 405). Submodules: `auth` (who calls: the API key or a
//! JWT), `rooms` (state, keys, writes, admin), `history` (from the ledger files, off the async
//! workers), `feed` (the change feed, Server-Sent Events).

mod auth;
mod feed;
mod history;
mod rooms;

use std::time::Duration;

use actix_web::{
    HttpRequest, HttpResponse,
    http::{Method, StatusCode, header},
    web::{self, ServiceConfig},
};
use serde_json::json;

use crate::{relay::Relay, room::Room};

/// The path prefix of every endpoint.
pub const PREFIX: &str = "/api/v1";

/// How long a read waits for the state actor.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Registers the API's one route (before the WebSocket catch-all and the static files).
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(web::resource(format!("{PREFIX}/{{tail:.*}}")).to(dispatch))
        .service(web::resource(PREFIX).to(dispatch));
}

/// A refusal or failure: its status and a JSON body `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Box<(&'static str, serde_json::Value)>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None }
    }

    fn with(mut self, field: &'static str, value: serde_json::Value) -> ApiError {
        self.extra = Some(Box::new((field, value)));
        self
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    fn response(&self) -> HttpResponse {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(extra) = &self.extra {
            let (field, value) = &**extra;
            body[*field] = value.clone();
        }
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(body)
    }
}

/// What an endpoint answers.
type Answer = Result<HttpResponse, ApiError>;

/// One endpoint, with what its path named.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    /// `/rooms`
    Rooms,
    /// `/clients`
    Clients,
    /// `/compact`
    Compact,
    /// `/rooms/{room}`
    Room(Room),
    /// `/rooms/{room}/disconnect`
    Disconnect(Room),
    /// `/rooms/{room}/keys/{key}`
    Key(Room, String),
    /// `/rooms/{room}/keys/{key}/history`
    History(Room, String),
    /// `/rooms/{room}/changes`
    Changes(Room),
}

impl Endpoint {
    /// The methods it answers.
    fn methods(&self) -> &'static [Method] {
        match self {
            Endpoint::Rooms | Endpoint::Clients | Endpoint::Room(_) | Endpoint::History(..) | Endpoint::Changes(_) => {
                &[Method::GET]
            }
            Endpoint::Compact | Endpoint::Disconnect(_) => &[Method::POST],
            Endpoint::Key(..) => &[Method::GET, Method::PUT, Method::DELETE],
        }
    }
}

/// The endpoint a raw path (after [`PREFIX`], still percent-encoded) names: `Ok(None)` for no
/// endpoint. The room and key segments are percent-decoded; `_` is the default room. A key is
/// everything after `/keys/` (it may hold `/`), except that a last segment `/history` names the
/// key's history: a key whose last segment is `history` writes its slashes as `%2F`.
///
/// # Errors
/// `400 bad_room` for a room name that is not one, `400 bad_key` for an empty key or one that
/// does not decode to UTF-8.
fn route(path: &str) -> Result<Option<Endpoint>, ApiError> {
    let Some(rest) = path.strip_prefix('/') else { return Ok(None) };
    if rest == "rooms" {
        return Ok(Some(Endpoint::Rooms));
    }
    if rest == "clients" {
        return Ok(Some(Endpoint::Clients));
    }
    if rest == "compact" {
        return Ok(Some(Endpoint::Compact));
    }
    let Some(rest) = rest.strip_prefix("rooms/") else { return Ok(None) };
    let (room, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if room.is_empty() {
        return Ok(None);
    }
    let room = || -> Result<Room, ApiError> {
        let name = decode(room).ok_or_else(|| ApiError::bad_request("bad_room", "the room name is not UTF-8"))?;
        Room::from_written(&name)
            .map_err(|err| ApiError::bad_request("bad_room", format!("{err} (or _ for the default room)")))
    };
    if tail.is_empty() && !rest.ends_with('/') {
        return Ok(Some(Endpoint::Room(room()?)));
    }
    if tail == "disconnect" {
        return Ok(Some(Endpoint::Disconnect(room()?)));
    }
    if tail == "changes" {
        return Ok(Some(Endpoint::Changes(room()?)));
    }
    let Some(key) = tail.strip_prefix("keys/") else { return Ok(None) };
    let (key, history) = match key.strip_suffix("/history") {
        Some(key) => (key, true),
        None => (key, false),
    };
    let key = decode(key).ok_or_else(|| ApiError::bad_request("bad_key", "the key is not UTF-8 once decoded"))?;
    if key.is_empty() {
        return Err(ApiError::bad_request("bad_key", "the key is empty"));
    }
    let room = room()?;
    Ok(Some(if history { Endpoint::History(room, key) } else { Endpoint::Key(room, key) }))
}

/// Percent-decodes a path segment (`+` stays `+`); `None` when the bytes are not UTF-8.
fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

/// Every `/api/v1/` request: off → 404; unknown path → 404; other method → 405; then the caller
/// is authenticated (401), the room checked against its grant (403), and the endpoint answers.
async fn dispatch(req: HttpRequest, body: web::Payload, relay: web::Data<Relay>) -> HttpResponse {
    let response = answer(req, body, &relay).await;
    relay.deps.metrics.api_response(response.status().as_u16());
    response
}

async fn answer(req: HttpRequest, body: web::Payload, relay: &Relay) -> HttpResponse {
    let live = relay.live.current();
    if !live.config.api.enabled() {
        return ApiError::not_found("not_found", "no such endpoint").response();
    }
    let path = req.uri().path();
    let path = path.strip_prefix(PREFIX).unwrap_or(path);
    let endpoint = match route(path) {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) => return ApiError::not_found("not_found", "no such endpoint").response(),
        Err(err) => return err.response(),
    };
    if !endpoint.methods().contains(req.method()) {
        let allow: Vec<&str> = endpoint.methods().iter().map(Method::as_str).collect();
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed here; allowed: {}", req.method(), allow.join(", ")),
        )
        .response();
        if let Ok(value) = header::HeaderValue::from_str(&allow.join(", ")) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    }
    let answer = async {
        // Browsers' EventSource cannot send headers: the feed also takes `?access_token=`.
        let from_query =
            if matches!(endpoint, Endpoint::Changes(_)) { query_param(&req, "access_token") } else { None };
        let caller = auth::authenticate(&req, &live, from_query.as_deref())?;
        match endpoint {
            Endpoint::Rooms => {
                caller.admin()?;
                rooms::list(relay).await
            }
            Endpoint::Clients => {
                caller.admin()?;
                rooms::clients(relay).await
            }
            Endpoint::Compact => {
                caller.admin()?;
                rooms::compact(relay).await
            }
            Endpoint::Disconnect(room) => {
                caller.admin()?;
                rooms::disconnect(relay, room, body, &live).await
            }
            Endpoint::Room(room) => {
                caller.may(&room, crate::access::Level::Read)?;
                match query_param(&req, "at") {
                    Some(at) => history::state_at(relay, room, at).await,
                    None => rooms::state(relay, room).await,
                }
            }
            Endpoint::Changes(room) => {
                caller.may(&room, crate::access::Level::Read)?;
                feed::open(relay, &live, &req, room, feed::Reader { user: caller.user(), expires: caller.expires() })
                    .await
            }
            Endpoint::History(room, key) => {
                caller.may(&room, crate::access::Level::Read)?;
                history::key(relay, room, key, query_param(&req, "limit")).await
            }
            Endpoint::Key(room, key) if req.method() == Method::GET => {
                caller.may(&room, crate::access::Level::Read)?;
                rooms::get_key(relay, room, key).await
            }
            Endpoint::Key(room, key) => {
                caller.may(&room, crate::access::Level::Write)?;
                let write = rooms::KeyWrite { room, key, by: caller.by() };
                let value =
                    if req.method() == Method::PUT { Some(rooms::read_value(body, &live).await?) } else { None };
                rooms::write(relay, &live, write, value, rooms::precondition(&req)?).await
            }
        }
    };
    answer.await.unwrap_or_else(|err| err.response())
}

/// The first value of a query parameter, percent-decoded.
fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()?
        .0
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(room: &str, key: &str) -> Endpoint {
        Endpoint::Key(Room::from_written(room).unwrap(), key.to_owned())
    }

    #[test]
    fn paths_route_with_decoded_rooms_and_keys() {
        assert_eq!(route("/rooms").unwrap(), Some(Endpoint::Rooms));
        assert_eq!(route("/compact").unwrap(), Some(Endpoint::Compact));
        assert_eq!(route("/clients").unwrap(), Some(Endpoint::Clients));
        assert_eq!(route("/rooms/_").unwrap(), Some(Endpoint::Room(Room::DEFAULT)));
        assert_eq!(
            route("/rooms/board-1/disconnect").unwrap(),
            Some(Endpoint::Disconnect(Room::parse("board-1").unwrap()))
        );
        assert_eq!(route("/rooms/_/keys/a/b%20c").unwrap(), Some(key("_", "a/b c")));
        assert_eq!(route("/rooms/b-1/changes").unwrap(), Some(Endpoint::Changes(Room::parse("b-1").unwrap())));
        assert_eq!(route("/rooms/_/keys/a%2Fhistory").unwrap(), Some(key("_", "a/history")));
        assert_eq!(route("/rooms/_/keys/caf%C3%A9+1").unwrap(), Some(key("_", "café+1")));
        assert_eq!(
            route("/rooms/b/keys/x/history").unwrap(),
            Some(Endpoint::History(Room::parse("b").unwrap(), "x".to_owned()))
        );
        for none in ["", "/", "/rooms/", "/rooms/_/", "/rooms/_/keys", "/rooms/_/other", "/nope"] {
            assert_eq!(route(none).unwrap(), None, "{none:?}");
        }
        for bad in
            ["/rooms/_x", "/rooms/a%20b", "/rooms/%FF", "/rooms/_/keys/", "/rooms/_/keys/%FF", "/rooms/_/keys//history"]
        {
            assert!(route(bad).is_err(), "{bad:?}");
        }
    }
}
