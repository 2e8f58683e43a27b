//! A running node: the layers composed. [`Node::start`] opens the engine
//! ([`Database`]), starts the cluster runtime when `cluster.enabled`,
//! the router, and the QUIC server; [`Node::shutdown`] stops them in the
//! reverse order. A [`NodeSupervisor`] actor is the parent of the
//! `RouterActor` and of the engine's `ShardSupervisor`.
//!
//! ```text
//! node ── router ── cluster ── db (engine) ── shard ── raft / storage / vector
//!   └──── net (server, peer transport) ┘
//! ```

pub mod metrics;
mod supervisor;

use std::sync::Arc;

use ractor::{Actor, ActorRef};

pub use supervisor::NodeSupervisor;

use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::db::Database;
use crate::net::Server;
use crate::proto::{Error, Result};
use crate::router::{route::PeerRequests, Router, Shared};

/// A running node: engine, cluster runtime (on a cluster), router and
/// client endpoint.
pub struct Node {
    db: Database,
    cluster: Option<Arc<Cluster>>,
    router: Router,
    server: Server,
    metrics: Option<metrics::MetricsServer>,
    supervisor: ActorRef<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("db", &self.db)
            .field("cluster", &self.cluster)
            .field("listen", &self.server.local_addr)
            .finish()
    }
}

impl Node {
    /// Starts a node from `config`: the engine on `node.data_dir`, the
    /// cluster runtime (when `cluster.enabled`: joins or bootstraps, then
    /// reconciles), the router, and the server on `server.listen`.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let (supervisor, _) =
            Actor::spawn(None, NodeSupervisor, ())
                .await
                .map_err(|e| Error::Unavailable {
                    reason: format!("node supervisor did not start: {e}"),
                })?;
        let parent = supervisor.get_cell();
        let dir = config.node.data_dir.clone();
        let settings = config.server.clone();
        let metrics_settings = config.metrics.clone();
        let clustered = config.cluster.enabled;
        let db = match Database::open_in(&dir, config, Some(parent.clone())).await {
            Ok(db) => db,
            Err(e) => {
                supervisor.stop(None);
                return Err(e);
            }
        };
        let started = async {
            let shared = Shared {
                metrics: Arc::new(crate::monitor::Metrics::new(&metrics_settings)),
                ..Shared::default()
            };
            let counters = shared.metrics.clone();
            let cluster = if clustered {
                let peer = Arc::new(PeerRequests {
                    grants: shared.grants.clone(),
                    mover: shared.mover.clone(),
                });
                Some(Cluster::start(&db, peer).await?)
            } else {
                None
            };
            let router = Router::start(db.clone(), cluster.clone(), shared, Some(parent)).await?;
            match Server::start(db.clone(), router.clone(), settings).await {
                Ok(server) => {
                    let metrics = if metrics_settings.enabled {
                        match metrics::start(
                            &metrics_settings,
                            db.clone(),
                            cluster.clone(),
                            counters,
                        )
                        .await
                        {
                            Ok(m) => Some(m),
                            Err(e) => {
                                // Several nodes on one host share the default
                                // port: the node still serves, without /metrics.
                                tracing::error!("no /metrics on this node: {e}");
                                None
                            }
                        }
                    } else {
                        None
                    };
                    Ok((cluster, router, server, metrics))
                }
                Err(e) => {
                    router.stop();
                    Err(e)
                }
            }
        }
        .await;
        match started {
            Ok((cluster, router, server, metrics)) => Ok(Node {
                db,
                cluster,
                router,
                server,
                metrics,
                supervisor,
            }),
            Err(e) => {
                let _ = db.close().await;
                supervisor.stop(None);
                Err(e)
            }
        }
    }

    /// The engine.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The cluster runtime, on a cluster node.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The client endpoint.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Where `/metrics` is served (`None`: `metrics.enabled` is off, or
    /// its address could not be bound).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr)
    }

    /// Stops the node in order: the server (no new requests), the router,
    /// the cluster's background loops, then the engine (its shards, then
    /// group 0 and the peer transport, then its stores).
    pub async fn shutdown(self) -> Result<()> {
        drop(self.metrics);
        self.server.shutdown().await;
        self.router.stop();
        if let Some(c) = &self.cluster {
            c.stop_reconcile();
        }
        let closed = self.db.close().await;
        self.supervisor.stop(None);
        closed
    }
}
