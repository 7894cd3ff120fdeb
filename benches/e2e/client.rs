//! A WebSocket client as a browser tab behaves: connect, read `hello` and `snapshot`, send one
//! first frame, then write and read.
//!
//! The first frame is `{"type":"auth"}`, which both relays ignore when auth is off; upstream
//! closes a connection that sends nothing within `handshake_timeout_s` (5 s), so every client
//! sends it, for both relays alike.

use std::{
    borrow::Cow,
    io,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

/// Longest any single blocking read may take before the scenario fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How both relays frame a set, up to the key; a frame that does not start like this is parsed.
const SET_KEY_PREFIX: &str = r#"{"type":"set","key":""#;

/// A connected client over a blocking socket.
pub struct Client {
    /// The WebSocket.
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    /// Connects, reads the two greeting frames, sends the first frame.
    pub fn connect(addr: SocketAddr, url: &str) -> Result<Client, String> {
        let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| format!("read timeout: {e}"))?;
        stream.set_write_timeout(Some(READ_TIMEOUT)).map_err(|e| format!("write timeout: {e}"))?;
        let (ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake: {e}"))?;
        let mut client = Client { ws };
        for expected in ["hello", "snapshot"] {
            let frame = client.next_text()?;
            let kind = serde_json::from_str::<Value>(&frame).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
            if kind.as_deref() != Some(expected) {
                return Err(format!("expected {expected} first, got {frame:.120}"));
            }
        }
        client.ws.send(Message::text(r#"{"type":"auth"}"#)).map_err(|e| format!("first frame: {e}"))?;
        Ok(client)
    }

    /// The next text frame; control frames are skipped, a close is an error.
    pub fn next_text(&mut self) -> Result<String, String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return Ok(text.as_str().to_owned()),
                Ok(Message::Close(frame)) => return Err(closed(frame.as_ref())),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads until the `set` frame for `key` arrives.
    pub fn wait_for(&mut self, key: &str) -> Result<(), String> {
        loop {
            let frame = self.next_text()?;
            if set_key(&frame).as_deref() == Some(key) {
                return Ok(());
            }
        }
    }

    /// Makes the socket non-blocking, for a poller.
    pub fn into_nonblocking(self) -> io::Result<WebSocket<TcpStream>> {
        self.ws.get_ref().set_nonblocking(true)?;
        Ok(self.ws)
    }

    /// Sends a close frame, best effort.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// "closed by the relay: CODE REASON".
pub fn closed(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("closed by the relay: {} {}", u16::from(f.code), f.reason.as_str()),
        None => "closed by the relay without a code".to_owned(),
    }
}

/// The key of a `set` frame, `None` for any other frame.
pub fn set_key(frame: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = frame.strip_prefix(SET_KEY_PREFIX)
        && let Some(end) = rest.find('"')
        && !rest[..end].contains('\\')
    {
        return Some(Cow::Borrowed(&rest[..end]));
    }
    let value: Value = serde_json::from_str(frame).ok()?;
    if value["type"] != "set" {
        return None;
    }
    value["key"].as_str().map(|k| Cow::Owned(k.to_owned()))
}

/// A set of `key` to `{"i":i,"tag":"bench"}`.
pub fn set_frame(key: &str, i: u64) -> Message {
    Message::text(format!(r#"{{"type":"set","key":"{key}","value":{{"i":{i},"tag":"bench"}}}}"#))
}
