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
