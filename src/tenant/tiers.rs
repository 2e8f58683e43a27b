//! Tier presets (`config/tiers.toml`) and the standard names mapped onto them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::proto::{Error, Properties};

use super::config::{Tier, TierLimits};

/// The presets compiled into the binary.
pub const DEFAULT_TIERS_TOML: &str = include_str!("../../config/tiers.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StandardTier {
    tier: Tier,
    #[serde(default)]
    custom_settings: Properties,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TiersFile {
    tiers: BTreeMap<Tier, TierLimits>,
    #[serde(default)]
    standard: BTreeMap<String, StandardTier>,
}

/// The loaded presets: limits for each tier, and the standard names.
#[derive(Debug, Clone)]
pub struct Tiers {
    tiers: BTreeMap<Tier, TierLimits>,
    standard: BTreeMap<String, StandardTier>,
}

impl Tiers {
    /// Parses a tiers file. Every tier (`tier1`..`tier4`, `custom`) must be present.
    pub fn from_toml(text: &str) -> Result<Tiers, Error> {
        let file: TiersFile = toml::from_str(text).map_err(|e| Error::InvalidConfig {
            key: "tiers".into(),
            reason: e.to_string(),
        })?;
        for t in [
            Tier::Tier1,
            Tier::Tier2,
            Tier::Tier3,
            Tier::Tier4,
            Tier::Custom,
        ] {
            if !file.tiers.contains_key(&t) {
                return Err(Error::InvalidConfig {
                    key: format!("tiers.{t}"),
                    reason: "missing".into(),
                });
            }
        }
        let tiers = Tiers {
            tiers: file.tiers,
            standard: file.standard,
        };
        // Validate each preset by building a config from it.
        for t in tiers.tiers.keys() {
            super::TenantConfig::for_tier(
                &tiers,
                "preset_check",
                "",
                t.as_str(),
                serde_json::json!({}),
            )
            .map_err(|e| Error::InvalidConfig {
                key: format!("tiers.{t}"),
                reason: e.to_string(),
            })?;
        }
        Ok(tiers)
    }

    /// Loads a tiers file from disk.
    pub fn load(path: &Path) -> Result<Tiers, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidConfig {
            key: "tiers_file".into(),
            reason: format!("{}: {e}", path.display()),
        })?;
        Self::from_toml(&text)
    }

    /// Limits of a tier.
    pub fn limits(&self, tier: Tier) -> &TierLimits {
        // Every tier is checked present in `from_toml`.
        &self.tiers[&tier]
    }

    /// Default `custom_settings` of a standard name (empty for other names).
    pub fn standard_settings(&self, name: &str) -> Properties {
        self.standard
            .get(name)
            .map(|s| s.custom_settings.clone())
            .unwrap_or_default()
    }

    /// The tier a standard name maps onto.
    pub fn standard_tier(&self, name: &str) -> Option<Tier> {
        self.standard.get(name).map(|s| s.tier)
    }
}

impl Default for Tiers {
    fn default() -> Self {
        #[allow(clippy::expect_used)]
        Tiers::from_toml(DEFAULT_TIERS_TOML).expect("compiled-in tiers.toml is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantConfig;

    #[test]
    fn presets_load_and_standard_names_map() {
        let t = Tiers::default();
        assert_eq!(t.standard_tier("starter"), Some(Tier::Tier1));
        assert_eq!(t.standard_tier("enterprise"), Some(Tier::Tier4));
        let c = TenantConfig::for_tier(
            &t,
            "acme",
            "ACME",
            "enterprise",
            serde_json::json!({"industry": "tech"}),
        )
        .unwrap();
        assert_eq!(c.tier, Tier::Tier4);
        assert_eq!(c.custom_settings.0["backup_frequency"], "hourly");
        assert_eq!(c.custom_settings.0["dedicated_resources"], true);
        assert_eq!(c.custom_settings.0["industry"], "tech");
        let s = TenantConfig::for_tier(&t, "s", "S", "tier1", serde_json::json!({})).unwrap();
        assert!(s.custom_settings.0.is_empty());
        assert_eq!(s.max_batch_size(), 100);
    }

    #[test]
    fn cache_limits_come_from_the_tier_and_custom_settings_override_them() {
        let t = Tiers::default();
        let tier = t.limits(Tier::Tier2).cache;
        assert_eq!(tier, crate::tenant::CacheLimits::default());
        assert_eq!(tier.ttl.as_millis(), 15 * 60 * 1000);
        assert_eq!(tier.max_entries, 1000);
        let c = TenantConfig::for_tier(
            &t,
            "a",
            "A",
            "tier2",
            serde_json::json!({"cache_ttl_ms": 250, "cache_max_entries": 7}),
        )
        .unwrap();
        let l = c.cache_limits(&tier);
        assert_eq!((l.ttl.as_millis(), l.max_entries), (250, 7));
        let text = DEFAULT_TIERS_TOML.replacen(
            r#"cache         = { ttl = "15m", max_entries = 1000 }"#,
            r#"cache         = { ttl = "1m", max_entries = 50 }"#,
            1,
        );
        let t = Tiers::from_toml(&text).unwrap();
        assert_eq!(t.limits(Tier::Tier1).cache.max_entries, 50);
        assert_eq!(t.limits(Tier::Tier1).cache.ttl.as_millis(), 60_000);
    }

    #[test]
    fn a_missing_tier_is_rejected() {
        let text = DEFAULT_TIERS_TOML.replace("[tiers.tier3]", "[tiers.tier9]");
        assert!(Tiers::from_toml(&text).is_err());
    }
}
