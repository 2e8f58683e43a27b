//! Property indexes: for each indexed property of a collection, one key
//! per object holding a scalar there, in the `props` column family:
//!
//! ```text
//! <collection> 0x00 <property path> 0x00 <tag> <value> <object id>
//! ```
//!
//! Its value is the object's FAISS label (u64 BE) when it has a vector,
//! else empty: a search can score a candidate from the vector index
//! without reading the object.
//!
//! `tag` is `b` (a bool: one byte), `n` (a number: 8 bytes that sort as
//! the f64 does) or `s` (a string: its length as u16 BE, then its bytes).
//! A value's keys share a prefix, so equality and `$in` are prefix scans,
//! and a number range is one ordered scan. Null, arrays, objects and
//! strings longer than [`MAX_INDEXED_STR`] bytes are not indexed (a filter
//! on them is never answered from the index). The keys are written in the
//! same batch as the object, so the index is exactly as durable and as
//! current as the data.

use std::cmp::Ordering;

use crate::proto::{CmpOp, Error, Filter, Properties, Scalar};

/// Longest string value indexed, in bytes.
pub const MAX_INDEXED_STR: usize = 256;
/// Most indexed properties per collection.
pub const MAX_INDEXED_PER_COLLECTION: usize = 16;

/// Checks a property path given to index: dotted segments of
/// `[A-Za-z0-9_-]`, at most 128 bytes.
pub fn check_path(path: &str) -> Result<(), Error> {
    let ok = !path.is_empty()
        && path.len() <= 128
        && path.split('.').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "property",
            format!("{path:?}: an indexed property is a dotted path of [A-Za-z0-9_-] segments, at most 128 bytes"),
        ))
    }
}

/// The meta key declaring that `collection`'s `path` is indexed.
pub fn declared_key(collection: &str, path: &str) -> Vec<u8> {
    [
        super::meta_key::PROP_INDEX_PREFIX,
        collection.as_bytes(),
        b"\0",
        path.as_bytes(),
    ]
    .concat()
}

/// Parses a [`declared_key`] (prefix included) back into its parts.
pub fn parse_declared(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(super::meta_key::PROP_INDEX_PREFIX)?;
    let pos = rest.iter().position(|&b| b == 0)?;
    Some((
        String::from_utf8(rest[..pos].to_vec()).ok()?,
        String::from_utf8(rest[pos + 1..].to_vec()).ok()?,
    ))
}

/// The prefix of every key of one property's index.
pub fn property_prefix(collection: &str, path: &str) -> Vec<u8> {
    [collection.as_bytes(), b"\0", path.as_bytes(), b"\0"].concat()
}

/// A number as 8 bytes that sort as the numbers do (-0.0 as 0.0).
fn number_bytes(n: f64) -> [u8; 8] {
    let n = if n == 0.0 { 0.0 } else { n };
    let bits = n.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    ordered.to_be_bytes()
}

fn number_from(bytes: &[u8]) -> Option<f64> {
    let ordered = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let bits = if ordered >> 63 == 1 {
        ordered & !(1 << 63)
    } else {
        !ordered
    };
    Some(f64::from_bits(bits))
}

/// The encoded value (tag included), if this scalar is indexable.
fn scalar_bytes(s: &Scalar) -> Option<Vec<u8>> {
    match s {
        Scalar::Bool(b) => Some(vec![b'b', u8::from(*b)]),
        Scalar::Number(n) if n.is_finite() => {
            let mut v = vec![b'n'];
            v.extend_from_slice(&number_bytes(*n));
            Some(v)
        }
        Scalar::Str(s) if s.len() <= MAX_INDEXED_STR => {
            let mut v = vec![b's'];
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
            Some(v)
        }
        _ => None,
    }
}

fn json_bytes(v: &serde_json::Value) -> Option<Vec<u8>> {
    match v {
        serde_json::Value::Bool(b) => scalar_bytes(&Scalar::Bool(*b)),
        serde_json::Value::Number(n) => scalar_bytes(&Scalar::Number(n.as_f64()?)),
        serde_json::Value::String(s) if s.len() <= MAX_INDEXED_STR => {
            scalar_bytes(&Scalar::Str(s.clone()))
        }
        _ => None,
    }
}

/// The value of an object's index keys: its FAISS label, if it has one.
pub fn key_value(vid: Option<u64>) -> Vec<u8> {
    vid.map(|v| v.to_be_bytes().to_vec()).unwrap_or_default()
}

