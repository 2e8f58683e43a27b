//! The disk reserve: a node keeps `storage.min_free_bytes` (or 5% of its
//! filesystem, whichever is smaller) free on its data directory, and
//! refuses tenant writes that would grow the data with a typed
//! [`Error::StorageFull`] once less is left. Deletes still pass, so a
//! tenant can make room; reads are untouched. The reserve is what lets a
//! full disk be an error a client sees instead of a node that stops: the
//! raft log, RocksDB's compactions and the counters' checkpoints still
//! have room to finish. A disk that fills anyway (another process, a
//! reserve of 0) still stops the node (fail-stop, exit status 75).
//!
//! Only the node that proposes a write checks (a tenant's shard leader):
//! a follower cannot refuse entries its leader committed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::proto::{Error, Result, WriteOp};
use crate::storage::Command;

/// How long a measured free space is trusted.
const REFRESH_MS: u64 = 500;

/// The reserve of one data directory.
#[derive(Debug)]
pub struct DiskReserve {
    dir: PathBuf,
    min_free: u64,
    node: u64,
    /// When `free` and `reserve` were measured (coarse ms; 0: never).
    checked_ms: AtomicU64,
    free: AtomicU64,
    reserve: AtomicU64,
    full: AtomicBool,
}

impl DiskReserve {
    /// The reserve of `dir`'s filesystem for node `node` (0: standalone):
    /// `min_free` bytes, capped at 5% of the filesystem (0: none).
    pub fn new(dir: &Path, min_free: u64, node: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            min_free,
            node,
            checked_ms: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            reserve: AtomicU64::new(0),
            full: AtomicBool::new(false),
        }
    }

    /// `Err(StorageFull)` when `cmd` would grow the data while the disk
    /// has less than the reserve free.
    pub fn check(&self, cmd: &Command) -> Result<()> {
        if self.min_free == 0 || !grows(cmd) {
            return Ok(());
        }
        self.refresh();
        let (free, reserve) = (
            self.free.load(Ordering::Relaxed),
            self.reserve.load(Ordering::Relaxed),
        );
        if free < reserve {
            Err(Error::StorageFull {
                node: self.node,
                free_bytes: free,
                reserve_bytes: reserve,
            })
        } else {
            Ok(())
        }
    }

    /// Whether the disk was below its reserve when last measured.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    fn refresh(&self) {
        let now = crate::util::coarse_now_ms();
        let last = self.checked_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < REFRESH_MS {
            return;
        }
        // One caller measures; the others use the last figures.
        if self
            .checked_ms
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let Ok((free, total)) = fs_space(&self.dir) else {
            // Unmeasurable: no refusal on a guess.
            self.free.store(u64::MAX, Ordering::Relaxed);
            return;
        };
        let reserve = self.min_free.min(total / 20);
        self.free.store(free, Ordering::Relaxed);
        self.reserve.store(reserve, Ordering::Relaxed);
        let full = free < reserve;
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    dir = %self.dir.display(), free, reserve,
                    "disk below its reserve: writes other than deletes are refused (StorageFull)"
                );
            } else {
                tracing::info!(dir = %self.dir.display(), free, reserve, "disk above its reserve again: writes accepted");
            }
        }
    }
}

/// Whether `cmd` may add data. Deletes, purges and collection drops free
/// space; limits and counters are a few bytes the reserve is there for.
fn grows(cmd: &Command) -> bool {
    match cmd {
        Command::Write { ops, .. } => ops
            .iter()
            .any(|op| !matches!(op, WriteOp::Delete { .. } | WriteOp::DeleteEdge { .. })),
        Command::CreateCollection(_) | Command::IndexProperty { .. } => true,
        Command::Once { cmd, .. } => grows(cmd),
        _ => false,
    }
}

/// (free bytes for unprivileged users, total bytes) of `dir`'s filesystem.
fn fs_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills a zeroed plain-data struct from a valid,
    // NUL-terminated path; the struct is read only when it succeeded.
    let s = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut s) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        s
    };
    let frsize = s.f_frsize as u64;
    Ok((s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NewObject;

    fn put() -> Command {
        Command::Write {
            ops: vec![WriteOp::Put(NewObject::new(
                "c",
                "a",
                serde_json::json!({}),
            ))],
            atomic: true,
            now_ms: 0,
        }
    }

    fn delete() -> Command {
        Command::Write {
            ops: vec![WriteOp::Delete { id: "a".into() }],
            atomic: true,
            now_ms: 0,
        }
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_refuses_puts_but_not_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = fs_space(dir.path()).unwrap();
        assert!(free > 0 && total >= free);
        // Reserve capped at 5% of the filesystem: a huge setting refuses
        // only when less than that 5% is free.
        let r = DiskReserve::new(dir.path(), u64::MAX, 3);
        let expect_full = free < total / 20;
        assert_eq!(r.check(&put()).is_err(), expect_full);
        assert!(r.check(&delete()).is_ok());
        // A reserve of 0 never refuses.
        let r = DiskReserve::new(dir.path(), 0, 3);
        assert!(r.check(&put()).is_ok());
    }

    #[test]
    fn only_commands_that_add_data_are_checked() {
        assert!(grows(&put()));
        assert!(!grows(&delete()));
        assert!(grows(&Command::Once {
            client: 1,
            seq: 1,
            part: 0,
            acked_below: 0,
            now_ms: 0,
            cmd: Box::new(put()),
        }));
        assert!(!grows(&Command::DropCollection("c".into())));
        assert!(!grows(&Command::PurgeOlderThan {
            collection: None,
            cutoff_ms: 1,
            max: 10,
        }));
    }

    #[test]
    fn the_refusal_names_the_node_and_the_figures() {
        let dir = tempfile::tempdir().unwrap();
        let r = DiskReserve::new(dir.path(), 1, 5);
        // Pretend the last measure found the disk full.
        r.checked_ms
            .store(crate::util::coarse_now_ms().max(1), Ordering::Relaxed);
        r.free.store(10, Ordering::Relaxed);
        r.reserve.store(100, Ordering::Relaxed);
        match r.check(&put()) {
            Err(Error::StorageFull {
                node: 5,
                free_bytes: 10,
                reserve_bytes: 100,
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
