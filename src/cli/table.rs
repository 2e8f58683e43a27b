//! Table output: comfy-table, with the columns each command chooses, and
//! cells an operator can read (times as RFC 3339, vectors summarised,
//! nested values as compact JSON, wrapped to the terminal's width).

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::Serialize;
use serde_json::Value;

use super::Output;

/// One column: its header, and the field of each row it shows.
pub type Column<'a> = (&'a str, &'a str);

/// Prints `rows` (serialised to JSON objects) as a table of `cols`, or as
/// JSON (every field, not only the columns).
pub fn rows<T: Serialize>(out: Output, rows: &[T], cols: &[Column]) -> anyhow::Result<()> {
    let json = serde_json::to_value(rows)?;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Table => {
            let rows = json.as_array().map(Vec::as_slice).unwrap_or_default();
            if rows.is_empty() {
                println!("(none)");
                return Ok(());
            }
            let mut t = table();
            t.set_header(cols.iter().map(|c| c.0.to_uppercase()));
            for r in rows {
                t.add_row(cols.iter().map(|(_, field)| cell(field, &r[*field])));
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// Prints any value: an object as FIELD / VALUE rows (nested objects
/// flattened to `a.b`), an array of objects with every field of the first
/// as columns, anything else as one cell.
pub fn value<T: Serialize>(out: Output, v: &T) -> anyhow::Result<()> {
    let json = serde_json::to_value(v)?;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Table => match &json {
            Value::Object(_) => {
                let mut t = table();
                t.set_header(["FIELD", "VALUE"]);
                let mut flat = Vec::new();
                flatten("", &json, &mut flat);
                for (k, v) in flat {
                    let c = cell(&k, &v);
                    t.add_row([k, c]);
                }
                println!("{t}");
            }
            Value::Array(a) if a.is_empty() => println!("(none)"),
            Value::Array(a) if a.iter().all(Value::is_object) => {
                let cols: Vec<String> = a[0]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                let cols: Vec<Column> = cols.iter().map(|c| (c.as_str(), c.as_str())).collect();
                rows(out, a, &cols)?;
            }
            Value::Array(a) => {
                for v in a {
                    println!("{}", cell("", v));
                }
            }
            other => println!("{}", cell("", other)),
        },
    }
    Ok(())
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// Nested objects become `parent.child` rows, down to 3 levels; deeper
/// values and arrays stay one cell.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(o) if prefix.matches('.').count() < 3 && !o.is_empty() => {
            for (k, v) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// A cell: `field` names what the value is (a time in epoch milliseconds
/// when it ends in `_at`).
pub fn cell(field: &str, v: &Value) -> String {
    let last = field.rsplit('.').next().unwrap_or(field);
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if last.ends_with("_at") => match n.as_u64() {
            Some(0) => "-".into(),
            Some(ms) => rfc3339(ms),
            None => n.to_string(),
        },
        Value::Number(n) => number(n),
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => {
            let shown = if a.len() > 8 { &a[..3] } else { &a[..] };
            let nums: Vec<String> = shown
                .iter()
                .filter_map(Value::as_number)
                .map(number)
                .collect();
            if a.len() > 8 {
                format!("[{}, … {} numbers]", nums.join(", "), a.len())
            } else {
                format!("[{}]", nums.join(", "))
            }
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A number as short as it reads: vectors and scores are `f32`, so a
/// fraction is shown at that precision (0.1, not 0.10000000149011612).
fn number(n: &serde_json::Number) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u.to_string(),
        (_, Some(i), _) => i.to_string(),
        (_, _, Some(f)) => format!("{}", f as f32),
        _ => n.to_string(),
    }
}

/// Epoch milliseconds as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms as i64) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Eighths of a block, lowest to highest, for sparklines.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `values` as one line of block characters, scaled to the largest.
pub fn sparkline(values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 || *v <= 0.0 {
                ' '
            } else {
                let i = ((v / max) * (SPARKS.len() - 1) as f64).round() as usize;
                SPARKS[i.min(SPARKS.len() - 1)]
            }
        })
        .collect()
}

/// Most columns a sparkline gets.
const SPARK_WIDTH: usize = 60;

/// The report's series as at most [`SPARK_WIDTH`] columns over the whole
/// range (empty periods included): requests and p95 latency (ms) per
/// column.
fn columns(r: &vektagraf::proto::AnalyticsReport) -> (Vec<f64>, Vec<f64>, usize) {
    use vektagraf::proto::Rollup;
    let step = r.resolution_ms.max(1);
    let first = r.from_ms - r.from_ms % step;
    let periods = (r.to_ms.saturating_sub(first)).div_ceil(step).max(1) as usize;
    let per_col = periods.div_ceil(SPARK_WIDTH).max(1);
    let mut cols = vec![Rollup::default(); periods.div_ceil(per_col)];
    for p in &r.series {
        let i = (p.start_ms.saturating_sub(first) / step) as usize / per_col;
        if let Some(c) = cols.get_mut(i) {
            c.add(p);
        }
    }
    let requests = cols.iter().map(|c| c.requests as f64).collect();
    let p95 = cols
        .iter()
        .map(|c| c.latency_quantile_ms(0.95).unwrap_or(0.0))
        .collect();
    (requests, p95, per_col)
}

/// A2: the analytics report: its figures, the recommendations, and the
/// request and latency series as sparklines (or the report as JSON).
pub fn analytics(out: Output, r: &vektagraf::proto::AnalyticsReport) -> anyhow::Result<()> {
    if let Output::Json = out {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let mut t = table();
    t.set_header(["FIGURE", "VALUE"]);
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    let rows: Vec<(&str, String)> = vec![
        ("tenant", r.tenant_id.clone()),
        ("from", rfc3339(r.from_ms)),
        ("to", rfc3339(r.to_ms)),
        ("total requests", r.total_requests.to_string()),
        ("errors", format!("{} ({})", r.errors, pct(r.error_rate))),
        (
            "limit rejections",
            format!("{} ({} by rate limits)", r.rejections, r.rate_rejections),
        ),
        (
            "latency",
            format!(
                "avg {:.2} ms, p95 ≤ {} ms, p99 ≤ {} ms",
                r.avg_latency_ms, r.p95_latency_ms, r.p99_latency_ms
            ),
        ),
        ("throughput", format!("{:.3} requests/s", r.throughput_rps)),
        ("peak concurrency", r.peak_concurrency.to_string()),
        ("cache hit rate", r.cache_hit_rate.map_or("-".into(), pct)),
        ("storage", format!("{:.6} GB-hours", r.storage_gb_hours)),
        ("request units", r.request_units.to_string()),
        ("bandwidth", format!("{} bytes", r.bandwidth_bytes)),
        (
            "estimated monthly cost",
            format!("{:.2} {}", r.estimated_monthly_cost, r.currency),
        ),
    ];
    for (k, v) in rows {
        t.add_row([k.to_string(), v]);
    }
    if !r.nodes_missing.is_empty() {
        t.add_row([
            "nodes missing".to_string(),
            format!(
                "{:?} (their part of the history is not counted)",
                r.nodes_missing
            ),
        ]);
    }
    println!("{t}");
    let (requests, p95, per_col) = columns(r);
    let unit = if r.resolution_ms >= 3_600_000 {
        "hour"
    } else {
        "minute"
    };
    println!(
        "requests  │{}│ max {:.0} (a column is {per_col} {unit}{})",
        sparkline(&requests),
        requests.iter().copied().fold(0.0, f64::max),
        if per_col == 1 { "" } else { "s" }
    );
    println!(
        "p95 (ms)  │{}│ max {:.1}",
        sparkline(&p95),
        p95.iter().copied().fold(0.0, f64::max)
    );
    if r.recommendations.is_empty() {
        println!("recommendations: none");
    } else {
        let mut t = table();
        t.set_header(["PRIORITY", "ABOUT", "RECOMMENDATION"]);
        for rec in &r.recommendations {
            t.add_row([rec.priority.clone(), rec.kind.clone(), rec.message.clone()]);
        }
        println!("{t}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_and_long_vectors_are_summarised() {
        assert_eq!(
            cell("created_at", &serde_json::json!(1_764_806_400_123u64)),
            "2025-12-04T00:00:00.123Z"
        );
        assert_eq!(cell("keys.created_at", &serde_json::json!(0)), "-");
        assert_eq!(cell("count", &serde_json::json!(7)), "7");
        let v: Vec<f32> = (0..784).map(|i| i as f32).collect();
        assert_eq!(
            cell("vector", &serde_json::json!(v)),
            "[0, 1, 2, … 784 numbers]"
        );
        assert_eq!(
            cell("vector", &serde_json::json!([0.1f32, 2.5f32])),
            "[0.1, 2.5]"
        );
        assert_eq!(cell("score", &serde_json::json!(0.3f32)), "0.3");
    }

    #[test]
    fn nested_objects_flatten_to_dotted_fields() {
        let mut out = Vec::new();
        flatten(
            "",
            &serde_json::json!({"storage": {"bytes": 5, "limits": {"max": 9}}, "warnings": []}),
            &mut out,
        );
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["storage.bytes", "storage.limits.max", "warnings"]);
    }
}
