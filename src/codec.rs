//! The one place that knows the binary encoding (bincode 2, serde mode).
//!
//! bincode is unmaintained (RUSTSEC-2025-0141); keeping every encode and
//! decode behind these functions makes a switch one file. Decoding always
//! has a byte limit and rejects trailing bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest value [`decode`] accepts (64 MiB).
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Encoding failed.
    #[error("encode: {0}")]
    Encode(String),
    /// Decoding failed (malformed, truncated, or over the limit).
    #[error("decode: {0}")]
    Decode(String),
    /// The input had bytes after the value.
    #[error("decode: {0} trailing bytes")]
    Trailing(usize),
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes a value.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (v, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = encode(&(1u32, "x".to_string())).unwrap();
        b.push(0);
        assert!(matches!(
            decode::<(u32, String)>(&b),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let b = encode(&"hello world".to_string()).unwrap();
        assert!(decode::<String>(&b[..4]).is_err());
    }

    #[test]
    fn huge_length_claims_do_not_allocate() {
        // A varint length of ~2^62 followed by nothing.
        let b = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F];
        assert!(decode::<Vec<u8>>(&b).is_err());
    }
}