/// The index keys of an object with `props` in `collection`, for each of
/// the indexed `paths` it holds an indexable value at.
pub fn keys_of<'a>(
    collection: &'a str,
    id: &'a str,
    props: &'a Properties,
    paths: impl IntoIterator<Item = &'a String> + 'a,
) -> impl Iterator<Item = Vec<u8>> + 'a {
    paths.into_iter().filter_map(move |p| {
        let value = json_bytes(props.get_path(p)?)?;
        Some([&property_prefix(collection, p)[..], &value, id.as_bytes()].concat())
    })
}

/// One way to read candidates from an index.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The objects holding one of these values (encoded, tag included):
    /// an equality or an `$in`.
    Values(Vec<Vec<u8>>),
    /// The objects holding a number within the bounds (each inclusive or
    /// not).
    Range {
        /// Lower bound and whether it is included.
        lo: Option<(f64, bool)>,
        /// Upper bound and whether it is included.
        hi: Option<(f64, bool)>,
    },
}

/// One end of a number range: the bound and whether it is included.
type Bound = Option<(f64, bool)>;

/// A conjunct of a filter that an index can answer exactly: every object
/// that passes the filter is among the index's candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The indexed property.
    pub path: String,
    /// How its candidates are read.
    pub lookup: Lookup,
}

/// How an index can serve a filter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Planned {
    /// The conjuncts an index answers: an equality or `$in` on indexable
    /// scalars, or a number range (the bounds on one property from all
    /// conjuncts merged). Candidates from any one of them include every
    /// match of the whole filter.
    pub plans: Vec<Plan>,
    /// There is one plan and it is the whole filter: its candidates are
    /// exactly the matches, with no property left to check.
    pub covers: bool,
}

/// Plans `filter` over the properties in `indexed`.
pub fn plan(filter: &Filter, indexed: &[String]) -> Planned {
    let conjuncts: Vec<&Filter> = match filter {
        Filter::And(items) => items.iter().collect(),
        f => vec![f],
    };
    let total = conjuncts.len();
    let mut absorbed = 0;
    let mut out: Vec<Plan> = Vec::new();
    let mut ranges: Vec<(String, Bound, Bound)> = Vec::new();
    for c in conjuncts {
        match c {
            Filter::Cmp { field, op, value } if indexed.contains(field) => match (op, value) {
                (CmpOp::Eq, v) => {
                    if let Some(b) = scalar_bytes(v) {
                        absorbed += 1;
                        out.push(Plan {
                            path: field.clone(),
                            lookup: Lookup::Values(vec![b]),
                        });
                    }
                }
                (CmpOp::Gt | CmpOp::Gte | CmpOp::Lt | CmpOp::Lte, Scalar::Number(n))
                    if n.is_finite() =>
                {
                    absorbed += 1;
                    let i = match ranges.iter().position(|r| &r.0 == field) {
                        Some(i) => i,
                        None => {
                            ranges.push((field.clone(), None, None));
                            ranges.len() - 1
                        }
                    };
                    let r = &mut ranges[i];
                    match op {
                        CmpOp::Gt | CmpOp::Gte => {
                            let b = (*n, *op == CmpOp::Gte);
                            r.1 = Some(tighter(r.1, b, Ordering::Greater));
                        }
                        _ => {
                            let b = (*n, *op == CmpOp::Lte);
                            r.2 = Some(tighter(r.2, b, Ordering::Less));
                        }
                    }
                }
                _ => {}
            },
            Filter::In { field, values } if indexed.contains(field) => {
                let enc: Option<Vec<Vec<u8>>> = values.iter().map(scalar_bytes).collect();
                if let Some(mut enc) = enc {
                    absorbed += 1;
                    enc.sort();
                    enc.dedup();
                    out.push(Plan {
                        path: field.clone(),
                        lookup: Lookup::Values(enc),
                    });
                }
            }
            _ => {}
        }
    }
    out.extend(ranges.into_iter().map(|(path, lo, hi)| Plan {
        path,
        lookup: Lookup::Range { lo, hi },
    }));
    Planned {
        covers: out.len() == 1 && absorbed == total,
        plans: out,
    }
}

