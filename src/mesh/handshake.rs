//! The handshake of a peer link, in either role: `hello` both ways, then (with a token) the
//! challenge-response of [`super::auth`], or upstream's token-in-hello when allowed.

use bytestring::ByteString;
use tokio::time::{Duration, timeout};

use super::{
    auth::{self, Role, Transcript},
    shared::Shared,
    transport::{Incoming, Reader, Writer},
    wire::{self, Caps, Hello, PeerFrame},
};
use crate::{protocol::close, state::NodeId};

/// Our peer protocol version (in `hello`).
const VERSION: u32 = 1;

/// A peer that completed the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node id.
    pub node: NodeId,
    /// Its process id (ours only).
    pub instance: Option<String>,
    /// One of ours (speaks digests, batches, presence) or upstream's.
    pub ours: bool,
}

/// Why a handshake failed: the close to send, and what to log.
#[derive(Debug)]
pub struct HandshakeError {
    /// Close code, if a close frame is worth sending.
    pub close: Option<(u16, &'static str)>,
    /// For the log.
    pub why: String,
}

fn fail(close: Option<(u16, &'static str)>, why: impl Into<String>) -> HandshakeError {
    HandshakeError { close, why: why.into() }
}

const AUTH_FAILED: Option<(u16, &str)> = Some((close::POLICY, "auth failed"));

/// The next text frame within `wait`, answering pings meanwhile: the pongs too are written within
/// `wait`, so a peer that pings and never reads cannot hold the handshake (and its slot).
async fn recv_text(reader: &mut Reader, writer: &mut Writer, wait: Duration) -> Result<String, HandshakeError> {
    let next = async {
        loop {
            match reader.recv().await {
                Incoming::Text(text) => return Ok(text),
                Incoming::Ping(bytes) => writer.pong(bytes).await.map_err(|_| fail(None, "socket closed"))?,
                Incoming::Alive => {}
                Incoming::Closed(code) => return Err(fail(None, format!("closed during handshake ({code:?})"))),
            }
        }
    };
    timeout(wait, next).await.unwrap_or_else(|_| Err(fail(None, "no handshake in time")))
}

async fn recv_hello(reader: &mut Reader, writer: &mut Writer, wait: Duration) -> Result<Hello, HandshakeError> {
    let text = recv_text(reader, writer, wait).await?;
    match wire::parse(&text) {
        Some(PeerFrame::Hello(hello)) if !hello.node_id.is_empty() && hello.node_id.len() <= 128 => Ok(hello),
        _ => Err(fail(Some((close::PROTOCOL, "bad handshake")), "first frame is not a valid hello")),
    }
}

/// Writes `frame` within `wait` (a peer that reads nothing cannot hold the handshake).
async fn send(writer: &mut Writer, frame: ByteString, wait: Duration) -> Result<(), HandshakeError> {
    let write = async {
        writer.text(frame).await.map_err(|_| fail(None, "socket closed"))?;
        writer.flush().await.map_err(|_| fail(None, "socket closed"))
    };
    timeout(wait, write).await.unwrap_or_else(|_| Err(fail(None, "peer reads nothing")))
}

impl Shared {
    fn caps(&self, nonce: &str, proof: Option<String>) -> Caps {
        Caps { v: VERSION, instance: self.instance.clone(), nonce: nonce.to_owned(), proof }
    }

    /// The listener's side of the handshake.
    ///
    /// # Errors
    /// [`HandshakeError`] with the close to send.
    pub async fn accept(&self, reader: &mut Reader, writer: &mut Writer) -> Result<Peer, HandshakeError> {
        let hello = recv_hello(reader, writer, self.handshake_timeout).await?;
        let node: NodeId = hello.node_id.as_str().into();
        let Some(theirs) = hello.aether else {
            // An upstream MeshNode: it can only authenticate with the token itself.
            if let Some(token) = &self.token {
                if !self.token_in_hello {
                    return Err(fail(
                        AUTH_FAILED,
                        format!("{node} speaks upstream's protocol; accepting its token needs [mesh] token_in_hello"),
                    ));
                }
                if !hello.auth_token.as_deref().is_some_and(|t| auth::same_token(token, t)) {
                    return Err(fail(AUTH_FAILED, format!("{node} sent a wrong or no token")));
                }
            }
            // It proved it holds the token, so ours may go back (its dialler checks it).
            send(writer, wire::hello(&self.node_id, None, self.token.as_deref()), self.handshake_timeout).await?;
            return Ok(Peer { node, instance: None, ours: false });
        };
        let nonce = auth::nonce();
        let t = Transcript {
            dialler_nonce: &theirs.nonce,
            listener_nonce: &nonce,
            dialler: &hello.node_id,
            listener: &self.node_id,
        };
        let proof = self.token.as_ref().map(|token| auth::proof(token, Role::Listener, &t));
        send(writer, wire::hello(&self.node_id, Some(&self.caps(&nonce, proof)), None), self.handshake_timeout).await?;
        if let Some(token) = &self.token {
            let text = recv_text(reader, writer, self.handshake_timeout).await?;
            let ok = match wire::parse(&text) {
                Some(PeerFrame::Auth { proof }) => auth::verify(token, Role::Dialler, &t, &proof),
                _ => false,
            };
            if !ok {
                return Err(fail(AUTH_FAILED, format!("{node} did not prove it holds the mesh token")));
            }
        }
        Ok(Peer { node, instance: Some(theirs.instance), ours: true })
    }

    /// The dialler's side of the handshake.
    ///
    /// # Errors
    /// [`HandshakeError`] with the close to send.
    pub async fn dial(&self, reader: &mut Reader, writer: &mut Writer) -> Result<Peer, HandshakeError> {
        let nonce = auth::nonce();
        let token_in_hello = self.token.as_deref().filter(|_| self.token_in_hello);
        send(
            writer,
            wire::hello(&self.node_id, Some(&self.caps(&nonce, None)), token_in_hello),
            self.handshake_timeout,
        )
        .await?;
        let hello = recv_hello(reader, writer, self.handshake_timeout).await?;
        let node: NodeId = hello.node_id.as_str().into();
        let Some(theirs) = hello.aether else {
            if let Some(token) = &self.token {
                // Upstream's mutual check: its reply must carry the same token.
                if !(self.token_in_hello && hello.auth_token.as_deref().is_some_and(|t| auth::same_token(token, t))) {
                    return Err(fail(
                        AUTH_FAILED,
                        format!("{node} (upstream protocol) did not present the mesh token"),
                    ));
                }
            }
            return Ok(Peer { node, instance: None, ours: false });
        };
        let Some(token) = &self.token else {
            // A listener that proves a token also waits for ours; without one we would count a
            // link that it is about to refuse.
            if theirs.proof.is_some() {
                return Err(fail(AUTH_FAILED, format!("{node} requires the mesh token and this relay has none")));
            }
            return Ok(Peer { node, instance: Some(theirs.instance), ours: true });
        };
        let t = Transcript {
            dialler_nonce: &nonce,
            listener_nonce: &theirs.nonce,
            dialler: &self.node_id,
            listener: &hello.node_id,
        };
        if !theirs.proof.as_deref().is_some_and(|p| auth::verify(token, Role::Listener, &t, p)) {
            return Err(fail(AUTH_FAILED, format!("{node} did not prove it holds the mesh token")));
        }
        send(writer, wire::auth(&auth::proof(token, Role::Dialler, &t)), self.handshake_timeout).await?;
        Ok(Peer { node, instance: Some(theirs.instance), ours: true })
    }
}
