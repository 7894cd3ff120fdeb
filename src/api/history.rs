//! History from the ledger and its archives, as `aether-actix ledger log` and `ledger state --at`
//! compute it (`crate::commands`): a key's writes, a room's state at a past moment. Reading the
//! files takes time that grows with the ledger, so it runs on the blocking pool, at most
//! [`READERS`] at once (others wait up to [`READER_WAIT`], then `503 busy`).

use std::{sync::LazyLock, time::Duration};

use actix_web::{HttpResponse, http::StatusCode, web};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::{Answer, ApiError};
use crate::{
    commands::{self, History},
    ledger::history::{self as files, format_time, parse_time},
    lww::OpKind,
    relay::Relay,
    room::Room,
};

/// History reads running at once.
const READERS: usize = 2;

/// How long a history read waits for its turn.
const READER_WAIT: Duration = Duration::from_secs(10);

/// Writes of one key answered at most (the newest).
const MAX_LIMIT: usize = 10_000;

/// Writes answered without `?limit=`.
const DEFAULT_LIMIT: usize = 1_000;

static READING: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(READERS));

/// Reads the history of `room` off the async workers, then gives it to `then` (also off them).
async fn with_history<T: Send + 'static>(
    relay: &Relay,
    room: Room,
    then: impl FnOnce(&History, &Room) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = tokio::time::timeout(READER_WAIT, READING.acquire())
        .await
        .map_err(|_| ApiError::unavailable("busy", "other history reads are running; try again"))?
        .map_err(|_| ApiError::unavailable("busy", "history reads are closed"))?;
    let config = std::sync::Arc::clone(&relay.boot);
    let read = web::block(move || {
        commands::history(&config, Some(&room), &mut std::io::sink()).map(|history| then(&history, &room))
    });
    match read.await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) => {
            log::warn!("API history read failed: {err}");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ledger_unreadable", err.to_string()))
        }
        Err(_) => Err(ApiError::unavailable("unavailable", "the history read did not finish")),
    }
}

/// `GET /rooms/{room}/keys/{key}/history[?limit=N]`: `{"room", "key", "horizon", "writes": [{"stamp",
/// "time", "node", "op": "set"|"del", "value" (sets), "by" (when recorded), "current",
/// "at_horizon"}], "truncated"}`, oldest first; the newest `limit` (default 1000, at most 10000).
pub(super) async fn key(relay: &Relay, room: Room, key: String, limit: Option<String>) -> Answer {
    let limit =
        match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text.parse::<usize>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                ApiError::bad_request("bad_limit", format!("limit is a number from 1 to {MAX_LIMIT}"))
            })?,
        };
    let body = with_history(relay, room, move |history, room| {
        let writes = commands::key_writes(history, room, &key);
        let last = writes.len().saturating_sub(1);
        let skip = writes.len().saturating_sub(limit);
        let shown: Vec<Value> = writes
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, (op, at_horizon))| {
                let mut write = json!({
                    "stamp": op.stamp.to_string(),
                    "time": format_time(op.stamp.p),
                    "node": &*op.stamp.n,
                    "op": op.kind.as_str(),
                    "current": i == last,
                    "at_horizon": at_horizon,
                });
                if op.kind == OpKind::Set {
                    write["value"] = op.value.to_value();
                }
                if let Some(by) = &op.by {
                    write["by"] = Value::from(&**by);
                }
                write
            })
            .collect();
        json!({
            "room": room.written(),
            "key": key,
            "horizon": history.horizon.map(format_time),
            "writes": shown,
            "truncated": skip > 0,
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /rooms/{room}?at=T` (RFC 3339 or nanoseconds since 1970): `{"room", "at", "keys"}`, the
/// room's live keys then; `410 history_pruned` before the history horizon.
pub(super) async fn state_at(relay: &Relay, room: Room, at: String) -> Answer {
    let at_ns = parse_time(&at).map_err(|message| ApiError::bad_request("bad_time", message))?;
    let body = with_history(relay, room, move |history, room| {
        if let Some(horizon) = history.horizon.filter(|horizon| at_ns < *horizon) {
            return Err(ApiError::new(
                StatusCode::GONE,
                "history_pruned",
                format!(
                    "cannot tell the state at {}: history is exact only from {} (older archives were pruned or are missing)",
                    format_time(at_ns),
                    format_time(horizon)
                ),
            )
            .with("horizon", Value::from(format_time(horizon))));
        }
        let map = files::state_at(&history.base, &history.records, room, at_ns);
        let keys: Map<String, Value> = map.live().map(|(k, v)| (k.clone(), v.to_value())).collect();
        Ok(json!({"room": room.written(), "at": format_time(at_ns), "keys": keys}))
    })
    .await??;
    Ok(HttpResponse::Ok().json(body))
}