/// Whether the object `id` is among `plan`'s candidates, read from the
/// index (a point read per value); `None` for a range, which cannot be
/// told that way.
pub fn holds(
    store: &super::ShardStore,
    collection: &str,
    plan: &Plan,
    id: &str,
) -> Result<Option<bool>, Error> {
    let Lookup::Values(values) = &plan.lookup else {
        return Ok(None);
    };
    let base = property_prefix(collection, &plan.path);
    for v in values {
        let key = [&base[..], v, id.as_bytes()].concat();
        if store.get_raw(super::CF_PROPS, &key)?.is_some() {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

/// The stricter of two bounds (`dir` Greater: lower bounds, Less: upper).
fn tighter(old: Option<(f64, bool)>, new: (f64, bool), dir: Ordering) -> (f64, bool) {
    match old {
        None => new,
        Some(o) => match new.0.partial_cmp(&o.0) {
            Some(c) if c == dir => new,
            Some(Ordering::Equal) => (o.0, o.1 && new.1),
            _ => o,
        },
    }
}

fn label(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Reads the (id, FAISS label) pairs `plan` selects from `collection`'s
/// index, in key order, calling `f` with each until it returns false.
pub fn scan(
    store: &super::ShardStore,
    collection: &str,
    plan: &Plan,
    mut f: impl FnMut(&str, Option<u64>) -> Result<bool, Error>,
) -> Result<(), Error> {
    let base = property_prefix(collection, &plan.path);
    match &plan.lookup {
        Lookup::Values(values) => {
            for v in values {
                let prefix = [&base[..], v].concat();
                let mut more = true;
                store.scan_prefix(super::CF_PROPS, &prefix, |k, v| {
                    more = f(&String::from_utf8_lossy(&k[prefix.len()..]), label(v))?;
                    Ok(more)
                })?;
                if !more {
                    break;
                }
            }
            Ok(())
        }
        Lookup::Range { lo, hi } => {
            let prefix = [&base[..], b"n"].concat();
            let start = match lo {
                Some((n, _)) => [&prefix[..], &number_bytes(*n)].concat(),
                None => prefix.clone(),
            };
            store.scan_prefix_from(super::CF_PROPS, &prefix, &start, |k, v| {
                let rest = &k[prefix.len()..];
                let Some(n) = number_from(rest) else {
                    return Ok(true);
                };
                if let Some((l, incl)) = lo {
                    if n < *l || (n == *l && !incl) {
                        return Ok(true);
                    }
                }
                if let Some((h, incl)) = hi {
                    if n > *h || (n == *h && !incl) {
                        return Ok(false);
                    }
                }
                f(&String::from_utf8_lossy(&rest[8..]), label(v))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn number_keys_sort_as_the_numbers_do(a in any::<f64>(), b in any::<f64>()) {
            prop_assume!(a.is_finite() && b.is_finite());
            let (ka, kb) = (number_bytes(a), number_bytes(b));
            let want = if a == b { Ordering::Equal } else { a.partial_cmp(&b).unwrap() };
            prop_assert_eq!(ka.cmp(&kb), want);
            prop_assert_eq!(number_from(&ka).unwrap(), if a == 0.0 { 0.0 } else { a });
        }
    }

    #[test]
    fn only_conjuncts_on_indexed_properties_become_plans() {
        let indexed = vec!["cat".to_string(), "price".to_string()];
        let f = Filter::parse(
            r#"{"cat": "a", "price": {"$gte": 10, "$lt": 50}, "other": 1,
                "$or": [{"cat": "b"}, {"cat": "c"}]}"#,
        )
        .unwrap();
        let planned = plan(&f, &indexed);
        assert!(!planned.covers);
        let p = planned.plans;
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].path, "cat");
        assert_eq!(
            p[1].lookup,
            Lookup::Range {
                lo: Some((10.0, true)),
                hi: Some((50.0, false))
            }
        );
        // An `$or` at the top, a `!=`, a null or an unindexed field: none.
        for text in [
            r#"{"$or": [{"cat": "b"}, {"price": 1}]}"#,
            r#"{"cat": {"$ne": "a"}}"#,
            r#"{"cat": null}"#,
            r#"{"other": 1}"#,
        ] {
            assert!(
                plan(&Filter::parse(text).unwrap(), &indexed)
                    .plans
                    .is_empty(),
                "{text}"
            );
        }
        // One plan that is the whole filter covers it.
        for text in [
            r#"{"cat": "a"}"#,
            r#"{"cat": {"$in": ["a", "b"]}}"#,
            r#"{"price": {"$gt": 1, "$lte": 2}}"#,
        ] {
            assert!(
                plan(&Filter::parse(text).unwrap(), &indexed).covers,
                "{text}"
            );
        }
        for text in [r#"{"cat": "a", "price": 1}"#, r#"{"cat": "a", "other": 1}"#] {
            assert!(
                !plan(&Filter::parse(text).unwrap(), &indexed).covers,
                "{text}"
            );
        }
    }

    #[test]
    fn the_tighter_bound_wins() {
        let f = Filter::parse(r#"{"$and": [{"p": {"$gt": 1}}, {"p": {"$gte": 3}}, {"p": {"$lte": 9}}, {"p": {"$lt": 9}}]}"#).unwrap();
        let p = plan(&f, &["p".to_string()]).plans;
        assert_eq!(
            p[0].lookup,
            Lookup::Range {
                lo: Some((3.0, true)),
                hi: Some((9.0, false))
            }
        );
    }
}
