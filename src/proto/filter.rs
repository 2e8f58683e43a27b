//! Property filters: comparisons, `in`, `and`/`or`, over dotted field paths.
//!
//! The JSON form (used by the CLI and the quickstart) follows MongoDB's:
//!
//! ```json
//! {"price": {"$gte": 10, "$lt": 50}, "category": {"$in": ["a", "b"]},
//!  "$or": [{"stock": 0}, {"discontinued": true}]}
//! ```
//!
//! Keys of one object are AND-ed; `"field": scalar` means equality.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::error::Error;
use super::ops::Properties;

/// Deepest nesting accepted.
pub const MAX_FILTER_DEPTH: usize = 16;
/// Most predicates accepted in one filter.
pub const MAX_FILTER_PREDICATES: usize = 256;
/// Most values in one `$in`.
pub const MAX_IN_VALUES: usize = 1024;

/// A scalar a property is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// JSON null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Any JSON number, as f64.
    Number(f64),
    /// String.
    Str(String),
}

impl Scalar {
    fn from_json(v: &serde_json::Value) -> Option<Scalar> {
        Some(match v {
            serde_json::Value::Null => Scalar::Null,
            serde_json::Value::Bool(b) => Scalar::Bool(*b),
            serde_json::Value::Number(n) => Scalar::Number(n.as_f64()?),
            serde_json::Value::String(s) => Scalar::Str(s.clone()),
            _ => return None,
        })
    }

