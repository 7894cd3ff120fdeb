//! Really full file systems for the tests that need one (`tests/ledger_health.rs`,
//! `tests/faults.rs`): a small tmpfs mounted on a fresh temporary directory, and a file that fills it.

use std::{fs, io::Write, path::Path, process::Command, sync::Arc};

use tempfile::TempDir;

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop. Start relays on it with
/// [`super::Server::start_in`]`(tmpfs.dir(), …)`; they must stop before it drops (declare it first).
pub struct Tmpfs {
    dir: Arc<TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes`, or says why it cannot (not root, or no CAP_SYS_ADMIN).
    pub fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().to_owned());
        }
        Ok(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or None after printing that `test` is skipped and why.
    pub fn mount_or_skip(bytes: u64, test: &str) -> Option<Tmpfs> {
        Tmpfs::mount(bytes)
            .inspect_err(|err| eprintln!("SKIPPED {test}: cannot mount a tmpfs ({err}); needs root (CAP_SYS_ADMIN)"))
            .ok()
    }

    pub fn dir(&self) -> Arc<TempDir> {
        Arc::clone(&self.dir)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `path` with `path` itself until writes fail with ENOSPC, then
/// gives back `leave` bytes (about: tmpfs counts whole pages); returns the bytes `path` keeps.
pub fn fill(path: &Path, leave: u64) -> u64 {
    let mut filler = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0;
    for _ in 0..1_000_000 {
        match filler.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => {
                let kept = written.saturating_sub(leave);
                filler.set_len(kept).unwrap();
                filler.sync_all().unwrap();
                return kept;
            }
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
    }
    panic!("{} never filled up", path.display());
}
