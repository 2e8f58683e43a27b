//! A2: the stored request history of every tenant on this node, and the
//! analytics report made from every node's.
//!
//! The router counts each finished request into the node's
//! [`Recorder`](crate::monitor::history::Recorder) (on the node the
//! client sent it to, like `/metrics`: a forwarded request is counted
//! once). Every `analytics.flush_ms` the node adds what it gathered, with
//! each tenant's read cache counts and (where it leads the shard) stored
//! bytes integrated over the interval, into per-minute and per-hour
//! rollups in its own RocksDB instance (`<data_dir>/analytics`; written
//! without sync, so a kill -9 keeps them and a power cut may lose the last
//! seconds). A sleeping (hibernated) tenant's stored bytes do not change:
//! the node whose replica led its group as it went to sleep adds them,
//! held since the last time, every `analytics.rest_sample_ms`, when the
//! tenant wakes, and before answering for its history (so an hour's
//! total is exact; a minute series shows storage at rest as a step at
//! each of those times). Minutes are kept `analytics.minutes_kept_ms` (a day), hours
//! `analytics.hours_kept_ms` (90 days); older rollups are deleted at the
//! next trim. The report adds up the rollups of every node (asked over
//! the peer transport on a cluster), period by period.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rocksdb::{IteratorMode, Options, WriteBatch, DB};

use crate::monitor::history::MINUTE_MS;
use crate::proto::{AnalyticsReport, Error, Recommendation, Result, Rollup};
use crate::tenant::Tier;

use super::Database;

/// One hour, ms.
pub const HOUR_MS: u64 = 3_600_000;
/// Ranges ending within this of now and no longer are answered in
/// minutes; others in hours.
const MINUTE_SERIES_MAX_MS: u64 = 24 * HOUR_MS;

fn st(e: impl std::fmt::Display) -> Error {
    Error::storage(format!("analytics store: {e}"))
}

/// A period's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

impl Resolution {
    fn tag(self) -> u8 {
        match self {
            Resolution::Minute => b'm',
            Resolution::Hour => b'h',
        }
    }

    /// The period, ms.
    pub fn ms(self) -> u64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
        }
    }

    /// The resolution a report of `from..to` uses at `now`: minutes for
    /// a range within the minutes kept, else hours.
    pub fn for_range(from_ms: u64, now_ms: u64, minutes_kept_ms: u64) -> Resolution {
        if from_ms >= now_ms.saturating_sub(minutes_kept_ms.min(MINUTE_SERIES_MAX_MS)) {
            Resolution::Minute
        } else {
            Resolution::Hour
        }
    }
}

fn key(res: Resolution, tenant: &str, start_ms: u64) -> Vec<u8> {
    [
        &[res.tag()][..],
        tenant.as_bytes(),
        b"\0",
        &start_ms.to_be_bytes(),
    ]
    .concat()
}

/// This node's rollups.
pub(crate) struct HistoryStore {
    db: DB,
    /// One flush at a time (their read-modify-writes must not interleave).
    flush: Mutex<FlushState>,
}

#[derive(Default)]
struct FlushState {
    /// Each tenant's read cache (hits, misses) at the last flush.
    cache_seen: HashMap<String, (u64, u64)>,
    /// When the last flush sampled storage.
    sampled_at: u64,
    /// When the last flush billed the storage of sleeping tenants.
    rest_billed_at: u64,
    /// When the last trim ran.
    trimmed_at: u64,
}

