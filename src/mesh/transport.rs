//! The sockets under a peer link: an accepted connection (actix-ws, on the mesh listener) or a
//! dialled one (awc), both seen as a [`Reader`] of text frames and a [`Writer`], which run at the
//! same time so that two peers sending each other large batches never wait on each other.

use std::{path::Path, time::Duration};

use actix_web::web::Bytes;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Item, Session};
use awc::{
    BoxedSocket,
    ws::{Codec, Frame, Message},
};
use bytestring::ByteString;
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use openssl::{
    ssl::{SslConnector, SslMethod},
    x509::{X509, store::X509StoreBuilder},
};

use super::wire::MAX_FRAME_BYTES;

type Framed = actix_codec::Framed<BoxedSocket, Codec>;

/// How long a close frame may wait for the socket to take it.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What arrives on a link.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame (binary frames are read as UTF-8 text, as upstream's peers may send them).
    Text(String),
    /// A ping to answer.
    Ping(Bytes),
    /// Anything else that proves the peer is alive (pongs).
    Alive,
    /// The peer closed, with its code if it gave one.
    Closed(Option<u16>),
}

/// The reading half.
pub enum Reader {
    /// Accepted by our listener.
    Accepted(AggregatedMessageStream),
    /// Dialled by us.
    Dialled {
        /// The socket's reading half.
        stream: SplitStream<Framed>,
        /// A fragmented message being gathered.
        partial: Option<Vec<u8>>,
    },
}

/// The writing half.
pub enum Writer {
    /// Accepted by our listener.
    Accepted(Session),
    /// Dialled by us.
    Dialled(SplitSink<Framed, Message>),
}

/// Why a socket cannot be used any more.
#[derive(Debug)]
pub struct Gone;

impl Reader {
    /// The next frame; `Closed` once the socket ended or broke.
    pub async fn recv(&mut self) -> Incoming {
        match self {
            Reader::Accepted(stream) => match stream.recv().await {
                Some(Ok(AggregatedMessage::Text(text))) => Incoming::Text(text.to_string()),
                Some(Ok(AggregatedMessage::Binary(bytes))) => text_of(bytes.to_vec()),
                Some(Ok(AggregatedMessage::Ping(bytes))) => Incoming::Ping(bytes),
                Some(Ok(AggregatedMessage::Pong(_))) => Incoming::Alive,
                Some(Ok(AggregatedMessage::Close(reason))) => Incoming::Closed(reason.map(|r| r.code.into())),
                Some(Err(_)) | None => Incoming::Closed(None),
            },
            Reader::Dialled { stream, partial } => loop {
                match stream.next().await {
                    Some(Ok(Frame::Text(bytes) | Frame::Binary(bytes))) => return text_of(bytes.to_vec()),
                    Some(Ok(Frame::Ping(bytes))) => return Incoming::Ping(bytes),
                    Some(Ok(Frame::Pong(_))) => return Incoming::Alive,
                    Some(Ok(Frame::Close(reason))) => return Incoming::Closed(reason.map(|r| r.code.into())),
                    Some(Ok(Frame::Continuation(item))) => {
                        let (bytes, last) = match item {
                            Item::FirstText(b) | Item::FirstBinary(b) => {
                                *partial = Some(Vec::new());
                                (b, false)
                            }
                            Item::Continue(b) => (b, false),
                            Item::Last(b) => (b, true),
                        };
                        let Some(buffer) = partial.as_mut() else { return Incoming::Closed(None) };
                        buffer.extend_from_slice(&bytes);
                        if buffer.len() > MAX_FRAME_BYTES {
                            return Incoming::Closed(None);
                        }
                        if last {
                            return text_of(partial.take().unwrap_or_default());
                        }
                    }
                    Some(Err(_)) | None => return Incoming::Closed(None),
                }
            },
        }
    }
}

fn text_of(bytes: Vec<u8>) -> Incoming {
    // Not UTF-8: handed on as text that parses as nothing, so it is dropped like any bad frame.
    Incoming::Text(String::from_utf8(bytes).unwrap_or_default())
}

