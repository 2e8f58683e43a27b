//! The tenant export file: JSON lines, one record per line.
//!
//! ```text
//! {"header":{"format":"vektagraf-tenant-export","version":1,"migration_id":..,"tenant_id":..,
//!            "applied_index":..,"since_ms":null,"config":{..},"users":[..],"storage":{..},"requests":{..}}}
//! {"collection":{"name":"docs","dimension":3,"metric":"cosine","index":"flat"}}   one per collection, by name
//! {"property_index":{"collection":"docs","property":"price"}}                    one per index, by (collection, property)
//! {"object":{"id":..,"collection":..,"properties":{..},"created_at":..,"updated_at":..,"vector":[..]}}  by id
//! {"edge":{"from":..,"label":..,"to":..,"properties":{..}}}                       by (from, label, to)
//! {"manifest":{"counts":{..},"digests":{..},"file_sha256":".."}}                 always the last line
//! ```
//!
//! **Checksums.** `file_sha256` is the SHA-256 of every byte before the
//! manifest line, so any changed byte of the file is found before an
//! import writes anything. The `digests` are SHA-256 over the *content*
//! of each section, independent of the file's text: for every record in
//! order, its length (`u32` big-endian) and its canonical binary encoding
//! (the crate's bincode codec). The import's verify step computes the
//! same digests from the target tenant, re-read over the network, and
//! compares them with the manifest.
//!
//! A line is at most [`MAX_LINE_BYTES`]; a longer one is refused before
//! it is held in memory.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::migrate::PropertyIndex;
use crate::proto::{CollectionSpec, Edge, Object, RequestUsage, StorageUsage};
use crate::tenant::TenantConfig;

use super::MigrateError;

/// The `format` field of every header.
pub const FORMAT: &str = "vektagraf-tenant-export";
/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest line read (a record with a large vector and properties fits
/// well within it).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The first line: where and when the cut was taken, and the tenant's
/// metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The export's migration id.
    pub migration_id: String,
    /// The exported tenant.
    pub tenant_id: String,
    /// When the export started (ms since the epoch).
    pub exported_at_ms: u64,
    /// The raft log index of the cut.
    pub applied_index: u64,
    /// The node that served the cut.
    pub node: u64,
    /// Only objects created or updated at or after this time, and edges
    /// touching them (`None`: the whole tenant).
    pub since_ms: Option<u64>,
    /// The tenant's config.
    pub config: TenantConfig,
    /// User ids (never keys).
    pub users: Vec<String>,
    /// Storage counters of the cut (the whole tenant, even with `since`).
    pub storage: StorageUsage,
    /// Request counters when the export opened.
    pub requests: RequestUsage,
}

/// Record counts of a file or a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Collections.
    pub collections: u64,
    /// Objects.
    pub objects: u64,
    /// Objects with a vector.
    pub vectors: u64,
    /// Edges.
    pub edges: u64,
    /// Property indexes (absent from files written before they were
    /// exported).
    #[serde(default)]
    pub property_indexes: u64,
}

/// Content digests (hex SHA-256) of each section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    /// Collection specs.
    pub collections: String,
    /// Objects.
    pub objects: String,
    /// Edges.
    pub edges: String,
}

/// The last line: counts and checksums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Records of each kind.
    pub counts: Counts,
    /// Content digests.
    pub digests: Digests,
    /// SHA-256 of every byte before this line (hex).
    pub file_sha256: String,
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The first line.
    Header(Box<Header>),
    /// A collection spec.
    Collection(CollectionSpec),
    /// A property index (after every collection).
    PropertyIndex(PropertyIndex),
    /// An object with its timestamps and vector.
    Object(Object),
    /// An edge.
    Edge(Edge),
    /// The last line.
    Manifest(Manifest),
}

/// Running counts and content digests, fed in file order.
#[derive(Default)]
pub struct Tally {
    counts: Counts,
    collections: Sha256,
    objects: Sha256,
    edges: Sha256,
}

fn feed<T: Serialize>(h: &mut Sha256, v: &T) -> Result<(), MigrateError> {
    let bytes = crate::codec::encode(v).map_err(|e| MigrateError::Encode(e.to_string()))?;
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(&bytes);
    Ok(())
}

impl Tally {
    /// Counts a collection.
    pub fn collection(&mut self, c: &CollectionSpec) -> Result<(), MigrateError> {
        self.counts.collections += 1;
        feed(&mut self.collections, c)
    }

    /// Counts a property index; its digest is part of the collections'
    /// (a file without indexes digests as before they were exported).
    pub fn property_index(&mut self, p: &PropertyIndex) -> Result<(), MigrateError> {
        self.counts.property_indexes += 1;
        feed(&mut self.collections, p)
    }

