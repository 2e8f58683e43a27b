//! The shard state machine: applies log entries to [`ShardData`].
//!
//! Entries apply one chunk of ready entries at a time. A chunk of a few
//! light entries ([`ShardData::light`]) applies on the state machine's
//! task; any other runs off the async workers (`shard::run_blocking`), so
//! FAISS work and large batches never stall them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{FutureExt, Stream, TryStreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, Snapshot};

use crate::codec;
use crate::shard::{ShardData, SnapshotPin};
use crate::storage::meta_key;

use super::types::{io_other, LogId, ShardRaftConfig as C, SnapshotMeta, StoredMembership};

/// Most entries applied in one blocking call.
const APPLY_CHUNK: usize = 256;

/// Most entries applied on the state machine's task when all are light
/// (see [`ShardData::light`]).
const LIGHT_ENTRIES: usize = 4;

type Applied = Vec<(Option<ApplyResponder<C>>, crate::storage::CommandResult)>;

/// Applies one entry; `None` (nothing changed) when `may_wait` is false
/// and RocksDB would make the write wait.
fn apply_entry(
    data: &ShardData,
    entry: &openraft::type_config::alias::EntryOf<C>,
    may_wait: bool,
) -> std::io::Result<Option<crate::storage::CommandResult>> {
    let applied = codec::encode(&entry.log_id).map_err(io_other)?;
    let (cmd, membership) = match &entry.payload {
        EntryPayload::Blank => (None, None),
        EntryPayload::Normal(cmd) => (Some(cmd), None),
        EntryPayload::Membership(m) => {
            let sm = StoredMembership::new(Some(entry.log_id), m.clone());
            (None, Some(codec::encode(&sm).map_err(io_other)?))
        }
    };
    let membership = membership.as_deref();
    // A storage failure here is fatal for the group.
    let r = if may_wait {
        data.apply(cmd, &applied, membership).map(Some)
    } else {
        data.apply_without_waiting(cmd, &applied, membership)
    };
    r.map_err(io_other)
}

/// Applies entries in order; the results go with their responders.
fn apply_chunk(data: &ShardData, chunk: Vec<EntryResponder<C>>) -> std::io::Result<Applied> {
    let mut out = Vec::with_capacity(chunk.len());
    for (entry, responder) in chunk {
        let result = apply_entry(data, &entry, true)?.unwrap_or_default();
        out.push((responder, result));
    }
    Ok(out)
}

/// Applies light entries on the calling task, in order, as long as no
/// write would wait; the rest (from the first that would) through
/// `shard::run_blocking`, where waiting blocks no async worker.
async fn apply_light(
    data: &Arc<ShardData>,
    chunk: Vec<EntryResponder<C>>,
) -> std::io::Result<Applied> {
    let mut out = Vec::with_capacity(chunk.len());
    let mut rest = chunk.into_iter();
    while let Some((entry, responder)) = rest.next() {
        match apply_entry(data, &entry, false)? {
            Some(result) => out.push((responder, result)),
            None => {
                let rest: Vec<_> = std::iter::once((entry, responder)).chain(rest).collect();
                let data = data.clone();
                let more = crate::shard::run_blocking(move || apply_chunk(&data, rest))
                    .await
                    .map_err(io_other)??;
                out.extend(more);
                break;
            }
        }
    }
    Ok(out)
}

/// A snapshot on local disk: a directory holding `db/` (a RocksDB
/// checkpoint), `faiss/` (the vector indexes as of the checkpoint, see
/// `vector::read_image`) and `meta.bin` (the encoded [`SnapshotMeta`]).
/// The transport ships every file under it. A snapshot read for sending
/// holds a pin, so the directory outlives newer snapshots until the send
/// ends.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// The directory.
    pub dir: PathBuf,
    /// Keeps `dir` on disk while this value (or a clone) lives.
    pub pin: Option<Arc<SnapshotPin>>,
}

impl ShardSnapshot {
    /// A snapshot in `dir`, unpinned (one being received or installed).
    pub fn at(dir: PathBuf) -> Self {
        Self { dir, pin: None }
    }
}

impl PartialEq for ShardSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir
    }
}

impl Eq for ShardSnapshot {}

/// The state machine of one shard group.
#[derive(Debug, Clone)]
pub struct ShardStateMachine {
    data: Arc<ShardData>,
    snapshot_seq: Arc<AtomicU64>,
}

