//! `TenantConfig` and its three limit groups, with the spec's field names.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::{Error, OperationType, Properties};

use super::tiers::Tiers;

/// Tier of a tenant: the presets `tier1` to `tier4`, or `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Starter.
    Tier1,
    /// Professional.
    Tier2,
    /// Business.
    Tier3,
    /// Enterprise.
    Tier4,
    /// Limits set per tenant.
    Custom,
}

impl Tier {
    /// `tier1` ... `custom`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Tier1 => "tier1",
            Tier::Tier2 => "tier2",
            Tier::Tier3 => "tier3",
            Tier::Tier4 => "tier4",
            Tier::Custom => "custom",
        }
    }

    /// Parses `tier1`..`tier4`, `custom`, or a standard name (starter,
    /// professional, business, enterprise).
    pub fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "tier1" | "starter" => Tier::Tier1,
            "tier2" | "professional" => Tier::Tier2,
            "tier3" | "business" => Tier::Tier3,
            "tier4" | "enterprise" => Tier::Tier4,
            "custom" => Tier::Custom,
            _ => return None,
        })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request priority: who is admitted first when the node is saturated.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served last.
    Low,
    /// Default.
    #[default]
    Normal,
    /// Before normal.
    High,
    /// First.
    Critical,
}

impl Priority {
    /// 0 (low) to 3 (critical).
    pub fn rank(self) -> usize {
        self as usize
    }
}

/// A duration written as text in config files (`"500ms"`, `"30s"`, `"1m"`,
/// `"2h"`, `"1d"`) and as milliseconds in binary encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window(pub Duration);

impl Window {
    /// Milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }

    /// Parses `"<number><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(s: &str) -> Option<Window> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let ms = match unit {
            "ms" => n,
            "s" => n.checked_mul(1000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            "d" => n.checked_mul(86_400_000)?,
            _ => return None,
        };
        Some(Window(Duration::from_millis(ms)))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.as_millis())
        }
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Window::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "bad duration {s:?}: use e.g. 500ms, 30s, 1m, 1h, 1d"
                ))
            })
        } else {
            Ok(Window(Duration::from_millis(u64::deserialize(d)?)))
        }
    }
}

/// R1, R2: request rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests admitted per `time_window` (before the burst allowance).
    pub max_requests: u64,
    /// The window.
    pub time_window: Window,
    /// Sliding (true) or fixed (false) window. See `limits::rate`.
    #[serde(default = "yes")]
    pub sliding_window: bool,
    /// Extra requests admitted per window on top of `max_requests`.
    #[serde(default)]
    pub burst_allowance: u64,
    /// Which operations are allowed, each with its own per-window limit
    /// (`0`: allowed, only the overall limit applies). An operation missing
    /// from the map is refused with `OperationNotAllowed`.
    pub operation_types: BTreeMap<OperationType, u64>,
}

fn yes() -> bool {
    true
}

/// S1, S2: storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageLimitConfig {
    /// Bytes of objects, edges and property index keys.
    pub max_storage_bytes: u64,
    /// Objects.
    pub max_objects: u64,
    /// Bytes of one encoded object.
    pub max_object_size: u64,
    /// Objects with a vector.
    pub max_vectors: u64,
    /// Largest collection dimension.
    pub max_vector_dimensions: u32,
    /// Fraction (0..=1) of a limit at which a warning is raised.
    pub warning_threshold: f64,
    /// Reject writes over a limit (true) or let them through with a warning.
    pub hard_limits: bool,
}

/// Q1 to Q4: request quotas and shaping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimitConfig {
    /// Requests per UTC day.
    pub daily_limit: u64,
    /// Requests per UTC month.
    pub monthly_limit: u64,
    /// Operations in flight at once.
    pub concurrent_limit: u32,
    /// Highest estimated cost of one operation.
    pub complexity_limit: u64,
    /// Most rows one operation may return.
    pub max_result_size: u64,
    /// Admission priority.
    pub priority: Priority,
}

/// The limits of one tier, as written in `tiers.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Rates.
    pub rate_limit: RateLimitConfig,
    /// Storage.
    pub storage_limit: StorageLimitConfig,
    /// Requests.
    pub request_limit: RequestLimitConfig,
    /// Read cache (C1); the seed's 15 minutes and 1,000 entries when absent.
    #[serde(default)]
    pub cache: CacheLimits,
    /// S4: objects older than this are deleted by the scheduled cleanup
    /// (absent or 0: kept forever).
    #[serde(default)]
    pub retention: Option<Window>,
    /// A5: how far the dynamic limit policy may raise a tenant's storage
    /// limits (absent: it never raises them).
    #[serde(default)]
    pub auto_scale: Option<StorageCeiling>,
    /// A5: years the audit log keeps a tenant's limit changes (absent:
    /// the node's `[audit] default_retention_years`).
    #[serde(default)]
    pub audit_retention_years: Option<u64>,
    /// A2: the price table the analytics report estimates a month's
    /// cost from (absent: free).
    #[serde(default)]
    pub price: Price,
}

