//! The router: one front door per node.
//!
//! A [`RouterActor`] (ractor) runs on every node. Every authenticated
//! client request enters through it: it resolves what the request is and
//! where it runs ([`dispatch::request`]: an admin request here or on group
//! 0's leader; a data request in the key's tenant, on this node's replica
//! or forwarded to the shard leader) and answers through the request's
//! reply port. The handler never awaits the work itself: each request runs
//! on its own task, so one slow tenant never holds the mailbox. The
//! mailbox is bounded by the server's limits (authenticated connections ×
//! streams per connection).

pub mod dispatch;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::db::Database;
use crate::proto::wire::{Request, Response};
use crate::proto::Error;
use crate::Session;

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
        reply: RpcReplyPort<Result<Response, Error>>,
    },
}

/// The actor.
pub struct RouterActor;

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = Database;
    type Arguments = Database;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        db: Database,
    ) -> Result<Database, ActorProcessingErr> {
        Ok(db)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        db: &mut Database,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Request {
                key_id,
                session,
                req,
                reply,
            } => {
                let db = db.clone();
                tokio::spawn(async move {
                    let r = dispatch::request(&db, &key_id, session, req).await;
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
    timeout: Duration,
}

impl Router {
    /// Starts the router of `db`'s node.
    pub async fn start(db: Database) -> Result<Router, Error> {
        let timeout = Duration::from_millis(db.config().limits.request_timeout_ms);
        let (actor, _) =
            Actor::spawn(None, RouterActor, db)
                .await
                .map_err(|e| Error::Unavailable {
                    reason: format!("router did not start: {e}"),
                })?;
        Ok(Router { actor, timeout })
    }

    /// Serves one request of an authenticated principal.
    pub async fn request(
        &self,
        key_id: String,
        session: Option<Session>,
        req: Request,
    ) -> Result<Response, Error> {
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
            Ok(CallResult::Success(r)) => r,
            Ok(CallResult::Timeout) => Err(Error::Timeout {
                after_ms: self.timeout.as_millis() as u64,
            }),
            Ok(CallResult::SenderError) | Err(_) => Err(Error::Unavailable {
                reason: "the node is stopping".into(),
            }),
        }
    }

    /// Stops the router.
    pub fn stop(&self) {
        self.actor.stop(None);
    }
}
