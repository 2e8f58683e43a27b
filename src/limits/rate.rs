//! Rate windows: fixed or sliding, with a burst allowance.
//!
//! Exact semantics (time in ms, window `W`, `L = max_requests + burst_allowance`):
//!
//! * Windows are aligned: window `n` covers `[n·W, (n+1)·W)` since the Unix epoch.
//! * **Fixed:** a request is admitted when the window's count is below `L`.
//!   A rejected request is told to retry at the start of the next window.
//! * **Sliding:** at elapsed time `e` into window `n`, the load is
//!   `prev · (W − e) / W + cur`, where `prev` is window `n−1`'s count and
//!   `cur` window `n`'s. A request is admitted when `load + 1 ≤ L`. This is
//!   the sliding-window counter (the previous window's requests are assumed
//!   spread evenly); it never admits more than `L` in one aligned window
//!   and never more than `2L` in any interval of length `W`.
//!   `retry_after` is the exact earliest time the condition holds again if
//!   no other request arrives.
//! * Rejected requests are not counted.
//! * The burst allowance is headroom on top of `max_requests` in every
//!   window; per-operation limits have no burst.

/// One rate window's config and counters.
#[derive(Debug, Clone)]
pub struct RateWindow {
    limit: u64,
    window_ms: u64,
    sliding: bool,
    start: u64,
    cur: u64,
    prev: u64,
}

/// A rejection: the load the request met and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRejection {
    /// The load (rounded up) at the time of the check.
    pub current: u64,
    /// Milliseconds until a request would be admitted.
    pub retry_after_ms: u64,
}

impl RateWindow {
    /// A window admitting `limit` per `window_ms`.
    pub fn new(limit: u64, window_ms: u64, sliding: bool) -> Self {
        Self {
            limit,
            window_ms: window_ms.max(1),
            sliding,
            start: 0,
            cur: 0,
            prev: 0,
        }
    }

    /// Changes the config, keeping the counts when the window length stays.
    pub fn reconfigure(&mut self, limit: u64, window_ms: u64, sliding: bool) {
        let window_ms = window_ms.max(1);
        if window_ms != self.window_ms {
            self.start = 0;
            self.cur = 0;
            self.prev = 0;
        }
        self.limit = limit;
        self.window_ms = window_ms;
        self.sliding = sliding;
    }