impl Writer {
    /// Writes a text frame.
    pub async fn text(&mut self, text: ByteString) -> Result<(), Gone> {
        match self {
            Writer::Accepted(session) => session.text(text).await.map_err(|_| Gone),
            Writer::Dialled(sink) => sink.feed(Message::Text(text)).await.map_err(|_| Gone),
        }
    }

    /// Pushes written frames to the socket (a no-op where each write already does).
    pub async fn flush(&mut self) -> Result<(), Gone> {
        match self {
            Writer::Accepted(_) => Ok(()),
            Writer::Dialled(sink) => sink.flush().await.map_err(|_| Gone),
        }
    }

    /// Sends a ping.
    pub async fn ping(&mut self) -> Result<(), Gone> {
        match self {
            Writer::Accepted(session) => session.ping(b"").await.map_err(|_| Gone),
            Writer::Dialled(sink) => sink.send(Message::Ping(Bytes::new())).await.map_err(|_| Gone),
        }
    }

    /// Answers a ping.
    pub async fn pong(&mut self, payload: Bytes) -> Result<(), Gone> {
        match self {
            Writer::Accepted(session) => session.pong(&payload).await.map_err(|_| Gone),
            Writer::Dialled(sink) => sink.send(Message::Pong(payload)).await.map_err(|_| Gone),
        }
    }

    /// Sends a close frame with `code` and `reason`, waiting at most [`CLOSE_WAIT`] for the socket
    /// to take it (a peer that reads nothing gets none); the socket is finished afterwards.
    pub async fn close(self, code: u16, reason: &str) {
        let reason = Some(CloseReason { code: CloseCode::from(code), description: Some(reason.to_owned()) });
        match self {
            Writer::Accepted(session) => {
                let _ = tokio::time::timeout(CLOSE_WAIT, session.close(reason)).await;
            }
            Writer::Dialled(mut sink) => {
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    let _ = sink.send(Message::Close(reason)).await;
                    let _ = sink.close().await;
                })
                .await;
            }
        }
    }
}

/// The socket of an accepted connection.
pub fn accepted(session: Session, stream: actix_ws::MessageStream) -> (Reader, Writer) {
    let stream =
        stream.max_frame_size(MAX_FRAME_BYTES).aggregate_continuations().max_continuation_size(MAX_FRAME_BYTES);
    (Reader::Accepted(stream), Writer::Accepted(session))
}

/// The TLS client settings for dialling `wss://` peers: verify against the PEM certificates in
/// `ca` (only those), or against the system's trust store when `ca` is `None`. Host names are
/// always checked (by awc, against the URL's host).
///
/// # Errors
/// A message when the CA file cannot be read or used.
pub fn tls_connector(ca: Option<&Path>) -> Result<SslConnector, String> {
    let mut tls = SslConnector::builder(SslMethod::tls()).map_err(|e| format!("cannot set up TLS: {e}"))?;
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let certs = X509::stack_from_pem(&pem).map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in the file", ca.display()));
        }
        let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for cert in certs {
            store.add_cert(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        tls.set_verify_cert_store(store.build()).map_err(|e| e.to_string())?;
    }
    // A WebSocket upgrade is HTTP/1.1.
    tls.set_alpn_protos(b"\x08http/1.1").map_err(|e| e.to_string())?;
    Ok(tls.build())
}

/// How the dialler connects: an awc client (one per mesh, on the mesh's thread).
pub struct Dialer {
    client: awc::Client,
}

impl Dialer {
    /// A dialer with `tls` for `wss://` URLs, giving up on a connection attempt after `timeout`.
    pub fn new(tls: SslConnector, timeout: Duration) -> Dialer {
        let connector = awc::Connector::new().timeout(timeout).handshake_timeout(timeout).openssl(tls);
        Dialer { client: awc::Client::builder().connector(connector).timeout(timeout).finish() }
    }

    /// Opens a WebSocket to `url`.
    ///
    /// # Errors
    /// What went wrong, for the log.
    pub async fn connect(&self, url: &str) -> Result<(Reader, Writer), String> {
        let (_, framed) =
            self.client.ws(url).max_frame_size(MAX_FRAME_BYTES).connect().await.map_err(|e| e.to_string())?;
        let (sink, stream) = framed.split();
        Ok((Reader::Dialled { stream, partial: None }, Writer::Dialled(sink)))
    }
}
