//! Prometheus metrics on the real server: a node process serves
//! `/metrics` over HTTP; the test makes a known number of requests
//! through the driver (QUIC), scrapes, parses the exposition and checks
//! the tenant's counters moved by exactly the requests made, with each
//! limit and error under its own outcome. The label cap is shown twice:
//! on a real node with a cap of 2 and four tenants, and with 2,000
//! tenants driven through the metrics module directly (creating 2,000
//! real tenants, each a RocksDB instance and a raft group, takes minutes).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::node::{client, start_node_with, Node};

use vektagraf::client::Client;
use vektagraf::monitor::{Metrics, NodeSample, Operation, Outcome, Who};
use vektagraf::proto::wire::KeyKind;
use vektagraf::proto::{CollectionSpec, Error, LimitKind, NewObject};
use vektagraf::tenant::TenantUpdate;

/// `GET path` over HTTP/1.1: (status line, headers, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

/// A strict check of the text exposition, line by line: comments are
/// HELP, TYPE, UNIT or the final EOF; every sample belongs to a family
/// declared by TYPE before it (with the suffixes its type allows), has
/// well-formed, quoted labels, and a numeric value. Panics naming the line.
fn check_format(text: &str) {
    let mut types: HashMap<String, String> = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        let at = format!("line {}: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(name_ok(name), "{at}");
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    assert!(["counter", "gauge", "histogram"].contains(&t), "{at}");
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "{at}: declared twice"
                    );
                }
                _ => panic!("{at}: unknown comment"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(&at);
        assert!(value.parse::<f64>().is_ok(), "{at}: value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').expect(&at))),
            None => (series, None),
        };
        assert!(name_ok(name), "{at}: name");
        let family = types.iter().find(|(f, t)| {
            let suffixes: &[&str] = match t.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes
                .iter()
                .any(|s| name.strip_suffix(s) == Some(f.as_str()))
        });
        assert!(family.is_some(), "{at}: no TYPE declared for it");
        for pair in labels
            .map(|l| l.split(',').collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let (k, v) = pair.split_once('=').expect(&at);
            assert!(name_ok(k), "{at}: label name");
            assert!(
                v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                "{at}: label value"
            );
        }
    }
}

/// Scrapes `/metrics`, checks the format, parses it with
/// `prometheus-parse`: (metric name, sorted labels) → value.
fn scrape(node: &Node) -> HashMap<(String, Vec<(String, String)>), f64> {
    let (status, headers, body) =
        http_get(node.metrics.expect("metrics address printed"), "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    check_format(&body);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        out.insert((s.metric, labels), v);
    }
    out
}

type Samples = HashMap<(String, Vec<(String, String)>), f64>;

fn value(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    m.get(&(name.to_string(), l)).copied().unwrap_or(0.0)
}

fn requests(m: &Samples, tenant: &str, op: &str, outcome: &str) -> f64 {
    value(
        m,
        "vektagraf_tenant_requests_total",
        &[("tenant", tenant), ("operation", op), ("outcome", outcome)],
    )
}

async fn tenant_client(admin: &Client, node: &Node, tenant: &str) -> Client {
    admin
        .create_tenant_for_tier(tenant, tenant, "enterprise")
        .await
        .unwrap();
    admin.create_user(tenant, "u").await.unwrap();
    let key = admin
        .create_key(KeyKind::Tenant, Some(tenant), Some("u"), None)
        .await
        .unwrap()
        .0;
    client(node, &key).await.unwrap()
}

