//! The one HTTP listener: `/healthz`, the HTTP API (`/api/v1/`, [`crate::api`]), the WebSocket (at
//! `/ws` and at any path an upgrade request names, as upstream accepts), and the static files.
//!
//! [`serve`] runs it: actix-web answers every request, upgrades included, and a WebSocket it
//! answered `101` then leaves actix-http for a [`crate::socket::Socket`] of its own.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    rc::Rc,
    time::Duration,
};

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::{ConnectionType, HttpService, Request, StatusCode, h1};
use actix_service::{Service, ServiceFactory, fn_factory, fn_service, map_config};
use actix_web::{
    App, HttpRequest, HttpResponse,
    dev::{AppConfig, ServiceResponse},
    guard,
    http::header,
    web::{self, Bytes, ServiceConfig},
};
use openssl::ssl::{AlpnError, SslAcceptor, SslAcceptorBuilder};

use crate::{ledger, metrics::Live, relay::Relay, room::Room, session, state};

/// How the server runs, beside what [`serve`] is given.
pub struct Serving {
    /// Accepted connections one worker holds at most before it stops accepting.
    pub max_connections_per_worker: usize,
    /// How long a graceful stop waits for requests in flight.
    pub shutdown_timeout_s: u64,
}

/// Serves HTTP on `listener` (HTTPS with `tls`) with every route of [`configure`].
///
/// Requests are actix-web's. An upgrade request is handed over by actix-http with its connection;
/// the app answers it as any request, and a `101` that carries a connection to start (see
/// [`websocket`]) leaves the connection to [`session::run`]: nothing of actix-http stays under an
/// open WebSocket (its dispatcher, two 8 KiB buffers and task were 14.8 KiB of an idle
/// connection's 18, benches/README.md). Any other answer is written and the connection closed.
///
/// # Errors
/// When the listener or the TLS settings cannot be used.
pub fn serve(
    listener: TcpListener,
    tls: Option<SslAcceptorBuilder>,
    relay: &Relay,
    serving: &Serving,
) -> std::io::Result<actix_server::Server> {
    let addr = listener.local_addr()?;
    let server = actix_server::Server::build()
        .disable_signals()
        .max_concurrent_connections(serving.max_connections_per_worker)
        .shutdown_timeout(serving.shutdown_timeout_s);
    // One builder for both listeners, whose connection types differ (TCP, or TLS over it).
    macro_rules! service {
        ($relay:expr) => {{
            let relay: Relay = $relay;
            HttpService::build()
                // Frames must leave as soon as they are written, not when Nagle's algorithm says so.
                .tcp_nodelay(true)
                // Once a response has ended the connection is closed at once, with no "linger"
                // reading until the client hangs up (actix's default waits up to 1 s): a client
                // waiting for the server to close first would wait that second (tests/closes.rs).
                .client_disconnect_timeout(Duration::ZERO)
                .local_addr(addr)
                .upgrade(upgrades(relay.clone()))
                .finish(app(relay))
        }};
    }
    let server = match tls {
        None => {
            let relay = relay.clone();
            server.listen("aether-http", listener, move || service!(relay.clone()).tcp())?
        }
        Some(builder) => {
            let acceptor = with_alpn(builder)?;
            let relay = relay.clone();
            server.listen("aether-https", listener, move || service!(relay.clone()).openssl(acceptor.clone()))?
        }
    };
    Ok(server.run())
}

/// The app, with every route of [`configure`]. Its `AppConfig` is the default one: actix-web
/// fills in the listener's address and host only inside `HttpServer`, and no route reads them
/// (nor builds URLs from them).
fn app(
    relay: Relay,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = ServiceResponse,
    Error = actix_web::Error,
    InitError = (),
    Service = impl Service<Request, Response = ServiceResponse, Error = actix_web::Error> + 'static,
> + 'static {
    map_config(App::new().configure(move |cfg| configure(cfg, &relay)), |()| AppConfig::default())
}

/// The acceptor, offering HTTP/2 and HTTP/1.1 (the WebSocket's) by ALPN, as `HttpServer` does.
fn with_alpn(mut builder: SslAcceptorBuilder) -> std::io::Result<SslAcceptor> {
    const OFFERED: &[u8] = b"\x02h2\x08http/1.1";
    builder
        .set_alpn_select_callback(|_, asked| openssl::ssl::select_next_proto(OFFERED, asked).ok_or(AlpnError::NOACK));
    builder.set_alpn_protos(b"\x08http/1.1\x02h2").map_err(std::io::Error::other)?;
    Ok(builder.build())
}

/// The longest answer to an upgrade request that is sent (others are refused).
const MAX_UPGRADE_ANSWER: usize = 64 * 1024;

/// What a `101` carries to [`serve`]: the connection to start on the upgraded socket.
struct Upgrade(Box<session::Start>);

/// The service actix-http hands upgrade requests to, with their connections: one app of its own
/// per worker answers them.
fn upgrades<T>(
    relay: Relay,
) -> impl ServiceFactory<(Request, Framed<T, h1::Codec>), Config = (), Response = (), Error = actix_web::Error, InitError = ()>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn_factory(move || {
        let app = app(relay.clone());
        async move {
            let app = Rc::new(app.new_service(()).await?);
            Ok(fn_service(move |(req, framed): (Request, Framed<T, h1::Codec>)| upgrade(Rc::clone(&app), req, framed)))
        }
    })
}

/// Answers one upgrade request, and starts its WebSocket if the answer was `101`.
async fn upgrade<T, A>(app: Rc<A>, req: Request, framed: Framed<T, h1::Codec>) -> Result<(), actix_web::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    A: Service<Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut response = match app.call(req).await {
        Ok(response) => response.into_parts().1,
        Err(err) => HttpResponse::from_error(err),
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let start = response.extensions_mut().remove::<Upgrade>().filter(|_| switching);
    // An answer to an upgrade request is short (a refusal's reason, or nothing); a longer one (a
    // static file asked for with an upgrade) is refused instead.
    let (response, body) = response.into_parts();
    let mut response = match actix_web::body::to_bytes_limited(body, MAX_UPGRADE_ANSWER).await {
        Ok(Ok(body)) => response.set_body(body),
        _ => HttpResponse::with_body(StatusCode::BAD_REQUEST, Bytes::from_static(b"upgrade refused\n")),
    };
    if start.is_none() {
        // Nothing follows an answer that is not an upgrade: the client is told so.
        response.head_mut().set_connection_type(ConnectionType::Close);
    }
    let framed = h1::SendResponse::new(framed, response.into()).await?;
    if let Some(Upgrade(start)) = start {
        let parts = framed.into_parts();
        actix_web::rt::spawn(session::run(start, Box::new(parts.io), parts.read_buf.freeze()));
    }
    Ok(())
}

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
async fn websocket(req: HttpRequest, relay: web::Data<Relay>) -> actix_web::Result<HttpResponse> {
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
    let mut response = HttpResponse::from(actix_http::ws::handshake(req.head())?.finish()).map_into_boxed_body();
    let slot = relay.connections.acquire_within(
        source,
        live.limits.max_connections_total,
        live.limits.max_connections_per_source,
    );
    if slot.is_none() {
        log::info!("connection from {source} refused: connection cap reached");
    }
    let params = session::Params::from_query(req.query_string());
    let start = session::Start { deps: relay.deps_for(&live), slot, params, source };
    response.extensions_mut().insert(Upgrade(Box::new(start)));
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
