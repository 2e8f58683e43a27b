//! The client endpoint: a quinn server speaking `vektagraf/1`.
//!
//! Each connection starts unauthenticated; `Authenticate` binds it to an
//! API key. Every later request re-checks that key (a revoked key fails on
//! its next request) and runs in the key's tenant and user: the tenant of
//! a data request always comes from the credential, never from the
//! request. Each request travels on its own bidirectional stream, so many
//! are in flight per connection (bounded by `max_streams_per_connection`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use serde::{Deserialize, Serialize};

use crate::db::Database;
use crate::proto::wire::{
    Envelope, FrameError, KeyInfo, KeyKind, Request, Response, ALPN, MAX_FRAME_BYTES,
};
use crate::proto::{Error, OperationType};
use crate::Session;

use super::frame::{read_frame, write_frame};
use super::tls;

/// `[server]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain (empty: self-signed, created on first start).
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Extra SANs for the self-signed certificate.
    pub extra_names: Vec<String>,
    /// Largest request frame, bytes.
    pub max_frame_bytes: usize,
    /// Requests in flight per connection.
    pub max_streams_per_connection: u32,
    /// Connections at once.
    pub max_connections: usize,
    /// Idle connections close after this, ms.
    pub idle_timeout_ms: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7687)),
            cert: String::new(),
            key: String::new(),
            extra_names: Vec::new(),
            max_frame_bytes: MAX_FRAME_BYTES,
            max_streams_per_connection: 256,
            max_connections: 1024,
            idle_timeout_ms: 30_000,
        }
    }
}

/// A running server.
pub struct Server {
    endpoint: Endpoint,
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// SHA-256 fingerprint of its certificate.
    pub fingerprint: String,
    /// Path of the certificate clients should trust.
    pub cert_path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds the endpoint and starts accepting connections.
    pub async fn start(db: Database, settings: ServerSettings) -> Result<Server, Error> {
        let tls_dir = db.config().node.data_dir.join("tls");
        let (cert, key) = if settings.cert.is_empty() {
            (None, None)
        } else {
            (
                Some(std::path::Path::new(&settings.cert)),
                Some(std::path::Path::new(&settings.key)),
            )
        };
        let (identity, created) = tls::server_identity(cert, key, &tls_dir, &settings.extra_names)?;
        let cert_path = cert
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| tls_dir.join("server.crt"));
        let fingerprint = tls::fingerprint(&identity.chain[0]);
        if created {
            tracing::warn!(cert = %cert_path.display(), %fingerprint, "created a self-signed certificate; clients must trust this file");
        }
        let transport = tls::transport(
            Duration::from_millis(settings.idle_timeout_ms),
            None,
            settings.max_streams_per_connection,
        )?;
        let server_cfg = tls::server_config(&identity, ALPN, transport)?;
        let endpoint =
            Endpoint::server(server_cfg, settings.listen).map_err(|e| Error::InvalidConfig {
                key: "server.listen".into(),
                reason: format!("{}: {e}", settings.listen),
            })?;
        let local_addr = endpoint.local_addr().map_err(Error::storage)?;
        let ep = endpoint.clone();
        let settings = Arc::new(settings);
        let task = tokio::spawn(async move {
            let live = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
            while let Some(incoming) = ep.accept().await {
                let Ok(permit) = live.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let (db, settings) = (db.clone(), settings.clone());
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => serve_connection(db, conn, settings).await,
                        Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
                    }
                    drop(permit);
                });
            }
        });
        Ok(Server {
            endpoint,
            local_addr,
            fingerprint,
            cert_path,
            task,
        })
    }

    /// Stops accepting and closes connections.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
    }
}

/// Per-connection state: the authenticated key and its session.
#[derive(Default)]
struct ConnState {
    key: Option<KeyInfo>,
    session: Option<Session>,
}

async fn serve_connection(db: Database, conn: Connection, settings: Arc<ServerSettings>) {
    let remote = conn.remote_address();
    tracing::debug!(%remote, "client connected");
    let state = Arc::new(Mutex::new(ConnState::default()));
    let auth_lock = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection closed");
                return;
            }
        };
        let (db, state, settings, auth_lock) = (
            db.clone(),
            state.clone(),
            settings.clone(),
            auth_lock.clone(),
        );
        tokio::spawn(async move {
            serve_stream(db, state, auth_lock, send, recv, settings.max_frame_bytes).await;
        });
    }
}

