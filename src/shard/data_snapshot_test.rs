//! Snapshots ship their vector indexes: install and reopen load them when
//! they reflect the checkpoint exactly, and rebuild them otherwise.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::proto::{CollectionSpec, IndexKind, NewObject, WriteOp};

const DIM: usize = 8;
const N: usize = 400;

/// A shard and the raw applied log id it is at ("log-<n>").
struct Shard {
    _dir: tempfile::TempDir,
    data: Arc<ShardData>,
    applied: u64,
}

impl Shard {
    fn new() -> Shard {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        Shard {
            _dir: dir,
            data,
            applied: 0,
        }
    }

    fn apply(&mut self, cmd: Command) {
        self.applied += 1;
        let tag = format!("log-{}", self.applied);
        match self.data.apply(Some(&cmd), tag.as_bytes(), None).unwrap() {
            CommandResult::Write { results, .. } => {
                assert!(results.iter().all(|r| r.is_ok()), "{results:?}")
            }
            CommandResult::Done(r) => assert!(r.is_ok(), "{r:?}"),
            _ => {}
        }
    }

    fn write(&mut self, ops: Vec<WriteOp>) {
        self.apply(Command::Write {
            ops,
            atomic: true,
            now_ms: 1,
        });
    }

    fn snapshot(&self, id: &str) -> PathBuf {
        self.data
            .build_snapshot(id, |_, _| Ok(((), vec![])))
            .unwrap()
            .0
    }
}

fn vector(i: usize) -> Vec<f32> {
    // A fixed pseudo-random vector per i.
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 1000) as f32 / 100.0
        })
        .collect()
}

fn put(collection: &str, id: String, v: Vec<f32>) -> WriteOp {
    WriteOp::Put(NewObject::new(collection, &id, serde_json::json!({})).with_vector(v))
}

/// Collections "flat" (ids `f<i>`) and "hnsw" (ids `h<i>`) holding the
/// same N vectors, and a plain collection; then in both, objects 0..50
/// deleted and 100..110 given new vectors (60 HNSW tombstones).
fn loaded_shard() -> Shard {
    let mut s = Shard::new();
    s.apply(Command::CreateCollection(CollectionSpec::vectors(
        "flat", DIM as u32,
    )));
    s.apply(Command::CreateCollection(
        CollectionSpec::vectors("hnsw", DIM as u32).index(IndexKind::Hnsw {
            m: 16,
            ef_search: 128,
        }),
    ));
    s.apply(Command::CreateCollection(CollectionSpec::plain("plain")));
    for (c, p) in [("flat", "f"), ("hnsw", "h")] {
        s.write(
            (0..N)
                .map(|i| put(c, format!("{p}{i}"), vector(i)))
                .collect(),
        );
        s.write(
            (0..50)
                .map(|i| WriteOp::Delete {
                    id: format!("{p}{i}"),
                })
                .collect(),
        );
        s.write(
            (100..110)
                .map(|i| put(c, format!("{p}{i}"), vector(N + i)))
                .collect(),
        );
    }
    s.write(vec![WriteOp::Put(NewObject::new(
        "plain",
        "p1",
        serde_json::json!({"a": 1}),
    ))]);
    assert_eq!(s.data.vector_index("hnsw").unwrap().read().tombstones(), 60);
    s
}

fn search(data: &ShardData, collection: &str, v: &[f32], k: u32) -> Vec<(String, f32)> {
    let q = VectorSearch {
        collection: collection.into(),
        vector: v.to_vec(),
        k,
        filter: None,
    };
    data.vector_search(&q, false, &mut WorkMeter::unbounded())
        .unwrap()
        .into_iter()
        .map(|h| (h.id, h.score))
        .collect()
}

/// Queries: deleted vectors, replaced vectors, their replacements, and
/// live ones.
fn queries() -> Vec<Vec<f32>> {
    [0, 7, 49, 100, 105, 200, 399, N + 100, N + 109]
        .iter()
        .map(|&i| vector(i))
        .collect()
}

