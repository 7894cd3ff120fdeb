//! `LedgerActor`: the one thread that appends to the ledger file.
//!
//! It runs on a [`SyncArbiter`] with a single thread, so appends are serialized in the order the
//! `StateActor` sends them. The `StateActor` keeps at most one [`Append`] in flight and gathers the
//! next batch meanwhile: that is the group commit (one `fdatasync` covers a whole batch).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use actix::prelude::*;

use super::{
    file::{Compacted, Ledger, LedgerError},
    record,
};
use crate::lww::Op;

/// The ledger actor; cheap to recreate, since the open file lives behind a shared handle.
pub struct LedgerActor {
    ledger: Arc<Mutex<Ledger>>,
    buf: Vec<u8>,
}

impl LedgerActor {
    /// Starts the actor on its own thread and returns its address.
    pub fn start(ledger: Ledger) -> Addr<LedgerActor> {
        let ledger = Arc::new(Mutex::new(ledger));
        SyncArbiter::start(1, move || LedgerActor { ledger: Arc::clone(&ledger), buf: Vec::new() })
    }
}

impl Actor for LedgerActor {
    type Context = SyncContext<Self>;
}

/// Append these ops, in order, durably (as `[ledger] sync` says).
#[derive(Message)]
#[rtype(result = "Appended")]
pub struct Append {
    /// The batch, handed back in the reply so the caller need not clone it.
    pub ops: Vec<Op>,
}

/// The outcome of an [`Append`].
pub struct Appended {
    /// The ops of the batch, unchanged.
    pub ops: Vec<Op>,
    /// `Ok` once the batch is durable; on `Err` none of it is in the file.
    pub result: Result<(), LedgerError>,
    /// Bytes the batch took in the file.
    pub bytes: u64,
    /// Time spent in write + fdatasync.
    pub elapsed: Duration,
    /// Length of the ledger file after this batch.
    pub len_after: u64,
}

impl Handler<Append> for LedgerActor {
    type Result = MessageResult<Append>;

    fn handle(&mut self, msg: Append, _: &mut SyncContext<Self>) -> Self::Result {
        self.buf.clear();
        for op in &msg.ops {
            record::encode(op, &mut self.buf);
        }
        let started = Instant::now();
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let result = ledger.append(&self.buf);
        let len_after = ledger.len();
        drop(ledger);
        if let Err(err) = &result {
            log::error!("ledger append of {} ops failed: {err}", msg.ops.len());
        }
        let elapsed = started.elapsed();
        let bytes = self.buf.len() as u64;
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::new(); // do not keep a huge buffer after a burst
        }
        MessageResult(Appended { ops: msg.ops, result, bytes, elapsed, len_after })
    }
}

/// Fold the ledger's first `covered` bytes into `snapshot` (see [`Ledger::compact`]).
#[derive(Message)]
#[rtype(result = "Result<Compacted, LedgerError>")]
pub struct Compact {
    /// The whole state as of `covered`, from [`super::snapshot::encode`].
    pub snapshot: Vec<u8>,
    /// Ledger length the snapshot covers.
    pub covered: u64,
}

impl Handler<Compact> for LedgerActor {
    type Result = Result<Compacted, LedgerError>;

    fn handle(&mut self, msg: Compact, _: &mut SyncContext<Self>) -> Self::Result {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner).compact(&msg.snapshot, msg.covered)
    }
}

/// Health probe: replies with the ledger's length in bytes.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Probe;

impl Handler<Probe> for LedgerActor {
    type Result = u64;

    fn handle(&mut self, _: Probe, _: &mut SyncContext<Self>) -> u64 {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}
