//! Baseline for comparison: put load against an etcd 3.4 cluster through its
//! v3 JSON gRPC gateway (`POST /v3/kv/put`), over a minimal hand-written
//! HTTP/1.1 keep-alive client on `tokio::net::TcpStream`.
//!
//! Start the cluster with `scripts/etcd-cluster.sh up DIR` (client
//! endpoints `127.0.0.1:23791-23793`), then call [`put_load`]. Each client
//! holds one connection to one endpoint; writes sent to a follower are
//! forwarded by etcd to the leader.
//!
//! The HTTP client sends one request at a time per connection (no
//! pipelining) and reads responses framed by `Content-Length`, by chunked
//! transfer-encoding, or by connection close. Any status other than 200,
//! an I/O or framing error, or a body that is not an etcd put response
//! counts as an error; after an I/O or framing error the client reconnects.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Gateway path of the v3 put call.
const PUT_PATH: &str = "/v3/kv/put";
/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Bound on connecting and on one request/response exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed connect before the client tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Result of one load run.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations (non-200 status, I/O, framing or connect errors).
    pub errors: u64,
    /// Wall time from the first request to the end of the last one.
    pub elapsed: Duration,
    /// Latency of each successful operation in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl LoadResult {
    /// Successful operations per second of [`LoadResult::elapsed`]; 0 if
    /// nothing elapsed.
    pub fn per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The `p`-th percentile latency in milliseconds, `p` in 0..=100
    /// (clamped; 50.0 is the median, 99.0 the p99), by the nearest-rank
    /// method; 0 if there are no latencies.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0.0;
        }
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
        let rank = (p / 100.0 * n as f64).ceil() as usize;
        let idx = rank.saturating_sub(1).min(n - 1);
        self.latencies_us[idx] as f64 / 1000.0
    }
}

/// Runs `clients` concurrent clients, each with its own keep-alive
/// connection to one of `endpoints` (round-robin by client index), each
/// doing sequential puts of distinct keys with `value_size`-byte values,
/// for `duration`.
///
/// All connections are opened before the clock starts; a client starts no
/// new put once `duration` has passed, and [`LoadResult::elapsed`] runs to
/// the end of the last put. Keys are `etcdbench/<run>/<client>/<seq>`,
/// with `<run>` distinct per call, so runs do not overwrite each other.
///
/// # Errors
///
/// If `endpoints` is empty, `clients` is 0, a connection cannot be opened
/// at the start, a client task panics, or every put failed (the error then
/// carries the first failure).
pub async fn put_load(
    endpoints: &[SocketAddr],
    clients: usize,
    value_size: usize,
    duration: Duration,
) -> Result<LoadResult> {
    if endpoints.is_empty() {
        bail!("put_load: no endpoints");
    }
    if clients == 0 {
        bail!("put_load: clients must be at least 1");
    }
    let run = run_id();
    let value: Vec<u8> = (0..value_size).map(|i| (i % 251) as u8).collect();
    let value_b64 = base64_encode(&value);

    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        let addr = endpoints[c % endpoints.len()];
        let conn = HttpConn::connect(addr)
            .await
            .with_context(|| format!("client {c}: connecting to etcd at {addr}"))?;
        conns.push((addr, conn));
    }

    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for (c, (addr, conn)) in conns.into_iter().enumerate() {
        let prefix = format!("etcdbench/{run:x}/{c}/");
        let value_b64 = value_b64.clone();
        tasks.push(tokio::spawn(client_loop(
            addr, conn, prefix, value_b64, deadline,
        )));
    }

    let mut result = LoadResult::default();
    let mut first_error = None;
    for t in tasks {
        let stats = t.await.context("put_load: client task failed")?;
        result.ops += stats.latencies_us.len() as u64;
        result.errors += stats.errors;
        result.latencies_us.extend(stats.latencies_us);
        if first_error.is_none() {
            first_error = stats.first_error;
        }
    }
    result.elapsed = start.elapsed();
    result.latencies_us.sort_unstable();
    if result.ops == 0 {
        if let Some(e) = first_error {
            bail!("put_load: all {} puts failed; first: {e}", result.errors);
        }
    }
    Ok(result)
}

/// A number distinct per [`put_load`] call (and, in practice, per process).
fn run_id() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos.wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed))
}