    /// Counts an object.
    pub fn object(&mut self, o: &Object) -> Result<(), MigrateError> {
        self.counts.objects += 1;
        self.counts.vectors += u64::from(o.vector.is_some());
        feed(&mut self.objects, o)
    }

    /// Counts an edge.
    pub fn edge(&mut self, e: &Edge) -> Result<(), MigrateError> {
        self.counts.edges += 1;
        feed(&mut self.edges, e)
    }

    /// Counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The counts and digests.
    pub fn finish(self) -> (Counts, Digests) {
        (
            self.counts,
            Digests {
                collections: hex::encode(self.collections.finalize()),
                objects: hex::encode(self.objects.finalize()),
                edges: hex::encode(self.edges.finalize()),
            },
        )
    }
}

/// Writes records as lines, hashing every byte written.
pub struct Writer<W: Write> {
    out: W,
    sha: Sha256,
    /// Records written.
    pub lines: u64,
}

impl<W: Write> Writer<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            sha: Sha256::new(),
            lines: 0,
        }
    }

    /// Writes one record.
    pub fn record(&mut self, r: &Record) -> Result<(), MigrateError> {
        let mut line = serde_json::to_vec(r).map_err(|e| MigrateError::Encode(e.to_string()))?;
        line.push(b'\n');
        self.sha.update(&line);
        self.out
            .write_all(&line)
            .map_err(MigrateError::io("write"))?;
        self.lines += 1;
        Ok(())
    }

    /// Writes the manifest (its `file_sha256` is filled in here) and
    /// returns the output.
    pub fn finish(mut self, mut manifest: Manifest) -> Result<(W, Manifest), MigrateError> {
        manifest.file_sha256 = hex::encode(self.sha.clone().finalize());
        let mut line = serde_json::to_vec(&Record::Manifest(manifest.clone()))
            .map_err(|e| MigrateError::Encode(e.to_string()))?;
        line.push(b'\n');
        self.out
            .write_all(&line)
            .map_err(MigrateError::io("write"))?;
        self.out.flush().map_err(MigrateError::io("write"))?;
        Ok((self.out, manifest))
    }
}

