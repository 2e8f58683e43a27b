//! The admin HTTP listener: `GET /metrics` answers the node's metrics in
//! the OpenMetrics text format (`[metrics] listen`). HTTP is hyper's
//! (HTTP/1.1); this file only routes the one path. At most
//! [`MAX_CONNECTIONS`] scrape connections are served at once, each for at
//! most [`CONNECTION_TIMEOUT`]. The same task family relabels the tenants
//! every `metrics.relabel_interval_ms`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::config::MetricsSettings;
use crate::db::Database;
use crate::monitor::{Metrics, NodeSample};
use crate::proto::{Error, Result};

/// Scrape connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest life of one scrape connection.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running metrics listener and relabelling task; stopped on drop.
#[derive(Debug)]
pub struct MetricsServer {
    /// Where `/metrics` is served.
    pub local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a scrape reads: the engine, and the cluster on a cluster node.
#[derive(Clone)]
struct Source {
    db: Database,
    cluster: Option<Arc<Cluster>>,
    metrics: Arc<Metrics>,
}

impl Source {
    fn sample(&self) -> NodeSample {
        let mut s = self.db.metrics_sample();
        if let Some(c) = &self.cluster {
            let me = c.me().id;
            let down = c.down_nodes();
            let others: Vec<u64> = self
                .db
                .registry()
                .and_then(|r| r.nodes())
                .map(|ns| {
                    ns.into_iter()
                        .filter(|n| !n.removed && n.id != me)
                        .map(|n| n.id)
                        .collect()
                })
                .unwrap_or_default();
            let dead = others.iter().filter(|n| down.contains(n)).count() as u64;
            s.peers = Some((others.len() as u64 - dead, dead));
            s.meta_leader = Some(crate::shard::is_leader(c.meta_raft()));
        }
        s
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, ctype: &str, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            if let Ok(v) = ctype.parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                CONTENT_TYPE,
                self.metrics.render(self.sample()),
            ),
            (_, "/metrics") => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; metrics are at /metrics\n".into(),
            ),
        }
    }
}

/// Starts the listener on `settings.listen` and the relabelling task.
/// Fails only if the address cannot be bound.
pub async fn start(
    settings: &MetricsSettings,
    db: Database,
    cluster: Option<Arc<Cluster>>,
    metrics: Arc<Metrics>,
) -> Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| Error::InvalidConfig {
            key: "metrics.listen".into(),
            reason: format!("cannot listen on {}: {e}", settings.listen),
        })?;
    let local_addr = listener.local_addr().map_err(Error::storage)?;
    let every = Duration::from_millis(settings.relabel_interval_ms);
    let weak = Arc::downgrade(&metrics);
    let relabel = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(m) => m.relabel(),
                None => return,
            }
        }
    });
    let source = Source {
        db,
        cluster,
        metrics,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let accept = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // dropped: too many scrapers at once
            };
            let source = source.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| {
                    let r = source.answer(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    });
    Ok(MetricsServer {
        local_addr,
        tasks: vec![relabel, accept],
    })
}
