//! API keys: 256 random bits, shown once, stored only as a SHA-256 hash.
//!
//! A key reads `vk_<key id>_<secret>`: the key id (64 random bits, hex) is
//! public and finds the record; the secret (256 random bits, hex) is
//! checked against the stored hash in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every key.
pub const KEY_PREFIX: &str = "vk_";

/// A freshly generated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The full key, to show once.
    pub api_key: String,
    /// The public id.
    pub key_id: String,
    /// Hex SHA-256 of the secret, to store.
    pub secret_hash: String,
}

/// Generates a key from the OS random source.
pub fn generate() -> GeneratedKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key_id = hex::encode(id);
    let secret = hex::encode(secret);
    GeneratedKey {
        api_key: format!("{KEY_PREFIX}{key_id}_{secret}"),
        secret_hash: hash_secret(&secret),
        key_id,
    }
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits a key into (key id, secret) if it is well-formed.
pub fn parse(api_key: &str) -> Option<(&str, &str)> {
    let rest = api_key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, 16) && hexy(secret, 64)).then_some((id, secret))
}

/// Constant-time comparison of a secret with a stored hash.
pub fn verify(secret: &str, stored_hash: &str) -> bool {
    let a = hash_secret(secret);
    let (a, b) = (a.as_bytes(), stored_hash.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_verify() {
        let k = generate();
        let (id, secret) = parse(&k.api_key).unwrap();
        assert_eq!(id, k.key_id);
        assert!(verify(secret, &k.secret_hash));
        assert!(!verify(&"0".repeat(64), &k.secret_hash));
        assert_ne!(generate().api_key, k.api_key);
        for bad in [
            "",
            "vk_",
            "vk_abc_def",
            "xx_0123456789abcdef_",
            &k.api_key[..k.api_key.len() - 1],
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
