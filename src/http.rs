//! The one HTTP listener: `/healthz`, the HTTP API (`/api/v1/`, [`crate::api`]), the WebSocket (at
//! `/ws` and at any path an upgrade request names, as upstream accepts), and the static files.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use actix_web::{
    HttpRequest, HttpResponse, guard,
    http::header,
    web::{self, ServiceConfig},
};

use crate::{ledger, metrics::Live, relay::Relay, room::Room, session, state};

/// How long `/healthz` waits for each singleton.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers every route on `cfg`.
pub fn configure(cfg: &mut ServiceConfig, relay: &Relay) {
    cfg.app_data(web::Data::new(relay.clone()))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/ws", web::get().to(websocket))
        .configure(crate::api::configure)
        .service(web::resource("/{tail:.*}").guard(guard::fn_guard(|ctx| is_upgrade(ctx.head()))).to(websocket))
        .service(
            actix_files::Files::new("/", relay.static_dir.as_path())
                .index_file("index.html")
                .use_etag(true)
                .use_last_modified(true),
        );
}

fn is_upgrade(head: &actix_web::dev::RequestHead) -> bool {
    head.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn header(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Admission, in one place: everything it decides with (trusted proxies, allowed origins, the
/// connection caps, and the token and limits the session will enforce) comes from one snapshot of
/// the live configuration, read once for this connection, so a reload (SIGHUP) applies to every
/// connection that starts after it and to none already open.
async fn websocket(req: HttpRequest, body: web::Payload, relay: web::Data<Relay>) -> actix_web::Result<HttpResponse> {
    let live = relay.live.current();
    let peer = req.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let source = live.proxies.client_addr(
        peer,
        header(&req, header::X_FORWARDED_FOR),
        header(&req, header::HeaderName::from_static("x-real-ip")),
    );
    if !live.origin_allowed(header(&req, header::ORIGIN)) {
        log::info!("WebSocket from {source} refused: origin {:?} not allowed", header(&req, header::ORIGIN));
        return Ok(HttpResponse::Forbidden().body("origin not allowed\n"));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(live.limits.max_frame_bytes);
    let slot = relay.connections.acquire_within(
        source,
        live.limits.max_connections_total,
        live.limits.max_connections_per_source,
    );
    if slot.is_none() {
        log::info!("connection from {source} refused: connection cap reached");
    }
    let params = session::Params::from_query(req.query_string());
    let start = session::Start { deps: relay.deps_for(&live), session, stream, slot, params, source };
    actix_web::rt::spawn(session::run(Box::new(start)));
    Ok(response)
}

/// `200 {"status":"ok",…}` when the state actor answers within [`HEALTH_TIMEOUT`] and the ledger
/// writes; `503 {"status":"degraded","reason":…,"since":…,…}` while the ledger fails (its last
/// append failed, or one append has been stuck past [`ledger::health::APPEND_STALL`]), back to
/// `ok` as soon as an append succeeds; `503 {"status":"unavailable"}` when the state actor does
/// not answer. The ledger part is read from what the ledger thread publishes, never through its
/// mailbox: a long compaction or fsync does not make the relay look dead.
///
/// `/healthz?room=NAME` reports the keys, registers, clients and fingerprint of that room (`_`
/// names the default room) instead of the whole relay's; a name that is not a room's is `400`.
async fn healthz(req: HttpRequest, relay: web::Data<Relay>) -> HttpResponse {
    let room = match web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("room").cloned())
        .map(|name| Room::from_written(&name))
    {
        None => None,
        Some(Ok(room)) => Some(room),
        Some(Err(err)) => return HttpResponse::BadRequest().json(serde_json::json!({"error": err.to_string()})),
    };
    let probe = state::Probe { room: room.clone() };
    let state = tokio::time::timeout(HEALTH_TIMEOUT, relay.deps.state.send(probe)).await;
    let ledger = relay.ledger.report();
    let Ok(Ok(info)) = state else {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable",
            "reason": "the state actor did not answer within 2 s",
            "state": false,
            "ledger": ledger.to_json(),
        }));
    };
    let problem = ledger.problem();
    let mut body = serde_json::json!({
        "status": if problem.is_some() { "degraded" } else { "ok" },
        "keys": info.keys,
        "clients": info.clients,
        "rooms": info.rooms,
        "connections": relay.connections.total(),
        "pending_writes": info.pending_writes,
        "durable_writes": info.durable_writes,
        "ledger_batches": info.ledger_batches,
        "ledger_bytes": ledger.bytes,
        "ledger": ledger.to_json(),
        "registers": info.registers,
        "fingerprint": format!("{:016x}", info.fingerprint),
        "mesh": relay.mesh.as_ref().map(|mesh| serde_json::json!({
            "node": &*mesh.shared.node_id,
            "peers": relay.deps.metrics.mesh.summary(),
        })),
    });
    if let Some(room) = room {
        body["room"] = room.written().into();
    }
    match problem {
        None => HttpResponse::Ok().json(body),
        Some((reason, since)) => {
            body["reason"] = reason.into();
            body["since"] = ledger::history::format_time(ledger::health::unix_ns(since)).into();
            HttpResponse::ServiceUnavailable().json(body)
        }
    }
}

async fn metrics(relay: web::Data<Relay>) -> HttpResponse {
    let state = tokio::time::timeout(HEALTH_TIMEOUT, relay.deps.state.send(state::Probe::default())).await;
    let mut live = Live { connections: relay.connections.total(), ..Live::default() };
    if let Ok(Ok(info)) = state {
        (live.clients, live.keys, live.pending_writes, live.rooms) =
            (info.clients, info.keys, info.pending_writes, info.rooms);
    }
    live.ledger_bytes = relay.ledger.bytes();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(relay.deps.metrics.render(live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let p = session::Params::from_query("auth_token=&auth_token=a%20b&x=1&v=2&resume=e.5");
        assert_eq!((p.token.as_deref(), p.version2, p.resume.as_deref()), (Some("a b"), true, Some("e.5")));
        let p = session::Params::from_query("");
        assert_eq!((p.token, p.version2, p.resume), (None, false, None));
    }
}
