//! Credentials: API keys and the principals they bind.

pub mod key;
