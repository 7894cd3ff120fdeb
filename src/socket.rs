//! A browser's WebSocket, driven by the relay itself on the connection actix-http hands over once
//! the upgrade's `101` is written (see [`crate::http::serve`]).
//!
//! actix-ws would keep actix-http's dispatcher alive under every connection for its whole life:
//! two 8 KiB buffers, its task, and a channel between the session and the dispatcher, 14.8 KiB of
//! 18 KiB per idle connection (benches/README.md). Here a connection owns its socket: frames are
//! decoded and encoded by actix-http's own WebSocket codec, buffers are as large as what waits in
//! them, and a write goes to the socket from the connection's task, with no hop between.
//!
//! Reading and writing are cancel-safe: what was read or is still to write stays in the socket,
//! so the session can race a read against its queue and give up on a write that waits too long.

use std::fmt;

pub use actix_http::ws::{CloseCode, CloseReason, Item, Message, ProtocolError};
use actix_http::ws::{Codec, Frame};
use actix_web::web::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a WebSocket runs on: a TCP stream, or TLS over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// What the first read of an idle connection makes room for: a write or a cursor fits, and the
/// buffer grows (doubling) for anything larger.
const FIRST_READ: usize = 512;

/// The largest payload a control frame may carry (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The socket is closed, or broke: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the WebSocket is closed")
    }
}

impl std::error::Error for Closed {}

/// One accepted WebSocket.
pub struct Socket {
    io: Box<dyn Io>,
    codec: Codec,
    /// Bytes read and not yet decoded: while the connection idles, only room for a first read
    /// ([`FIRST_READ`]); a larger buffer goes once its frames were taken.
    read: BytesMut,
    /// Frames encoded and not yet taken by the socket. No allocation once they all were.
    write: BytesMut,
    /// The peer ended its side, or reading failed: nothing more will be read.
    ended: bool,
    /// Frames may no longer be written (a write failed, or our Close went out).
    closed: bool,
    /// Our Close went out and our side of the connection ended.
    shut: bool,
}

impl Socket {
    /// The socket of an upgraded connection; `early` holds what the client sent after its
    /// upgrade request and actix-http had already read. Frames above `max_frame` bytes end the
    /// reading with [`ProtocolError::Overflow`].
    pub fn new(io: Box<dyn Io>, early: &[u8], max_frame: usize) -> Socket {
        Socket {
            io,
            codec: Codec::new().max_size(max_frame),
            read: BytesMut::from(early),
            write: BytesMut::new(),
            ended: false,
            closed: false,
            shut: false,
        }
    }

    /// The next message, as actix-ws gives it: a text frame that is not UTF-8 is an
    /// [`ProtocolError::Io`] of kind `InvalidData` around the `Utf8Error`; `None` once the peer
    /// ended the connection. After an error, nothing more is read.
    ///
    /// Cancel-safe: bytes read stay in the socket for the next call.
    pub async fn recv(&mut self) -> Option<Result<Message, ProtocolError>> {
        loop {
            match actix_codec::Decoder::decode(&mut self.codec, &mut self.read) {
                Ok(Some(frame)) => {
                    if self.read.is_empty() {
                        // A large frame's buffer goes with it; the next one starts small.
                        self.read = BytesMut::new();
                    }
                    return Some(message(frame));
                }
                Ok(None) => {}
                Err(err) => {
                    self.ended = true;
                    self.read = BytesMut::new();
                    return Some(Err(err));
                }
            }
            if self.ended {
                return None;
            }
            if self.read.capacity() == self.read.len() {
                self.read.reserve(self.read.len().max(FIRST_READ));
            }
            match self.io.read_buf(&mut self.read).await {
                Ok(0) => self.ended = true,
                Ok(_) => {}
                Err(err) => {
                    self.ended = true;
                    return Some(Err(ProtocolError::Io(err)));
                }
            }
        }
    }

    /// Queues a text frame; [`Socket::flush`] sends it.
    pub fn queue_text(&mut self, text: ByteString) {
        self.queue(Message::Text(text));
    }

    /// Sends a text frame.
    ///
    /// # Errors
    /// [`Closed`] when the socket takes nothing more.
    pub async fn text(&mut self, text: ByteString) -> Result<(), Closed> {
        self.queue_text(text);
        self.flush().await
    }

    /// Sends a ping.
    ///
    /// # Errors
    /// [`Closed`] when the socket takes nothing more.
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), Closed> {
        self.queue(Message::Ping(control(payload)));
        self.flush().await
    }

    /// Answers a ping.
    ///
    /// # Errors
    /// [`Closed`] when the socket takes nothing more.
    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), Closed> {
        self.queue(Message::Pong(control(payload)));
        self.flush().await
    }

    /// Sends a Close frame after everything queued, then ends our side of the connection (the
    /// server closes TCP first, RFC 6455 7.1.1: a client waiting for that is not kept waiting).
    /// Whatever the peer still sends can be read on until it hangs up too ([`Socket::finish`]).
    ///
    /// # Errors
    /// [`Closed`] when the frame could not be written.
    pub async fn close(&mut self, reason: Option<CloseReason>) -> Result<(), Closed> {
        let reason = reason.map(|mut reason| {
            if let Some(text) = reason.description.as_mut() {
                let mut end = text.len().min(MAX_CONTROL_PAYLOAD - 2);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            reason
        });
        self.queue(Message::Close(reason));
        self.flush().await?;
        self.closed = true;
        self.io.shutdown().await.map_err(|_| Closed)?;
        self.shut = true;
        Ok(())
    }

    /// Lets the socket go. After our Close, first reads (and drops) what the peer still sends
    /// until it hangs up too, `wait` at most: a socket let go with bytes unread is reset, and the
    /// reset can destroy our Close frame before the peer reads it.
    pub async fn finish(mut self, wait: std::time::Duration) {
        if self.shut {
            // Stop at the first error: a broken stream may report the same error forever.
            let _ = tokio::time::timeout(wait, async { while let Some(Ok(_)) = self.recv().await {} }).await;
        }
    }

    /// Writes everything queued to the socket.
    ///
    /// Cancel-safe: what the socket did not take yet stays queued, in order.
    ///
    /// # Errors
    /// [`Closed`] when the socket takes nothing more.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if self.closed {
            return Err(Closed);
        }
        while !self.write.is_empty() {
            match self.io.write(&self.write).await {
                Ok(0) | Err(_) => {
                    self.closed = true;
                    return Err(Closed);
                }
                Ok(written) => self.write.advance(written),
            }
        }
        // Nothing to free but the allocation: an idle connection keeps no write buffer.
        self.write = BytesMut::new();
        self.io.flush().await.map_err(|_| {
            self.closed = true;
            Closed
        })
    }

    fn queue(&mut self, message: Message) {
        // Encoding a message into memory cannot fail (the codec's error is for its I/O).
        let _ = actix_codec::Encoder::encode(&mut self.codec, message, &mut self.write);
    }
}

/// A frame as the session reads it.
fn message(frame: Frame) -> Result<Message, ProtocolError> {
    Ok(match frame {
        Frame::Text(bytes) => Message::Text(
            ByteString::try_from(bytes)
                .map_err(|err| ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, err)))?,
        ),
        Frame::Binary(bytes) => Message::Binary(bytes),
        Frame::Continuation(item) => Message::Continuation(item),
        Frame::Ping(bytes) => Message::Ping(bytes),
        Frame::Pong(bytes) => Message::Pong(bytes),
        Frame::Close(reason) => Message::Close(reason),
    })
}

/// A control frame's payload, cut to what one may carry.
fn control(payload: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}
