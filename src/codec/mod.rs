//! The one place that knows the binary encoding (bincode 2, serde mode).
//!
//! bincode is unmaintained (RUSTSEC-2025-0141); keeping every encode and
//! decode behind these functions makes a switch one file. Decoding always
//! has a byte limit and rejects trailing bytes.
//!
//! Bytes from the network (client frames, peer messages) go through
//! [`decode_untrusted`], which also bounds nesting depth and the memory the
//! decoded value may take, while decoding (see [`bounded`]). Values this
//! node wrote itself (its RocksDB records and raft log) use [`decode`].

pub mod bounded;

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
    /// The value nests deeper than the decode limit.
    #[error("decode: nested deeper than {0} levels")]
    TooDeep(u32),
    /// The decoded value would take more memory than the decode limit.
    #[error("decode: the decoded value would exceed {0} bytes of memory")]
    TooLarge(usize),
}

/// Deepest nesting [`decode_untrusted`] accepts by default. The deepest
/// legitimate value (a filter nested [`crate::proto::MAX_FILTER_DEPTH`]
/// levels, two decode levels each, inside a request inside an envelope)
/// needs under 48.
pub const MAX_DECODE_DEPTH: u32 = 64;

/// Bounds on decoding untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Deepest nesting of compound values.
    pub max_depth: u32,
    /// Largest estimated in-memory size of the decoded value, bytes.
    pub max_memory: usize,
}

impl DecodeLimits {
    /// The default for an input of `len` bytes: [`MAX_DECODE_DEPTH`] and
    /// 8 bytes of memory per input byte plus 1 MiB. Legitimate values use
    /// 1 to 6 times their encoded size (a vector of f32 is 1×; many tiny
    /// objects about 6×).
    pub fn for_input(len: usize) -> Self {
        Self {
            max_depth: MAX_DECODE_DEPTH,
            max_memory: len.saturating_mul(8).saturating_add(1 << 20),
        }
    }

    /// The bound for a message of `len` bytes from another node: peers are
    /// authenticated, but a bug or a compromised node must not take this
    /// one down either. Looser on memory than [`for_input`](Self::for_input)
    /// (32 bytes per input byte plus 16 MiB): raft batches of tiny entries
    /// are legitimate.
    pub fn for_peer(len: usize) -> Self {
        Self {
            max_depth: MAX_DECODE_DEPTH,
            max_memory: len.saturating_mul(32).saturating_add(16 << 20),
        }
    }
}

/// Decodes bytes from the network: like [`decode`], and also refuses,
/// while decoding, values nested deeper or taking more memory than
/// `limits` allow, so hostile input costs bounded stack and memory.
pub fn decode_untrusted<T: DeserializeOwned>(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<T, CodecError> {
    let budget = bounded::Budget::new(limits.max_depth, limits.max_memory);
    let seed = bounded::Seed {
        inner: bounded::Plain::<T>(std::marker::PhantomData),
        budget: &budget,
    };
    let decoded = bincode::serde::seed_decode_from_slice(seed, bytes, config());
    let (v, used) = match decoded {
        Ok(x) => x,
        Err(e) => {
            return Err(match budget.exceeded.get() {
                Some(bounded::Exceeded::Depth(d)) => CodecError::TooDeep(d),
                Some(bounded::Exceeded::Memory(m)) => CodecError::TooLarge(m),
                None => CodecError::Decode(e.to_string()),
            })
        }
    };
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(v)
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

/// The encoded size of a value, counted without allocating.
pub fn encoded_len<T: Serialize>(v: &T) -> Result<usize, CodecError> {
    let mut w = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(v, &mut w, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(w.bytes_written)
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
    fn the_largest_command_config_allows_is_half_the_decode_limit() {
        assert_eq!(crate::config::MAX_COMMAND_BYTES, MAX_DECODE_BYTES / 2);
    }

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

    fn nested(depth: usize) -> crate::proto::wire::Request {
        let mut r = crate::proto::wire::Request::Ping;
        for _ in 0..depth {
            r = crate::proto::wire::Request::Stale(Box::new(r));
        }
        r
    }

    /// Encodes `Stale` nested `depth` times by hand (each level is the
    /// variant index, one varint byte), so the test itself never builds,
    /// encodes or drops a deep value.
    fn nested_bytes(depth: usize) -> Vec<u8> {
        let stale = encode(&nested(1)).unwrap();
        let ping = encode(&nested(0)).unwrap();
        assert_eq!(ping.len(), 1);
        let prefix = &stale[..stale.len() - 1];
        let mut b = prefix.repeat(depth);
        b.extend_from_slice(&ping);
        b
    }

    #[test]
    fn deep_nesting_is_refused_on_a_server_sized_stack() {
        // 100,000 levels in ~100 KB: unbounded, this overflows a tokio
        // worker's 2 MiB stack and aborts the process.
        let bytes = nested_bytes(100_000);
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                decode_untrusted::<crate::proto::wire::Request>(
                    &bytes,
                    DecodeLimits::for_input(bytes.len()),
                )
                .map(|_| ())
            })
            .unwrap()
            .join()
            .expect("decoder thread overflowed or panicked");
        assert!(
            matches!(r, Err(CodecError::TooDeep(MAX_DECODE_DEPTH))),
            "{r:?}"
        );
        // Within the limit it decodes, and equals what was encoded.
        let ok = nested_bytes(40);
        let back: crate::proto::wire::Request =
            decode_untrusted(&ok, DecodeLimits::for_input(ok.len())).unwrap();
        assert_eq!(back, nested(40));
    }

    #[test]
    fn many_tiny_elements_are_charged_their_memory() {
        // 400,000 empty strings: ~400 KB on the wire, ~9.6 MB in memory.
        let v: Vec<String> = vec![String::new(); 400_000];
        let b = encode(&v).unwrap();
        let limits = DecodeLimits::for_input(b.len());
        assert!(matches!(
            decode_untrusted::<Vec<String>>(&b, limits),
            Err(CodecError::TooLarge(m)) if m == limits.max_memory
        ));
        // The same count of f32s costs its encoded size: accepted.
        let f: Vec<f32> = vec![0.5; 400_000];
        let b = encode(&f).unwrap();
        let back: Vec<f32> = decode_untrusted(&b, DecodeLimits::for_input(b.len())).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn a_claimed_length_does_not_preallocate() {
        // A sequence claiming 2^40 elements of 24 bytes, then nothing: an
        // error, without reserving memory for the claim.
        let mut b = vec![0xFDu8]; // varint tag: u64 follows
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode_untrusted::<Vec<String>>(&b, DecodeLimits::for_input(b.len())).is_err());
    }

    #[test]
    fn huge_length_claims_do_not_allocate() {
        // A varint length of ~2^62 followed by nothing.
        let b = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F];
        assert!(decode::<Vec<u8>>(&b).is_err());
    }
}
