//! `vektagraf tenant export` and `tenant import` (the driving code is in
//! `vektagraf::migrate`).

use std::path::PathBuf;

use vektagraf::client::Client;
use vektagraf::migrate::{self, ExportOptions, ImportOptions};

use super::{print, Output};

/// Exports a tenant into `out`.
pub async fn export(
    c: &Client,
    output: Output,
    tenant: &str,
    out: PathBuf,
    since: Option<String>,
) -> anyhow::Result<()> {
    let since_ms = since
        .as_deref()
        .map(migrate::parse_since)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let opts = ExportOptions {
        tenant_id: tenant.to_string(),
        out,
        since_ms,
        progress: true,
    };
    let s = migrate::export_tenant(c, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("export of tenant {tenant} failed: {e}"))?;
    eprintln!(
        "migration {}: exported tenant {} at raft index {} to {}",
        s.migration_id, s.tenant_id, s.applied_index, s.file
    );
    print(output, &s)
}

/// Imports an export file.
pub async fn import(
    c: &Client,
    output: Output,
    file: PathBuf,
    as_id: Option<String>,
    batch: usize,
    stop_after: Option<u64>,
) -> anyhow::Result<()> {
    let mut opts = ImportOptions::new(file);
    opts.as_tenant = as_id;
    opts.batch = batch;
    opts.progress = true;
    opts.stop_after_batches = stop_after;
    match migrate::import_tenant(c, &opts).await {
        Ok(s) => {
            eprintln!(
                "migration {}: imported tenant {} as {} and verified it",
                s.migration_id, s.source_tenant, s.tenant_id
            );
            print(output, &s)
        }
        Err(e) => Err(anyhow::anyhow!(
            "import of {} failed: {e}",
            opts.file.display()
        )),
    }
}
