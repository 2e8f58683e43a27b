//! Threshold bands of limit use (pure): when does a limit-approach
//! check raise an event?
//!
//! A use ratio falls in band 0 (below 80%), 1 (80% to 90%), 2 (90% to
//! 95%) or 3 (95% and over) of [`THRESHOLDS`]. Each (tenant, limit) key
//! remembers the band of its last check. A check that finds a higher band
//! than the last reports the highest threshold crossed (one event, even
//! if it jumped two bands); a lower band is remembered silently, so the
//! next crossing upward reports again. A key seen for the first time
//! starts from band 0: a tenant already at 85% when a node starts leading
//! its shard is reported once.

use std::collections::HashMap;

/// The thresholds, as fractions of a limit.
pub const THRESHOLDS: [f64; 3] = [0.80, 0.90, 0.95];

/// The band of `ratio` (0..=3).
pub fn band(ratio: f64) -> usize {
    THRESHOLDS.iter().filter(|t| ratio >= **t).count()
}

/// The threshold percent of band `b` (1..=3): 80, 90 or 95.
pub fn threshold_pct(b: usize) -> u8 {
    (THRESHOLDS[b.clamp(1, 3) - 1] * 100.0).round() as u8
}

/// The last band of each (tenant, limit).
#[derive(Debug, Default)]
pub struct Bands {
    seen: HashMap<(String, String), usize>,
}

impl Bands {
    /// Records a check of `tenant`'s `limit` at `ratio`; `Some(band)`
    /// when it crossed upward into `band` (report its threshold).
    pub fn observe(&mut self, tenant: &str, limit: &str, ratio: f64) -> Option<usize> {
        let b = band(ratio);
        let old = self
            .seen
            .insert((tenant.to_string(), limit.to_string()), b)
            .unwrap_or(0);
        (b > old).then_some(b)
    }

    /// Forgets the tenants `keep` rejects (no longer led here).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.seen.retain(|(t, _), _| keep(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_split_at_80_90_and_95_percent() {
        assert_eq!(band(0.0), 0);
        assert_eq!(band(0.7999), 0);
        assert_eq!(band(0.80), 1);
        assert_eq!(band(0.8999), 1);
        assert_eq!(band(0.90), 2);
        assert_eq!(band(0.95), 3);
        assert_eq!(band(1.5), 3);
        assert_eq!(
            [threshold_pct(1), threshold_pct(2), threshold_pct(3)],
            [80, 90, 95]
        );
    }

    #[test]
    fn only_upward_crossings_report_once_each() {
        let mut b = Bands::default();
        let seq = [0.5, 0.81, 0.85, 0.91, 0.91, 0.96, 0.99, 0.5, 0.82, 0.97];
        let got: Vec<Option<usize>> = seq.iter().map(|r| b.observe("a", "x", *r)).collect();
        assert_eq!(
            got,
            vec![
                None,
                Some(1),
                None,
                Some(2),
                None,
                Some(3),
                None,
                None,
                Some(1),
                Some(3)
            ]
        );
        // Another limit, another tenant: their own bands.
        assert_eq!(b.observe("a", "y", 0.9), Some(2));
        assert_eq!(b.observe("b", "x", 0.9), Some(2));
        b.retain(|t| t == "b");
        assert_eq!(b.observe("a", "x", 0.99), Some(3));
        assert_eq!(b.observe("b", "x", 0.92), None);
    }
}
