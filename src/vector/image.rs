//! Index files: a [`VectorIndex`] written next to a snapshot's checkpoint
//! so that the node installing it loads the index instead of rebuilding it.
//!
//! One collection `c` is three files in the snapshot's `faiss/` directory:
//!
//! ```text
//! c.index     the FAISS index (faiss::write_index), tombstones included
//! c.labels    live labels, then tombstoned labels: u64 count + u64s each (LE)
//! c.manifest  "VGFX" ‖ sha256(body) ‖ body = Manifest (bincode)
//! ```
//!
//! The manifest tags the files with the applied log id (raw bytes, as the
//! store keeps them) the index reflects, the fingerprint of the collection
//! spec, the counts, and the length and SHA-256 of the other two files.
//! [`read_image`] accepts the files only if all of it matches; anything
//! else is a reason to rebuild, never an error. Whether the labels match
//! the store's vectors is the caller's check (`shard::data`).
//!
//! Only collection names made of `[A-Za-z0-9_-]` (all valid names) are
//! written; others are left to a rebuild.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::index::{IndexImage, VectorIndex};
use crate::proto::{CollectionSpec, Error};

/// Version of the file layout above.
pub const IMAGE_VERSION: u32 = 1;

const MAGIC: &[u8; 4] = b"VGFX";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    collection: String,
    /// The applied log id (as stored) that the index reflects.
    applied: Vec<u8>,
    spec_fingerprint: [u8; 32],
    live: u64,
    tombstones: u64,
    trained_ivf: bool,
    index_len: u64,
    index_sha256: [u8; 32],
    labels_len: u64,
    labels_sha256: [u8; 32],
}

/// SHA-256 of the encoded collection spec: a spec change (metric, index
/// kind or parameters, dimension) invalidates an index file.
pub fn spec_fingerprint(spec: &CollectionSpec) -> [u8; 32] {
    // Encoding a spec cannot fail; an empty encoding would only make every
    // file mismatch.
    let bytes = crate::codec::encode(spec).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

/// The file stem of a collection's files, if its name is safe as one.
fn file_stem(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(name)
}

fn storage(what: &str, e: impl std::fmt::Display) -> Error {
    Error::storage(format!("{what}: {e}"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::File::create(path).map_err(|e| storage("index file", e))?;
    f.write_all(bytes).map_err(|e| storage("index file", e))?;
    f.sync_all().map_err(|e| storage("index file", e))
}

/// Length and SHA-256 of a file, read in 1 MiB pieces.
fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.finalize().into()))
}

fn encode_labels(live: &[u64], tombstones: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 * (live.len() + tombstones.len()));
    for part in [live, tombstones] {
        out.extend((part.len() as u64).to_le_bytes());
        for l in part {
            out.extend(l.to_le_bytes());
        }
    }
    out
}

fn decode_labels(bytes: &[u8]) -> Option<(Vec<u64>, Vec<u64>)> {
    let mut words = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
    if bytes.len() % 8 != 0 {
        return None;
    }
    let take = |words: &mut dyn Iterator<Item = u64>| -> Option<Vec<u64>> {
        let n = usize::try_from(words.next()?).ok()?;
        if n > bytes.len() / 8 {
            return None;
        }
        let v: Vec<u64> = words.take(n).collect();
        (v.len() == n).then_some(v)
    };
    let live = take(&mut words)?;
    let tombstones = take(&mut words)?;
    words.next().is_none().then_some((live, tombstones))
}