/// A2: what a tier costs, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    /// Fixed, per month.
    pub base_monthly: f64,
    /// Per million requests.
    pub per_million_requests: f64,
    /// Per gigabyte (10^9 bytes) stored for a month.
    pub per_gb_month: f64,
    /// Per gigabyte moved (requests and responses).
    pub per_gb_transfer: f64,
}

/// A5: the most the dynamic limit policy raises each storage limit to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageCeiling {
    /// Ceiling of `max_storage_bytes`.
    pub max_storage_bytes: u64,
    /// Ceiling of `max_objects`.
    pub max_objects: u64,
    /// Ceiling of `max_vectors`.
    pub max_vectors: u64,
}

/// A5: the seed's dynamic limit rule: a storage limit used past this
/// fraction is raised ...
pub const AUTO_SCALE_AT: f64 = 0.8;
/// ... by this factor (capped by the tier's [`StorageCeiling`]).
pub const AUTO_SCALE_FACTOR: f64 = 1.5;

/// C1: a tenant's read cache on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheLimits {
    /// How long a cached result is kept after it was stored.
    pub ttl: Window,
    /// Most cached results (0: no cache).
    pub max_entries: u64,
}

/// The seed's cache TTL (15 minutes).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(15 * 60);
/// The seed's cache size per tenant (1,000 entries).
pub const DEFAULT_CACHE_ENTRIES: u64 = 1_000;
/// Upper bound of a tenant's `cache_max_entries`.
pub const MAX_CACHE_ENTRIES: u64 = 1_000_000;

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            ttl: Window(DEFAULT_CACHE_TTL),
            max_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// T2: everything about one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantConfig {
    /// Id: see [`validate_tenant_id`](super::validate_tenant_id).
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Tier the limits came from.
    pub tier: Tier,
    /// Rates.
    pub rate_limit: RateLimitConfig,
    /// Storage.
    pub storage_limit: StorageLimitConfig,
    /// Requests.
    pub request_limit: RequestLimitConfig,
    /// A disabled tenant is refused every operation.
    pub enabled: bool,
    /// Free-form settings. `max_batch_size` (default 100) splits batches.
    pub custom_settings: Properties,
    /// Creation time, ms since the Unix epoch.
    pub created_at: u64,
}

/// Default `custom_settings.max_batch_size`.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 100;
/// Upper bound for `custom_settings.max_batch_size`.
pub const MAX_BATCH_SIZE_CAP: usize = 10_000;

