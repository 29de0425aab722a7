//! One process per data directory: the store holds an exclusive lock on `<data dir>/LOCK`
//! (an OS file lock, released when the process ends, however it ends) from before it
//! reads anything in the directory until it stops.
//!
//! Owns: taking the lock and naming the holder when it is taken. Must never: read or write
//! anything else in the directory before the lock is held, or trust what the file says
//! (it is only shown to the operator, bounded).
//!
//! Why: today a store's address guards its data dir (`store.meta` names it); once stores
//! are identified by a store id and may move to another address (store identity), nothing
//! else would stop two processes from sharing one directory and corrupting each other's
//! log.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The lock file's name, inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Most bytes of the holder's description shown in a refusal.
const HOLDER_BYTES_MAX: u64 = 512;

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if needed and takes its lock, recording `holder` (this process's id
    /// and address) in the lock file for whoever is refused next. Refused, naming the
    /// holder, while another process holds it.
    pub(crate) fn acquire(dir: &Path, holder: &str) -> Result<DataDirLock, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut held = String::new();
                let _ = (&file).take(HOLDER_BYTES_MAX).read_to_string(&mut held);
                let held = held.trim();
                let held = if held.is_empty() {
                    "holder unknown"
                } else {
                    held
                };
                return Err(format!(
                    "it is in use by another process ({held}): stop that one first, or use \
                     another data dir"
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = format!(
            "pid {} serving {holder}, since unix time {since}\n",
            std::process::id()
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(record.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("flotilla-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DataDirLock::acquire(&dir, "127.0.0.1:7001").expect("first");
        let refused = DataDirLock::acquire(&dir, "127.0.0.1:7002").expect_err("second");
        assert!(refused.contains("in use by another process"), "{refused}");
        assert!(refused.contains("127.0.0.1:7001"), "{refused}");
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        drop(first);
        let again = DataDirLock::acquire(&dir, "127.0.0.1:7002").expect("released");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
