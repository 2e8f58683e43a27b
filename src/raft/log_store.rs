//! The raft log of every group on a node, in one shared RocksDB instance.
//!
//! Column families: `log` (key: group id ‖ index, both u64 big-endian;
//! value: the encoded entry) and `state` (key: group id ‖ tag; vote,
//! committed, purged). Entries are written to RocksDB at once (so they are
//! readable when `append` returns); durability comes from one node-wide
//! sync thread that fsyncs the shared WAL once for every append and vote
//! that arrived while the previous fsync ran: group commit across all
//! tenants. `append`'s callback and `save_vote`'s return happen only after
//! that fsync.
//!
//! One exception saves the two thread hand-offs (to the sync thread and
//! back) when nothing else is waiting: an append of a single entry that
//! finds no fsync queued or running anywhere on the node fsyncs the WAL
//! on its own task, if its group has nothing to do meanwhile (see
//! [`SyncHere`]). Measured by `bench engine`, alternating
//! runs: 1 writer 0.45–0.48× → 0.51–0.66× raw RocksDB; 64 writers not
//! slower (they append several entries at a time, so they keep the
//! pipelined path: the raft core appends the next entries while the sync
//! thread fsyncs the last ones).
//!
//! Every group also keeps its newest entries decoded in memory
//! ([`RecentEntries`]): the state machine and the followers' replication
//! streams read each entry right after its append.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, oneshot};

use crate::codec;

use super::recent::RecentEntries;
use super::types::{io_other, Entry, LogId, ShardRaftConfig as C, Vote};

const CF_LOG: &str = "log";
const CF_STATE: &str = "state";
/// Most sync requests queued before appends wait (bounds memory).
const SYNC_QUEUE: usize = 65_536;

enum Done {
    Flushed(IOFlushed<C>),
    Notify(oneshot::Sender<std::io::Result<()>>),
}

/// The node-wide raft log database and its sync thread.
pub struct RaftLogDb {
    db: parking_lot::RwLock<Option<Arc<DB>>>,
    sync_tx: parking_lot::Mutex<Option<mpsc::Sender<Done>>>,
    sync_thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    failed: Arc<AtomicBool>,
    /// Fsyncs asked of the sync thread and not answered yet, plus the one
    /// running on an appending task: an append fsyncs on its own task only
    /// when this is 0.
    syncing: Arc<AtomicUsize>,
    /// Bytes every group's [`RecentEntries`] hold together.
    recent_bytes: Arc<AtomicUsize>,
}

impl Drop for RaftLogDb {
    /// Closes on the dropping thread: the sync thread is joined and the
    /// database released before the drop returns, so no RocksDB thread
    /// outlives its owner (one still closing while the process exits
    /// aborts it: "pthread lock: Invalid argument").
    fn drop(&mut self) {
        self.close();
    }
}

impl Debug for RaftLogDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLogDb").finish()
    }
}

