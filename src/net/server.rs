//! The client endpoint: a quinn server speaking `vektagraf/1`.
//!
//! Each connection starts unauthenticated; `Authenticate` binds it to an
//! API key. Every later request re-checks that key (a revoked key fails on
//! its next request) and runs in the key's tenant and user: the tenant of
//! a data request always comes from the credential, never from the
//! request. Each request travels on its own bidirectional stream, so many
//! are in flight per connection (bounded by `max_streams_per_connection`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint, RecvStream, SendStream};

pub use crate::config::ServerSettings;
use crate::db::Database;
use crate::proto::wire::{Envelope, FrameError, KeyInfo, KeyKind, Request, Response, ALPN};
use crate::proto::{Error, LimitExceeded, LimitKind};
use crate::router::Router;
use crate::Session;

use super::frame::{read_frame, read_frame_counted, write_frame};
use super::tls;

mod events;

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
    /// Binds the endpoint and starts accepting connections; every
    /// authenticated request goes to `router`.
    pub async fn start(
        db: Database,
        router: Router,
        settings: ServerSettings,
    ) -> Result<Server, Error> {
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
        let mut server_cfg = tls::server_config(&identity, ALPN, transport)?;
        // Incoming connections quinn buffers before we accept or refuse
        // them: no more than can be admitted at once.
        server_cfg.max_incoming(settings.max_unauthenticated.max(1));
        let endpoint =
            Endpoint::server(server_cfg, settings.listen).map_err(|e| Error::InvalidConfig {
                key: "server.listen".into(),
                reason: format!("{}: {e}", settings.listen),
            })?;
        let local_addr = endpoint.local_addr().map_err(Error::storage)?;
        let ep = endpoint.clone();
        let settings = Arc::new(settings);
        let gate = Arc::new(Gate::new(settings));
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let remote = incoming.remote_address();
                // Busy: make the client prove its address (one round trip,
                // no state kept here) before a handshake is spent on it.
                if gate.pending_at_least_half()
                    && !incoming.remote_address_validated()
                    && incoming.may_retry()
                {
                    let _ = incoming.retry();
                    continue;
                }
                let slot = match gate.admit(remote.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        tracing::debug!(%remote, why, "connection refused");
                        incoming.refuse();
                        continue;
                    }
                };
                let (db, gate, router) = (db.clone(), gate.clone(), router.clone());
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + gate.auth_timeout();
                    let conn = match tokio::time::timeout_at(deadline, incoming).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "handshake timed out");
                            return;
                        }
                    };
                    serve_connection(db, router, conn, gate, slot, deadline).await;
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

/// Largest frame a connection may send before it authenticates: enough
/// for `Authenticate` with any key this node issues.
pub const PRE_AUTH_MAX_FRAME: usize = 4096;
/// QUIC close code: `max_connections` reached.
pub const CLOSE_BUSY: u32 = 1;
/// QUIC close code: no successful `Authenticate` within `auth_timeout_ms`.
pub const CLOSE_AUTH_TIMEOUT: u32 = 2;
/// The window of `max_auth_failures_per_ip`.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Admission of connections: counts unauthenticated connections (in
/// total and per address) and connections per address, holds the
/// `max_connections` slots, and remembers failed authentications per
/// address. Every map here holds only addresses with a live connection
/// or is a bounded, expiring cache.
struct Gate {
    settings: Arc<ServerSettings>,
    live: Arc<tokio::sync::Semaphore>,
    counts: Mutex<GateCounts>,
    failures: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

#[derive(Default)]
struct GateCounts {
    pending: usize,
    per_ip: HashMap<IpAddr, PerIp>,
}

#[derive(Default, Clone, Copy)]
struct PerIp {
    all: usize,
    pending: usize,
}

impl Gate {
    fn new(settings: Arc<ServerSettings>) -> Self {
        Self {
            live: Arc::new(tokio::sync::Semaphore::new(settings.max_connections)),
            counts: Mutex::new(GateCounts::default()),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(AUTH_FAILURE_WINDOW)
                .build(),
            settings,
        }
    }

    fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.auth_timeout_ms)
    }

    fn pending_at_least_half(&self) -> bool {
        self.counts.lock().pending * 2 >= self.settings.max_unauthenticated
    }

    /// Admits a new, unauthenticated connection from `ip`, or says which
    /// cap refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, &'static str> {
        let s = &self.settings;
        let mut c = self.counts.lock();
        if c.pending >= s.max_unauthenticated {
            return Err("max_unauthenticated reached");
        }
        let now = c.per_ip.get(&ip).copied().unwrap_or_default();
        if now.pending >= s.max_unauthenticated_per_ip {
            return Err("max_unauthenticated_per_ip reached");
        }
        if now.all >= s.max_connections_per_ip {
            return Err("max_connections_per_ip reached");
        }
        c.pending += 1;
        c.per_ip.insert(
            ip,
            PerIp {
                all: now.all + 1,
                pending: now.pending + 1,
            },
        );
        Ok(IpSlot {
            gate: self.clone(),
            ip,
            pending: true,
        })
    }

    /// Refuses `ip` while it has used up its failed authentications.
    fn check_failures(&self, ip: IpAddr) -> Result<(), Error> {
        let max = self.settings.max_auth_failures_per_ip;
        match self.failures.get(&ip) {
            Some(n) if n.load(Ordering::Relaxed) >= max => Err(Error::Unauthenticated {
                reason: format!(
                    "{max} failed authentications from {ip} within {} s: refused until the window passes",
                    AUTH_FAILURE_WINDOW.as_secs()
                ),
            }),
            _ => Ok(()),
        }
    }

    fn record_failure(&self, ip: IpAddr) {
        self.failures
            .get_with(ip, || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One admitted connection's place in the per-address counts; released
/// when the connection ends.
struct IpSlot {
    gate: Arc<Gate>,
    ip: IpAddr,
    pending: bool,
}

impl IpSlot {
    /// The connection authenticated (or ended): it no longer counts as
    /// pending.
    fn authenticated(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        let mut c = self.gate.counts.lock();
        c.pending = c.pending.saturating_sub(1);
        if let Some(e) = c.per_ip.get_mut(&self.ip) {
            e.pending = e.pending.saturating_sub(1);
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.authenticated();
        let mut c = self.gate.counts.lock();
        if let Some(e) = c.per_ip.get_mut(&self.ip) {
            e.all = e.all.saturating_sub(1);
            if e.all == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Per-connection state: the authenticated key and its session.
#[derive(Default)]
struct ConnState {
    key: Option<KeyInfo>,
    session: Option<Session>,
    /// Event subscriptions open on this connection.
    subscriptions: usize,
}

async fn serve_connection(
    db: Database,
    router: Router,
    conn: Connection,
    gate: Arc<Gate>,
    mut slot: IpSlot,
    deadline: tokio::time::Instant,
) {
    let remote = conn.remote_address();
    tracing::debug!(%remote, "client connected");
    let state = Arc::new(Mutex::new(ConnState::default()));
    // Until it authenticates, a connection gets one stream at a time,
    // small frames, and only Ping and Authenticate, until the deadline.
    loop {
        let step = tokio::time::timeout_at(deadline, async {
            let (send, recv) = conn.accept_bi().await.ok()?;
            Some(serve_pre_auth(&db, &gate, &state, remote.ip(), send, recv).await)
        })
        .await;
        match step {
            Ok(Some(true)) => break,
            Ok(Some(false)) => continue,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(%remote, "closed: not authenticated in time");
                conn.close(CLOSE_AUTH_TIMEOUT.into(), b"not authenticated in time");
                return;
            }
        }
    }
    // A max_connections slot is taken only once the connection has
    // authenticated: handshakes and unauthenticated connections count
    // against max_unauthenticated instead, so they cannot crowd out
    // clients that have keys.
    let Ok(_live) = gate.live.clone().try_acquire_owned() else {
        tracing::info!(%remote, "closed: max_connections reached");
        conn.close(CLOSE_BUSY.into(), b"server busy: max_connections reached");
        return;
    };
    slot.authenticated();
    let auth_lock = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection closed");
                return;
            }
        };
        let (db, router, state, gate, auth_lock) = (
            db.clone(),
            router.clone(),
            state.clone(),
            gate.clone(),
            auth_lock.clone(),
        );
        tokio::spawn(async move {
            serve_stream(db, router, gate, state, auth_lock, remote.ip(), send, recv).await;
        });
    }
}

/// Serves one stream of a connection that has not authenticated yet;
/// true once it has.
async fn serve_pre_auth(
    db: &Database,
    gate: &Gate,
    state: &Mutex<ConnState>,
    ip: IpAddr,
    mut send: SendStream,
    mut recv: RecvStream,
) -> bool {
    let (id, response, authenticated) =
        match read_frame::<Request>(&mut recv, PRE_AUTH_MAX_FRAME).await {
            Ok(env) => match env.body {
                Request::Ping => (env.request_id, Response::Pong, false),
                Request::Authenticate { api_key } => {
                    match authenticate(db, gate, state, ip, &api_key).await {
                        Ok(info) => (env.request_id, Response::Principal(info), true),
                        Err(e) => (env.request_id, Response::Error(e), false),
                    }
                }
                _ => (env.request_id, Response::Error(no_credentials()), false),
            },
            Err(e) => (0, bad_frame(&mut recv, e), false),
        };
    if let Err(e) = write_frame(&mut send, &Envelope::new(id, response)).await {
        tracing::debug!(error = %e, "could not send response");
    }
    authenticated
}

fn no_credentials() -> Error {
    Error::Unauthenticated {
        reason: "no credentials on this connection: send Authenticate first".into(),
    }
}

fn bad_frame(recv: &mut RecvStream, e: FrameError) -> Response {
    if let FrameError::TooLarge { .. } = e {
        // Do not read (or buffer) the rest of an oversized frame.
        let _ = recv.stop(0u32.into());
    }
    tracing::debug!(error = %e, "bad frame");
    Response::Error(Error::Protocol {
        reason: e.to_string(),
    })
}

/// Checks a key and binds the connection to it. Failures count against
/// the address's `max_auth_failures_per_ip`.
async fn authenticate(
    db: &Database,
    gate: &Gate,
    state: &Mutex<ConnState>,
    ip: IpAddr,
    api_key: &str,
) -> Result<KeyInfo, Error> {
    gate.check_failures(ip)?;
    let info = match db.authenticate_fresh(api_key).await {
        Ok(info) => info,
        Err(e) => {
            if matches!(e, Error::Unauthenticated { .. }) {
                gate.record_failure(ip);
                tracing::info!(%ip, reason = %e, "authentication failed");
            }
            return Err(e);
        }
    };
    let session = match (info.kind, &info.tenant_id, &info.user_id) {
        // On a cluster the tenant's shard may live elsewhere: each
        // request is routed instead.
        (KeyKind::Tenant, Some(t), Some(u)) if !db.is_clustered() => Some(db.session(t, u).await?),
        _ => None,
    };
    let mut st = state.lock();
    st.key = Some(info.clone());
    st.session = session;
    Ok(info)
}

#[allow(clippy::too_many_arguments)]
async fn serve_stream(
    db: Database,
    router: Router,
    gate: Arc<Gate>,
    state: Arc<Mutex<ConnState>>,
    auth_lock: Arc<tokio::sync::Mutex<()>>,
    ip: IpAddr,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let max = gate.settings.max_frame_bytes;
    // A2: the bytes a tenant key's request and response move.
    let mut moved: Option<(String, usize)> = None;
    let (id, response, leader) = match read_frame_counted::<Request>(&mut recv, max).await {
        Ok((
            Envelope {
                request_id,
                body: Request::SubscribeEvents(filter),
                ..
            },
            _,
        )) => {
            events::serve(&db, state, request_id, filter, send, recv).await;
            return;
        }
        Ok((env, size)) => {
            let id = env.request_id;
            let mut leader = None;
            let r = if let Request::Authenticate { api_key } = env.body {
                let _g = auth_lock.lock().await;
                authenticate(&db, &gate, &state, ip, &api_key)
                    .await
                    .map(Response::Principal)
            } else {
                let principal = {
                    let st = state.lock();
                    if let Some(KeyInfo {
                        kind: KeyKind::Tenant,
                        tenant_id: Some(t),
                        ..
                    }) = st.key.as_ref()
                    {
                        moved = Some((t.clone(), size));
                    }
                    st.key
                        .as_ref()
                        .map(|k| (k.key_id.clone(), st.session.clone()))
                };
                match principal {
                    Some((key_id, session)) => {
                        let a = router.request(key_id, session, env.body).await;
                        leader = a.leader;
                        a.result
                    }
                    None => Err(no_credentials()),
                }
            };
            (id, r.unwrap_or_else(Response::Error), leader)
        }
        Err(e) => (0, bad_frame(&mut recv, e), None),
    };
    let frame = match Envelope::new(id, response).with_leader(leader).to_frame() {
        Ok(f) => Ok(f),
        // An answer too big for one frame: the client gets a typed
        // error saying so, not a reset stream.
        Err(FrameError::TooLarge { len, max }) => {
            tracing::info!(len, max, "response too large for a frame");
            let refused = Error::LimitExceeded(LimitExceeded {
                kind: LimitKind::ResultSize,
                limit: max as u64,
                current: 0,
                requested: len as u64,
                retry_after_ms: None,
            });
            Envelope::new(id, Response::Error(refused))
                .with_leader(leader)
                .to_frame()
        }
        Err(e) => Err(e),
    };
    if let (Some((tenant, size_in)), Ok(f)) = (&moved, &frame) {
        let now = crate::util::coarse_now_ms();
        db.recorder()
            .bytes(tenant, now, *size_in as u64, f.len() as u64);
    }
    let sent = match frame {
        Ok(f) => send
            .write_all(&f)
            .await
            .map_err(|e| e.to_string())
            .and_then(|()| send.finish().map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not send response");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_frame_limit_is_the_wire_limit() {
        assert_eq!(
            crate::config::DEFAULT_MAX_FRAME_BYTES,
            crate::proto::wire::MAX_FRAME_BYTES
        );
    }
}
