//! One xlaned per node: an exclusive lock (`flock(2)`) on a file beside the control
//! socket (`xlaned.sock` → `xlaned.lock`), held for the xlaned's whole life.
//!
//! A second xlaned started cold on the same socket would attach to the same uplink and
//! take the control socket from under the first; it is refused instead. A handover
//! passes the locked file on (the successor holds the same open file, so the lock never
//! lapses between the two), which is also how a successor tells "an xlaned is taking
//! over right now" (locked, no handover socket yet) from "none runs" (unlocked): only
//! then does it start cold. The kernel drops the lock when its last holder exits, even
//! on SIGKILL, so a crash never leaves it behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The node's lock, held.
#[derive(Debug)]
pub struct NodeLock(File);

impl NodeLock {
    /// The lock file of the xlaned whose control socket is `control`.
    #[must_use]
    pub fn path(control: &Path) -> PathBuf {
        control.with_extension("lock")
    }

    /// Take the lock, or `Ok(None)` if another process holds it.
    ///
    /// # Errors
    /// The file cannot be created or locked.
    pub fn try_acquire(control: &Path) -> io::Result<Option<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(control);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// [`try_acquire`](Self::try_acquire), waiting up to `limit` for a holder that is
    /// exiting.
    ///
    /// # Errors
    /// As `try_acquire`.
    pub fn acquire_within(control: &Path, limit: Duration) -> io::Result<Option<Self>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = Self::try_acquire(control)? {
                return Ok(Some(l));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A duplicate of the locked file, for a successor (a handover).
    ///
    /// # Errors
    /// Out of descriptors.
    pub fn share(&self) -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.0.try_clone()?))
    }

    /// The lock a predecessor shared (its locked file).
    #[must_use]
    pub fn inherit(fd: OwnedFd) -> Self {
        Self(File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held once; another open file of it cannot take it (flock is per open file, so
    /// this works within one process as between two); a shared duplicate keeps it held
    /// after the first holder is gone; free once every holder is.
    #[test]
    fn one_holder_shared_through_a_handover() {
        let dir = std::env::temp_dir().join(format!("xlane-lock-{}", std::process::id()));
        let control = dir.join("xlaned.sock");
        let first = NodeLock::try_acquire(&control).unwrap().expect("free");
        assert!(NodeLock::path(&control).ends_with("xlaned.lock"));
        assert!(NodeLock::try_acquire(&control).unwrap().is_none(), "held");
        let successor = NodeLock::inherit(first.share().unwrap());
        drop(first);
        assert!(NodeLock::try_acquire(&control).unwrap().is_none(), "still held by the successor");
        drop(successor);
        assert!(NodeLock::acquire_within(&control, Duration::from_secs(1)).unwrap().is_some(), "free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
