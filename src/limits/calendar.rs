//! UTC day and month arithmetic for the daily and monthly counters.

const DAY_MS: u64 = 86_400_000;

/// Days since 1970-01-01 (UTC) of a time in ms.
pub fn day_number(now_ms: u64) -> u32 {
    (now_ms / DAY_MS) as u32
}

/// Start of the next UTC day, in ms.
pub fn next_day_start(now_ms: u64) -> u64 {
    (now_ms / DAY_MS + 1) * DAY_MS
}

/// (year, month 1..=12, day 1..=31) of a day number (Hinnant's algorithm).
pub fn civil_from_days(days: u32) -> (i32, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

/// Day number of a civil date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> u32 {
    let y = if m <= 2 { y as i64 - 1 } else { y as i64 };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u32
}

/// Month number (`year * 12 + month - 1`) of a time in ms.
pub fn month_number(now_ms: u64) -> u32 {
    let (y, m, _) = civil_from_days(day_number(now_ms));
    (y as u32) * 12 + m - 1
}

/// Start of the next UTC month, in ms.
pub fn next_month_start(now_ms: u64) -> u64 {
    let (y, m, _) = civil_from_days(day_number(now_ms));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) as u64 * DAY_MS
}

/// A day number as `YYYY-MM-DD`.
pub fn day_label(day: u32) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A month number as `YYYY-MM`.
pub fn month_label(month: u32) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // 2026-11-27T20:00:00Z
        let t = 1_795_809_600_000;
        assert_eq!(civil_from_days(day_number(t)), (2026, 11, 27));
        assert_eq!(month_number(t), 2026 * 12 + 10);
        assert_eq!(
            civil_from_days(day_number(next_month_start(t))),
            (2026, 12, 1)
        );
        // December rolls into January.
        let dec = days_from_civil(2026, 12, 31) as u64 * DAY_MS;
        assert_eq!(
            civil_from_days(day_number(next_month_start(dec))),
            (2027, 1, 1)
        );
        // Leap day.
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
        assert_eq!(next_day_start(t) % DAY_MS, 0);
    }
}
