//! A real node process (`vektagraf serve`) for tests over QUIC, and raw
//! connections that speak the wire protocol by hand.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vektagraf::proto::wire::Response;

/// A node started with `vektagraf serve`, killed (by its PID) on drop.
pub struct Node {
    pub child: Child,
    cfg: PathBuf,
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if the node printed it.
    pub metrics: Option<SocketAddr>,
    pub cert: PathBuf,
    pub admin_key: String,
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Kills the process with SIGKILL (no chance to save anything) and
    /// starts it again on the same data directory.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (child, addr, cert, metrics) = spawn(&self.cfg);
        self.child = child;
        self.addr = addr;
        self.cert = cert;
        self.metrics = metrics;
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Starts a node with the test defaults.
pub fn start_node() -> Node {
    start_node_with("")
}

/// Starts a node; `server_toml` is added to its `[server]` section.
pub fn start_node_with(server_toml: &str) -> Node {
    start_node_configured("", server_toml)
}

/// Starts a node; `node_toml` is added to its `[node]` section and
/// `server_toml` to its `[server]` section (which may go on with sections
/// of its own).
pub fn start_node_configured(node_toml: &str, server_toml: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = {:?}\n{node_toml}\n[server]\nlisten = \"127.0.0.1:0\"\n{server_toml}\n[limits]\nquota_checkpoint_ms = 500\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (child, addr, cert, metrics) = spawn(&cfg);
    let admin_key = std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    Node {
        child,
        cfg,
        addr,
        metrics,
        cert,
        admin_key,
        dir: data,
        _dir: dir,
    }
}

fn spawn(cfg: &std::path::Path) -> (Child, SocketAddr, PathBuf, Option<SocketAddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vektagraf"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut cert, mut metrics) = (None, None, None);
    while addr.is_none() || cert.is_none() {
        let line = lines.next().expect("node exited before listening").unwrap();
        if let Some(m) = line.strip_prefix("metrics on http://") {
            metrics = Some(m.trim_end_matches("/metrics").parse().unwrap());
        }
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.trim().parse().unwrap());
        }
        if let Some(rest) = line.strip_prefix("certificate ") {
            cert = Some(PathBuf::from(rest.split(" sha256 ").next().unwrap()));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, addr.unwrap(), cert.unwrap(), metrics)
}

/// A driver connected to `node` with `key`: no retries (each test sees
/// every error), 20 s per request.
pub async fn client(
    node: &Node,
    key: &str,
) -> Result<vektagraf::client::Client, vektagraf::proto::Error> {
    let mut o = vektagraf::client::ClientOptions::new(vec![node.addr], key, &node.cert)?;
    o.request_timeout = Duration::from_secs(20);
    o.max_retries = 0;
    vektagraf::client::Client::connect(o).await
}

/// A QUIC connection to `node` with `alpn`, from 127.0.0.1.
pub async fn raw_connection(node: &Node, alpn: &[u8]) -> Result<quinn::Connection, String> {
    raw_connection_from(node, alpn, "127.0.0.1:0".parse().unwrap()).await
}

/// A QUIC connection to `node` with `alpn`, from `bind` (any 127.0.0.0/8
/// address works on Linux loopback, so tests can play several clients).
pub async fn raw_connection_from(
    node: &Node,
    alpn: &[u8],
    bind: SocketAddr,
) -> Result<quinn::Connection, String> {
    let certs = vektagraf::net::tls::read_certs(&node.cert).unwrap();
    let t = vektagraf::net::tls::transport(Duration::from_secs(10), None, 16).unwrap();
    let cfg = vektagraf::net::tls::client_config(&certs, alpn, t).unwrap();
    let mut ep = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    ep.set_default_client_config(cfg);
    let conn = ep
        .connect(node.addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Sends raw frame bytes on a new stream and reads the response.
pub async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The node may stop reading an oversized frame early.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let env = vektagraf::net::frame::read_frame::<Response>(&mut recv, 1 << 20)
        .await
        .unwrap();
    env.body
}
