//! The driver's side of the live event stream (A3): [`Client::events`].
//!
//! Events are raised on the node that runs each check (a tenant's shard
//! leader, group 0's leader for move jobs, the node that received a
//! burst of rejected requests), and each node streams only its own. The
//! driver therefore subscribes to the node it is connected to, learns
//! the cluster's live nodes from its answer
//! (`Response::EventsSubscribed`), and subscribes to every other one on
//! a connection of its own, with the same key; the [`EventStream`]
//! merges them in arrival order (each node's events in order; across
//! nodes, order by `at_ms` if needed). A node that cannot be reached
//! yields one `Err` item and the others go on. Nodes that join after the
//! subscription opened are not followed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream};
use tokio::sync::mpsc;

use super::{unavailable, unexpected, Client};
use crate::net::frame::read_frame;
use crate::proto::wire::{Envelope, Request, Response, MAX_FRAME_BYTES};
use crate::proto::{Error, EventFilter, EventItem, Result};

/// Items buffered between the nodes' streams and the consumer: a
/// consumer that does not keep up stops reading from the nodes, which
/// then report the events it lost.
const BUFFER: usize = 1024;

/// A live event subscription on every node of the cluster (see
/// [`Client::events`]). Dropping it ends the subscriptions.
pub struct EventStream {
    rx: mpsc::Receiver<Result<EventItem>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    nodes: Vec<u64>,
}

impl EventStream {
    /// The nodes subscribed to (0: a standalone node), the first being
    /// the one the client is connected to.
    pub fn nodes(&self) -> &[u64] {
        &self.nodes
    }
}

impl futures::Stream for EventStream {
    type Item = Result<EventItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Sends `SubscribeEvents` on a new stream of `conn`; the stream to read
/// events from, the answering node and the cluster's nodes.
async fn subscribe(
    conn: &Connection,
    filter: &EventFilter,
    timeout: Duration,
) -> Result<(RecvStream, u64, Vec<(u64, String)>)> {
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(unavailable)?;
        let frame = Envelope::new(1, Request::SubscribeEvents(filter.clone()))
            .to_frame()
            .map_err(unavailable)?;
        send.write_all(&frame).await.map_err(unavailable)?;
        let _ = send.finish();
        let env = read_frame::<Response>(&mut recv, MAX_FRAME_BYTES)
            .await
            .map_err(|e| Error::Protocol {
                reason: e.to_string(),
            })?;
        match env.body {
            Response::EventsSubscribed { node, nodes } => Ok((recv, node, nodes)),
            other => Err(unexpected(other)),
        }
    };
    tokio::time::timeout(timeout, opened)
        .await
        .map_err(|_| Error::Timeout {
            after_ms: timeout.as_millis() as u64,
        })?
}

/// A new authenticated connection to `addr`.
async fn dial(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    api_key: &str,
    timeout: Duration,
) -> Result<Connection> {
    let dialled = async {
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(unavailable)?;
        let frame = Envelope::new(
            1,
            Request::Authenticate {
                api_key: api_key.to_string(),
            },
        )
        .to_frame()
        .map_err(unavailable)?;
        send.write_all(&frame).await.map_err(unavailable)?;
        let _ = send.finish();
        let env = read_frame::<Response>(&mut recv, MAX_FRAME_BYTES)
            .await
            .map_err(unavailable)?;
        match env.body {
            Response::Principal(_) => Ok(conn),
            other => Err(unexpected(other)),
        }
    };
    tokio::time::timeout(timeout, dialled).await.map_err(|_| {
        unavailable(format!(
            "{addr}: no answer within {} ms",
            timeout.as_millis()
        ))
    })?
}

/// Forwards one node's frames to the stream until either ends.
async fn pump(
    mut recv: RecvStream,
    node: u64,
    tx: mpsc::Sender<Result<EventItem>>,
    _conn: Option<Connection>,
) {
    loop {
        let read = tokio::select! {
            r = read_frame::<Response>(&mut recv, MAX_FRAME_BYTES) => r,
            () = tx.closed() => return,
        };
        let (item, last) = match read {
            Ok(env) => match env.body {
                Response::Event(e) => (Ok(EventItem::Event(*e)), false),
                Response::EventsLost { count } => (Ok(EventItem::Lost { node, count }), false),
                other => (Err(unexpected(other)), true),
            },
            Err(e) => (
                Err(unavailable(format!(
                    "the event stream of node {node} ended: {e}"
                ))),
                true,
            ),
        };
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

impl Client {
    /// A3: the live events this key may see, from every node of the
    /// cluster (see [`EventStream`]): first each node's recent events
    /// that `filter` passes, then new ones as they are raised, with
    /// [`EventItem::Lost`] where a node had to drop events because this
    /// subscriber fell behind. A tenant key sees only its own tenant's
    /// events (`filter.tenant` `None` means its own; another tenant is
    /// refused with `CrossTenantAccess`); an admin key every event or
    /// one tenant's. Refused with `TooManySubscriptions` beyond the
    /// node's caps. The subscription to the connected node is open when
    /// this returns; the others open in the background.
    pub async fn events(&self, filter: EventFilter) -> Result<EventStream> {
        let conn = self.connection().await?;
        let timeout = self.opts.request_timeout;
        let (recv, node, nodes) = subscribe(&conn, &filter, timeout).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut tasks = vec![tokio::spawn(pump(recv, node, tx.clone(), None))];
        let mut ids = vec![node];
        for (id, addr) in nodes.into_iter().filter(|(id, _)| *id != node) {
            ids.push(id);
            let (tx, filter, endpoint) = (tx.clone(), filter.clone(), self.endpoint.clone());
            let (name, key) = (self.opts.server_name.clone(), self.opts.api_key.clone());
            let connect = self.opts.connect_timeout;
            tasks.push(tokio::spawn(async move {
                let opened = async {
                    let addr: SocketAddr = addr
                        .parse()
                        .map_err(|e| unavailable(format!("node {id} at {addr:?}: {e}")))?;
                    let conn = dial(&endpoint, addr, &name, &key, connect).await?;
                    let (recv, _, _) = subscribe(&conn, &filter, timeout).await?;
                    Ok::<_, Error>((conn, recv))
                };
                match opened.await {
                    Ok((conn, recv)) => pump(recv, id, tx, Some(conn)).await,
                    Err(e) => {
                        let _ = tx
                            .send(Err(unavailable(format!(
                                "no event stream from node {id}: {e}"
                            ))))
                            .await;
                    }
                }
            }));
        }
        Ok(EventStream {
            rx,
            tasks,
            nodes: ids,
        })
    }
}