impl IndexImage {
    /// Writes the image into `dir` (created if needed) tagged with
    /// `applied`, the stored applied log id it reflects; every file and
    /// the directory are fsynced. Returns the bytes written.
    pub fn write(mut self, dir: &Path, applied: &[u8]) -> Result<u64, Error> {
        let stem = file_stem(&self.spec.name)
            .ok_or_else(|| Error::storage("collection name is not a safe file name"))?;
        std::fs::create_dir_all(dir).map_err(|e| storage("index dir", e))?;
        let index_path = dir.join(format!("{stem}.index"));
        let p = index_path
            .to_str()
            .ok_or_else(|| Error::storage("non-UTF-8 path"))?;
        faiss::write_index(&self.index, p).map_err(|e| storage("faiss", e))?;
        std::fs::File::open(&index_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| storage("index file", e))?;
        let (index_len, index_sha256) =
            hash_file(&index_path).map_err(|e| storage("index file", e))?;
        self.live.sort_unstable();
        self.tombstones.sort_unstable();
        let labels = encode_labels(&self.live, &self.tombstones);
        write_synced(&dir.join(format!("{stem}.labels")), &labels)?;
        let manifest = Manifest {
            version: IMAGE_VERSION,
            collection: self.spec.name.clone(),
            applied: applied.to_vec(),
            spec_fingerprint: spec_fingerprint(&self.spec),
            live: self.live.len() as u64,
            tombstones: self.tombstones.len() as u64,
            trained_ivf: self.trained_ivf,
            index_len,
            index_sha256,
            labels_len: labels.len() as u64,
            labels_sha256: Sha256::digest(&labels).into(),
        };
        let body = crate::codec::encode(&manifest).map_err(|e| storage("manifest", e))?;
        let mut file = Vec::with_capacity(36 + body.len());
        file.extend(MAGIC);
        file.extend(Sha256::digest(&body));
        file.extend(&body);
        write_synced(&dir.join(format!("{stem}.manifest")), &file)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| storage("index dir", e))?;
        Ok(index_len + labels.len() as u64 + file.len() as u64)
    }
}

