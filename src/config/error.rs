//! The config's own error: which key, and what is wrong with it.

/// A configuration value is invalid. Converts into the wire error
/// (`proto::Error::InvalidConfig`) outside this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config {key}: {reason}")]
pub struct ConfigError {
    /// The config key (`section.key`), or what was being read.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// An error naming `key`.
    pub fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