impl HistoryStore {
    pub(crate) fn open(path: &Path) -> Result<HistoryStore> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.set_max_open_files(64);
        o.set_keep_log_file_num(2);
        Ok(HistoryStore {
            db: DB::open(&o, path).map_err(st)?,
            flush: Mutex::new(FlushState::default()),
        })
    }

    /// Adds `rollups` (tenant, minute rollup) into their minutes and
    /// hours.
    fn add(&self, rollups: Vec<(String, Rollup)>) -> Result<()> {
        // Sum first: a tenant's minute may come in several parts.
        let mut sums: BTreeMap<Vec<u8>, Rollup> = BTreeMap::new();
        for (tenant, r) in rollups {
            for res in [Resolution::Minute, Resolution::Hour] {
                let start = r.start_ms - r.start_ms % res.ms();
                let k = key(res, &tenant, start);
                let e = sums.entry(k).or_insert_with(|| Rollup::at(start));
                let mut part = r.clone();
                part.start_ms = start;
                e.add(&part);
            }
        }
        let mut b = WriteBatch::default();
        for (k, mut r) in sums {
            if let Some(old) = self.db.get(&k).map_err(st)? {
                let old: Rollup = crate::codec::decode(&old).map_err(st)?;
                r.add(&old);
            }
            b.put(&k, crate::codec::encode(&r).map_err(st)?);
        }
        self.db.write(b).map_err(st)
    }

    /// `tenant`'s rollups of `res` starting in `from..to`, oldest first.
    pub(crate) fn range(
        &self,
        tenant: &str,
        res: Resolution,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Rollup>> {
        let first = from_ms - from_ms % res.ms();
        let start = key(res, tenant, first);
        let end = key(res, tenant, to_ms);
        let mut out = Vec::new();
        let it = self
            .db
            .iterator(IteratorMode::From(&start, rocksdb::Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(st)?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            out.push(crate::codec::decode(&v).map_err(st)?);
        }
        Ok(out)
    }

    /// Deletes minutes older than `minutes_ms` and hours older than
    /// `hours_ms`; returns how many went.
    fn trim(&self, now_ms: u64, minutes_ms: u64, hours_ms: u64) -> Result<usize> {
        let mut b = WriteBatch::default();
        let mut n = 0;
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, _) = item.map_err(st)?;
            let Some(start) = k.len().checked_sub(8).and_then(|i| k.get(i..)) else {
                continue;
            };
            let start = u64::from_be_bytes(start.try_into().unwrap_or_default());
            let keep = match k.first() {
                Some(b'm') => minutes_ms,
                _ => hours_ms,
            };
            if start.saturating_add(keep) < now_ms {
                b.delete(&k);
                n += 1;
            }
        }
        self.db.write(b).map_err(st)?;
        Ok(n)
    }
}

