//! `vektagraf tenant import`: checks an export file against its
//! manifest, restores it into a tenant in batches through the tenant's
//! raft log, and verifies the target against the manifest.
//!
//! Steps, in order:
//!
//! 1. **Check the file**: read it whole, compare the SHA-256 of its bytes
//!    and the content digests and counts with the manifest. A changed
//!    byte fails here, before anything is written.
//! 2. **Tenant**: create it from the file's config (with `--as`, under
//!    the new id; `created_at` kept). A `--since` file is applied on top
//!    of an existing tenant instead.
//! 3. **Users** (ids only; keys are never exported: create new ones).
//! 4. **Collections**, then **records** in file order (objects, then
//!    edges), in batches of at most
//!    [`crate::proto::migrate::MAX_IMPORT_ITEMS`].
//!    After each batch the number of records done is written to a
//!    progress file beside the export (`FILE.import-TENANT.progress`);
//!    a re-run with the same file and target resumes after them, under
//!    the same migration id. Restoring a record twice writes the same
//!    state (objects keep their id, timestamps and vector), so a batch
//!    that was applied but not recorded is harmless.
//! 5. **Request counters**: raised to the file's (never lowered).
//! 6. **Verify**: the target is read back with a new export cursor (a
//!    consistent cut) and its counts and content digests, config, users
//!    and request counters compared with the file's. Any difference is a
//!    [`MigrateError::Verify`].

use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::proto::migrate::{ImportRequest, ImportStep, PropertyIndex, MAX_IMPORT_ITEMS};
use crate::proto::wire::{Request, Response};
use crate::proto::{CollectionSpec, Edge, Error, Object, RequestUsage, WriteOutcome};

use super::export::{tally, tally_tenant};
use super::format::{Counts, Header, Manifest, Reader, Record, Tally};
use super::{bar, migration_id, Failed, MigrateError};

/// About the most bytes of records sent in one import step.
const MAX_STEP_BYTES: usize = 4 << 20;

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The export file.
    pub file: PathBuf,
    /// Import under this tenant id instead of the file's.
    pub as_tenant: Option<String>,
    /// Records per import step (1 to `MAX_IMPORT_ITEMS`).
    pub batch: usize,
    /// Show progress bars and print the migration id at the start.
    pub progress: bool,
    /// Stop with [`MigrateError::Stopped`] after this many record
    /// batches (tests of resumption).
    pub stop_after_batches: Option<u64>,
}

impl ImportOptions {
    /// Defaults for `file`: the file's tenant id, batches of 500.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            as_tenant: None,
            batch: 500,
            progress: false,
            stop_after_batches: None,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// The migration id (the first run's, when resumed).
    pub migration_id: String,
    /// The exported tenant.
    pub source_tenant: String,
    /// The tenant written.
    pub tenant_id: String,
    /// The raft index of the export's cut.
    pub source_applied_index: u64,
    /// Records of the file (verified on the target).
    pub counts: Counts,
    /// Records skipped because an earlier run had restored them.
    pub resumed_after: u64,
    /// The verify step passed.
    pub verified: bool,
}

/// What a run records after each batch, to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    migration_id: String,
    file_sha256: String,
    tenant_id: String,
    records_done: u64,
}

fn progress_path(file: &Path, tenant: &str) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(format!(".import-{tenant}.progress"));
    PathBuf::from(p)
}

