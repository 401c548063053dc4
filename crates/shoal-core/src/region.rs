//! Regions: where a node is, as its tracker's operator names places.
//!
//! A [`Region`] is a short name (`eu-west`, `r0`): 1 to [`Region::MAX_LEN`] bytes of lowercase
//! ASCII letters, digits, `-` and `_`. The tracker maps the address it observes to a region
//! (or takes a node's own statement where its operator allows it) and tells each node its
//! region and every peer's, so that traffic stays inside a region where it can.

use std::fmt;
use std::str::FromStr;

/// A region's name, checked (also when deserialized).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl TryFrom<String> for Region {
    type Error = BadRegion;

    fn try_from(s: String) -> Result<Self, BadRegion> {
        s.parse()
    }
}

impl From<Region> for String {
    fn from(r: Region) -> String {
        r.0
    }
}

/// A region name that is empty, too long, or holds a character outside `[a-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad region name {0:?}: use 1 to 32 lowercase letters, digits, '-' or '_' (like eu-west or r0)"
)]
pub struct BadRegion(pub String);

impl Region {
    /// The longest name, in bytes.
    pub const MAX_LEN: usize = 32;

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Region {
    type Err = BadRegion;

    fn from_str(s: &str) -> Result<Self, BadRegion> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            // At most a short prefix of a hostile name goes into the error.
            let shown: String = s.chars().take(40).collect();
            Err(BadRegion(shown))
        }
    }
}

impl TryFrom<&[u8]> for Region {
    type Error = BadRegion;

    fn try_from(b: &[u8]) -> Result<Self, BadRegion> {
        std::str::from_utf8(b).map_err(|_| BadRegion(String::from_utf8_lossy(b).into()))?.parse()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        // Boundary table: empty, one byte, the longest, one past it, each bad character class.
        for (name, ok) in [
            ("", false),
            ("r", true),
            ("r0", true),
            ("eu-west_2", true),
            (&"a".repeat(32), true),
            (&"a".repeat(33), false),
            ("EU", false),
            ("r 0", false),
            ("r/0", false),
            ("é", false),
        ] {
            assert_eq!(name.parse::<Region>().is_ok(), ok, "{name:?}");
        }
        let err = "Bad Name".parse::<Region>().unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
        assert!(Region::try_from(&b"\xff"[..]).is_err());
    }
}