/// What one client measured.
struct ClientStats {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn client_loop(
    addr: SocketAddr,
    conn: HttpConn<TcpStream>,
    prefix: String,
    value_b64: String,
    deadline: Instant,
) -> ClientStats {
    let mut stats = ClientStats {
        latencies_us: Vec::new(),
        errors: 0,
        first_error: None,
    };
    let mut conn = Some(conn);
    let mut body = Vec::with_capacity(prefix.len() * 2 + value_b64.len() + 64);
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match HttpConn::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    fail(&mut stats, e.context(format!("reconnecting to {addr}")));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let key = format!("{prefix}{seq}");
        seq += 1;
        put_body(&mut body, key.as_bytes(), &value_b64);

        let t0 = Instant::now();
        let outcome = tokio::time::timeout(IO_TIMEOUT, c.post(PUT_PATH, &body)).await;
        let elapsed_us = t0.elapsed().as_micros() as u64;
        match outcome {
            Ok(Ok(resp)) => {
                match check_put_response(&resp) {
                    Ok(()) => stats.latencies_us.push(elapsed_us),
                    Err(e) => fail(&mut stats, e),
                }
                if !c.reusable {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                fail(&mut stats, e.context(format!("put to {addr}")));
                conn = None;
            }
            Err(_) => {
                fail(
                    &mut stats,
                    anyhow!("put to {addr}: no response in {IO_TIMEOUT:?}"),
                );
                conn = None;
            }
        }
    }
    stats
}

fn fail(stats: &mut ClientStats, e: anyhow::Error) {
    stats.errors += 1;
    if stats.first_error.is_none() {
        stats.first_error = Some(format!("{e:#}"));
    }
}

/// Writes the JSON put request `{"key": b64, "value": b64}` into `out`.
/// Base64 needs no JSON escaping.
fn put_body(out: &mut Vec<u8>, key: &[u8], value_b64: &str) {
    out.clear();
    out.extend_from_slice(b"{\"key\":\"");
    base64_encode_into(key, out);
    out.extend_from_slice(b"\",\"value\":\"");
    out.extend_from_slice(value_b64.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Accepts a 200 response whose body is an etcd put response (a JSON object
/// with a `header`).
fn check_put_response(resp: &Response) -> Result<()> {
    if resp.status != 200 {
        bail!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body).context("put response is not JSON")?;
    if v.get("header").is_none() {
        bail!(
            "put response without header: {}",
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
        );
    }
    Ok(())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648, with padding), as Go's `encoding/json`
/// expects for `[]byte` fields.
fn base64_encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    base64_encode_into(data, &mut out);
    // Only ASCII from B64 and '=' was written.
    String::from_utf8_lossy(&out).into_owned()
}

fn base64_encode_into(data: &[u8], out: &mut Vec<u8>) {
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[
            B64[(n >> 18) as usize & 63],
            B64[(n >> 12) as usize & 63],
            B64[(n >> 6) as usize & 63],
            B64[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[B64[(n >> 18) as usize & 63], B64[(n >> 12) as usize & 63]]);
            out.extend_from_slice(b"==");
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[
                B64[(n >> 18) as usize & 63],
                B64[(n >> 12) as usize & 63],
                B64[(n >> 6) as usize & 63],
            ]);
            out.push(b'=');
        }
        _ => {}
    }
}

/// One HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// How a response body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// A minimal HTTP/1.1 client connection: one request at a time, kept alive
/// unless the server closes it.
struct HttpConn<S> {
    stream: S,
    host: String,
    /// Bytes read and not yet consumed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Request bytes, reused.
    req: Vec<u8>,
    /// False once the server said `Connection: close`, spoke HTTP/1.0
    /// without keep-alive, or delimited a body by closing.
    reusable: bool,
}

impl HttpConn<TcpStream> {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr}: timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self::new(stream, addr.to_string()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpConn<S> {
    fn new(stream: S, host: String) -> Self {
        Self {
            stream,
            host,
            buf: Vec::with_capacity(8192),
            pos: 0,
            req: Vec::with_capacity(1024),
            reusable: true,
        }
    }

    /// Sends `POST path` with a JSON body and reads the whole response.
    async fn post(&mut self, path: &str, body: &[u8]) -> Result<Response> {
        if !self.reusable {
            bail!("connection is closed");
        }
        // Drop what the previous exchange consumed.
        self.buf.drain(..self.pos);
        self.pos = 0;

        self.req.clear();
        self.req.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Accept: application/json\r\nContent-Length: {}\r\n\r\n",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        self.req.extend_from_slice(body);
        self.stream.write_all(&self.req).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Response> {
        loop {
            let head = self.take_head().await?;
            let (status, framing, keep_alive) = parse_head(&self.buf[head])?;
            if (100..200).contains(&status) {
                // Interim response (e.g. 100 Continue): the real one follows.
                continue;
            }
            if !keep_alive {
                self.reusable = false;
            }
            let body = match framing {
                Framing::Empty => Vec::new(),
                Framing::Length(n) => {
                    if n > MAX_BODY {
                        bail!("response body of {n} bytes is too large");
                    }
                    let r = self.take_exact(n).await?;
                    self.buf[r].to_vec()
                }
                Framing::Chunked => self.read_chunked().await?,
                Framing::UntilClose => {
                    self.reusable = false;
                    self.read_to_close().await?
                }
            };
            // A HEAD request or 204/304 would be Empty; nothing else to do.
            return Ok(Response { status, body });
        }
    }

    /// Reads more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(8192);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.reusable = false;
            bail!("connection closed by server");
        }
        Ok(())
    }

    /// The status line and headers, without the blank line ending them.
    async fn take_head(&mut self) -> Result<Range<usize>> {
        let mut searched = self.pos;
        loop {
            if let Some(i) = find(&self.buf[searched..], b"\r\n\r\n") {
                let end = searched + i;
                let r = self.pos..end;
                self.pos = end + 4;
                return Ok(r);
            }
            searched = self.buf.len().saturating_sub(3).max(self.pos);
            if self.buf.len() - self.pos > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            self.fill().await?;
        }
    }

    /// One line, without its CRLF.
    async fn take_line(&mut self) -> Result<Range<usize>> {
        let mut searched = self.pos;
        loop {
            if let Some(i) = find(&self.buf[searched..], b"\r\n") {
                let end = searched + i;
                let r = self.pos..end;
                self.pos = end + 2;
                return Ok(r);
            }
            searched = self.buf.len().saturating_sub(1).max(self.pos);
            if self.buf.len() - self.pos > MAX_HEAD {
                bail!("line longer than {MAX_HEAD} bytes");
            }
            self.fill().await?;
        }
    }

    async fn take_exact(&mut self, n: usize) -> Result<Range<usize>> {
        while self.buf.len() - self.pos < n {
            self.fill().await?;
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line().await?;
            let size = parse_chunk_size(&self.buf[line])?;
            if size == 0 {
                // Trailer fields, up to an empty line.
                loop {
                    let t = self.take_line().await?;
                    if t.is_empty() {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                bail!("chunked response body larger than {MAX_BODY} bytes");
            }
            let r = self.take_exact(size + 2).await?;
            let data = &self.buf[r];
            if &data[size..] != b"\r\n" {
                bail!("chunk not followed by CRLF");
            }
            body.extend_from_slice(&data[..size]);
        }
    }

    async fn read_to_close(&mut self) -> Result<Vec<u8>> {
        loop {
            if self.buf.len() - self.pos > MAX_BODY {
                bail!("response body larger than {MAX_BODY} bytes");
            }
            self.buf.reserve(8192);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                break;
            }
        }
        let body = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        Ok(body)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the status line and headers: status code, body framing, and
/// whether the connection stays open afterwards.
fn parse_head(head: &[u8]) -> Result<(u16, Framing, bool)> {
    let head = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => bail!("bad status line {status_line:?}"),
    };
    let status: u16 = match code.parse() {
        Ok(s) if code.len() == 3 => s,
        _ => bail!("bad status line {status_line:?}"),
    };

    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut keep_alive = !http10;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .with_context(|| format!("bad Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                bail!("conflicting Content-Length headers");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Codings are listed in order applied; chunked must be last.
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                    other_coding = false;
                } else {
                    chunked = false;
                    other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        }
    }

    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3).
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((status, framing, keep_alive))
}

fn parse_chunk_size(line: &[u8]) -> Result<usize> {
    let line = std::str::from_utf8(line).context("chunk size line is not UTF-8")?;
    // Chunk extensions after ';' are ignored.
    let hex = line.split(';').next().unwrap_or_default().trim();
    if hex.is_empty() || hex.len() > 15 {
        bail!("bad chunk size {line:?}");
    }
    usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[test]
    fn put_body_is_json_with_base64_fields() {
        let mut out = Vec::new();
        put_body(&mut out, b"k/1", &base64_encode(b"value"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["key"], "ay8x");
        assert_eq!(v["value"], "dmFsdWU=");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let r = LoadResult {
            ops: 100,
            errors: 0,
            elapsed: Duration::from_secs(2),
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
        };
        assert_eq!(r.per_sec(), 50.0);
        assert_eq!(r.percentile_ms(50.0), 50.0);
        assert_eq!(r.percentile_ms(99.0), 99.0);
        assert_eq!(r.percentile_ms(100.0), 100.0);
        assert_eq!(r.percentile_ms(0.0), 1.0);
        assert_eq!(LoadResult::default().percentile_ms(50.0), 0.0);
        assert_eq!(LoadResult::default().per_sec(), 0.0);
    }

    /// Runs `post` against a scripted server that answers with `replies`
    /// (written in `split`-byte pieces), one per request.
    async fn exchange(replies: &[&[u8]], split: usize) -> Vec<Result<Response>> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let replies: Vec<Vec<u8>> = replies.iter().map(|r| r.to_vec()).collect();
        let n = replies.len();
        let srv = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            for reply in replies {
                // Read one request: head plus Content-Length body.
                let mut req = Vec::new();
                loop {
                    let k = server.read(&mut buf).await.unwrap();
                    if k == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..k]);
                    if let Some(h) = find(&req, b"\r\n\r\n") {
                        let head = std::str::from_utf8(&req[..h]).unwrap().to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if req.len() >= h + 4 + len {
                            break;
                        }
                    }
                }
                for piece in reply.chunks(split) {
                    server.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            drop(server);
        });
        let mut conn = HttpConn::new(client, "test".to_string());
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(conn.post(PUT_PATH, b"{}").await);
        }
        srv.await.unwrap();
        out
    }

    #[tokio::test]
    async fn reads_content_length_and_chunked_responses_on_one_connection() {
        let a: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            Content-Length: 13\r\n\r\n{\"header\":{}}";
        let b: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\n{\"hea\r\n8\r\nder\":{}}\r\n0\r\nX-Trailer: t\r\n\r\n";
        let c: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\n\
            Content-Length: 11\r\n\r\n{\"code\":3}\n";
        for split in [1, 7, 4096] {
            let out = exchange(&[a, b, c, a], split).await;
            let out: Vec<Response> = out.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(out[0].status, 200);
            assert_eq!(out[0].body, b"{\"header\":{}}");
            check_put_response(&out[0]).unwrap();
            assert_eq!(out[1].status, 200);
            assert_eq!(out[1].body, b"{\"header\":{}}");
            check_put_response(&out[1]).unwrap();
            assert_eq!(out[2].status, 400);
            assert!(check_put_response(&out[2]).is_err());
            assert_eq!(out[3].body, b"{\"header\":{}}");
        }
    }

    #[tokio::test]
    async fn body_until_close_and_connection_close() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = server.read(&mut buf).await.unwrap();
            server
                .write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"header\":{}}")
                .await
                .unwrap();
        });
        let mut conn = HttpConn::new(client, "test".to_string());
        let r = conn.post(PUT_PATH, b"{}").await.unwrap();
        assert_eq!(r.body, b"{\"header\":{}}");
        assert!(!conn.reusable);
        assert!(conn.post(PUT_PATH, b"{}").await.is_err());
    }

    #[tokio::test]
    async fn truncated_response_is_an_error() {
        let short: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"header\"";
        let out = exchange(&[short], 4096).await;
        assert!(out[0].is_err());
    }

    #[test]
    fn head_parsing() {
        let (s, f, k) =
            parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2").unwrap();
        assert_eq!((s, f, k), (200, Framing::Length(2), false));
        let (_, f, _) =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: gzip, chunked")
                .unwrap();
        assert_eq!(f, Framing::Chunked);
        let (_, f, k) = parse_head(b"HTTP/1.1 204 No Content").unwrap();
        assert_eq!((f, k), (Framing::Empty, true));
        assert!(parse_head(b"HTTP/2 200").is_err());
        assert!(parse_head(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
        assert_eq!(parse_chunk_size(b"1aF").unwrap(), 0x1af);
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"zz").is_err());
    }
}
