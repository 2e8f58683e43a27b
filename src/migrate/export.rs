//! `vektagraf tenant export`: pages a consistent cut of a tenant into an
//! export file ([`super::format`]).

use std::path::{Path, PathBuf};

use crate::client::Client;
use crate::proto::migrate::{
    ExportHead, ExportOpen, ExportPage, ExportPageRequest, ExportSection, MAX_PAGE_ITEMS,
};
use crate::proto::wire::{Request, Response};
use crate::proto::Error;

use super::format::{self, Counts, Digests, Header, Manifest, Record, Tally, Writer};
use super::{bar, migration_id, Failed, MigrateError};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The tenant.
    pub tenant_id: String,
    /// The file to write (written to `FILE.partial`, then renamed).
    pub out: PathBuf,
    /// Only objects created or updated at or after this time (ms), and
    /// the edges touching them.
    pub since_ms: Option<u64>,
    /// Show progress bars and print the migration id at the start.
    pub progress: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    /// The migration id.
    pub migration_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The raft index of the cut.
    pub applied_index: u64,
    /// The file.
    pub file: String,
    /// Its manifest.
    pub manifest: Manifest,
}

fn unexpected(r: Response) -> Error {
    Error::Protocol {
        reason: format!("unexpected response {r:?}"),
    }
}

