//! Rules for user and group names.

/// Longest user or group name, in characters.
pub const MAX_NAME_LEN: usize = 32;

/// A name is 1-32 ASCII letters, digits, `_`, `-` or `.`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("alice"));
        assert!(is_valid_name("a.b-c_9"));
        assert!(is_valid_name(&"x".repeat(32)));
        assert!(!is_valid_name(&"x".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("al ice"));
        assert!(!is_valid_name("bob/"));
        assert!(!is_valid_name("élan"));
    }
}