fn log_key(group: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn state_key(group: u64, tag: &[u8]) -> Vec<u8> {
    [&group.to_be_bytes()[..], tag].concat()
}

impl RaftLogDb {
    /// Opens the shared log database at `path` and starts its sync thread.
    pub fn open(path: &Path) -> std::io::Result<Arc<RaftLogDb>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_size(32 << 20);
        let cfs = [CF_LOG, CF_STATE].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs).map_err(io_other)?);
        let (tx, rx) = mpsc::channel(SYNC_QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let syncing = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (db, failed, syncing) = (db.clone(), failed.clone(), syncing.clone());
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || sync_loop(db, rx, failed, syncing))?
        };
        Ok(Arc::new(RaftLogDb {
            db: parking_lot::RwLock::new(Some(db)),
            sync_tx: parking_lot::Mutex::new(Some(tx)),
            sync_thread: parking_lot::Mutex::new(Some(thread)),
            failed,
            syncing,
            recent_bytes: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// Stops the sync thread (after a last fsync) and releases the
    /// database; later calls on any of its log stores fail.
    pub fn close(&self) {
        self.sync_tx.lock().take();
        if let Some(t) = self.sync_thread.lock().take() {
            let _ = t.join();
        }
        if let Some(db) = self.db.write().take() {
            let _ = db.flush_wal(true);
        }
    }

    fn db(&self) -> std::io::Result<Arc<DB>> {
        self.db
            .read()
            .clone()
            .ok_or_else(|| io_other("raft log database is closed"))
    }

    fn sender(&self) -> std::io::Result<mpsc::Sender<Done>> {
        self.sync_tx
            .lock()
            .clone()
            .ok_or_else(|| io_other("raft log database is closed"))
    }

    /// A log store for one group whose appends always leave the fsync to
    /// the sync thread.
    pub fn store(self: &Arc<Self>, group: u64) -> LogStore {
        self.store_with(group, SyncHere::Never)
    }

    /// A log store for one group, fsyncing on the appending task when
    /// `here` allows.
    pub fn store_with(self: &Arc<Self>, group: u64, here: SyncHere) -> LogStore {
        LogStore {
            group,
            shared: self.clone(),
            recent: Arc::new(parking_lot::Mutex::new(RecentEntries::new(
                self.recent_bytes.clone(),
            ))),
            here,
            self_voted: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Deletes every key of a group (tenant purge), durably.
    pub async fn purge_group(&self, group: u64) -> std::io::Result<()> {
        let db = self.db()?;
        let mut b = WriteBatch::default();
        let (log, state) = (cf(&db, CF_LOG)?, cf(&db, CF_STATE)?);
        b.delete_range_cf(log, log_key(group, 0), log_key(group + 1, 0));
        b.delete_range_cf(state, state_key(group, b""), state_key(group + 1, b""));
        self.write(&db, b)?;
        self.sync().await
    }

    /// The groups that have any key (log entries or raft state), in order:
    /// one seek per group.
    pub fn groups(&self) -> std::io::Result<Vec<u64>> {
        let db = self.db()?;
        let mut groups = std::collections::BTreeSet::new();
        for name in [CF_LOG, CF_STATE] {
            let mut from = 0u64;
            loop {
                let lo = from.to_be_bytes();
                let mut it = db.iterator_cf(
                    cf(&db, name)?,
                    IteratorMode::From(&lo, rocksdb::Direction::Forward),
                );
                let Some(item) = it.next() else { break };
                let (k, _) = item.map_err(io_other)?;
                let Some(g) = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                else {
                    break;
                };
                groups.insert(g);
                match g.checked_add(1) {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// The vote `group`'s replica here last saved (None: none yet), read
    /// without opening the group.
    pub fn vote_of(&self, group: u64) -> std::io::Result<Option<Vote>> {
        self.state_of(group, b"vote")
    }

    /// The raft state value `tag` of `group` (None: not saved).
    fn state_of<T: serde::de::DeserializeOwned>(
        &self,
        group: u64,
        tag: &[u8],
    ) -> std::io::Result<Option<T>> {
        let db = self.db()?;
        match db
            .get_cf(cf(&db, CF_STATE)?, state_key(group, tag))
            .map_err(io_other)?
        {
            Some(b) => Ok(Some(codec::decode(&b).map_err(io_other)?)),
            None => Ok(None),
        }
    }

    /// Number of keys this group has left (the purge test uses it).
    pub fn group_key_count(&self, group: u64) -> std::io::Result<usize> {
        let db = self.db()?;
        let mut n = 0;
        for (name, lo) in [
            (CF_LOG, log_key(group, 0).to_vec()),
            (CF_STATE, state_key(group, b"")),
        ] {
            let it = db.iterator_cf(
                cf(&db, name)?,
                IteratorMode::From(&lo, rocksdb::Direction::Forward),
            );
            for item in it {
                let (k, _) = item.map_err(io_other)?;
                if k.len() < 8 || k[..8] != group.to_be_bytes() {
                    break;
                }
                n += 1;
            }
        }
        Ok(n)
    }

    fn write(&self, db: &DB, b: WriteBatch) -> std::io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io_other("raft log disk failed earlier; refusing writes"));
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        db.write_opt(b, &wo).map_err(|e| {
            // RocksDB keeps refusing writes after a failed WAL append (a
            // full disk, an I/O error): the store is done until reopened.
            if !self.failed.swap(true, Ordering::AcqRel) {
                tracing::error!(error = %e, "raft log write failed; every raft group on this node stops");
            }
            io_other(e)
        })
    }

    /// Whether a write or fsync of the log failed: every group on this
    /// node has stopped, and only a restart (after the disk is fixed)
    /// brings them back.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    async fn sync(&self) -> std::io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queue(Done::Notify(tx)).await?;
        rx.await
            .map_err(|_| io_other("raft log sync thread stopped"))?
    }

    /// Hands `done` to the sync thread, to be answered after its next fsync.
    /// Counted in `syncing` only once the queue has room (a caller dropped
    /// while waiting for it leaves no count behind).
    async fn queue(&self, done: Done) -> std::io::Result<()> {
        let permit = self
            .sender()?
            .reserve_owned()
            .await
            .map_err(|_| io_other("raft log sync thread stopped"))?;
        self.syncing.fetch_add(1, Ordering::AcqRel);
        permit.send(done);
        Ok(())
    }

    /// Fsyncs on the calling task if no other fsync is queued or running
    /// on the node (None: one is; queue instead). The WAL is synced
    /// outside RocksDB's write queue (`flush_wal`), so other groups'
    /// unsynced writes go on meanwhile; a synced write would hold them
    /// until its fsync ended.
    fn sync_if_alone(&self, db: &DB) -> Option<std::io::Result<()>> {
        let _claim = SyncClaim::take(&self.syncing)?;
        Some(fsync_wal(db, &self.failed).map_err(io_other))
    }
}

/// The right to fsync on an appending task, while no other fsync is
/// queued or running on the node; given back when dropped (even on a
/// panic).
struct SyncClaim<'a>(&'a AtomicUsize);

impl<'a> SyncClaim<'a> {
    fn take(syncing: &'a AtomicUsize) -> Option<Self> {
        syncing
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| SyncClaim(syncing))
    }
}

impl Drop for SyncClaim<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where an append of a group may fsync when nothing else is waiting for
/// one: on its own task, which saves two thread hand-offs (the sync
/// thread's wake-up, then the raft core's), but holds that task (and its
/// async worker) for the fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncHere {
    /// Always through the sync thread.
    Never,
    /// On its own task whenever alone: a one-voter group, whose leader
    /// has nothing to do until its own fsync ends.
    WhenAlone,
    /// On its own task when alone, unless the replica (whose node id this
    /// is) voted for itself last: a leader (or candidate) of a replicated
    /// group sends the entries to its followers only after `append`
    /// returns, so its fsync must not hold that up. A follower's append
    /// has nothing to overlap with.
    UnlessLeading(u64),
}

fn cf<'a>(db: &'a DB, name: &str) -> std::io::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io_other(format!("column family {name} missing")))
}