impl ShardStateMachine {
    /// A state machine over `data`.
    pub fn new(data: Arc<ShardData>) -> Self {
        Self {
            data,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The data it applies to.
    pub fn data(&self) -> &Arc<ShardData> {
        &self.data
    }
}

fn read_applied(data: &ShardData) -> std::io::Result<(Option<LogId>, StoredMembership)> {
    let applied = match data.meta_raw(meta_key::APPLIED).map_err(io_other)? {
        Some(b) => Some(codec::decode::<LogId>(&b).map_err(io_other)?),
        None => None,
    };
    let membership = match data.meta_raw(meta_key::MEMBERSHIP).map_err(io_other)? {
        Some(b) => codec::decode::<StoredMembership>(&b).map_err(io_other)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl RaftStateMachine<C> for ShardStateMachine {
    type SnapshotData = ShardSnapshot;
    type SnapshotBuilder = ShardStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        read_applied(&self.data)
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), std::io::Error>
    where
        S: Stream<Item = Result<EntryResponder<C>, std::io::Error>> + Unpin + OptionalSend,
    {
        while let Some(first) = entries.try_next().await? {
            let mut chunk = vec![first];
            while chunk.len() < APPLY_CHUNK {
                match entries.try_next().now_or_never() {
                    Some(Ok(Some(e))) => chunk.push(e),
                    Some(Err(e)) => return Err(e),
                    _ => break,
                }
            }
            // A few light entries (small puts of plain objects, counter
            // checkpoints) apply right here: the hop to another thread
            // and back cost more than their RocksDB writes. Should RocksDB
            // stall them (flushes behind), they go on where waiting blocks
            // no async worker, as the rest (FAISS work, large batches,
            // scans) always does.
            let light = chunk.len() <= LIGHT_ENTRIES
                && chunk.iter().all(|(e, _)| match &e.payload {
                    EntryPayload::Normal(cmd) => self.data.light(cmd),
                    _ => true,
                });
            let data = self.data.clone();
            let done = if light {
                apply_light(&data, chunk).await?
            } else {
                crate::shard::run_blocking(move || apply_chunk(&data, chunk))
                    .await
                    .map_err(io_other)??
            };
            for (responder, result) in done {
                if let Some(r) = responder {
                    r.send(result);
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: ShardSnapshot,
    ) -> Result<(), std::io::Error> {
        let data = self.data.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Loads the shipped index files where they match; the report
            // is logged per collection and kept on the data.
            data.install_snapshot(&snapshot.dir).map_err(io_other)?;
            crate::monitor::snapshot_installed();
            // Keep it as our latest snapshot (unless it already is one of ours).
            let name = format!(
                "installed-{}",
                meta.last_log_id.as_ref().map_or(0, |l| l.index)
            );
            data.adopt_snapshot(
                &snapshot.dir,
                &name,
                &codec::encode(&meta).map_err(io_other)?,
            )
            .map_err(io_other)?;
            Ok(())
        })
        .await
        .map_err(io_other)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::type_config::alias::SnapshotOf<C, ShardSnapshot>>, std::io::Error>
    {
        let Some((dir, pin)) = self.data.pin_latest_snapshot() else {
            return Ok(None);
        };
        let Ok(bytes) = std::fs::read(dir.join("meta.bin")) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = codec::decode(&bytes).map_err(io_other)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: ShardSnapshot {
                dir,
                pin: Some(Arc::new(pin)),
            },
        }))
    }
}

impl RaftSnapshotBuilder<C> for ShardStateMachine {
    type SnapshotData = ShardSnapshot;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::type_config::alias::SnapshotOf<C, ShardSnapshot>, std::io::Error> {
        let data = self.data.clone();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::AcqRel);
        tokio::task::spawn_blocking(move || -> std::io::Result<openraft::type_config::alias::SnapshotOf<C, ShardSnapshot>> {
            let id = format!("snap-{}-{seq}", crate::util::now_ms());
            let (dir, meta) = data
                .build_snapshot(&id, |applied, membership| {
                    let last_log_id = match applied {
                        Some(b) => Some(codec::decode::<LogId>(&b).map_err(crate::proto::Error::storage)?),
                        None => None,
                    };
                    let last_membership = match membership {
                        Some(b) => codec::decode::<StoredMembership>(&b).map_err(crate::proto::Error::storage)?,
                        None => StoredMembership::default(),
                    };
                    let meta = SnapshotMeta { last_log_id, last_membership };
                    let bytes = codec::encode(&meta).map_err(crate::proto::Error::storage)?;
                    Ok((meta, bytes))
                })
                .map_err(io_other)?;
            Ok(Snapshot {
                meta,
                snapshot: ShardSnapshot::at(dir),
            })
        })
        .await
        .map_err(io_other)?
    }
}
