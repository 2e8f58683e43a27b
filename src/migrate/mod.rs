//! Whole-tenant export and import (the seed's `TenantMigration`): moving
//! a tenant between clusters, and backups. Client side, on the driver
//! only: the file format ([`mod@format`]), the export ([`export`]) and the
//! import with its verify step ([`import`]). The node's side (a cursor
//! over a checkpoint of the shard, restore commands through raft) is in
//! `db/export.rs`; the wire types in [`crate::proto::migrate`].
//!
//! Every run has a migration id (`mig-…`), printed and logged (tracing,
//! target `vektagraf::migrate`) at its start, its end and on error; the
//! node logs it with each import step.

pub mod export;
pub mod format;
pub mod import;

use crate::proto::Error;

pub use export::{export_tenant, read_tenant, ExportOptions, ExportSummary};
pub use import::{check_file, import_tenant, ImportOptions, ImportSummary};

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The node refused a request.
    #[error("node: {0}")]
    Node(#[from] Error),
    /// Reading or writing a local file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding a record: {0}")]
    Encode(String),
    /// The file is not a well-formed export (its text is damaged, cut
    /// off, or not an export at all).
    #[error("export file damaged at line {line}: {reason}")]
    Damaged {
        /// Line number (1-based).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file's bytes or content do not match its manifest: it was
    /// changed after the export.
    #[error("export file fails verification: {what} is {found}, the manifest says {expected} (the file was changed or damaged after export)")]
    Checksum {
        /// Which checksum or count.
        what: String,
        /// The manifest's value.
        expected: String,
        /// The file's.
        found: String,
    },
    /// The import's verify step found the target differs from the file.
    #[error("verify failed: the target's {what} is {found}, the export has {expected}")]
    Verify {
        /// What differs.
        what: String,
        /// The export's value.
        expected: String,
        /// The target's.
        found: String,
    },
    /// The node refused a record of the import.
    #[error("import of {kind} {id} refused: {error}")]
    Record {
        /// Object, edge or collection.
        kind: &'static str,
        /// Its id.
        id: String,
        /// The node's error.
        error: Error,
    },
    /// The export is not consistent with its own cut (a bug or a node
    /// that changed the checkpoint).
    #[error("export inconsistent: {0}")]
    Inconsistent(String),
    /// The target tenant exists and the import is not resuming into it.
    #[error("tenant {0} already exists; import into a new id with --as, or delete it first")]
    TargetExists(String),
    /// The import stopped where it was asked to (tests of resumption).
    #[error("import stopped after {0} batches as asked; run it again to resume")]
    Stopped(u64),
}

/// A failed export or import, with its migration id.
#[derive(Debug, thiserror::Error)]
#[error("migration {migration_id}: {error}")]
pub struct Failed {
    /// The run's migration id.
    pub migration_id: String,
    /// What went wrong.
    #[source]
    pub error: MigrateError,
}

impl MigrateError {
    fn io(op: &'static str) -> impl Fn(std::io::Error) -> MigrateError {
        move |source| MigrateError::Io {
            op,
            path: String::new(),
            source,
        }
    }

    fn io_at(op: &'static str, path: &std::path::Path) -> impl Fn(std::io::Error) -> MigrateError {
        let path = path.display().to_string();
        move |source| MigrateError::Io {
            op,
            path: path.clone(),
            source,
        }
    }
}

/// A new migration id: `mig-<ms since the epoch, hex>-<random>`.
pub fn migration_id() -> String {
    format!(
        "mig-{:x}-{:08x}",
        crate::util::now_ms(),
        rand::random::<u32>()
    )
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Parses `--since`: a UTC date `YYYY-MM-DD`, a UTC time
/// `YYYY-MM-DDTHH:MM[:SS][Z]`, or milliseconds since the epoch. Returns
/// milliseconds since the epoch.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|e| format!("{s:?}: {e}"));
    }
    let bad =
        || format!("{s:?}: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS]Z (UTC) or ms since the epoch");
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (s, None),
    };
    let num = |p: Option<&str>| p.and_then(|p| p.parse::<u32>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    if d.next().is_some()
        || !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
    {
        return Err(bad());
    }
    let mut secs = 0u64;
    if let Some(t) = time {
        let mut p = t.split(':');
        let (h, mi) = (num(p.next())?, num(p.next())?);
        let sec = match p.next() {
            Some(x) => num(Some(x))?,
            None => 0,
        };
        if p.next().is_some() || h > 23 || mi > 59 || sec > 59 {
            return Err(bad());
        }
        secs = u64::from(h) * 3600 + u64::from(mi) * 60 + u64::from(sec);
    }
    let days = crate::limits::calendar::days_from_civil(y as i32, m, day);
    Ok((u64::from(days) * 86_400 + secs) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_milliseconds_in_utc() {
        assert_eq!(parse_since("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_since("2024-03-01"), Ok(1_709_251_200_000));
        assert_eq!(parse_since("2024-03-01T01:02:03Z"), Ok(1_709_254_923_000));
        assert_eq!(parse_since("2024-03-01T01:02"), Ok(1_709_254_920_000));
        assert_eq!(parse_since("1709251200000"), Ok(1_709_251_200_000));
        for bad in ["", "2024-13-01", "2024-03", "yesterday", "2024-03-01T25:00"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
