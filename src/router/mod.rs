//! The router: one front door per node.
//!
//! A [`RouterActor`] (ractor) runs on every node, supervised by the
//! node's supervisor. Every authenticated client request enters through
//! [`Router::request`], which resolves what the request is and where it
//! runs ([`dispatch::request`]: an admin request here or on group 0's
//! leader; a data request in the key's tenant, on this node's replica or
//! forwarded to the shard leader).
//!
//! A data request runs on the caller's (the connection stream's) task
//! while the actor runs: going through the mailbox and a spawned task cost
//! three thread hops per request, a fifth of a QUIC get's server time
//! (perf). An admin request goes through the actor's mailbox, and its
//! handler runs each on its own task, so one slow request never holds the
//! mailbox and a timed-out caller never cancels a half-done change. The
//! mailbox is bounded by the server's limits (authenticated connections ×
//! streams per connection). Routing on a cluster (which node serves a
//! request, forwarding) is in [`route`].

pub mod balance;
pub mod dispatch;
pub mod grants;
pub mod moves;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};

use crate::cluster::Cluster;
use crate::db::Database;
use crate::proto::wire::{Request, Response};
use crate::proto::Error;
use crate::Session;

/// The router's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The response, or why there is none.
    pub result: Result<Response, Error>,
    /// Where the tenant's shard leader takes client requests, when it is
    /// another node (the driver's hint; see [`crate::proto::wire::Envelope`]).
    pub leader: Option<std::net::SocketAddr>,
}

/// Messages of the router.
pub enum RouterMsg {
    /// A request of an authenticated principal.
    Request {
        /// The key the connection authenticated with.
        key_id: String,
        /// The connection's session (standalone nodes).
        session: Option<Session>,
        /// The request.
        req: Request,
        /// Where the answer goes.
        reply: RpcReplyPort<Answer>,
    },
}

/// The actor.
pub struct RouterActor;

/// Node-wide routing state the router shares with the peer service: the
/// node's grants from tenants' budgets, its move-job driver and its
/// request metrics.
#[derive(Clone, Default)]
pub struct Shared {
    /// Grants (see [`grants`]).
    pub grants: Arc<grants::Grants>,
    /// The move-job driver (see [`moves`]).
    pub mover: Arc<moves::Mover>,
    /// Request counters (every client request is counted once, in
    /// [`dispatch::request`]).
    pub metrics: Arc<crate::monitor::Metrics>,
}

/// What the router serves: the node's engine, and its cluster runtime on
/// a cluster node.
#[derive(Clone)]
pub struct RouterState {
    db: Database,
    cluster: Option<Arc<Cluster>>,
    shared: Shared,
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterState;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        state: RouterState,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Request {
                key_id,
                session,
                req,
                reply,
            } => {
                let RouterState {
                    db,
                    cluster,
                    shared,
                } = state.clone();
                tokio::spawn(async move {
                    let r =
                        dispatch::request(&db, cluster.as_ref(), &shared, &key_id, session, req)
                            .await;
                    let _ = reply.send(r);
                });
            }
        }
        Ok(())
    }
}

/// A handle to the node's router.
#[derive(Clone)]
pub struct Router {
    actor: ActorRef<RouterMsg>,
    state: RouterState,
    timeout: Duration,
    mover: Arc<moves::Mover>,
}

impl Router {
    /// Starts the router of `db`'s node (`cluster`: its cluster runtime,
    /// on a cluster node; `shared`: state shared with the peer service),
    /// linked under `parent` (the node's supervisor) when given. On a
    /// cluster node it starts the move-job driver, which acts while the
    /// node leads group 0.
    pub async fn start(
        db: Database,
        cluster: Option<Arc<Cluster>>,
        shared: Shared,
        parent: Option<ActorCell>,
    ) -> Result<Router, Error> {
        let timeout = Duration::from_millis(db.config().limits.request_timeout_ms);
        if let Some(c) = &cluster {
            shared.mover.start(&db, c);
        }
        let mover = shared.mover.clone();
        let state = RouterState {
            db,
            cluster,
            shared,
        };
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, RouterActor, state.clone(), parent).await,
            None => Actor::spawn(None, RouterActor, state.clone()).await,
        };
        let (actor, _) = spawned.map_err(|e| Error::Unavailable {
            reason: format!("router did not start: {e}"),
        })?;
        Ok(Router {
            actor,
            state,
            timeout,
            mover,
        })
    }

    /// Serves one request of an authenticated principal.
    pub async fn request(&self, key_id: String, session: Option<Session>, req: Request) -> Answer {
        let timed_out = || Answer {
            result: Err(Error::Timeout {
                after_ms: self.timeout.as_millis() as u64,
            }),
            leader: None,
        };
        let stopping = || Answer {
            result: Err(Error::Unavailable {
                reason: "the node is stopping".into(),
            }),
            leader: None,
        };
        if req.operation().is_some() {
            if self.actor.get_status() != ActorStatus::Running {
                return stopping();
            }
            let s = &self.state;
            let work =
                dispatch::request(&s.db, s.cluster.as_ref(), &s.shared, &key_id, session, req);
            return tokio::time::timeout(self.timeout, work)
                .await
                .unwrap_or_else(|_| timed_out());
        }
        let call = self.actor.call(
            |reply| RouterMsg::Request {
                key_id,
                session,
                req,
                reply,
            },
            Some(self.timeout),
        );
        match call.await {
            Ok(CallResult::Success(a)) => a,
            Ok(CallResult::Timeout) => timed_out(),
            Ok(CallResult::SenderError) | Err(_) => stopping(),
        }
    }

    /// Stops the router (and its move-job driver).
    pub fn stop(&self) {
        self.mover.stop();
        self.actor.stop(None);
    }
}