/// One fsync of the log's WAL, timed. A failure stops the log for good:
/// the page cache's state after a failed fsync is unknown, so it is never
/// retried.
fn fsync_wal(db: &DB, failed: &AtomicBool) -> Result<(), String> {
    if failed.load(Ordering::Acquire) {
        return Err("an earlier fsync failed".to_string());
    }
    let started = std::time::Instant::now();
    let r = db.flush_wal(true).map_err(|e| e.to_string());
    crate::monitor::fsync_took(started.elapsed());
    if let Err(e) = &r {
        tracing::error!(error = %e, "raft log fsync failed; every raft group on this node stops");
        failed.store(true, Ordering::Release);
    }
    r
}

/// One fsync for everything that queued up while the previous one ran.
fn sync_loop(
    db: Arc<DB>,
    mut rx: mpsc::Receiver<Done>,
    failed: Arc<AtomicBool>,
    syncing: Arc<AtomicUsize>,
) {
    let mut pending = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
            if pending.len() >= 4096 {
                break;
            }
        }
        let res = fsync_wal(&db, &failed);
        let answered = pending.len();
        for d in pending.drain(..) {
            let r = res.clone().map_err(io_other);
            match d {
                Done::Flushed(cb) => cb.io_completed(r),
                Done::Notify(tx) => {
                    let _ = tx.send(r);
                }
            }
        }
        // Only now: an append fsyncing on its own task meanwhile could
        // answer before an earlier append of its group answered here.
        syncing.fetch_sub(answered, Ordering::AcqRel);
    }
}

/// The raft log of one group.
#[derive(Clone)]
pub struct LogStore {
    group: u64,
    shared: Arc<RaftLogDb>,
    /// The group's newest entries, shared by the store and its readers.
    recent: Arc<parking_lot::Mutex<RecentEntries>>,
    here: SyncHere,
    /// Whether the vote saved last is this replica's own (a candidate or a
    /// leader); true until the first vote is read.
    self_voted: Arc<AtomicBool>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish()
    }
}

