//! The append-only JSON-lines ledger: record codec, snapshot files, the ledger file (replay, repair,
//! durable append, compaction), archive retention, history over archives, the actor that owns the
//! file, and the health it publishes.

mod actor;
mod file;
pub mod health;
pub mod history;
pub mod record;
mod replay;
pub mod retention;
pub mod snapshot;

pub use actor::{Append, Appended, Compact, LedgerActor, LedgerHandle};
pub use file::{
    CompactStep, Compacted, Ledger, LedgerError, ReplayStats, SyncMode, archive_prefix, lock_path, snapshot_path,
    stage_snapshot,
};
pub use health::LedgerHealth;
pub use replay::Replayed;
pub use retention::Retention;