/// `b` answers every query as `a` does, and never with a deleted or
/// replaced-away vector; HNSW agrees with exact (flat) search.
fn assert_same_answers(a: &ShardData, b: &ShardData) {
    for q in queries() {
        for c in ["flat", "hnsw"] {
            let hits = search(b, c, &q, 10);
            assert_eq!(hits, search(a, c, &q, 10), "{c}");
            assert_eq!(hits.len(), 10);
            for (id, score) in &hits {
                let i: usize = id[1..].parse().unwrap();
                assert!(i >= 50, "deleted object {id} returned");
                if (100..110).contains(&i) {
                    // The object's vector is its replacement.
                    let ix = b.vector_index(c).unwrap();
                    let exact = ix.read().exact_score(&q, &vector(N + i));
                    assert!((exact - score).abs() < 1e-3, "{id}: {exact} vs {score}");
                }
            }
        }
        let flat: Vec<String> = search(b, "flat", &q, 10)
            .into_iter()
            .map(|h| h.0[1..].to_string())
            .collect();
        let hnsw: Vec<String> = search(b, "hnsw", &q, 10)
            .into_iter()
            .map(|h| h.0[1..].to_string())
            .collect();
        assert_eq!(flat, hnsw);
    }
}

fn install(snapshot: &Path) -> (Shard, IndexReport) {
    let s = Shard::new();
    let report = s.data.install_snapshot(snapshot).unwrap();
    assert_eq!(s.data.index_report(), report);
    (s, report)
}

fn rebuilt_because(report: &IndexReport, collection: &str) -> String {
    match &report.collections[collection] {
        IndexOrigin::Rebuilt(why) => why.clone(),
        IndexOrigin::Loaded => panic!("{collection} was loaded: {report:?}"),
    }
}

#[test]
fn an_installed_snapshot_loads_its_flat_and_hnsw_indexes_with_their_tombstones() {
    let a = loaded_shard();
    let snap = a.snapshot("s1");
    for f in ["flat.index", "flat.labels", "flat.manifest", "hnsw.index"] {
        assert!(snap.join("faiss").join(f).is_file(), "{f}");
    }
    assert!(a.data.snapshot_stats().index_bytes > (2 * N * DIM * 4) as u64);
    let (mut b, report) = install(&snap);
    assert_eq!(report.loaded(), ["flat", "hnsw"], "{report:?}");
    assert!(report.rebuilt().is_empty());
    // Loaded, not rebuilt: the HNSW tombstones came with the file (a
    // rebuild from the stored vectors has none).
    assert_eq!(b.data.vector_index("hnsw").unwrap().read().tombstones(), 60);
    assert_eq!(b.data.vector_index("flat").unwrap().read().len(), N - 50);
    assert_same_answers(&a.data, &b.data);
    // The loaded indexes take further writes: ids map back, deletes hide.
    b.applied = a.applied;
    b.write(vec![
        put("hnsw", "h-new".into(), vector(7)),
        WriteOp::Delete { id: "h200".into() },
    ]);
    let hits = search(&b.data, "hnsw", &vector(7), 1);
    assert_eq!(hits[0].0, "h-new");
    assert!(search(&b.data, "hnsw", &vector(200), 5)
        .iter()
        .all(|h| h.0 != "h200"));
}