async fn serve_stream(
    db: Database,
    state: Arc<Mutex<ConnState>>,
    auth_lock: Arc<tokio::sync::Mutex<()>>,
    mut send: SendStream,
    mut recv: RecvStream,
    max: usize,
) {
    let (id, response) = match read_frame::<Request>(&mut recv, max).await {
        Ok(env) => {
            let id = env.request_id;
            let r = if matches!(env.body, Request::Authenticate { .. }) {
                let _g = auth_lock.lock().await;
                handle(&db, &state, env.body).await
            } else {
                handle(&db, &state, env.body).await
            };
            (id, r.unwrap_or_else(Response::Error))
        }
        Err(e) => {
            if let FrameError::TooLarge(_) = e {
                // Do not read (or buffer) the rest of an oversized frame.
                let _ = recv.stop(0u32.into());
            }
            tracing::debug!(error = %e, "bad frame");
            (
                0,
                Response::Error(Error::Protocol {
                    reason: e.to_string(),
                }),
            )
        }
    };
    if let Err(e) = write_frame(&mut send, &Envelope::new(id, response)).await {
        tracing::debug!(error = %e, "could not send response");
    }
}

fn denied(reason: impl Into<String>) -> Error {
    Error::PermissionDenied {
        reason: reason.into(),
    }
}

async fn handle(db: &Database, state: &Mutex<ConnState>, req: Request) -> Result<Response, Error> {
    // Unauthenticated requests.
    match req {
        Request::Ping => return Ok(Response::Pong),
        Request::Authenticate { api_key } => {
            let info = db.authenticate_fresh(&api_key).await?;
            let session = match (info.kind, &info.tenant_id, &info.user_id) {
                // On a cluster the tenant's shard may live elsewhere: each
                // request is routed instead.
                (KeyKind::Tenant, Some(t), Some(u)) if db.cluster().is_none() => {
                    Some(db.session(t, u).await?)
                }
                _ => None,
            };
            let mut st = state.lock();
            st.key = Some(info.clone());
            st.session = session;
            return Ok(Response::Principal(info));
        }
        _ => {}
    }
    let (key_id, session) = {
        let st = state.lock();
        let Some(k) = &st.key else {
            return Err(Error::Unauthenticated {
                reason: "no credentials on this connection: send Authenticate first".into(),
            });
        };
        (k.key_id.clone(), st.session.clone())
    };
    let key = db.key_still_valid(&key_id)?;
    if let Request::WhoAmI = req {
        return Ok(Response::Principal(key));
    }
    match key.kind {
        KeyKind::Admin if db.cluster().is_some() => db.serve_admin(req, 0).await,
        KeyKind::Admin => admin(db, req).await,
        KeyKind::Tenant => {
            if let Some(op) = req.operation() {
                if let Some(allowed) = &key.operations {
                    if !allowed.contains(&op) {
                        return Err(denied(format!(
                            "this key may not run {op} operations (allowed: {allowed:?})"
                        )));
                    }
                }
            }
            if db.cluster().is_some() {
                let (Some(t), Some(u)) = (&key.tenant_id, &key.user_id) else {
                    return Err(Error::MissingTenantContext);
                };
                return db.serve_tenant(t, u, req, 0).await;
            }
            let s = session.ok_or(Error::MissingTenantContext)?;
            data(&s, req).await
        }
    }
}

