//! How far a relay is in the stream, kept beside its ledger (`<ledger>.nats.json`).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::hlc::Stamp;

/// How far this relay is, kept beside the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The stream it refers to, and when that stream was created (a recreated stream starts
    /// over).
    pub stream: String,
    /// Creation time of the stream, in ns since the epoch.
    pub created: i128,
    /// Last stream sequence whose ops are all durable here.
    pub applied: u64,
    /// Newest stamp of this relay's own ops that JetStream acknowledged.
    pub published: Option<Stamp>,
}

impl Position {
    /// The position file of the ledger at `ledger`.
    pub fn path(ledger: &Path) -> PathBuf {
        let mut name = ledger.as_os_str().to_owned();
        name.push(".nats.json");
        PathBuf::from(name)
    }

    /// Reads the position file; a missing file is the start of everything.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Position, String> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Position::default()),
            Err(err) => Err(format!("{}: {err}", path.display())),
        }
    }

    /// Writes the position atomically and durably (temp file, fsync, rename, fsync directory).
    ///
    /// # Errors
    /// The I/O error.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_durably_and_a_missing_file_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = Position::path(&dir.path().join("l.jsonl"));
        assert_eq!(path.file_name().unwrap(), "l.jsonl.nats.json");
        assert_eq!(Position::load(&path).unwrap(), Position::default());
        let position = Position { stream: "S".into(), created: 7, applied: 42, published: Some(Stamp::new(1, 2, "a")) };
        position.save(&path).unwrap();
        assert_eq!(Position::load(&path).unwrap(), position);
        fs::write(&path, "{").unwrap();
        assert!(Position::load(&path).unwrap_err().contains("l.jsonl.nats.json"));
    }
}
