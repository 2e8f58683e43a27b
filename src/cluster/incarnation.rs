//! The node's incarnation: a random 64-bit id created with its data
//! directory (the file `incarnation`, written once and synced), recorded
//! in the node's record when it joins and presented in every peer
//! `Hello`. A node whose disk was lost or replaced comes back with
//! another incarnation under its old id: without its raft votes and log,
//! it could vote twice in a term or lose acknowledged entries, so the
//! cluster refuses it (see `PeerRefusal::IncarnationMismatch`).

use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::proto::{Error, Result};

/// The file holding the incarnation, in the data directory.
pub const FILE: &str = "incarnation";

/// The incarnation of the data directory `dir`: read from its file, or
/// created (random, never 0) when the file is absent. A file that exists
/// but does not hold one is an error, not a new incarnation.
pub fn load_or_create(dir: &Path) -> Result<u64> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => parse(&s).ok_or_else(|| Error::Storage {
            reason: format!(
                "{} does not hold an incarnation id ({:?})",
                path.display(),
                s.trim()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = loop {
                let id = rand::rngs::OsRng.next_u64();
                if id != 0 {
                    break id;
                }
            };
            std::fs::create_dir_all(dir).map_err(Error::storage)?;
            // Written aside and renamed, so a crash leaves the old state
            // (no file) or the whole id.
            let tmp = dir.join(format!("{FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(Error::storage)?;
            f.write_all(format!("{id:016x}\n").as_bytes())
                .map_err(Error::storage)?;
            f.sync_all().map_err(Error::storage)?;
            std::fs::rename(&tmp, &path).map_err(Error::storage)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(Error::storage)?;
            tracing::info!(incarnation = %format!("{id:016x}"), "new data directory: incarnation created");
            Ok(id)
        }
        Err(e) => Err(Error::storage(format!("{}: {e}", path.display()))),
    }
}

fn parse(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok().filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_incarnation_lives_as_long_as_its_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = load_or_create(&dir).unwrap();
        assert_ne!(first, 0);
        assert_eq!(load_or_create(&dir).unwrap(), first, "stable across starts");
        // The disk is lost: a new directory is a new incarnation.
        std::fs::remove_dir_all(&dir).unwrap();
        let second = load_or_create(&dir).unwrap();
        assert_ne!(second, first);
        // A damaged file is an error, never silently a new identity.
        std::fs::write(dir.join(FILE), "not hex\n").unwrap();
        assert!(load_or_create(&dir).is_err());
        std::fs::write(dir.join(FILE), "0\n").unwrap();
        assert!(load_or_create(&dir).is_err());
    }
}
