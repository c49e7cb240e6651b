//! A lease in a JSON file, shared by processes on one machine (`crashgrid up`).
//!
//! Compare-and-swap across processes: every write takes an exclusive OS advisory lock
//! (`flock` on Unix, `LockFileEx` on Windows, via `fs4`) on a sidecar `<file>.lock`, reads the
//! current version, and on a match writes the new contents to a temporary file in the same
//! directory, syncs it and renames it over the lease file. The kernel drops the lock when the
//! holder dies, so a crashed process never wedges the lease (an `O_EXCL` lock file would).
//! Readers take no lock: `rename` is atomic, so they see either the old or the new file, whole.
//! The lock is on a separate file because the lease file itself is replaced on every write.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backend::{BoxFuture, LeaseBackend};
use super::error::LeaseError;
use super::record::{LeaseRecord, Version};

/// How long a write waits for another process to release the file lock by default.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The file's JSON layout: the version counter next to the record, readable by humans.
#[derive(Serialize, Deserialize)]
struct Contents {
    version: u64,
    lease: LeaseRecord,
}

/// A lease stored as a JSON file on local disk, safe for several processes on one machine.
///
/// File format (`version` is the [`Version`], a counter incremented by every write):
///
/// ```json
/// { "version": 7, "lease": { "holderIdentity": "pod-a", "leaseDurationSeconds": 15,
///   "acquireTime": "...", "renewTime": "...", "leaseTransitions": 2 } }
/// ```
///
/// Each call runs on tokio's blocking pool (so it must be called within a tokio runtime).
/// A write that cannot get the lock within the lock timeout (2 s by default) fails with
/// [`LeaseError::Unavailable`]. Deleting the file while electors run is not supported (the
/// counter would restart); stop them first.
#[derive(Clone, Debug)]
pub struct FileLease {
    path: PathBuf,
    lock_path: PathBuf,
    lock_timeout: Duration,
}

impl FileLease {
    /// A lease stored at `path` (created on first `create`; its directory too). The lock file
    /// is `path` with `.lock` appended.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        FileLease {
            path,
            lock_path: lock_path.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// Sets how long writes wait for the file lock before failing with `Unavailable`.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LeaseError + '_ {
        move |source| LeaseError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn read(&self) -> Result<Option<Contents>, LeaseError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io_err(&self.path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LeaseError::Corrupt(format!("{}: {e}", self.path.display())))
    }

    /// Runs `op` while holding the exclusive lock on the sidecar lock file.
    fn locked<T>(&self, op: impl FnOnce() -> Result<T, LeaseError>) -> Result<T, LeaseError> {
        if let Some(dir) = self
            .lock_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            fs::create_dir_all(dir).map_err(Self::io_err(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(Self::io_err(&self.lock_path))?;
        let deadline = Instant::now() + self.lock_timeout;
        let mut backoff = Duration::from_millis(1);
        loop {
            // Called through the trait: std's inherent `File::try_lock` needs Rust 1.89.
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => break,
                Err(fs4::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(LeaseError::Unavailable(format!(
                            "{} is locked by another process for more than {:?}",
                            self.lock_path.display(),
                            self.lock_timeout
                        )));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Err(fs4::TryLockError::Error(e)) => return Err(Self::io_err(&self.lock_path)(e)),
            }
        }
        let result = op();
        // Closing the file releases the lock as well; unlock explicitly to release it early.
        let _ = fs4::FileExt::unlock(&file);
        result
    }

    /// Writes `contents` to a temporary file and renames it over the lease file.
    fn replace(&self, contents: &Contents) -> Result<(), LeaseError> {
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = self
            .path
            .file_name()
            .map_or_else(|| "lease".into(), |n| n.to_string_lossy().into_owned());
        let tmp = self.path.with_file_name(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut json = serde_json::to_vec_pretty(contents)
            .map_err(|e| LeaseError::Corrupt(format!("cannot encode lease: {e}")))?;
        json.push(b'\n');
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_data()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Self::io_err(&self.path)(e));
        }
        Ok(())
    }

    fn get_blocking(&self) -> Result<Option<(LeaseRecord, Version)>, LeaseError> {
        Ok(self
            .read()?
            .map(|c| (c.lease, Version::new(c.version.to_string()))))
    }

    fn create_blocking(&self, record: LeaseRecord) -> Result<Version, LeaseError> {
        self.locked(|| {
            if self.read()?.is_some() {
                return Err(LeaseError::AlreadyExists);
            }
            self.replace(&Contents {
                version: 1,
                lease: record,
            })?;
            Ok(Version::new("1"))
        })
    }

    fn update_blocking(
        &self,
        record: LeaseRecord,
        expected: &Version,
    ) -> Result<Version, LeaseError> {
        self.locked(|| {
            let current = self.read()?.ok_or(LeaseError::NotFound)?;
            if current.version.to_string() != expected.as_str() {
                return Err(LeaseError::Conflict {
                    expected: expected.clone(),
                });
            }
            let version = current.version + 1;
            self.replace(&Contents {
                version,
                lease: record,
            })?;
            Ok(Version::new(version.to_string()))
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(FileLease) -> Result<T, LeaseError> + Send + 'static,
    ) -> Result<T, LeaseError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || op(this))
            .await
            .unwrap_or_else(|e| Err(LeaseError::Unavailable(format!("file lease task: {e}"))))
    }
}