#[test]
fn a_missing_tampered_or_stale_index_file_is_rebuilt_and_answers_the_same() {
    let mut a = loaded_shard();
    let snap = a.snapshot("s1");
    let faiss = snap.join("faiss");
    let kept = tempfile::tempdir().unwrap();
    copy_dir(&faiss, kept.path()).unwrap();

    // Missing: the HNSW index file.
    std::fs::remove_file(faiss.join("hnsw.index")).unwrap();
    let (b, report) = install(&snap);
    assert_eq!(report.loaded(), ["flat"]);
    assert!(rebuilt_because(&report, "hnsw").contains("index file"));
    assert_eq!(b.data.vector_index("hnsw").unwrap().read().tombstones(), 0);
    assert_same_answers(&a.data, &b.data);

    // Missing: the manifest (as for a collection the sender could not write).
    std::fs::remove_file(faiss.join("flat.manifest")).unwrap();
    let (_, report) = install(&snap);
    assert_eq!(
        rebuilt_because(&report, "flat"),
        "no index file in the snapshot"
    );

    // Tampered: one byte of the flat index (written as a new file: the
    // kept copies are hard links).
    let _ = std::fs::remove_dir_all(&faiss);
    copy_dir(kept.path(), &faiss).unwrap();
    let p = faiss.join("flat.index");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, &bytes).unwrap();
    let (b, report) = install(&snap);
    assert_eq!(
        rebuilt_because(&report, "flat"),
        "corrupt: index checksum mismatch"
    );
    assert_eq!(report.loaded(), ["hnsw"]);
    assert_same_answers(&a.data, &b.data);

    // Stale: the files of s1 in a snapshot taken one write later.
    a.write(vec![put("flat", "f-late".into(), vector(3))]);
    let snap2 = a.snapshot("s2");
    let faiss2 = snap2.join("faiss");
    std::fs::remove_dir_all(&faiss2).unwrap();
    copy_dir(kept.path(), &faiss2).unwrap();
    let (b, report) = install(&snap2);
    assert!(rebuilt_because(&report, "flat").starts_with("stale"));
    assert!(rebuilt_because(&report, "hnsw").starts_with("stale"));
    assert_eq!(search(&b.data, "flat", &vector(3), 1)[0].0, "f-late");
    assert_same_answers(&a.data, &b.data);
}

#[test]
fn files_tagged_right_but_holding_other_labels_are_rebuilt() {
    // Two shards at the same applied tag ("log-9") with different
    // vectors: the tag and checksums pass, the label check does not.
    let mut a = loaded_shard();
    let mut other = loaded_shard();
    other.write(vec![WriteOp::Delete { id: "h300".into() }]);
    a.write(vec![WriteOp::Delete { id: "f300".into() }]);
    assert_eq!(a.applied, other.applied);
    let snap = a.snapshot("s1");
    let theirs = other.snapshot("s1");
    std::fs::remove_dir_all(snap.join("faiss")).unwrap();
    copy_dir(&theirs.join("faiss"), &snap.join("faiss")).unwrap();
    let (b, report) = install(&snap);
    assert!(
        rebuilt_because(&report, "flat").contains("not the store's vectors"),
        "{report:?}"
    );
    assert!(rebuilt_because(&report, "hnsw").contains("not the store's vectors"));
    assert!(search(&b.data, "hnsw", &vector(300), 3)
        .iter()
        .any(|h| h.0 == "h300"));
    assert!(search(&b.data, "flat", &vector(300), 3)
        .iter()
        .all(|h| h.0 != "f300"));
    assert_same_answers(&a.data, &b.data);
}

#[test]
fn a_shard_reopened_at_its_snapshot_loads_its_indexes_and_one_write_ahead_rebuilds() {
    let a = loaded_shard();
    a.snapshot("s1");
    a.data.flush().unwrap();
    let Shard {
        _dir: dir,
        data,
        applied,
    } = a;
    drop(data);
    // Its twin, built the same way, to compare answers with.
    let twin = loaded_shard();
    let reopened = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
    let report = reopened.index_report();
    assert_eq!(report.loaded(), ["flat", "hnsw"], "{report:?}");
    assert_same_answers(&twin.data, &reopened);

    let tag = format!("log-{}", applied + 1);
    let cmd = Command::Write {
        ops: vec![put("hnsw", "h-late".into(), vector(11))],
        atomic: true,
        now_ms: 1,
    };
    reopened.apply(Some(&cmd), tag.as_bytes(), None).unwrap();
    reopened.flush().unwrap();
    drop(reopened);
    let again = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
    let report = again.index_report();
    assert!(rebuilt_because(&report, "flat").starts_with("stale"));
    assert!(rebuilt_because(&report, "hnsw").starts_with("stale"));
    assert_eq!(search(&again, "hnsw", &vector(11), 1)[0].0, "h-late");
}