fn item(id: &str) -> NewObject {
    NewObject::new("items", id, serde_json::json!({"n": 1})).with_vector(vec![1.0, 0.0, 0.0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_counters_move_by_exactly_the_requests_made() {
    let node = start_node_with("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let c = tenant_client(&admin, &node, "acme").await;

    // Phase 1: nothing counted for the tenant yet; admin requests are
    // under _admin.
    let before = scrape(&node);
    assert_eq!(requests(&before, "acme", "put", "ok"), 0.0);
    assert!(requests(&before, "_admin", "admin_tenants", "ok") >= 1.0);

    // Phase 2: known requests, one error.
    c.create_collection(CollectionSpec::vectors("items", 3))
        .await
        .unwrap();
    for i in 0..5 {
        c.put(item(&format!("o{i}"))).await.unwrap();
    }
    for i in 0..4 {
        assert!(c.get(&format!("o{i}")).await.unwrap().is_some());
    }
    let dup = c
        .create_collection(CollectionSpec::vectors("items", 3))
        .await;
    assert!(matches!(dup, Err(Error::AlreadyExists { .. })), "{dup:?}");

    // Phase 3: a rate limit of 3 requests per minute; count what the
    // driver saw (it does not retry: max_retries = 0).
    let mut cfg = admin.get_tenant("acme").await.unwrap();
    cfg.rate_limit.max_requests = 3;
    cfg.rate_limit.burst_allowance = 0;
    cfg.rate_limit.sliding_window = false;
    cfg.rate_limit.time_window = vektagraf::tenant::Window(Duration::from_secs(60));
    admin
        .update_tenant(
            "acme",
            TenantUpdate {
                rate_limit: Some(cfg.rate_limit),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (mut ok, mut limited) = (0.0, 0.0);
    for _ in 0..8 {
        match c.get("o0").await {
            Ok(_) => ok += 1.0,
            Err(Error::LimitExceeded(l)) if l.kind == LimitKind::Rate => limited += 1.0,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        limited >= 5.0,
        "the limit fired: {ok} ok, {limited} limited"
    );

    // Phase 4: the scrape shows exactly those.
    let after = scrape(&node);
    assert_eq!(requests(&after, "acme", "create_collection", "ok"), 1.0);
    assert_eq!(
        requests(&after, "acme", "create_collection", "error_already_exists"),
        1.0
    );
    assert_eq!(requests(&after, "acme", "put", "ok"), 5.0);
    assert_eq!(requests(&after, "acme", "get", "ok"), 4.0 + ok);
    assert_eq!(requests(&after, "acme", "get", "limit_rate"), limited);
    let acme_total: f64 = after
        .iter()
        .filter(|((name, l), _)| {
            name == "vektagraf_tenant_requests_total"
                && l.contains(&("tenant".to_string(), "acme".to_string()))
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        acme_total,
        1.0 + 1.0 + 5.0 + 4.0 + 8.0,
        "no other request counted"
    );
    // The read cache: every admitted get looked in it once (the first
    // read of each object missed; later reads of o0 with no write between
    // hit, all but perhaps the first); rate-limited gets never reached it.
    let hits = value(
        &after,
        "vektagraf_tenant_cache_hits_total",
        &[("tenant", "acme")],
    );
    let misses = value(
        &after,
        "vektagraf_tenant_cache_misses_total",
        &[("tenant", "acme")],
    );
    assert_eq!(hits + misses, 4.0 + ok, "{hits} hits, {misses} misses");
    assert!(
        misses >= 4.0 && hits >= ok - 1.0,
        "{hits} hits, {misses} misses"
    );
    // Bytes are counted at insert; the entry gauge is moka's last count
    // (brought up to date by the shard's periodic tick), so not asserted.
    assert!(
        value(
            &after,
            "vektagraf_tenant_cache_bytes",
            &[("tenant", "acme")]
        ) > 0.0
    );
    assert!(value(&after, "vektagraf_cache_bytes", &[]) > 0.0);
    assert!(value(&after, "vektagraf_cache_max_bytes", &[]) > 0.0);
    // The latency histogram saw each put once.
    let hist = prometheus_parse::Scrape::parse(
        http_get(node.metrics.unwrap(), "/metrics")
            .2
            .lines()
            .map(|l| Ok(l.to_string())),
    )
    .unwrap();
    let put_hist = hist
        .samples
        .iter()
        .find(|s| {
            s.metric == "vektagraf_tenant_request_duration_seconds"
                && s.labels.get("tenant") == Some("acme")
                && s.labels.get("operation") == Some("put")
        })
        .expect("put latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &put_hist.value else {
        panic!("not a histogram: {:?}", put_hist.value)
    };
    assert_eq!(
        buckets.last().unwrap().count,
        5.0,
        "+Inf bucket holds every put"
    );
    assert_eq!(
        value(
            &after,
            "vektagraf_tenant_request_duration_seconds_count",
            &[("tenant", "acme"), ("operation", "put")]
        ),
        5.0
    );
    // Storage against its limits, from the shard this node leads.
    assert_eq!(
        value(&after, "vektagraf_tenant_objects", &[("tenant", "acme")]),
        5.0
    );
    assert_eq!(
        value(&after, "vektagraf_tenant_vectors", &[("tenant", "acme")]),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "vektagraf_tenant_objects_limit",
            &[("tenant", "acme")]
        ),
        cfg.storage_limit.max_objects as f64
    );
    assert!(
        value(
            &after,
            "vektagraf_tenant_storage_bytes",
            &[("tenant", "acme")]
        ) > 0.0
    );
    // Node gauges.
    assert_eq!(value(&after, "vektagraf_raft_groups", &[]), 1.0);
    assert_eq!(value(&after, "vektagraf_raft_groups_led", &[]), 1.0);
    assert_eq!(value(&after, "vektagraf_tenant_labels", &[]), 1.0);
    assert!(value(&after, "vektagraf_admission_max_in_flight", &[]) > 0.0);
    // Every durable write waited for a raft log fsync, which is timed.
    assert!(value(&after, "vektagraf_fsync_duration_seconds_count", &[]) > 0.0);
    assert!(value(&after, "vektagraf_fsync_duration_seconds_sum", &[]) > 0.0);

    // Only /metrics is served.
    assert!(http_get(node.metrics.unwrap(), "/").0.contains(" 404 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_label_cap_a_real_nodes_tenants_are_summed_under_other() {
    // No relabelling pass during the test: the first two tenants seen
    // keep the labels.
    let node = start_node_with(
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\nmax_tenant_labels = 2\nrelabel_interval_ms = 600000\n",
    );
    let admin = client(&node, &node.admin_key).await.unwrap();
    let mut clients = Vec::new();
    for t in ["t1", "t2", "t3", "t4"] {
        clients.push(tenant_client(&admin, &node, t).await);
    }
    // t1 and t2 are seen first and take the two labels.
    for (i, c) in clients.iter().enumerate() {
        for _ in 0..=i {
            c.create_collection(CollectionSpec::vectors("items", 3))
                .await
                .unwrap();
            c.drop_collection("items").await.unwrap();
        }
    }
    let m = scrape(&node);
    let tenants: BTreeSet<String> = m
        .keys()
        .filter(|(name, _)| name == "vektagraf_tenant_requests_total")
        .flat_map(|(_, l)| {
            l.iter()
                .filter(|(k, _)| k == "tenant")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(
        tenants,
        ["_admin", "_other", "t1", "t2"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(requests(&m, "t1", "create_collection", "ok"), 1.0);
    assert_eq!(requests(&m, "t2", "drop_collection", "ok"), 2.0);
    assert_eq!(requests(&m, "_other", "create_collection", "ok"), 3.0 + 4.0);
    assert_eq!(value(&m, "vektagraf_tenant_labels", &[]), 2.0);
}

/// The cap with 2,000 tenants, through the metrics module directly (not
/// 2,000 real tenants: each would be a RocksDB instance and a raft
/// group). The rendered exposition is parsed like a scrape.
#[test]
fn two_thousand_tenants_render_at_most_the_cap_plus_other() {
    let settings = vektagraf::config::MetricsSettings {
        max_tenant_labels: 100,
        ..Default::default()
    };
    let m = Arc::new(Metrics::new(&settings));
    let ms = Duration::from_millis(2);
    let mut made = 0.0;
    for i in 0..2000 {
        for _ in 0..(1 + i % 4) {
            m.record(
                Who::Tenant(&format!("t{i}")),
                Operation::Get,
                Outcome::OK,
                ms,
            );
            made += 1.0;
        }
    }
    // Later, tenants t1500..t1599 are the busiest: relabelling gives
    // them the labels.
    for _ in 0..3 {
        for i in 1500..1600 {
            for _ in 0..40 {
                m.record(
                    Who::Tenant(&format!("t{i}")),
                    Operation::Put,
                    Outcome::OK,
                    ms,
                );
            }
        }
        m.relabel();
    }
    let text = m.render(NodeSample::default());
    check_format(&text);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut labels = BTreeSet::new();
    let mut gets = 0.0;
    for s in &scrape.samples {
        if s.metric == "vektagraf_tenant_requests_total" {
            labels.insert(s.labels.get("tenant").unwrap().to_string());
            if s.labels.get("operation") == Some("get") {
                if let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) =
                    s.value
                {
                    gets += v;
                }
            }
        }
    }
    assert!(labels.len() <= 101, "{} tenant labels", labels.len());
    assert!(labels.contains("_other"));
    for i in 1500..1600 {
        assert!(
            labels.contains(&format!("t{i}")),
            "t{i} is among the busiest"
        );
    }
    // The first 100 tenants (labelled from their first request) lost
    // their labels to the busy ones; their blocks went to the new
    // owners, so exactly their gets (sum of 1 + i % 4 for i < 100 = 250)
    // left the export. Everything else is there, labelled or in _other.
    assert_eq!(gets, made - 250.0);
    assert_eq!(m.tenants().labelled(), 100);
}