impl LogStore {
    /// Whether an append may fsync on its own task (when alone).
    fn may_sync_here(&self) -> bool {
        match self.here {
            SyncHere::Never => false,
            SyncHere::WhenAlone => true,
            SyncHere::UnlessLeading(_) => !self.self_voted.load(Ordering::Acquire),
        }
    }

    /// Notes whose vote this replica holds now.
    fn voted(&self, vote: Option<&Vote>) {
        if let SyncHere::UnlessLeading(me) = self.here {
            use openraft::vote::RaftLeaderId;
            let own = vote.is_none_or(|v| *v.leader_id.node_id() == me);
            self.self_voted.store(own, Ordering::Release);
        }
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, tag: &[u8]) -> std::io::Result<Option<T>> {
        self.shared.state_of(self.group, tag)
    }

    fn put_state<T: serde::Serialize>(
        &self,
        db: &DB,
        b: &mut WriteBatch,
        tag: &[u8],
        v: &T,
    ) -> std::io::Result<()> {
        b.put_cf(
            cf(db, CF_STATE)?,
            state_key(self.group, tag),
            codec::encode(v).map_err(io_other)?,
        );
        Ok(())
    }

    fn last_entry_id(&self) -> std::io::Result<Option<LogId>> {
        let db = self.shared.db()?;
        let hi = log_key(self.group, u64::MAX);
        let mut it = db.iterator_cf(
            cf(&db, CF_LOG)?,
            IteratorMode::From(&hi, rocksdb::Direction::Reverse),
        );
        match it.next() {
            Some(item) => {
                let (k, v) = item.map_err(io_other)?;
                if k[..8] != self.group.to_be_bytes() {
                    return Ok(None);
                }
                let e: Entry = codec::decode(&v).map_err(io_other)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e),
            Bound::Excluded(&e) => {
                if e == 0 {
                    return Ok(Vec::new());
                }
                Some(e - 1)
            }
            Bound::Unbounded => None,
        };
        if let Some(hit) = end.and_then(|end| self.recent.lock().get(start, end)) {
            return Ok(hit);
        }
        let db = self.shared.db()?;
        let lo = log_key(self.group, start);
        let mut out = Vec::new();
        for item in db.iterator_cf(
            cf(&db, CF_LOG)?,
            IteratorMode::From(&lo, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item.map_err(io_other)?;
            if k[..8] != self.group.to_be_bytes() {
                break;
            }
            let idx = u64::from_be_bytes(k[8..16].try_into().map_err(io_other)?);
            if end.is_some_and(|e| idx > e) {
                break;
            }
            out.push(codec::decode(&v).map_err(io_other)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        let vote = self.get_state(b"vote")?;
        self.voted(vote.as_ref());
        Ok(vote)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, std::io::Error> {
        let purged: Option<LogId> = self.get_state::<Option<LogId>>(b"purged")?.flatten();
        let last = self.last_entry_id()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let db = self.shared.db()?;
        let mut b = WriteBatch::default();
        self.put_state(&db, &mut b, b"vote", vote)?;
        self.shared.write(&db, b)?;
        // Before the fsync: an append may follow at once on another task.
        self.voted(Some(vote));
        self.shared.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Not synced: a lost `committed` only means re-applying from the
        // state machine's own applied index, which is durable with its data.
        let db = self.shared.db()?;
        let mut b = WriteBatch::default();
        self.put_state(&db, &mut b, b"committed", &committed)?;
        self.shared.write(&db, b)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.get_state::<Option<LogId>>(b"committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.shared.db()?;
        let log = cf(&db, CF_LOG)?;
        let mut b = WriteBatch::default();
        let mut written = Vec::new();
        for e in entries {
            let v = codec::encode(&e).map_err(io_other)?;
            b.put_cf(log, log_key(self.group, e.log_id.index), &v);
            written.push((e, v.len()));
        }
        // Only a lone entry fsyncs here: several mean writes are queuing
        // up behind this one, and the raft core had better append the
        // next ones while the sync thread fsyncs these.
        let lone = written.len() == 1;
        self.shared.write(&db, b)?;
        self.recent.lock().appended(written);
        if lone && self.may_sync_here() {
            if let Some(r) = self.shared.sync_if_alone(&db) {
                callback.io_completed(r);
                return Ok(());
            }
        }
        self.shared.queue(Done::Flushed(callback)).await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        // The cache forgets first, so no read finds there what RocksDB
        // no longer holds.
        self.recent
            .lock()
            .truncate_after(last_log_id.map(|l| l.index));
        let db = self.shared.db()?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            cf(&db, CF_LOG)?,
            log_key(self.group, from),
            log_key(self.group + 1, 0),
        );
        self.shared.write(&db, b)?;
        self.shared.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        self.recent.lock().purge(log_id.index);
        let db = self.shared.db()?;
        let mut b = WriteBatch::default();
        self.put_state(&db, &mut b, b"purged", &Some(log_id))?;
        b.delete_range_cf(
            cf(&db, CF_LOG)?,
            log_key(self.group, 0),
            log_key(self.group, log_id.index + 1),
        );
        self.shared.write(&db, b)?;
        self.shared.sync().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::ShardRaftConfig as C;
    use openraft::storage::RaftLogStorage;
    use openraft::type_config::TypeConfigExt;
    use openraft::vote::RaftLeaderIdExt;

    fn entry(index: u64) -> Entry {
        let leader = openraft::type_config::alias::LeaderIdOf::<C>::new_committed(1, 1);
        Entry {
            log_id: LogId::new(leader, index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_replica_fsyncs_on_its_own_task_only_while_another_leads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = RaftLogDb::open(dir.path()).expect("open");
        let mut s = logs.store_with(5, SyncHere::UnlessLeading(1));
        assert!(!s.may_sync_here(), "no vote read yet");
        assert_eq!(s.read_vote().await.expect("read"), None);
        assert!(!s.may_sync_here(), "no vote: it may campaign");
        s.save_vote(&Vote::new(3, 2)).await.expect("vote");
        assert!(s.may_sync_here(), "follows node 2");
        s.save_vote(&Vote::new_committed(4, 1)).await.expect("vote");
        assert!(!s.may_sync_here(), "leads");

        // A reopened store learns it from the saved vote.
        let mut again = logs.store_with(5, SyncHere::UnlessLeading(1));
        again.read_vote().await.expect("read");
        assert!(!again.may_sync_here());
        let mut other = logs.store_with(5, SyncHere::UnlessLeading(2));
        other.read_vote().await.expect("read");
        assert!(other.may_sync_here(), "node 2's replica follows node 1");

        assert!(logs.store_with(5, SyncHere::WhenAlone).may_sync_here());
        assert!(!logs.store(5).may_sync_here());
    }

    #[tokio::test]
    async fn appends_on_either_path_are_durable_and_read_back_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = RaftLogDb::open(dir.path()).expect("open");
        let mut s = logs.store_with(9, SyncHere::WhenAlone);
        for i in 1..=3 {
            // One entry alone: written synced on this task.
            let (tx, rx) = C::oneshot();
            s.append([entry(i)], IOFlushed::signal(tx))
                .await
                .expect("append");
            rx.await.expect("answered").expect("flushed");
            assert_eq!(logs.syncing.load(Ordering::Acquire), 0, "claim given back");
        }
        // Several: through the sync thread.
        let (tx, rx) = C::oneshot();
        s.append((4..=6).map(entry), IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("answered").expect("flushed");
        assert_eq!(logs.syncing.load(Ordering::Acquire), 0);

        let cached = s.try_get_log_entries(1..=6).await.expect("read");
        let mut cold = logs.store(9);
        let stored = cold.try_get_log_entries(1..=6).await.expect("read");
        assert_eq!(cached, stored);
        assert_eq!(stored.len(), 6);

        // Truncation and purge reach the cache as well as RocksDB.
        s.truncate_after(Some(entry(4).log_id))
            .await
            .expect("truncate");
        assert_eq!(s.try_get_log_entries(1..=6).await.expect("read").len(), 4);
        s.purge(entry(2).log_id).await.expect("purge");
        let left = s.try_get_log_entries(3..=4).await.expect("read");
        assert_eq!(left, cold.try_get_log_entries(3..=4).await.expect("read"));
        assert_eq!(left.len(), 2);
        drop((s, cold));
        logs.close();
        drop(logs);

        // Reopened: every acknowledged entry is there.
        let logs = RaftLogDb::open(dir.path()).expect("reopen");
        let mut s = logs.store(9);
        let back = s.try_get_log_entries(3..=4).await.expect("read");
        assert_eq!(
            back.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }
}
