//! Tenant and user id validation.

use crate::proto::Error;

/// Longest tenant id.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A tenant id is 1 to 64 characters of `a-z`, `0-9`, `_` and `-`, starting
/// with a letter or digit. Ids appear in paths and keys, so nothing else is
/// allowed.
pub fn validate_tenant_id(id: &str) -> Result<(), Error> {
    let fail = |reason: &str| {
        Err(Error::InvalidTenantId {
            tenant_id: id.chars().take(80).collect(),
            reason: reason.to_string(),
        })
    };
    if id.is_empty() {
        return fail("empty");
    }
    if id.len() > MAX_TENANT_ID_LEN {
        return fail("longer than 64 characters");
    }
    if !id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return fail("must start with a-z or 0-9");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return fail("only a-z, 0-9, '_' and '-' are allowed");
    }
    Ok(())
}

/// Validates an object id, user id or similar name: 1 to `max` characters
/// of `A-Za-z0-9_.:-`.
pub fn validate_name(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() || value.len() > max {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(Error::invalid(
            field,
            "only A-Z, a-z, 0-9, '_', '.', ':' and '-' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["acme_corp", "startup-inc", "t1", "0abc"] {
            assert!(validate_tenant_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "_x",
            "ACME",
            "a/b",
            "a b",
            "a.b",
            "ä",
            &"x".repeat(65),
            "../etc",
        ] {
            assert!(
                matches!(validate_tenant_id(bad), Err(Error::InvalidTenantId { .. })),
                "{bad}"
            );
        }
    }
}