/// Reads the index of `spec`'s collection from `dir` if its files are
/// whole and tagged with `applied` and the collection's current spec.
/// `Err` is the reason to rebuild instead ("no index file", "stale: …",
/// "spec changed", "corrupt: …"). Object ids are left for the caller.
pub fn read_image(
    dir: &Path,
    spec: &CollectionSpec,
    applied: &[u8],
) -> Result<VectorIndex, String> {
    let stem = file_stem(&spec.name).ok_or("collection name is not a safe file name")?;
    let manifest_path = dir.join(format!("{stem}.manifest"));
    let file = match std::fs::read(&manifest_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no index file in the snapshot".into())
        }
        Err(e) => return Err(format!("unreadable manifest: {e}")),
    };
    if file.len() < 36 || &file[..4] != MAGIC {
        return Err("corrupt: not an index manifest".into());
    }
    let body = &file[36..];
    if Sha256::digest(body).as_slice() != &file[4..36] {
        return Err("corrupt: manifest checksum mismatch".into());
    }
    let m: Manifest = crate::codec::decode(body).map_err(|e| format!("corrupt: manifest: {e}"))?;
    if m.version != IMAGE_VERSION {
        return Err(format!(
            "file format version {} (want {IMAGE_VERSION})",
            m.version
        ));
    }
    if m.collection != spec.name {
        return Err(format!(
            "corrupt: manifest names collection {:?}",
            m.collection
        ));
    }
    if m.applied != applied {
        return Err("stale: the index reflects another applied log id than the store".into());
    }
    if m.spec_fingerprint != spec_fingerprint(spec) {
        return Err("spec changed: the index was built for another collection spec".into());
    }
    let labels_path = dir.join(format!("{stem}.labels"));
    let labels = std::fs::read(&labels_path).map_err(|e| format!("labels: {e}"))?;
    if labels.len() as u64 != m.labels_len || Sha256::digest(&labels).as_slice() != m.labels_sha256
    {
        return Err("corrupt: labels checksum mismatch".into());
    }
    let (live, tombstones) = decode_labels(&labels).ok_or("corrupt: labels do not parse")?;
    if live.len() as u64 != m.live || tombstones.len() as u64 != m.tombstones {
        return Err("corrupt: label counts differ from the manifest".into());
    }
    let index_path = dir.join(format!("{stem}.index"));
    let (len, sha) = hash_file(&index_path).map_err(|e| format!("index file: {e}"))?;
    if len != m.index_len || sha != m.index_sha256 {
        return Err("corrupt: index checksum mismatch".into());
    }
    let p = index_path.to_str().ok_or("non-UTF-8 path")?;
    let index = faiss::read_index(p).map_err(|e| format!("corrupt: faiss: {e}"))?;
    let live: HashSet<u64> = live.into_iter().collect();
    let tombstones: HashSet<u64> = tombstones.into_iter().collect();
    if live.len() as u64 != m.live
        || tombstones.len() as u64 != m.tombstones
        || !live.is_disjoint(&tombstones)
    {
        return Err("corrupt: repeated labels".into());
    }
    VectorIndex::from_parts(spec, index, live, tombstones, m.trained_ivf)
        .map_err(|e| format!("corrupt: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proto::{IndexKind, Metric};

    fn fill(ix: &mut VectorIndex, n: u64) {
        for i in 1..=n {
            let f = i as f32;
            ix.add(i, &[f, f * 0.5, 1.0, -f]).unwrap();
        }
    }

    fn kinds() -> [IndexKind; 3] {
        [
            IndexKind::Flat,
            IndexKind::Hnsw {
                m: 8,
                ef_search: 16,
            },
            IndexKind::Ivf {
                nlist: 2,
                nprobe: 2,
            },
        ]
    }

    #[test]
    fn an_image_reads_back_with_the_same_hits_and_tombstones_for_every_kind() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            let s = CollectionSpec::vectors("c", 4)
                .index(kind)
                .metric(Metric::L2);
            let mut ix = VectorIndex::new(&s).unwrap();
            fill(&mut ix, 200);
            for vid in 5..=15 {
                ix.remove(vid).unwrap();
            }
            ix.image().unwrap().write(dir.path(), b"applied-7").unwrap();
            let mut back = read_image(dir.path(), &s, b"applied-7").unwrap();
            assert_eq!(back.len(), ix.len(), "{kind:?}");
            assert_eq!(back.tombstones(), ix.tombstones(), "{kind:?}");
            let q = [10.0, 5.0, 1.0, -10.0];
            let hits = back.search(&q, 5, None).unwrap();
            assert_eq!(hits, ix.search(&q, 5, None).unwrap(), "{kind:?}");
            assert!(hits.iter().all(|(v, _)| !(5..=15).contains(v)), "{kind:?}");
            // The loaded index keeps working: deletes and adds.
            back.remove(16).unwrap();
            back.add(1000, &[16.0, 8.0, 1.0, -16.0]).unwrap();
            assert_eq!(
                back.search(&[16.0, 8.0, 1.0, -16.0], 1, None).unwrap()[0].0,
                1000
            );
        }
    }

    #[test]
    fn stale_respecified_missing_or_tampered_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let s = CollectionSpec::vectors("c", 4);
        let mut ix = VectorIndex::new(&s).unwrap();
        fill(&mut ix, 20);
        ix.image().unwrap().write(dir.path(), b"a1").unwrap();
        let why = |spec: &CollectionSpec, applied: &[u8]| {
            read_image(dir.path(), spec, applied)
                .err()
                .unwrap_or_default()
        };
        assert!(why(&s, b"a2").starts_with("stale"));
        assert!(why(&s.clone().metric(Metric::Cosine), b"a1").starts_with("spec changed"));
        assert!(why(&CollectionSpec::vectors("d", 4), b"a1").starts_with("no index file"));
        // One flipped byte in the FAISS file.
        let p = dir.path().join("c.index");
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(why(&s, b"a1"), "corrupt: index checksum mismatch");
        // A flipped byte in the manifest.
        ix.image().unwrap().write(dir.path(), b"a1").unwrap();
        let p = dir.path().join("c.manifest");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(why(&s, b"a1"), "corrupt: manifest checksum mismatch");
    }
}