impl TenantConfig {
    /// A tenant on a tier, with the tier's limits. A standard name
    /// (starter, professional, business, enterprise) also brings its default
    /// `custom_settings`; `custom_settings` given here override those.
    pub fn for_tier(
        tiers: &Tiers,
        tenant_id: &str,
        name: &str,
        tier_name: &str,
        custom_settings: serde_json::Value,
    ) -> Result<TenantConfig, Error> {
        let tier = Tier::parse(tier_name).ok_or_else(|| Error::InvalidConfig {
            key: "tier".into(),
            reason: format!("unknown tier {tier_name:?}; use tier1..tier4, custom, starter, professional, business or enterprise"),
        })?;
        let limits = tiers.limits(tier).clone();
        let mut settings = tiers.standard_settings(tier_name);
        let Properties(extra) = Properties::from_json(custom_settings)?;
        settings.0.extend(extra);
        let cfg = TenantConfig {
            tenant_id: tenant_id.to_string(),
            name: name.to_string(),
            tier,
            rate_limit: limits.rate_limit,
            storage_limit: limits.storage_limit,
            request_limit: limits.request_limit,
            enabled: true,
            custom_settings: settings,
            created_at: crate::util::now_ms(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `custom_settings.max_batch_size`, default 100, at most 10,000.
    pub fn max_batch_size(&self) -> usize {
        self.custom_settings
            .0
            .get("max_batch_size")
            .or_else(|| self.custom_settings.0.get("maxBatchSize"))
            .and_then(|v| v.as_u64())
            .map(|n| (n as usize).clamp(1, MAX_BATCH_SIZE_CAP))
            .unwrap_or(DEFAULT_MAX_BATCH_SIZE)
    }

    /// The tenant's read cache limits: its tier's (`tier`, from the
    /// tiers file), overridden by `custom_settings.cache_ttl_ms` and
    /// `custom_settings.cache_max_entries` (at most 1,000,000; 0 turns
    /// the cache off).
    pub fn cache_limits(&self, tier: &CacheLimits) -> CacheLimits {
        let get = |k: &str| self.custom_settings.0.get(k).and_then(|v| v.as_u64());
        CacheLimits {
            ttl: get("cache_ttl_ms")
                .map(|ms| Window(Duration::from_millis(ms)))
                .unwrap_or(tier.ttl),
            max_entries: get("cache_max_entries")
                .unwrap_or(tier.max_entries)
                .min(MAX_CACHE_ENTRIES),
        }
    }

    /// A5: whether the tenant opted in to the dynamic limit policy
    /// (`custom_settings.auto_scale = true`).
    pub fn auto_scale(&self) -> bool {
        self.custom_settings
            .0
            .get("auto_scale")
            .and_then(|v| v.as_bool())
            == Some(true)
    }

    /// A5: years the audit log keeps this tenant's limit changes:
    /// `custom_settings.audit_retention_years` (set by the standard
    /// names), else its tier's (`tier`), else `default`.
    pub fn audit_retention_years(&self, tier: Option<u64>, default: u64) -> u64 {
        let own = self.custom_settings.0.get("audit_retention_years");
        own.and_then(|v| v.as_u64()).or(tier).unwrap_or(default)
    }

    /// S4: the tenant's retention period: `custom_settings.retention_ms`
    /// when set (0: kept forever), else its tier's `retention` (`tier`);
    /// `None`: objects are kept forever.
    pub fn retention(&self, tier: Option<Window>) -> Option<Duration> {
        let ms = match self
            .custom_settings
            .0
            .get("retention_ms")
            .and_then(|v| v.as_u64())
        {
            Some(ms) => ms,
            None => tier.map_or(0, |w| w.as_millis()),
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Whether `operation_types` allows `op`.
    pub fn allows(&self, op: OperationType) -> bool {
        self.rate_limit.operation_types.contains_key(&op)
    }

    /// Rejects nonsense, naming the key.
    pub fn validate(&self) -> Result<(), Error> {
        super::validate_tenant_id(&self.tenant_id)?;
        let bad = |key: &str, reason: &str| {
            Err(Error::InvalidConfig {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.name.len() > 256 {
            return bad("name", "longer than 256 bytes");
        }
        let r = &self.rate_limit;
        if r.max_requests == 0 {
            return bad("rate_limit.max_requests", "must be at least 1");
        }
        if r.time_window.as_millis() == 0 {
            return bad("rate_limit.time_window", "must be positive");
        }
        if r.time_window.as_millis() > 31 * 86_400_000 {
            return bad("rate_limit.time_window", "must be at most 31d");
        }
        let s = &self.storage_limit;
        if !(s.warning_threshold > 0.0 && s.warning_threshold <= 1.0) {
            return bad("storage_limit.warning_threshold", "must be in (0, 1]");
        }
        if s.max_vector_dimensions == 0 || s.max_vector_dimensions > 65_536 {
            return bad(
                "storage_limit.max_vector_dimensions",
                "must be in 1..=65536",
            );
        }
        if s.max_object_size == 0 {
            return bad("storage_limit.max_object_size", "must be at least 1");
        }
        let q = &self.request_limit;
        if q.concurrent_limit == 0 {
            return bad("request_limit.concurrent_limit", "must be at least 1");
        }
        if q.max_result_size == 0 {
            return bad("request_limit.max_result_size", "must be at least 1");
        }
        if q.complexity_limit == 0 {
            return bad("request_limit.complexity_limit", "must be at least 1");
        }
        if self.custom_settings.encoded_len() > 64 * 1024 {
            return bad("custom_settings", "larger than 64 KiB");
        }
        if let Some(v) = self.custom_settings.0.get("retention_ms") {
            if v.as_u64().is_none() {
                return bad(
                    "custom_settings.retention_ms",
                    "must be a whole number of milliseconds (0: kept forever)",
                );
            }
        }
        Ok(())
    }
}

/// A partial update of a tenant's config; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantUpdate {
    /// New name.
    pub name: Option<String>,
    /// New tier: its preset limits replace the current ones, then any limit
    /// groups given below apply on top.
    pub tier: Option<Tier>,
    /// New rate limits.
    pub rate_limit: Option<RateLimitConfig>,
    /// New storage limits.
    pub storage_limit: Option<StorageLimitConfig>,
    /// New request limits.
    pub request_limit: Option<RequestLimitConfig>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Settings merged into `custom_settings` (a null value removes a key).
    pub custom_settings: Option<Properties>,
    /// Why (kept in the audit log with every field the update changes).
    #[serde(default)]
    pub reason: Option<String>,
}

impl TenantUpdate {
    /// Applies the update to a copy of `cfg`.
    pub fn apply(&self, tiers: &Tiers, cfg: &TenantConfig) -> Result<TenantConfig, Error> {
        let mut out = cfg.clone();
        if let Some(n) = &self.name {
            out.name = n.clone();
        }
        if let Some(t) = self.tier {
            let l = tiers.limits(t).clone();
            out.tier = t;
            out.rate_limit = l.rate_limit;
            out.storage_limit = l.storage_limit;
            out.request_limit = l.request_limit;
        }
        if let Some(r) = &self.rate_limit {
            out.rate_limit = r.clone();
        }
        if let Some(s) = &self.storage_limit {
            out.storage_limit = s.clone();
        }
        if let Some(q) = &self.request_limit {
            out.request_limit = q.clone();
        }
        if let Some(e) = self.enabled {
            out.enabled = e;
        }
        if let Some(Properties(m)) = &self.custom_settings {
            for (k, v) in m {
                if v.is_null() {
                    out.custom_settings.0.remove(k);
                } else {
                    out.custom_settings.0.insert(k.clone(), v.clone());
                }
            }
        }
        out.validate()?;
        Ok(out)
    }
}