impl Database {
    /// This node's rollups of `tenant` in `from..to` at `res`.
    pub fn history_local(
        &self,
        tenant: &str,
        res: Resolution,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<Rollup>> {
        crate::tenant::validate_tenant_id(tenant)?;
        // What was gathered so far counts too, and a sleeping tenant's
        // storage up to now.
        let now = crate::util::now_ms();
        if let Some(t) = self.loaded(tenant).filter(|t| t.is_asleep()) {
            if let Some(r) = t.rested.lock().as_mut() {
                self.record_rest(&t, r, now);
            }
        }
        self.flush_history(now)?;
        self.history()?.range(tenant, res, from_ms, to_ms)
    }

    /// When the analytics history last sampled open shards' storage (now
    /// before the first flush): storage at rest is billed from there.
    pub(crate) fn history_flushed_ms(&self) -> u64 {
        let at = self
            .history()
            .map(|h| h.flush.lock().sampled_at)
            .unwrap_or(0);
        if at == 0 {
            crate::util::now_ms()
        } else {
            at
        }
    }

    fn history(&self) -> Result<Arc<HistoryStore>> {
        self.inner
            .history
            .read()
            .clone()
            .ok_or_else(|| Error::Unavailable {
                reason: "database is closed".into(),
            })
    }

    /// The node's request recorder (the router counts into it).
    pub fn recorder(&self) -> &crate::monitor::history::Recorder {
        &self.inner.recorder
    }

    /// The tenant's requests in flight on this node now (0 when its
    /// replica is not here).
    pub fn in_flight_of(&self, tenant: &str) -> u64 {
        self.loaded(tenant).map_or(0, |t| t.limiter.in_flight())
    }

    /// Starts the flush of the gathered history (it ends when the
    /// database is gone; the close flushes once more).
    pub(crate) fn start_history(&self) {
        let weak = self.downgrade();
        let every = Duration::from_millis(self.inner.config.analytics.flush_ms.max(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else { return };
                let r =
                    tokio::task::spawn_blocking(move || db.flush_history(crate::util::now_ms()))
                        .await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "analytics history flush failed"),
                    Err(e) => tracing::warn!(error = %e, "analytics history flush panicked"),
                }
            }
        });
    }

    /// Samples every loaded tenant's read cache and (where this node
    /// leads its shard) stored bytes, then stores what was gathered.
    pub(crate) fn flush_history(&self, now_ms: u64) -> Result<()> {
        let store = self.history()?;
        let mut fs = store.flush.lock();
        let since = if fs.sampled_at == 0 {
            0
        } else {
            now_ms.saturating_sub(fs.sampled_at)
        };
        fs.sampled_at = now_ms;
        // Only open shards: a sleeping one serves nothing (its cache
        // counters stand still) and leads nothing here. Its last counts
        // stay in `cache_seen` for when it wakes.
        for t in self.awake_tenants() {
            let id = t.config().tenant_id.clone();
            let c = t.cache.stats();
            let (h0, m0) = fs.cache_seen.get(&id).copied().unwrap_or((0, 0));
            let leads = t.raft().is_some_and(|r| crate::shard::is_leader(&r));
            let bytes = match (leads, t.data()) {
                (true, Ok(d)) => Some((d.usage().bytes, since)),
                _ => None,
            };
            let (dh, dm) = (c.hits.saturating_sub(h0), c.misses.saturating_sub(m0));
            if dh > 0 || dm > 0 || bytes.is_some_and(|(b, ms)| b > 0 && ms > 0) {
                self.inner.recorder.sample(&id, now_ms, dh, dm, bytes);
            }
            fs.cache_seen.insert(id, (c.hits, c.misses));
        }
        let a = &self.inner.config.analytics;
        // Sleeping tenants' storage, every `rest_sample_ms` (in one piece
        // per tenant: the bytes did not change). Stored directly, not
        // through the recorder's bounded pending map: one entry per
        // sleeping tenant.
        let mut taken = self.inner.recorder.take();
        if now_ms.saturating_sub(fs.rest_billed_at) >= a.rest_sample_ms {
            fs.rest_billed_at = now_ms;
            for t in self.loaded_tenants().into_iter().filter(|t| t.is_asleep()) {
                let Some(r) = t
                    .rested
                    .lock()
                    .as_mut()
                    .and_then(|r| self.bill_rest(&t, r, now_ms))
                else {
                    continue;
                };
                let mut rollup = Rollup::at(crate::monitor::history::minute_of(now_ms));
                rollup.storage_byte_ms = r.0.saturating_mul(r.1);
                rollup.storage_bytes_max = r.0;
                taken.push((t.config().tenant_id.clone(), rollup));
            }
        }
        store.add(taken)?;
        if now_ms.saturating_sub(fs.trimmed_at) >= a.trim_ms {
            fs.trimmed_at = now_ms;
            // Tenants no longer held here.
            let loaded: std::collections::HashSet<String> = self.loaded_ids().into_iter().collect();
            fs.cache_seen.retain(|id, _| loaded.contains(id));
            let n = store.trim(now_ms, a.minutes_kept_ms, a.hours_kept_ms)?;
            if n > 0 {
                tracing::debug!(removed = n, "analytics history trimmed");
            }
        }
        Ok(())
    }

    /// The resolution of a report over `from..to`, or why the range is
    /// refused (empty, or reaching past the hours kept).
    pub fn analytics_range(&self, from_ms: u64, to_ms: u64) -> Result<Resolution> {
        let a = &self.inner.config.analytics;
        if from_ms >= to_ms {
            return Err(Error::invalid("range", "from must be before to"));
        }
        let now = crate::util::now_ms();
        if to_ms - from_ms > a.hours_kept_ms.saturating_add(HOUR_MS) {
            return Err(Error::invalid(
                "range",
                format!(
                    "longer than the {} days of history kept",
                    a.hours_kept_ms / (24 * HOUR_MS)
                ),
            ));
        }
        Ok(Resolution::for_range(from_ms, now, a.minutes_kept_ms))
    }

    /// A2: `tenant`'s report over `from..to` from this node's history
    /// alone (a standalone node; a cluster asks every node).
    pub async fn analytics(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<AnalyticsReport> {
        crate::tenant::validate_tenant_id(tenant)?;
        let res = self.analytics_range(from_ms, to_ms)?;
        let local = self.history_local(tenant, res, from_ms, to_ms)?;
        self.analytics_report(tenant, res, from_ms, to_ms, vec![local], Vec::new())
            .await
    }

    /// A2: the report of `tenant` over `from..to` from `series` (every
    /// node's rollups at `res`, added up here) and the tenant's usage now
    /// (for the recommendations). `missing`: nodes that did not answer.
    pub async fn analytics_report(
        &self,
        tenant: &str,
        res: Resolution,
        from_ms: u64,
        to_ms: u64,
        series: Vec<Vec<Rollup>>,
        missing: Vec<u64>,
    ) -> Result<AnalyticsReport> {
        let cfg = self.get_tenant(tenant).await?;
        let usage = self.usage(tenant).await.ok();
        let price = self.tiers().limits(cfg.tier).price;
        let mut by_period: BTreeMap<u64, Rollup> = BTreeMap::new();
        for node in series {
            for r in node {
                if r.start_ms + res.ms() <= from_ms || r.start_ms >= to_ms {
                    continue;
                }
                by_period
                    .entry(r.start_ms)
                    .or_insert_with(|| Rollup::at(r.start_ms))
                    .add(&r);
            }
        }
        let mut total = Rollup::at(from_ms);
        for r in by_period.values() {
            total.add(r);
        }
        // The part of the range the tenant existed in (and that passed).
        let now = crate::util::now_ms();
        let span_ms = to_ms
            .min(now)
            .saturating_sub(from_ms.max(cfg.created_at))
            .max(1);
        let span_h = span_ms as f64 / HOUR_MS as f64;
        let gb_hours = total.storage_byte_ms as f64 / 1e9 / HOUR_MS as f64;
        let bandwidth = total.bytes_in + total.bytes_out;
        let month_h = 30.0 * 24.0;
        let per_month = month_h / span_h;
        let cost = price.base_monthly
            + total.requests as f64 * per_month / 1e6 * price.per_million_requests
            + gb_hours / span_h * price.per_gb_month
            + bandwidth as f64 * per_month / 1e9 * price.per_gb_transfer;
        let reads = total.cache_hits + total.cache_misses;
        let mut report = AnalyticsReport {
            tenant_id: tenant.to_string(),
            from_ms,
            to_ms,
            resolution_ms: res.ms(),
            total_requests: total.requests,
            errors: total.errors,
            error_rate: ratio(total.errors, total.requests),
            rejections: total.rejections,
            rate_rejections: total.rate_rejections,
            avg_latency_ms: if total.requests == 0 {
                0.0
            } else {
                total.latency_us as f64 / total.requests as f64 / 1000.0
            },
            p95_latency_ms: total.latency_quantile_ms(0.95).unwrap_or(0.0),
            p99_latency_ms: total.latency_quantile_ms(0.99).unwrap_or(0.0),
            throughput_rps: total.requests as f64 / (span_ms as f64 / 1000.0),
            peak_concurrency: total.peak_concurrency,
            cache_hit_rate: (reads > 0).then(|| ratio(total.cache_hits, reads)),
            storage_gb_hours: gb_hours,
            request_units: total.requests + bandwidth.div_ceil(1024),
            bandwidth_bytes: bandwidth,
            estimated_monthly_cost: (cost * 100.0).round() / 100.0,
            currency: "USD".into(),
            recommendations: Vec::new(),
            series: by_period.into_values().collect(),
            nodes_missing: missing,
        };
        report.recommendations = recommend(&report, &cfg, usage.as_ref(), span_h);
        Ok(report)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Share of active periods with rate rejections past which they count as
/// sustained.
const SUSTAINED: f64 = 0.2;
/// Periods with rate rejections that make a pattern at all.
const SUSTAINED_MIN: usize = 3;

/// The recommendations, most urgent first.
fn recommend(
    r: &AnalyticsReport,
    cfg: &crate::TenantConfig,
    usage: Option<&crate::proto::TenantUsage>,
    span_h: f64,
) -> Vec<Recommendation> {
    let mut out = Vec::new();
    let rec = |priority: &str, kind: &str, message: String| Recommendation {
        priority: priority.into(),
        kind: kind.into(),
        message,
    };
    let limits = usage.map(|u| u.limits.as_slice()).unwrap_or_default();
    for l in limits
        .iter()
        .filter(|l| l.limit.starts_with("storage_limit."))
    {
        if l.ratio > 0.8 {
            let priority = if l.ratio > 0.95 { "high" } else { "medium" };
            let how = if cfg.auto_scale() {
                "auto_scale is on and raises it x1.5 up to the tier's ceiling"
            } else {
                "raise the limit, turn on auto_scale, or move to a larger tier"
            };
            out.push(rec(
                priority,
                "storage",
                format!(
                    "{} at {:.0}% ({} of {}): {how}",
                    l.limit,
                    l.ratio * 100.0,
                    l.used,
                    l.max
                ),
            ));
        }
    }
    let active = r.series.iter().filter(|p| p.requests > 0).count();
    let limited = r.series.iter().filter(|p| p.rate_rejections > 0).count();
    if limited >= SUSTAINED_MIN && limited as f64 >= active as f64 * SUSTAINED {
        out.push(rec(
            "high",
            "rate_limit",
            format!(
                "rate-limited in {limited} of {active} active periods ({} requests refused): raise rate_limit.max_requests ({} per {}) or move to a larger tier",
                r.rate_rejections, cfg.rate_limit.max_requests, cfg.rate_limit.time_window
            ),
        ));
    }
    if r.total_requests >= 100 && r.error_rate > 0.05 {
        out.push(rec(
            "medium",
            "errors",
            format!(
                "{:.1}% of requests failed ({} of {}): see the node logs and /metrics outcomes",
                r.error_rate * 100.0,
                r.errors,
                r.total_requests
            ),
        ));
    }
    // A tier too big: a day's requests and every storage use under 10% of
    // the limits, over at least an hour of history.
    let per_day = r.total_requests as f64 / span_h.max(1e-9) * 24.0;
    let storage_small = limits
        .iter()
        .filter(|l| l.limit.starts_with("storage_limit."))
        .all(|l| l.ratio < 0.1);
    let smaller = match cfg.tier {
        Tier::Tier2 => Some("tier1"),
        Tier::Tier3 => Some("tier2"),
        Tier::Tier4 => Some("tier3"),
        Tier::Tier1 | Tier::Custom => None,
    };
    if let (Some(smaller), true) = (smaller, span_h >= 1.0 && usage.is_some()) {
        if per_day < cfg.request_limit.daily_limit as f64 * 0.1 && storage_small {
            out.push(rec(
                "low",
                "tier",
                format!(
                    "{} uses under 10% of its {} limits ({per_day:.0} requests a day of {}; storage under 10%): {smaller} would fit",
                    cfg.tenant_id, cfg.tier, cfg.request_limit.daily_limit
                ),
            ));
        }
    }
    let rank = |p: &str| match p {
        "high" => 0,
        "medium" => 1,
        _ => 2,
    };
    out.sort_by_key(|r| rank(&r.priority));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollup(start: u64, requests: u64, rate_rejections: u64) -> Rollup {
        Rollup {
            requests,
            rate_rejections,
            rejections: rate_rejections,
            ..Rollup::at(start)
        }
    }

    #[test]
    fn minutes_and_hours_add_up_and_survive_a_reopen_and_trim_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let h = HOUR_MS;
        {
            let s = HistoryStore::open(dir.path()).unwrap();
            s.add(vec![
                ("a".into(), rollup(h + MINUTE_MS, 2, 0)),
                ("a".into(), rollup(h + MINUTE_MS, 3, 1)),
                ("a".into(), rollup(h + 2 * MINUTE_MS, 1, 0)),
                ("b".into(), rollup(h, 7, 0)),
            ])
            .unwrap();
            s.add(vec![("a".into(), rollup(2 * h, 4, 0))]).unwrap();
        }
        let s = HistoryStore::open(dir.path()).unwrap();
        let m = s.range("a", Resolution::Minute, 0, 3 * h).unwrap();
        assert_eq!(
            m.iter()
                .map(|r| (r.start_ms, r.requests))
                .collect::<Vec<_>>(),
            [(h + MINUTE_MS, 5), (h + 2 * MINUTE_MS, 1), (2 * h, 4)]
        );
        let hours = s.range("a", Resolution::Hour, 0, 3 * h).unwrap();
        assert_eq!(
            hours
                .iter()
                .map(|r| (r.start_ms, r.requests))
                .collect::<Vec<_>>(),
            [(h, 6), (2 * h, 4)]
        );
        // A tenant's range never reads another's ("a" vs "b").
        assert_eq!(
            s.range("b", Resolution::Hour, 0, 3 * h).unwrap()[0].requests,
            7
        );
        // Keep minutes for 30 min and hours for 1.5 h, at 2 h 20 min.
        let now = 2 * h + 20 * MINUTE_MS;
        assert_eq!(s.trim(now, 30 * MINUTE_MS, h + h / 2).unwrap(), 3);
        let m = s.range("a", Resolution::Minute, 0, 3 * h).unwrap();
        assert_eq!(m.iter().map(|r| r.start_ms).collect::<Vec<_>>(), [2 * h]);
        let hours = s.range("a", Resolution::Hour, 0, 3 * h).unwrap();
        assert_eq!(
            hours.iter().map(|r| r.start_ms).collect::<Vec<_>>(),
            [h, 2 * h]
        );
    }

    #[test]
    fn recommendations_name_storage_pressure_sustained_rate_limits_and_a_tier_too_big() {
        use crate::proto::{LimitUse, TenantUsage};
        let cfg = crate::TenantConfig::for_tier(
            &crate::Tiers::default(),
            "t",
            "t",
            "tier4",
            serde_json::json!({}),
        )
        .unwrap();
        let limit = |name: &str, used: u64, max: u64| LimitUse {
            limit: name.into(),
            used,
            max,
            ratio: used as f64 / max as f64,
        };
        let mut usage = TenantUsage {
            tenant_id: "t".into(),
            limits: vec![
                limit("storage_limit.max_objects", 85, 100),
                limit("storage_limit.max_vectors", 1, 100),
            ],
            ..Default::default()
        };
        // 10 active minutes, 5 with rate rejections.
        let series: Vec<Rollup> = (0..10)
            .map(|i| rollup(i * MINUTE_MS, 10, if i % 2 == 0 { 3 } else { 0 }))
            .collect();
        let report = AnalyticsReport {
            total_requests: 100,
            rate_rejections: 15,
            series,
            ..Default::default()
        };
        let recs = recommend(&report, &cfg, Some(&usage), 2.0);
        let kinds: Vec<(&str, &str)> = recs
            .iter()
            .map(|r| (r.priority.as_str(), r.kind.as_str()))
            .collect();
        assert_eq!(kinds, [("high", "rate_limit"), ("medium", "storage")]);
        assert!(recs[1].message.contains("85%"), "{}", recs[1].message);
        // Two periods of rejections are no pattern; tiny usage of tier4
        // over two hours: tier3 would fit.
        usage.limits[0] = limit("storage_limit.max_objects", 1, 100);
        let quiet = AnalyticsReport {
            total_requests: 20,
            series: vec![rollup(0, 10, 1), rollup(MINUTE_MS, 10, 1)],
            ..Default::default()
        };
        let recs = recommend(&quiet, &cfg, Some(&usage), 2.0);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!(
            (recs[0].priority.as_str(), recs[0].kind.as_str()),
            ("low", "tier")
        );
        assert!(recs[0].message.contains("tier3"), "{}", recs[0].message);
    }

    #[test]
    fn a_range_within_the_minutes_kept_is_answered_in_minutes() {
        let day = 24 * HOUR_MS;
        assert_eq!(
            Resolution::for_range(10 * day - HOUR_MS, 10 * day, day),
            Resolution::Minute
        );
        assert_eq!(
            Resolution::for_range(8 * day, 10 * day, day),
            Resolution::Hour
        );
    }
}