/// Runs an admin request on this node.
pub(crate) async fn admin(db: &Database, req: Request) -> Result<Response, Error> {
    use Request::*;
    Ok(match req {
        CreateTenant(cfg) => Response::Tenant(db.create_tenant(cfg).await?),
        CreateTenantForTier {
            tenant_id,
            name,
            tier,
        } => {
            let cfg = crate::TenantConfig::for_tier(
                &db.tiers(),
                &tenant_id,
                &name,
                &tier,
                serde_json::json!({}),
            )?;
            Response::Tenant(db.create_tenant(cfg).await?)
        }
        GetTenant(id) => Response::Tenant(db.get_tenant(&id).await?),
        UpdateTenant(id, up) => Response::Tenant(db.update_tenant(&id, up).await?),
        DeleteTenant(id) => {
            db.delete_tenant(&id).await?;
            Response::Ok
        }
        ListTenants => Response::Tenants(db.list_tenants().await?),
        Usage(Some(id)) => Response::Usage(db.usage(&id).await?),
        Usage(None) => return Err(Error::MissingTenantContext),
        CreateUser(t, u) => {
            db.create_user(&t, &u).await?;
            Response::Ok
        }
        RemoveUser(t, u) => {
            db.remove_user(&t, &u).await?;
            Response::Ok
        }
        ListUsers(t) => Response::Users(db.list_users(&t).await?),
        CreateKey {
            kind,
            tenant_id,
            user_id,
            operations,
        } => {
            let (api_key, info) = db
                .create_key(kind, tenant_id.as_deref(), user_id.as_deref(), operations)
                .await?;
            Response::NewKey { api_key, info }
        }
        RevokeKey(id) => {
            db.revoke_key(&id).await?;
            Response::Ok
        }
        RotateKey(id) => {
            let (api_key, info) = db.rotate_key(&id).await?;
            Response::NewKey { api_key, info }
        }
        ListKeys(t) => Response::Keys(db.list_keys(t.as_deref())),
        ClusterNodes | RemoveNode(_) | ShardInfo(_) => {
            return Err(Error::invalid(
                "request",
                "this node is not part of a cluster",
            ))
        }
        other => {
            return Err(denied(format!(
                "an admin key reaches no tenant's data ({})",
                request_name(&other)
            )))
        }
    })
}

/// Runs a tenant's data request on this node's replica.
pub(crate) async fn data(s: &Session, req: Request) -> Result<Response, Error> {
    use Request::*;
    if let Stale(inner) = req {
        if matches!(*inner, Stale(_)) {
            return Err(Error::invalid("request", "Stale cannot wrap Stale"));
        }
        let stale = s.clone().with_consistency(crate::shard::Consistency::Stale);
        return Box::pin(data(&stale, *inner)).await;
    }
    Ok(match req {
        CreateCollection(spec) => {
            s.create_collection(spec).await?;
            Response::Ok
        }
        DropCollection(name) => {
            s.drop_collection(&name).await?;
            Response::Ok
        }
        ListCollections => Response::Collections(s.collections()?),
        Put(obj) => Response::Write(s.put(obj).await?),
        Update {
            id,
            properties_json,
            vector,
        } => {
            let props: serde_json::Value = serde_json::from_str(&properties_json)
                .map_err(|e| Error::invalid("properties", e.to_string()))?;
            Response::Write(s.update(&id, props, vector).await?)
        }
        Delete(id) => Response::Write(s.delete(&id).await?),
        Transaction(ops) => Response::Write(s.transaction(ops).await?),
        Batch(ops) => {
            if ops.len() > crate::db::MAX_TRANSACTION_OPS {
                return Err(Error::invalid(
                    "ops",
                    format!("at most {} ops per request", crate::db::MAX_TRANSACTION_OPS),
                ));
            }
            Response::Batch(s.batch(ops).await)
        }
        Get(id) => Response::Object(s.get(&id).await?),
        Query(q) => Response::Objects(s.query(q).await?),
        Search {
            search,
            with_objects,
        } => Response::Hits(if with_objects {
            s.vector_search(search).await?
        } else {
            s.vector_search_ids(search).await?
        }),
        Traverse(t) => Response::Nodes(s.traverse(t).await?),
        Usage(None) => Response::Usage(s.usage()?),
        Usage(Some(t)) => {
            s.check_tenant(&t)?;
            Response::Usage(s.usage()?)
        }
        CanPerform(op) => {
            s.can_perform_operation(op)?;
            Response::Ok
        }
        Scan {
            collection,
            after,
            limit,
        } => Response::Objects(s.scan(&collection, after.as_deref(), limit).await?),
        other => {
            return Err(denied(format!(
                "{} needs an admin key",
                request_name(&other)
            )))
        }
    })
}

fn request_name(r: &Request) -> String {
    let dbg = format!("{r:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or("request")
        .to_string()
}

/// An operation type, for the CLI.
pub fn parse_operation(s: &str) -> Option<OperationType> {
    OperationType::parse(s)
}