fn save_progress(path: &Path, p: &Progress) -> Result<(), MigrateError> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(p).map_err(|e| MigrateError::Encode(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(MigrateError::io_at("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(MigrateError::io_at("rename", path))
}

fn open(file: &Path) -> Result<Reader<BufReader<std::fs::File>>, MigrateError> {
    let f = std::fs::File::open(file).map_err(MigrateError::io_at("open", file))?;
    Ok(Reader::new(BufReader::with_capacity(1 << 20, f)))
}

/// Step 1: reads the whole file and checks it against its manifest.
pub fn check_file(file: &Path) -> Result<(Header, Manifest), MigrateError> {
    let mut r = open(file)?;
    let mut header = None;
    let mut t = Tally::default();
    while let Some(rec) = r.next_record()? {
        if let Record::Header(h) = &rec {
            if h.format != super::format::FORMAT || h.version != super::format::FORMAT_VERSION {
                return Err(MigrateError::Damaged {
                    line: 1,
                    reason: format!(
                        "format {} version {}; this build reads {} version {}",
                        h.format,
                        h.version,
                        super::format::FORMAT,
                        super::format::FORMAT_VERSION
                    ),
                });
            }
            header = Some((**h).clone());
        }
        tally(&mut t, &rec)?;
    }
    let (m, sha) = r.manifest().ok_or_else(|| MigrateError::Damaged {
        line: r.line(),
        reason: "no manifest".into(),
    })?;
    let m = m.clone();
    let header = header.ok_or_else(|| MigrateError::Damaged {
        line: 1,
        reason: "no header".into(),
    })?;
    if sha != m.file_sha256 {
        return Err(MigrateError::Checksum {
            what: "the SHA-256 of the file's records".into(),
            expected: m.file_sha256,
            found: sha,
        });
    }
    let (counts, digests) = t.finish();
    compare_content("file", &m, &counts, &digests, |what, expected, found| {
        MigrateError::Checksum {
            what,
            expected,
            found,
        }
    })?;
    Ok((header, m))
}

fn compare_content(
    whose: &str,
    m: &Manifest,
    counts: &Counts,
    digests: &super::format::Digests,
    err: impl Fn(String, String, String) -> MigrateError,
) -> Result<(), MigrateError> {
    let pairs = [
        (
            "collections count",
            m.counts.collections.to_string(),
            counts.collections.to_string(),
        ),
        (
            "objects count",
            m.counts.objects.to_string(),
            counts.objects.to_string(),
        ),
        (
            "vectors count",
            m.counts.vectors.to_string(),
            counts.vectors.to_string(),
        ),
        (
            "edges count",
            m.counts.edges.to_string(),
            counts.edges.to_string(),
        ),
        (
            "property indexes count",
            m.counts.property_indexes.to_string(),
            counts.property_indexes.to_string(),
        ),
        (
            "collections digest",
            m.digests.collections.clone(),
            digests.collections.clone(),
        ),
        (
            "objects digest",
            m.digests.objects.clone(),
            digests.objects.clone(),
        ),
        (
            "edges digest",
            m.digests.edges.clone(),
            digests.edges.clone(),
        ),
    ];
    for (what, expected, found) in pairs {
        if expected != found {
            return Err(err(format!("{whose} {what}"), expected, found));
        }
    }
    Ok(())
}

/// Imports an export file (see the [module docs](self)).
pub async fn import_tenant(client: &Client, opts: &ImportOptions) -> Result<ImportSummary, Failed> {
    let (header, manifest) = match check_file(&opts.file) {
        Ok(x) => x,
        Err(error) => {
            let id = migration_id();
            tracing::error!(target: "vektagraf::migrate", migration = %id, file = %opts.file.display(), error = %error, "import refused: the file fails its check");
            return Err(Failed {
                migration_id: id,
                error,
            });
        }
    };
    let target = opts
        .as_tenant
        .clone()
        .unwrap_or_else(|| header.tenant_id.clone());
    let ppath = progress_path(&opts.file, &target);
    let prior: Option<Progress> = std::fs::read(&ppath)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|p: &Progress| p.file_sha256 == manifest.file_sha256 && p.tenant_id == target);
    let id = prior
        .as_ref()
        .map_or_else(migration_id, |p| p.migration_id.clone());
    if opts.progress {
        eprintln!(
            "migration {id}: import of {} into tenant {target} {}",
            opts.file.display(),
            match &prior {
                Some(p) => format!("resumed after {} records", p.records_done),
                None => "started".to_string(),
            }
        );
    }
    tracing::info!(target: "vektagraf::migrate", migration = %id, source = %header.tenant_id, tenant = %target, file = %opts.file.display(), resumed_after = prior.as_ref().map_or(0, |p| p.records_done), "import started");
    let r = import_inner(
        client, opts, &header, &manifest, &target, &ppath, prior, &id,
    )
    .await;
    match &r {
        Ok(s) => {
            tracing::info!(target: "vektagraf::migrate", migration = %id, tenant = %target, objects = s.counts.objects, edges = s.counts.edges, "import finished and verified")
        }
        Err(e) => {
            tracing::error!(target: "vektagraf::migrate", migration = %id, tenant = %target, error = %e, "import failed")
        }
    }
    r.map_err(|error| Failed {
        migration_id: id,
        error,
    })
}

fn record_err(kind: &'static str, id: String) -> impl Fn(Error) -> MigrateError {
    move |error| MigrateError::Record {
        kind,
        id: id.clone(),
        error,
    }
}

async fn step(
    client: &Client,
    tenant: &str,
    migration: &str,
    step: ImportStep,
) -> Result<Vec<Result<WriteOutcome, Error>>, MigrateError> {
    match client
        .call(Request::Import(ImportRequest {
            tenant_id: tenant.to_string(),
            migration_id: migration.to_string(),
            step,
        }))
        .await?
    {
        Response::Batch(r) => Ok(r),
        other => Err(Error::Protocol {
            reason: format!("unexpected response {other:?}"),
        }
        .into()),
    }
}

/// Sends a batch of records; every one must be restored.
async fn send(
    client: &Client,
    tenant: &str,
    migration: &str,
    objects: Vec<Object>,
    edges: Vec<Edge>,
) -> Result<(), MigrateError> {
    let ids: Vec<(&'static str, String)> = objects
        .iter()
        .map(|o| ("object", o.id.clone()))
        .chain(
            edges
                .iter()
                .map(|e| ("edge", format!("{} -{}-> {}", e.from, e.label, e.to))),
        )
        .collect();
    let results = step(
        client,
        tenant,
        migration,
        ImportStep::Records { objects, edges },
    )
    .await?;
    if results.len() != ids.len() {
        return Err(Error::Protocol {
            reason: format!("{} results for {} records", results.len(), ids.len()),
        }
        .into());
    }
    for ((kind, id), r) in ids.into_iter().zip(results) {
        r.map_err(record_err(kind, id))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn import_inner(
    client: &Client,
    opts: &ImportOptions,
    header: &Header,
    manifest: &Manifest,
    target: &str,
    ppath: &Path,
    prior: Option<Progress>,
    id: &str,
) -> Result<ImportSummary, MigrateError> {
    let skip = prior.as_ref().map_or(0, |p| p.records_done);
    // 2. The tenant.
    let exists = match client.get_tenant(target).await {
        Ok(_) => true,
        Err(Error::TenantNotFound { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if header.since_ms.is_some() {
        if !exists {
            return Err(Error::TenantNotFound {
                tenant_id: target.to_string(),
            }
            .into());
        }
    } else if exists && prior.is_none() {
        return Err(MigrateError::TargetExists(target.to_string()));
    } else if !exists {
        let mut cfg = header.config.clone();
        cfg.tenant_id = target.to_string();
        client.create_tenant(cfg).await?;
    }
    let mut progress = Progress {
        migration_id: id.to_string(),
        file_sha256: manifest.file_sha256.clone(),
        tenant_id: target.to_string(),
        records_done: skip,
    };
    save_progress(ppath, &progress)?;
    // 3. Users.
    for u in &header.users {
        match client.create_user(target, u).await {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(record_err("user", u.clone())(e)),
        }
    }
    // 4. Collections, then records.
    let batch = opts.batch.clamp(1, MAX_IMPORT_ITEMS);
    let total = manifest.counts.objects + manifest.counts.edges;
    let pb = bar(total, "records");
    if !opts.progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_position(skip);
    let mut r = open(&opts.file)?;
    let mut collections: Vec<CollectionSpec> = Vec::new();
    let mut indexes: Vec<PropertyIndex> = Vec::new();
    let mut sent_collections = false;
    let (mut objects, mut edges) = (Vec::new(), Vec::new());
    let (mut n, mut bytes, mut seen, mut batches) = (0usize, 0usize, 0u64, 0u64);
    loop {
        let rec = r.next_record()?;
        let end = rec.is_none();
        match rec {
            Some(Record::Collection(c)) => collections.push(c),
            Some(Record::PropertyIndex(p)) => indexes.push(p),
            Some(Record::Object(o)) => {
                seen += 1;
                if seen > skip {
                    bytes += o.properties.encoded_len()
                        + o.vector.as_ref().map_or(0, |v| v.len() * 4)
                        + 64;
                    objects.push(o);
                    n += 1;
                }
            }
            Some(Record::Edge(e)) => {
                seen += 1;
                if seen > skip {
                    bytes += e.properties.encoded_len() + 64;
                    edges.push(e);
                    n += 1;
                }
            }
            Some(_) | None => {}
        }
        if !sent_collections && (end || seen > 0) {
            let specs = std::mem::take(&mut collections);
            let names: Vec<String> = specs.iter().map(|c| c.name.clone()).collect();
            let results = step(client, target, id, ImportStep::Collections(specs)).await?;
            for (name, r) in names.into_iter().zip(results) {
                r.map_err(record_err("collection", name))?;
            }
            if !indexes.is_empty() {
                let indexes = std::mem::take(&mut indexes);
                let names: Vec<String> = indexes
                    .iter()
                    .map(|p| format!("{}.{}", p.collection, p.property))
                    .collect();
                let results = step(client, target, id, ImportStep::Indexes(indexes)).await?;
                for (name, r) in names.into_iter().zip(results) {
                    r.map_err(record_err("property index", name))?;
                }
            }
            sent_collections = true;
        }
        if n > 0 && (n >= batch || bytes >= MAX_STEP_BYTES || end) {
            send(
                client,
                target,
                id,
                std::mem::take(&mut objects),
                std::mem::take(&mut edges),
            )
            .await?;
            progress.records_done = seen;
            save_progress(ppath, &progress)?;
            pb.set_position(seen);
            batches += 1;
            (n, bytes) = (0, 0);
            if opts.stop_after_batches == Some(batches) && !end {
                pb.abandon();
                return Err(MigrateError::Stopped(batches));
            }
        }
        if end {
            break;
        }
    }
    pb.finish_and_clear();
    // 5. Request counters.
    step(
        client,
        target,
        id,
        ImportStep::Counters(Box::new(header.requests.clone())),
    )
    .await?;
    // 6. Verify.
    verify(client, header, manifest, target).await?;
    let _ = std::fs::remove_file(ppath);
    Ok(ImportSummary {
        migration_id: id.to_string(),
        source_tenant: header.tenant_id.clone(),
        tenant_id: target.to_string(),
        source_applied_index: header.applied_index,
        counts: manifest.counts.clone(),
        resumed_after: skip,
        verified: true,
    })
}

fn verify_err(
    what: impl Into<String>,
    expected: impl ToString,
    found: impl ToString,
) -> MigrateError {
    MigrateError::Verify {
        what: what.into(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// Step 6: re-reads the target and compares it with the file.
async fn verify(
    client: &Client,
    header: &Header,
    manifest: &Manifest,
    target: &str,
) -> Result<(), MigrateError> {
    let (head, counts, digests) = tally_tenant(client, target, header.since_ms).await?;
    compare_content(
        "target",
        manifest,
        &counts,
        &digests,
        |what, expected, found| MigrateError::Verify {
            what,
            expected,
            found,
        },
    )?;
    let mut want_cfg = header.config.clone();
    want_cfg.tenant_id = target.to_string();
    if header.since_ms.is_none() {
        let (a, b) = (&header.storage, &head.storage);
        for (what, want, have) in [
            ("object counter", a.objects, b.objects),
            ("vector counter", a.vectors, b.vectors),
            ("edge counter", a.edges, b.edges),
        ] {
            if want != have {
                return Err(verify_err(what, want, have));
            }
        }
        if head.users != header.users {
            return Err(verify_err(
                "users",
                format!("{:?}", header.users),
                format!("{:?}", head.users),
            ));
        }
        let (want, have) = (
            serde_json::to_string(&want_cfg).map_err(|e| MigrateError::Encode(e.to_string()))?,
            serde_json::to_string(&head.config).map_err(|e| MigrateError::Encode(e.to_string()))?,
        );
        if want != have {
            return Err(verify_err("config", want, have));
        }
    } else if let Some(u) = header.users.iter().find(|u| !head.users.contains(u)) {
        return Err(verify_err("users", format!("user {u}"), "missing"));
    }
    counters_cover(&header.requests, &head.requests)
}

/// The target's request counters must hold the file's: the same totals
/// by operation, and the same daily and monthly counts while their day
/// and month last.
fn counters_cover(file: &RequestUsage, target: &RequestUsage) -> Result<(), MigrateError> {
    for (op, n) in &file.by_operation {
        let have = target.by_operation.get(op).copied().unwrap_or(0);
        if have < *n {
            return Err(verify_err(format!("{op} request counter"), n, have));
        }
    }
    if file.day == target.day && target.daily < file.daily {
        return Err(verify_err(
            "daily request counter",
            file.daily,
            target.daily,
        ));
    }
    if file.month == target.month && target.monthly < file.monthly {
        return Err(verify_err(
            "monthly request counter",
            file.monthly,
            target.monthly,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_cover_needs_every_operation_total_and_the_current_periods() {
        let mut file = RequestUsage {
            day: 10,
            daily: 5,
            month: 3,
            monthly: 50,
            ..RequestUsage::default()
        };
        file.by_operation.insert("write".into(), 40);
        let mut t = file.clone();
        assert!(counters_cover(&file, &t).is_ok());
        t.by_operation.insert("write".into(), 39);
        assert!(matches!(
            counters_cover(&file, &t),
            Err(MigrateError::Verify { .. })
        ));
        t.by_operation.insert("write".into(), 40);
        t.daily = 4;
        assert!(counters_cover(&file, &t).is_err());
        // A new day: the old day's count is gone, as it should be.
        t.day = 11;
        t.daily = 0;
        assert!(counters_cover(&file, &t).is_ok());
    }

    #[test]
    fn the_progress_file_sits_beside_the_export_and_names_the_target() {
        assert_eq!(
            progress_path(Path::new("/tmp/a.vkx"), "acme2"),
            PathBuf::from("/tmp/a.vkx.import-acme2.progress")
        );
    }
}