/// Opens an export cursor on the tenant's shard leader, hands every
/// collection, object and edge of the cut to `each` in file order, and
/// closes the cursor (also on error). First `on_head` sees the head; the
/// record it returns (a file's header) goes to `each` first.
pub async fn read_tenant(
    client: &Client,
    tenant_id: &str,
    since_ms: Option<u64>,
    on_head: impl FnOnce(&ExportHead) -> Option<Record>,
    mut each: impl FnMut(Record) -> Result<(), MigrateError>,
) -> Result<ExportHead, MigrateError> {
    let head = match client
        .call(Request::ExportOpen(ExportOpen {
            tenant_id: tenant_id.to_string(),
            since_ms,
        }))
        .await?
    {
        Response::ExportOpened(h) => *h,
        other => return Err(unexpected(other).into()),
    };
    let r = async {
        if let Some(first) = on_head(&head) {
            each(first)?;
        }
        let mut collections = head.collections.clone();
        collections.sort_by(|a, b| a.name.cmp(&b.name));
        for c in collections {
            each(Record::Collection(c))?;
        }
        let mut indexes = head.indexes.clone();
        indexes.sort();
        for p in indexes {
            each(Record::PropertyIndex(p))?;
        }
        for section in [ExportSection::Objects, ExportSection::Edges] {
            let mut after = None;
            loop {
                let page = match client
                    .call(Request::ExportPage(ExportPageRequest {
                        tenant_id: tenant_id.to_string(),
                        cursor: head.cursor,
                        section,
                        after: after.take(),
                        limit: MAX_PAGE_ITEMS,
                    }))
                    .await?
                {
                    Response::ExportPage(p) => p,
                    other => return Err(unexpected(other).into()),
                };
                let ExportPage {
                    objects,
                    edges,
                    next,
                } = page;
                for o in objects {
                    each(Record::Object(o))?;
                }
                for e in edges {
                    each(Record::Edge(e))?;
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        Ok::<(), MigrateError>(())
    }
    .await;
    let closed = client
        .call(Request::ExportClose {
            tenant_id: tenant_id.to_string(),
            cursor: head.cursor,
        })
        .await;
    r?;
    if let Err(e) = closed {
        tracing::warn!(tenant = tenant_id, error = %e, "export cursor not closed; it expires on its own");
    }
    Ok(head)
}

/// Counts and digests of a tenant as the node holds it now (the import's
/// verify step), read the way an export reads it.
pub(super) async fn tally_tenant(
    client: &Client,
    tenant_id: &str,
    since_ms: Option<u64>,
) -> Result<(ExportHead, Counts, Digests), MigrateError> {
    let mut t = Tally::default();
    let head = read_tenant(client, tenant_id, since_ms, |_| None, |r| tally(&mut t, &r)).await?;
    let (c, d) = t.finish();
    Ok((head, c, d))
}

pub(super) fn tally(t: &mut Tally, r: &Record) -> Result<(), MigrateError> {
    match r {
        Record::Collection(c) => t.collection(c),
        Record::PropertyIndex(p) => t.property_index(p),
        Record::Object(o) => t.object(o),
        Record::Edge(e) => t.edge(e),
        Record::Header(_) | Record::Manifest(_) => Ok(()),
    }
}

fn checked(head: &ExportHead, counts: &Counts, since_ms: Option<u64>) -> Result<(), MigrateError> {
    if since_ms.is_some() {
        return Ok(());
    }
    let s = &head.storage;
    for (what, cut, file) in [
        ("objects", s.objects, counts.objects),
        ("vectors", s.vectors, counts.vectors),
        ("edges", s.edges, counts.edges),
    ] {
        if cut != file {
            return Err(MigrateError::Inconsistent(format!(
                "the cut's counters say {cut} {what}, the pages held {file}"
            )));
        }
    }
    Ok(())
}

/// Exports a tenant into `opts.out`.
pub async fn export_tenant(client: &Client, opts: &ExportOptions) -> Result<ExportSummary, Failed> {
    let id = migration_id();
    if opts.progress {
        eprintln!(
            "migration {id}: export of tenant {} started",
            opts.tenant_id
        );
    }
    tracing::info!(target: "vektagraf::migrate", migration = %id, tenant = %opts.tenant_id, file = %opts.out.display(), "export started");
    let r = export_inner(client, opts, &id).await;
    match &r {
        Ok(s) => {
            tracing::info!(target: "vektagraf::migrate", migration = %id, tenant = %opts.tenant_id, applied_index = s.applied_index, objects = s.manifest.counts.objects, edges = s.manifest.counts.edges, "export finished")
        }
        Err(e) => {
            tracing::error!(target: "vektagraf::migrate", migration = %id, tenant = %opts.tenant_id, error = %e, "export failed")
        }
    }
    r.map_err(|error| Failed {
        migration_id: id,
        error,
    })
}

fn partial_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

async fn export_inner(
    client: &Client,
    opts: &ExportOptions,
    id: &str,
) -> Result<ExportSummary, MigrateError> {
    let partial = partial_path(&opts.out);
    let file = std::fs::File::create(&partial).map_err(MigrateError::io_at("create", &partial))?;
    let mut w = Writer::new(std::io::BufWriter::new(file));
    let mut t = Tally::default();
    let started = crate::util::now_ms();
    let pb = bar(0, "objects");
    if !opts.progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut edges_bar = false;
    let head = read_tenant(
        client,
        &opts.tenant_id,
        opts.since_ms,
        |h| {
            pb.set_length(h.storage.objects);
            Some(Record::Header(Box::new(Header {
                format: format::FORMAT.into(),
                version: format::FORMAT_VERSION,
                migration_id: id.to_string(),
                tenant_id: opts.tenant_id.clone(),
                exported_at_ms: started,
                applied_index: h.applied_index,
                node: h.node,
                since_ms: opts.since_ms,
                config: h.config.clone(),
                users: h.users.clone(),
                storage: h.storage.clone(),
                requests: h.requests.clone(),
            })))
        },
        |r| {
            tally(&mut t, &r)?;
            match &r {
                Record::Object(_) => pb.inc(1),
                Record::Edge(_) if !edges_bar => {
                    edges_bar = true;
                    pb.set_message("edges");
                    pb.set_position(0);
                    pb.set_length(0);
                    pb.inc(1);
                }
                Record::Edge(_) => {
                    pb.inc_length(1);
                    pb.inc(1)
                }
                _ => {}
            }
            w.record(&r)
        },
    )
    .await;
    pb.finish_and_clear();
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let (counts, digests) = t.finish();
    checked(&head, &counts, opts.since_ms)?;
    let (out, manifest) = w.finish(Manifest {
        counts,
        digests,
        file_sha256: String::new(),
    })?;
    let file = out
        .into_inner()
        .map_err(|e| MigrateError::io_at("write", &partial)(e.into_error()))?;
    file.sync_all()
        .map_err(MigrateError::io_at("sync", &partial))?;
    std::fs::rename(&partial, &opts.out).map_err(MigrateError::io_at("rename", &opts.out))?;
    Ok(ExportSummary {
        migration_id: id.to_string(),
        tenant_id: opts.tenant_id.clone(),
        applied_index: head.applied_index,
        file: opts.out.display().to_string(),
        manifest,
    })
}
