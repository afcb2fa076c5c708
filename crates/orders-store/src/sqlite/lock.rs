//! One process per SQLite file: an OS advisory lock on a side file (`<db>.lock`, the
//! holder's pid written in it), held for the store's lifetime.
//!
//! Two processes relaying one file would both publish its rows, and an order would be
//! paid twice; so a second process fails at start, naming the file and the holder.
//! Stores of one process share the lock (the lock is the process's, not the store's):
//! they share its relays' hand-over through the file and its tests open a file twice.
//! The OS drops the lock when the process ends, however it ends, so a killed process
//! leaves no stale lock behind (the side file stays, unlocked).

use std::{
    collections::HashMap,
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
    sync::LazyLock,
};

use orders_app::StoreError;
use parking_lot::Mutex;

/// The side files this process holds locked, with how many stores use each.
static HELD: LazyLock<Mutex<HashMap<PathBuf, (File, usize)>>> = LazyLock::new(Mutex::default);

/// This process's hold on the lock of one database file; released when the last store
/// of the process on that file drops its hold.
#[derive(Debug)]
pub(super) struct FileLock {
    side: PathBuf,
}

/// The side file of the database at `db`.
pub(super) fn side_file(db: &Path) -> PathBuf {
    let mut side = db.as_os_str().to_owned();
    side.push(".lock");
    PathBuf::from(side)
}

impl FileLock {
    /// Takes (or, when this process holds it already, shares) the lock of the database
    /// file `db`, whose folder exists.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the file and the holder's pid when another
    /// process holds it, or when the side file cannot be opened or written.
    pub(super) fn acquire(db: &Path) -> Result<Self, StoreError> {
        let side = side_file(db);
        // One key per file however the path is spelled (the folder exists by now).
        let side = match (side.parent(), side.file_name()) {
            (Some(folder), Some(name)) if !folder.as_os_str().is_empty() => {
                std::fs::canonicalize(folder).map_or(side.clone(), |f| f.join(name))
            }
            _ => std::env::current_dir().map_or(side.clone(), |d| d.join(&side)),
        };
        let mut held = HELD.lock();
        if let Some((_, users)) = held.get_mut(&side) {
            *users += 1;
            return Ok(Self { side });
        }
        let cannot = |e: std::io::Error| {
            StoreError::unavailable_because(format!("cannot lock {}", side.display()), e)
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&side)
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("process {holder}")
                };
                return Err(StoreError::unavailable(format!(
                    "the SQLite database {} is in use by {holder} (lock file {}): \
                     one Orders process per SQLite file; stop the other one, or use \
                     PostgreSQL to run several",
                    db.display(),
                    side.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(cannot(e)),
        }
        file.set_len(0).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        writeln!(file, "{}", std::process::id()).map_err(cannot)?;
        file.flush().map_err(cannot)?;
        held.insert(side.clone(), (file, 1));
        Ok(Self { side })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let mut held = HELD.lock();
        if let Some((_, users)) = held.get_mut(&self.side) {
            *users -= 1;
            if *users == 0 {
                // Closing the file releases the lock; the side file stays (removing it
                // could race with a process that just opened it).
                held.remove(&self.side);
            }
        }
    }
}