#[test]
fn a_snapshot_being_sent_outlives_newer_snapshots_until_its_pin_drops() {
    let mut a = loaded_shard();
    let first = a.snapshot("s1");
    let (pinned, pin) = a.data.pin_latest_snapshot().unwrap();
    assert_eq!(pinned, first);
    // Two newer snapshots while "s1" is being sent.
    a.write(vec![put("hnsw", "h-new".into(), vector(7))]);
    let second = a.snapshot("s2");
    let third = a.snapshot("s3");
    assert!(!second.exists(), "an unpinned older snapshot is removed");
    assert!(first.join("meta.bin").is_file() && first.join("db").is_dir());
    assert_eq!(a.data.latest_snapshot().unwrap(), third);
    // A second sender of the latest, and the end of the first send.
    let (_, pin3) = a.data.pin_latest_snapshot().unwrap();
    drop(pin);
    assert!(
        !first.exists(),
        "the last pin of an old snapshot removes it"
    );
    drop(pin3);
    assert!(third.exists(), "the latest stays when its pin drops");
    assert_eq!(a.data.latest_snapshot().unwrap(), third);
}

#[test]
fn leftovers_of_a_crash_are_swept_at_open() {
    let a = loaded_shard();
    let kept = a.snapshot("s1");
    let dir = a.data.dir().to_path_buf();
    let half_received = dir.join("incoming-1-2");
    let half_built = dir.join("snapshots").join("s2.building");
    let old = dir.join("snapshots").join("s0");
    for d in [&half_received, &half_built, &old] {
        std::fs::create_dir_all(d.join("db")).unwrap();
        std::fs::write(d.join("meta.bin"), b"x").unwrap();
    }
    a.data.flush().unwrap();
    let Shard {
        _dir: tmp, data, ..
    } = a;
    drop(data);
    let reopened = ShardData::open(&StorageEnv::default(), tmp.path()).unwrap();
    assert!(!half_received.exists() && !half_built.exists() && !old.exists());
    assert_eq!(reopened.latest_snapshot().unwrap(), kept);
}

/// Not a test: what shipping the index saves. Fashion-MNIST (60k × 784)
/// in an HNSW32 collection; prints the apply-lock hold of a snapshot build
/// and the install time with the index loaded and rebuilt.
/// `cargo test --release --lib -- --ignored --nocapture snapshot_cost`
#[test]
#[ignore]
fn snapshot_cost_with_fashion_mnist_hnsw() {
    use std::time::Instant;
    let dir = std::path::Path::new(crate::bench::engine::FASHION_MNIST_DIR);
    let n: usize = std::env::var("VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let (d, base) =
        crate::bench::engine::load_idx_images(&dir.join("train-images-idx3-ubyte.gz"), n).unwrap();
    let n = base.len() / d;
    let mut s = Shard::new();
    s.apply(Command::CreateCollection(
        CollectionSpec::vectors("fmnist", d as u32).index(IndexKind::Hnsw {
            m: 32,
            ef_search: 64,
        }),
    ));
    let t = Instant::now();
    for start in (0..n).step_by(1000) {
        s.write(
            (start..n.min(start + 1000))
                .map(|i| put("fmnist", format!("{i}"), base[i * d..(i + 1) * d].to_vec()))
                .collect(),
        );
    }
    println!(
        "{n} x {d}: apply with index build {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let snap = s.snapshot("s1");
    let st = s.data.snapshot_stats();
    println!(
        "snapshot build {:.0} ms: apply lock held {:.0} ms (index clone {:.0} ms), \
         index files written after the lock {:.0} ms, {} MB",
        t.elapsed().as_secs_f64() * 1e3,
        st.lock_held.as_secs_f64() * 1e3,
        st.index_clone.as_secs_f64() * 1e3,
        st.index_write.as_secs_f64() * 1e3,
        st.index_bytes >> 20
    );
    let q = &base[..d];
    let t = Instant::now();
    let (b, report) = install(&snap);
    println!(
        "install, index loaded : {:.2} s ({report:?})",
        t.elapsed().as_secs_f64()
    );
    let want = search(&s.data, "fmnist", q, 10);
    assert_eq!(search(&b.data, "fmnist", q, 10), want);
    std::fs::remove_dir_all(snap.join("faiss")).unwrap();
    let t = Instant::now();
    let (_, report) = install(&snap);
    println!(
        "install, index rebuilt: {:.2} s ({report:?})",
        t.elapsed().as_secs_f64()
    );
}