    /// The configured limit (`L`).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window's length in ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn roll(&mut self, now_ms: u64) {
        // Fast path: still inside the current window (no division).
        if now_ms >= self.start
            && now_ms - self.start < self.window_ms
            && (self.start != 0 || self.cur != 0 || self.prev != 0)
        {
            return;
        }
        let start = now_ms - now_ms % self.window_ms;
        if start == self.start {
            return;
        }
        self.prev = if start == self.start + self.window_ms {
            self.cur
        } else {
            0
        };
        self.cur = 0;
        self.start = start;
    }

    /// Would one more request be admitted now? Does not count it.
    pub fn check(&mut self, now_ms: u64) -> Result<(), RateRejection> {
        self.roll(now_ms);
        let w = self.window_ms as u128;
        let e = (now_ms - self.start) as u128;
        let (prev, cur, limit) = (self.prev as u128, self.cur as u128, self.limit as u128);
        let to_next = (w - e) as u64;
        if !self.sliding {
            if cur < limit {
                return Ok(());
            }
            return Err(RateRejection {
                current: self.cur,
                retry_after_ms: to_next,
            });
        }
        // prev·(W−e) + (cur+1)·W ≤ L·W
        let load_w = prev * (w - e) + cur * w;
        if load_w + w <= limit * w {
            return Ok(());
        }
        let current = load_w.div_ceil(w) as u64;
        let retry_after_ms = if cur < limit {
            // Within this window: need prev·(W−e') ≤ (L−cur−1)·W.
            let room = (limit - cur - 1) * w;
            let e_min = w - room / prev.max(1); // prev > 0 here, else we'd have admitted
            (e_min - e) as u64
        } else if cur == 0 {
            to_next
        } else {
            // Next window: prev' = cur, cur' = 0: need cur·(W−e'') ≤ (L−1)·W.
            let room = limit.saturating_sub(1) * w;
            let e_min = w.saturating_sub(room.checked_div(cur).unwrap_or(0));
            to_next + e_min as u64
        };
        Err(RateRejection {
            current,
            retry_after_ms: retry_after_ms.max(1),
        })
    }

    /// Counts one admitted request (call after a successful [`check`](Self::check)).
    pub fn record(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.cur += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(w: &mut RateWindow, t: u64) -> Result<(), RateRejection> {
        w.check(t)?;
        w.record(t);
        Ok(())
    }

    #[test]
    fn fixed_admits_exactly_limit_per_aligned_window() {
        let mut w = RateWindow::new(12, 1000, false);
        for i in 0..12 {
            admit(&mut w, 5_000 + i).unwrap();
        }
        let r = admit(&mut w, 5_400).unwrap_err();
        assert_eq!(
            r,
            RateRejection {
                current: 12,
                retry_after_ms: 600
            }
        );
        // Rejections are not counted: at the boundary the full limit is back.
        for _ in 0..12 {
            admit(&mut w, 6_000).unwrap();
        }
        assert!(admit(&mut w, 6_999).is_err());
    }

    #[test]
    fn sliding_weights_the_previous_window() {
        let mut w = RateWindow::new(10, 1000, true);
        for _ in 0..10 {
            admit(&mut w, 10_000).unwrap();
        }
        assert!(admit(&mut w, 10_500).is_err());
        // At e = 300 into the next window, load = 10·0.7 = 7 → 3 more fit.
        for _ in 0..3 {
            admit(&mut w, 11_300).unwrap();
        }
        let r = admit(&mut w, 11_300).unwrap_err();
        assert_eq!(r.current, 10);
        // Need 10·(1000−e) + 4000 ≤ 10000 → e ≥ 400.
        assert_eq!(r.retry_after_ms, 100);
        assert!(admit(&mut w, 11_399).is_err());
        admit(&mut w, 11_400).unwrap();
    }

    #[test]
    fn sliding_retry_after_is_exact_across_the_boundary() {
        let mut w = RateWindow::new(4, 1000, true);
        for _ in 0..4 {
            admit(&mut w, 2_100).unwrap();
        }
        let r = admit(&mut w, 2_100).unwrap_err();
        // Next window: 4·(1000−e) ≤ 3·1000 → e ≥ 250; 900 + 250.
        assert_eq!(r.retry_after_ms, 1_150);
        assert!(admit(&mut w, 3_249).is_err());
        admit(&mut w, 3_250).unwrap();
    }

    #[test]
    fn a_gap_of_two_windows_forgets_everything() {
        let mut w = RateWindow::new(3, 100, true);
        for _ in 0..3 {
            admit(&mut w, 0).unwrap();
        }
        for _ in 0..3 {
            admit(&mut w, 250).unwrap();
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Gaps between requests: often none (bursts), otherwise up to 2 s.
    fn gaps() -> impl Strategy<Value = Vec<(u64, u8)>> {
        let gap = prop_oneof![3 => Just(0u64), 1 => 0u64..2_000];
        vec((gap, 0u8..3), 1..300)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Fixed and sliding: at most `L` per aligned window; sliding: at
        /// most `2L` in any interval of length `W`; a check that rejects
        /// (or any extra check) counts nothing; `retry_after` is exact.
        #[test]
        fn windows_hold_their_bounds_and_retry_after_is_exact(
            limit in 1u64..12,
            window in 1u64..3_000,
            sliding: bool,
            t0 in 0u64..2_000_000_000_000,
            steps in gaps(),
        ) {
            let mut w = RateWindow::new(limit, window, sliding);
            // The same requests, each checked 0-2 extra times first.
            let mut checked = RateWindow::new(limit, window, sliding);
            let mut now = t0;
            let mut admitted = Vec::new();
            for (gap, extra) in steps {
                now += gap;
                for _ in 0..extra {
                    let _ = checked.check(now);
                }
                let r = w.check(now);
                prop_assert_eq!(r, checked.check(now));
                match r {
                    Ok(()) => {
                        w.record(now);
                        checked.record(now);
                        admitted.push(now);
                    }
                    Err(rej) => {
                        let retry = rej.retry_after_ms;
                        prop_assert!(retry >= 1);
                        let mut early = w.clone();
                        prop_assert!(early.check(now + retry - 1).is_err(), "admitted before retry_after {}", retry);
                        let mut on_time = w.clone();
                        prop_assert!(on_time.check(now + retry).is_ok(), "refused at retry_after {}", retry);
                    }
                }
            }
            for &t in &admitted {
                let same_window = admitted.iter().filter(|&&u| u / window == t / window).count();
                prop_assert!(same_window as u64 <= limit, "{} in one aligned window", same_window);
                if sliding {
                    let within = admitted.iter().filter(|&&u| u >= t && u < t + window).count();
                    prop_assert!(within as u64 <= 2 * limit, "{} within W of {}", within, t);
                }
            }
        }
    }
}