    /// Compares a property value with this scalar; `None` if incomparable.
    fn cmp_value(&self, v: &serde_json::Value) -> Option<Ordering> {
        match (v, self) {
            (serde_json::Value::Null, Scalar::Null) => Some(Ordering::Equal),
            (serde_json::Value::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            (serde_json::Value::Number(a), Scalar::Number(b)) => a.as_f64()?.partial_cmp(b),
            (serde_json::Value::String(a), Scalar::Str(b)) => Some(a.as_str().cmp(b.as_str())),
            _ => None,
        }
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=` (also true when the field is missing)
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Filter {
    /// Compare a field with a scalar.
    Cmp {
        /// Dotted field path.
        field: String,
        /// Operator.
        op: CmpOp,
        /// Right-hand side.
        value: Scalar,
    },
    /// The field equals one of the values.
    In {
        /// Dotted field path.
        field: String,
        /// Candidates.
        values: Vec<Scalar>,
    },
    /// All must hold.
    And(Vec<Filter>),
    /// At least one must hold.
    Or(Vec<Filter>),
}

impl Filter {
    /// `field == value`.
    pub fn eq(field: &str, value: impl Into<serde_json::Value>) -> Filter {
        Self::cmp(field, CmpOp::Eq, value)
    }

    /// `field <op> value`. Non-scalar values compare as null.
    pub fn cmp(field: &str, op: CmpOp, value: impl Into<serde_json::Value>) -> Filter {
        Filter::Cmp {
            field: field.to_string(),
            op,
            value: Scalar::from_json(&value.into()).unwrap_or(Scalar::Null),
        }
    }

    /// Parses the JSON form (see the module docs).
    pub fn from_json(v: &serde_json::Value) -> Result<Filter, Error> {
        let f = parse_object(v, 0)?;
        f.validate()?;
        Ok(f)
    }

    /// Parses JSON text.
    pub fn parse(text: &str) -> Result<Filter, Error> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::InvalidFilter {
                reason: format!("not JSON: {e}"),
            })?;
        Self::from_json(&v)
    }

    /// Checks structure limits and operand types. Filters built in code or
    /// decoded from the wire go through this before they run.
    pub fn validate(&self) -> Result<(), Error> {
        let mut count = 0;
        self.validate_at(0, &mut count)
    }

    fn validate_at(&self, depth: usize, count: &mut usize) -> Result<(), Error> {
        if depth > MAX_FILTER_DEPTH {
            return Err(bad(format!("nested deeper than {MAX_FILTER_DEPTH}")));
        }
        match self {
            Filter::Cmp { field, op, value } => {
                *count += 1;
                check_field(field)?;
                let ordered = !matches!(op, CmpOp::Eq | CmpOp::Ne);
                if ordered && !matches!(value, Scalar::Number(_) | Scalar::Str(_)) {
                    return Err(bad(format!(
                        "{op:?} on {field:?} needs a number or a string operand"
                    )));
                }
                if let Scalar::Number(n) = value {
                    if !n.is_finite() {
                        return Err(bad(format!("non-finite number for {field:?}")));
                    }
                }
            }
            Filter::In { field, values } => {
                *count += 1;
                check_field(field)?;
                if values.is_empty() {
                    return Err(bad(format!("$in on {field:?} has no values")));
                }
                if values.len() > MAX_IN_VALUES {
                    return Err(bad(format!(
                        "$in on {field:?} has more than {MAX_IN_VALUES} values"
                    )));
                }
            }
            Filter::And(items) | Filter::Or(items) => {
                if items.is_empty() {
                    return Err(bad("empty $and/$or".to_string()));
                }
                for f in items {
                    f.validate_at(depth + 1, count)?;
                }
            }
        }
        if *count > MAX_FILTER_PREDICATES {
            return Err(bad(format!("more than {MAX_FILTER_PREDICATES} predicates")));
        }
        Ok(())
    }

    /// Number of leaf predicates (used by the complexity estimate).
    pub fn predicates(&self) -> usize {
        match self {
            Filter::Cmp { .. } | Filter::In { .. } => 1,
            Filter::And(v) | Filter::Or(v) => v.iter().map(Filter::predicates).sum(),
        }
    }

    /// Evaluates the filter on an object's properties.
    pub fn matches(&self, props: &Properties) -> bool {
        match self {
            Filter::Cmp { field, op, value } => match props.get_path(field) {
                None => {
                    matches!(op, CmpOp::Ne) || (matches!(op, CmpOp::Eq) && *value == Scalar::Null)
                }
                Some(v) => match value.cmp_value(v) {
                    None => matches!(op, CmpOp::Ne),
                    Some(o) => match op {
                        CmpOp::Eq => o == Ordering::Equal,
                        CmpOp::Ne => o != Ordering::Equal,
                        CmpOp::Gt => o == Ordering::Greater,
                        CmpOp::Gte => o != Ordering::Less,
                        CmpOp::Lt => o == Ordering::Less,
                        CmpOp::Lte => o != Ordering::Greater,
                    },
                },
            },
            Filter::In { field, values } => match props.get_path(field) {
                None => false,
                Some(v) => values
                    .iter()
                    .any(|s| s.cmp_value(v) == Some(Ordering::Equal)),
            },
            Filter::And(items) => items.iter().all(|f| f.matches(props)),
            Filter::Or(items) => items.iter().any(|f| f.matches(props)),
        }
    }
}

fn bad(reason: String) -> Error {
    Error::InvalidFilter { reason }
}

fn check_field(field: &str) -> Result<(), Error> {
    if field.is_empty() || field.len() > 256 || field.split('.').any(str::is_empty) {
        return Err(bad(format!("bad field path {field:?}")));
    }
    Ok(())
}

fn parse_object(v: &serde_json::Value, depth: usize) -> Result<Filter, Error> {
    if depth > MAX_FILTER_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_FILTER_DEPTH}")));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| bad(format!("expected an object, got {v}")))?;
    if obj.is_empty() {
        return Err(bad("empty filter object".into()));
    }
    let mut parts = Vec::new();
    for (key, val) in obj {
        match key.as_str() {
            "$and" | "$or" => {
                let arr = val
                    .as_array()
                    .ok_or_else(|| bad(format!("{key} needs an array")))?;
                let items = arr
                    .iter()
                    .map(|x| parse_object(x, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                parts.push(if key == "$and" {
                    Filter::And(items)
                } else {
                    Filter::Or(items)
                });
            }
            k if k.starts_with('$') => return Err(bad(format!("unknown operator {k}"))),
            field => parts.extend(parse_field(field, val)?),
        }
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Filter::And(parts)
    })
}

fn parse_field(field: &str, val: &serde_json::Value) -> Result<Vec<Filter>, Error> {
    let ops = match val.as_object() {
        Some(o) if o.keys().any(|k| k.starts_with('$')) => o,
        Some(_) | None => {
            let value = Scalar::from_json(val)
                .ok_or_else(|| bad(format!("{field:?}: cannot compare with {val}")))?;
            return Ok(vec![Filter::Cmp {
                field: field.to_string(),
                op: CmpOp::Eq,
                value,
            }]);
        }
    };
    let mut out = Vec::new();
    for (op, operand) in ops {
        if op == "$in" {
            let arr = operand
                .as_array()
                .ok_or_else(|| bad(format!("$in on {field:?} needs an array")))?;
            let values = arr
                .iter()
                .map(|x| {
                    Scalar::from_json(x)
                        .ok_or_else(|| bad(format!("$in value {x} is not a scalar")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Filter::In {
                field: field.to_string(),
                values,
            });
            continue;
        }
        let cmp = match op.as_str() {
            "$eq" => CmpOp::Eq,
            "$ne" => CmpOp::Ne,
            "$gt" => CmpOp::Gt,
            "$gte" => CmpOp::Gte,
            "$lt" => CmpOp::Lt,
            "$lte" => CmpOp::Lte,
            other => return Err(bad(format!("unknown operator {other} on {field:?}"))),
        };
        let value = Scalar::from_json(operand)
            .ok_or_else(|| bad(format!("{op} on {field:?}: {operand} is not a scalar")))?;
        out.push(Filter::Cmp {
            field: field.to_string(),
            op: cmp,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: serde_json::Value) -> Properties {
        Properties::from_json(v).unwrap()
    }

    #[test]
    fn comparisons_in_and_or() {
        let f = Filter::parse(
            r#"{"price": {"$gte": 10, "$lt": 50}, "cat": {"$in": ["a","b"]},
                "$or": [{"stock": 0}, {"meta.hot": true}]}"#,
        )
        .unwrap();
        assert_eq!(f.predicates(), 5);
        assert!(f.matches(&props(json!({"price": 10, "cat": "a", "stock": 0}))));
        assert!(f.matches(&props(
            json!({"price": 49.5, "cat": "b", "stock": 3, "meta": {"hot": true}})
        )));
        assert!(!f.matches(&props(json!({"price": 50, "cat": "a", "stock": 0}))));
        assert!(!f.matches(&props(json!({"price": 20, "cat": "c", "stock": 0}))));
        assert!(!f.matches(&props(json!({"price": 20, "cat": "a", "stock": 1}))));
    }

    #[test]
    fn malformed_filters_are_typed_errors() {
        for text in [
            "not json",
            "[]",
            "{}",
            r#"{"a": {"$regex": "x"}}"#,
            r#"{"a": {"$in": []}}"#,
            r#"{"a": {"$gt": true}}"#,
            r#"{"$or": {}}"#,
            r#"{"a": {"$in": [[1]]}}"#,
            r#"{"$nope": 1}"#,
        ] {
            match Filter::parse(text) {
                Err(Error::InvalidFilter { .. }) => {}
                other => panic!("{text}: expected InvalidFilter, got {other:?}"),
            }
        }
    }

    #[test]
    fn depth_is_bounded() {
        let mut v = json!({"a": 1});
        for _ in 0..40 {
            v = json!({"$and": [v]});
        }
        assert!(matches!(
            Filter::from_json(&v),
            Err(Error::InvalidFilter { .. })
        ));
    }

    #[test]
    fn binary_round_trip() {
        let f = Filter::parse(r#"{"a": {"$in": [1, "x", null]}, "b": {"$ne": false}}"#).unwrap();
        let bytes = crate::codec::encode(&f).unwrap();
        let back: Filter = crate::codec::decode(&bytes).unwrap();
        assert_eq!(f, back);
    }
}
