//! The append-only JSON-lines ledger: record codec, file (replay, repair, durable append), actor.

mod actor;
mod file;
pub mod record;

pub use actor::{Append, Appended, LedgerActor, Probe};
pub use file::{Ledger, LedgerError, ReplayStats, SyncMode, lock_path, snapshot_path};
