//! The peer listener (`[mesh] bind`): its own HTTP server, WebSocket only, a connection cap, and
//! the listener's side of the handshake.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    sync::Arc,
    time::Duration,
};

use actix::Addr;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use openssl::ssl::SslAcceptorBuilder;

use super::{MeshActor, link, shared::Shared, transport};
use crate::{limits::ConnectionCounter, protocol::close};

/// What the peer listener's handler needs.
#[derive(Clone)]
struct Listener {
    shared: Arc<Shared>,
    mesh: Addr<MeshActor>,
    slots: ConnectionCounter,
}

/// Serves the peer listener on `listener` (TLS when `tls` is given), until the returned server
/// is stopped.
///
/// # Errors
/// When the listener cannot be served.
pub fn serve(
    listener: TcpListener,
    tls: Option<SslAcceptorBuilder>,
    shared: Arc<Shared>,
    mesh: Addr<MeshActor>,
    max_peers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let data = Listener { shared, mesh, slots: ConnectionCounter::new(max_peers, max_peers) };
    let server =
        HttpServer::new(move || App::new().app_data(web::Data::new(data.clone())).default_service(web::to(accept)))
            .disable_signals()
            .workers(1)
            .tcp_nodelay(true)
            // A refused peer's socket goes at once after the close frame, not a second later.
            .client_disconnect_timeout(Duration::from_millis(200))
            .shutdown_timeout(2);
    let server = match tls {
        Some(acceptor) => server.listen_openssl(listener, acceptor)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

async fn accept(
    req: HttpRequest,
    body: web::Payload,
    listener: web::Data<Listener>,
) -> actix_web::Result<HttpResponse> {
    let addr = req.peer_addr();
    let source = addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let remote = addr.map_or_else(|| "?".to_owned(), |a| a.to_string());
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let listener = listener.into_inner();
    actix_web::rt::spawn(async move {
        let (mut reader, mut writer) = transport::accepted(session, stream);
        let Some(_slot) = listener.slots.acquire(source) else {
            log::warn!("mesh: peer connection from {remote} refused: [mesh] max_peers reached");
            writer.close(close::TRY_AGAIN_LATER, "server busy").await;
            return;
        };
        match listener.shared.accept(&mut reader, &mut writer).await {
            Ok(peer) => {
                link::run(Arc::clone(&listener.shared), listener.mesh.clone(), peer, reader, writer, false, remote)
                    .await;
            }
            Err(err) => {
                log::warn!("mesh: peer connection from {remote} refused: {}", err.why);
                if let Some((code, reason)) = err.close {
                    writer.close(code, reason).await;
                }
            }
        }
    });
    Ok(response)
}
