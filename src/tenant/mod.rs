//! Tenants: configuration, tier presets, id rules. Pure types and checks.

mod config;
mod id;
mod tiers;

pub use config::{
    Priority, RateLimitConfig, RequestLimitConfig, StorageLimitConfig, TenantConfig, TenantUpdate,
    Tier, TierLimits, Window, DEFAULT_MAX_BATCH_SIZE, MAX_BATCH_SIZE_CAP,
};
pub use id::{validate_name, validate_tenant_id, MAX_TENANT_ID_LEN};
pub use tiers::{Tiers, DEFAULT_TIERS_TOML};
