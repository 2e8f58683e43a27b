//! `ShardSupervisor`: starts shard actors, restarts a failed one from disk,
//! and closes them gracefully.
//!
//! ractor's default supervision stops the parent when a child dies; this
//! overrides it. A failed shard's raft group is shut down (so its RocksDB
//! instance closes) before the shard is reopened from disk. A shard that
//! fails more than [`MAX_RESTARTS`] times in [`RESTART_WINDOW`] stays down
//! and its requests get `Unavailable`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::proto::Error;

use super::actor::{ShardActor, ShardArgs, ShardMsg};

/// Restarts allowed per window before a shard is left down.
pub const MAX_RESTARTS: usize = 5;
/// The restart-counting window.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// Start a shard (open it from disk).
    Start(
        Box<ShardArgs>,
        RpcReplyPort<Result<ActorRef<ShardMsg>, Error>>,
    ),
    /// Close a shard gracefully and stop its actor.
    Stop(String, RpcReplyPort<Result<(), Error>>),
    /// Number of restarts of a tenant's shard since start-up.
    Restarts(String, RpcReplyPort<usize>),
}

struct Child {
    args: ShardArgs,
    actor: ActorRef<ShardMsg>,
    restarts: Vec<Instant>,
    total_restarts: usize,
}

/// The supervisor actor.
pub struct ShardSupervisor;

/// Its state: children by tenant.
#[derive(Default)]
pub struct SupervisorState {
    children: HashMap<String, Child>,
}

async fn spawn_shard(
    myself: &ActorRef<SupervisorMsg>,
    args: ShardArgs,
) -> Result<ActorRef<ShardMsg>, Error> {
    let (actor, _join) = Actor::spawn_linked(None, ShardActor, args.clone(), myself.get_cell())
        .await
        .map_err(|e| Error::Unavailable {
            reason: format!("shard {} failed to start: {e}", args.tenant_id),
        })?;
    *args.route.write() = Some(actor.clone());
    Ok(actor)
}

/// Shuts down a failed instance's raft group and releases its data.
async fn release(args: &ShardArgs) {
    let running = args.slot.lock().take();
    if let Some((raft, data)) = running {
        let _ = raft.shutdown().await;
        drop(raft);
        // Wait until every other holder (in-flight reads) lets go, so the
        // RocksDB instance is closed before it is opened again.
        let mut closed = false;
        for _ in 0..500 {
            if std::sync::Arc::strong_count(&data) == 1 {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !closed {
            tracing::warn!(tenant = %args.tenant_id, holders = std::sync::Arc::strong_count(&data), "shard data still referenced 5 s after its raft group stopped; it closes when the last holder lets go");
        }
        // Drop the last reference off the async workers: closing RocksDB
        // waits for its background jobs.
        let _ = tokio::task::spawn_blocking(move || drop(data)).await;
    }
}

impl Actor for ShardSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(args, reply) => {
                let args = *args;
                let tenant = args.tenant_id.clone();
                let r = spawn_shard(&myself, args.clone()).await;
                if let Ok(actor) = &r {
                    st.children.insert(
                        tenant,
                        Child {
                            args,
                            actor: actor.clone(),
                            restarts: Vec::new(),
                            total_restarts: 0,
                        },
                    );
                }
                let _ = reply.send(r);
            }
            SupervisorMsg::Stop(tenant, reply) => {
                let r = match st.children.remove(&tenant) {
                    None => Ok(()),
                    Some(child) => {
                        *child.args.route.write() = None;
                        let closed = child
                            .actor
                            .call(ShardMsg::Close, Some(Duration::from_secs(60)))
                            .await;
                        child
                            .actor
                            .stop_and_wait(None, Some(Duration::from_secs(30)))
                            .await
                            .ok();
                        release(&child.args).await;
                        match closed {
                            Ok(ractor::rpc::CallResult::Success(r)) => r,
                            _ => Ok(()), // a shard that is already down has nothing to close
                        }
                    }
                };
                let _ = reply.send(r);
            }
            SupervisorMsg::Restarts(tenant, reply) => {
                let _ = reply.send(st.children.get(&tenant).map_or(0, |c| c.total_restarts));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = evt else {
            return Ok(());
        };
        let Some(tenant) = tenant_of(st, &cell) else {
            return Ok(());
        };
        let Some(child) = st.children.get_mut(&tenant) else {
            return Ok(());
        };
        tracing::error!(%tenant, error = %err, "shard actor failed; restarting from disk");
        *child.args.route.write() = None;
        release(&child.args).await;
        let now = Instant::now();
        child
            .restarts
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if child.restarts.len() >= MAX_RESTARTS {
            tracing::error!(%tenant, "shard failed {MAX_RESTARTS} times in {RESTART_WINDOW:?}; leaving it down");
            st.children.remove(&tenant);
            return Ok(());
        }
        child.restarts.push(now);
        child.total_restarts += 1;
        match spawn_shard(&myself, child.args.clone()).await {
            Ok(actor) => child.actor = actor,
            Err(e) => {
                tracing::error!(%tenant, error = %e, "shard restart failed; leaving it down");
                st.children.remove(&tenant);
            }
        }
        Ok(())
    }
}

fn tenant_of(st: &SupervisorState, cell: &ActorCell) -> Option<String> {
    st.children
        .iter()
        .find(|(_, c)| c.actor.get_id() == cell.get_id())
        .map(|(t, _)| t.clone())
}
