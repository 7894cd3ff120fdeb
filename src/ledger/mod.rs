//! The append-only JSON-lines ledger: record codec, snapshot files, the ledger file (replay, repair,
//! durable append, compaction), history over archives, and the actor that owns the file.

mod actor;
mod file;
pub mod history;
pub mod record;
pub mod snapshot;

pub use actor::{Append, Appended, Compact, LedgerActor, Probe};
pub use file::{
    CompactStep, Compacted, Ledger, LedgerError, ReplayStats, SyncMode, archive_prefix, lock_path, snapshot_path,
};
