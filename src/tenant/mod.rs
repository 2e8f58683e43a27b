//! Tenants: configuration, tier presets, id rules. Pure types and checks.

mod config;
mod id;
mod tiers;

pub use config::{
    CacheLimits, Price, Priority, RateLimitConfig, RequestLimitConfig, StorageCeiling,
    StorageLimitConfig, TenantConfig, TenantUpdate, Tier, TierLimits, Window, AUTO_SCALE_AT,
    AUTO_SCALE_FACTOR, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL, DEFAULT_MAX_BATCH_SIZE,
    MAX_BATCH_SIZE_CAP, MAX_CACHE_ENTRIES,
};
pub use id::{validate_name, validate_tenant_id, MAX_TENANT_ID_LEN};
pub use tiers::{Tiers, DEFAULT_TIERS_TOML};