/// Reads records line by line (bounded), hashing the bytes before the
/// manifest.
pub struct Reader<R: BufRead> {
    input: R,
    sha: Sha256,
    line: u64,
    buf: Vec<u8>,
    /// The manifest, once read (it must be the last line).
    manifest: Option<Manifest>,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            sha: Sha256::new(),
            line: 0,
            buf: Vec::new(),
            manifest: None,
        }
    }

    /// The current line number (1-based, of the last record read).
    pub fn line(&self) -> u64 {
        self.line
    }

    fn damaged(&self, reason: impl Into<String>) -> MigrateError {
        MigrateError::Damaged {
            line: self.line,
            reason: reason.into(),
        }
    }

    /// The next record other than the manifest; `None` at the manifest
    /// (which must be the last line) .
    pub fn next_record(&mut self) -> Result<Option<Record>, MigrateError> {
        if self.manifest.is_some() {
            return Ok(None);
        }
        self.buf.clear();
        let n = <&mut R as std::io::Read>::take(&mut self.input, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(MigrateError::io("read"))?;
        self.line += 1;
        if n == 0 {
            return Err(self.damaged("the file ends without a manifest (truncated?)"));
        }
        if n > MAX_LINE_BYTES {
            return Err(self.damaged(format!("line longer than {MAX_LINE_BYTES} bytes")));
        }
        if self.buf.last() != Some(&b'\n') {
            return Err(self.damaged("the last line is cut off (truncated?)"));
        }
        let rec: Record = serde_json::from_slice(&self.buf)
            .map_err(|e| self.damaged(format!("not a valid record: {e}")))?;
        match (&rec, self.line) {
            (Record::Header(_), 1) => {}
            (Record::Header(_), _) => return Err(self.damaged("a second header")),
            (_, 1) => return Err(self.damaged("the first line is not a header")),
            _ => {}
        }
        if let Record::Manifest(m) = rec {
            self.manifest = Some(m);
            let mut probe = [0u8; 1];
            let more = std::io::Read::read(&mut self.input, &mut probe)
                .map_err(MigrateError::io("read"))?;
            if more > 0 {
                return Err(self.damaged("lines after the manifest"));
            }
            return Ok(None);
        }
        self.sha.update(&self.buf);
        Ok(Some(rec))
    }

    /// The manifest and the SHA-256 of the bytes before it, once
    /// [`next_record`](Self::next_record) returned `None`.
    pub fn manifest(&self) -> Option<(&Manifest, String)> {
        self.manifest
            .as_ref()
            .map(|m| (m, hex::encode(self.sha.clone().finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NewObject, Properties};

    fn header() -> Header {
        let cfg = TenantConfig::for_tier(
            &crate::tenant::Tiers::default(),
            "acme",
            "ACME",
            "tier2",
            serde_json::json!({}),
        )
        .unwrap();
        Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            migration_id: "m".into(),
            tenant_id: "acme".into(),
            exported_at_ms: 1,
            applied_index: 9,
            node: 1,
            since_ms: None,
            config: cfg,
            users: vec!["alice".into()],
            storage: StorageUsage::default(),
            requests: RequestUsage::default(),
        }
    }

    fn object(id: &str, v: f32) -> Object {
        let n = NewObject::new("docs", id, serde_json::json!({"t": v, "s": "x"}));
        Object {
            id: n.id,
            collection: n.collection,
            properties: n.properties,
            created_at: 1_700_000_000_123,
            updated_at: 1_700_000_000_456,
            vector: Some(vec![v, 0.1, -3.25e-7, f32::MAX, f32::MIN_POSITIVE]),
        }
    }

    fn file() -> (Vec<u8>, Manifest) {
        let mut w = Writer::new(Vec::new());
        let mut t = Tally::default();
        w.record(&Record::Header(Box::new(header()))).unwrap();
        let c = CollectionSpec::vectors("docs", 5);
        t.collection(&c).unwrap();
        w.record(&Record::Collection(c)).unwrap();
        for (i, v) in [0.3f32, 1.0 / 3.0, 7.1e-3].iter().enumerate() {
            let o = object(&format!("o{i}"), *v);
            t.object(&o).unwrap();
            w.record(&Record::Object(o)).unwrap();
        }
        let e = Edge {
            from: "o0".into(),
            label: "l".into(),
            to: "o1".into(),
            properties: Properties::new(),
        };
        t.edge(&e).unwrap();
        w.record(&Record::Edge(e)).unwrap();
        let (counts, digests) = t.finish();
        let (bytes, m) = w
            .finish(Manifest {
                counts,
                digests,
                file_sha256: String::new(),
            })
            .unwrap();
        (bytes, m)
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<Record>, Tally, Manifest, String), MigrateError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        let mut t = Tally::default();
        while let Some(rec) = r.next_record()? {
            match &rec {
                Record::Collection(c) => t.collection(c)?,
                Record::Object(o) => t.object(o)?,
                Record::Edge(e) => t.edge(e)?,
                _ => {}
            }
            out.push(rec);
        }
        let (m, sha) = r.manifest().unwrap();
        Ok((out, t, m.clone(), sha))
    }

    #[test]
    fn a_file_reads_back_to_the_same_records_counts_and_digests() {
        let (bytes, m) = file();
        let (recs, t, read_m, sha) = read_all(&bytes).unwrap();
        assert_eq!(recs.len(), 6);
        assert_eq!(read_m, m);
        assert_eq!(sha, m.file_sha256);
        let (counts, digests) = t.finish();
        assert_eq!(counts, m.counts);
        assert_eq!(digests, m.digests);
        assert_eq!(counts.vectors, 3);
        // Vectors survive the JSON text bit for bit.
        let Record::Object(o) = &recs[3] else {
            panic!("not an object")
        };
        assert_eq!(o, &object("o1", 1.0 / 3.0));
    }

    #[test]
    fn every_flipped_byte_before_the_manifest_is_found() {
        let (bytes, m) = file();
        let end = bytes.len()
            - 1
            - bytes[..bytes.len() - 1]
                .iter()
                .rev()
                .position(|b| *b == b'\n')
                .unwrap();
        for i in (0..end).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            match read_all(&bad) {
                Err(MigrateError::Damaged { .. }) => {}
                Ok((_, _, _, sha)) => assert_ne!(sha, m.file_sha256, "byte {i}"),
                Err(e) => panic!("byte {i}: {e}"),
            }
        }
    }

    #[test]
    fn a_truncated_file_or_a_missing_manifest_is_damaged() {
        let (bytes, _) = file();
        let cut = &bytes[..bytes.len() - 5];
        assert!(matches!(read_all(cut), Err(MigrateError::Damaged { .. })));
        let upto = bytes.len()
            - 1
            - bytes[..bytes.len() - 1]
                .iter()
                .rev()
                .position(|b| *b == b'\n')
                .unwrap();
        let no_manifest = &bytes[..upto];
        assert!(matches!(
            read_all(no_manifest),
            Err(MigrateError::Damaged { .. })
        ));
        assert!(matches!(
            read_all(
                b"{\"edge\":{\"from\":\"a\",\"label\":\"l\",\"to\":\"b\",\"properties\":{}}}\n"
            ),
            Err(MigrateError::Damaged { line: 1, .. })
        ));
    }
}