impl LeaseBackend for FileLease {
    fn get(&self) -> BoxFuture<'_, Result<Option<(LeaseRecord, Version)>, LeaseError>> {
        Box::pin(self.blocking(|this| this.get_blocking()))
    }

    fn create(&self, record: LeaseRecord) -> BoxFuture<'_, Result<Version, LeaseError>> {
        Box::pin(self.blocking(move |this| this.create_blocking(record)))
    }

    fn update<'a>(
        &'a self,
        record: LeaseRecord,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, LeaseError>> {
        let expected = expected.clone();
        Box::pin(self.blocking(move |this| this.update_blocking(record, &expected)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: 15,
            acquire_time: None,
            renew_time: None,
            lease_transitions: 0,
        }
    }

    #[test]
    fn file_is_human_readable_json_with_a_version_counter() {
        let dir = tempfile::tempdir().unwrap();
        let lease = FileLease::new(dir.path().join("sub/leader.json"));
        let v1 = lease.create_blocking(record("a")).unwrap();
        let v2 = lease.update_blocking(record("b"), &v1).unwrap();
        assert_eq!((v1.as_str(), v2.as_str()), ("1", "2"));
        let text = fs::read_to_string(lease.path()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 2);
        assert_eq!(json["lease"]["holderIdentity"], "b");
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // leader.json and leader.json.lock
    }

    #[test]
    fn a_write_waits_for_the_lock_and_gives_up_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let lease = FileLease::new(dir.path().join("leader.json"))
            .with_lock_timeout(Duration::from_millis(50));
        let v1 = lease.create_blocking(record("a")).unwrap();
        // Another "process" holds the lock (a separate open file description).
        let other = File::open(&lease.lock_path).unwrap();
        fs4::FileExt::lock(&other).unwrap();
        let started = Instant::now();
        let err = lease.update_blocking(record("b"), &v1).unwrap_err();
        assert!(matches!(err, LeaseError::Unavailable(_)), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(lease.get_blocking().unwrap().unwrap().0, record("a"));
        // Once released, the same write succeeds.
        fs4::FileExt::unlock(&other).unwrap();
        assert_eq!(
            lease.update_blocking(record("b"), &v1).unwrap().as_str(),
            "2"
        );
    }

    #[test]
    fn corrupt_file_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let lease = FileLease::new(dir.path().join("leader.json"));
        fs::write(lease.path(), b"{ not json").unwrap();
        assert!(matches!(lease.get_blocking(), Err(LeaseError::Corrupt(_))));
        assert!(matches!(
            lease.update_blocking(record("a"), &Version::new("1")),
            Err(LeaseError::Corrupt(_))
        ));
        assert_eq!(fs::read(lease.path()).unwrap(), b"{ not json");
    }
}
