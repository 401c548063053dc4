//! Node settings, validated once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use shoal_core::UserId;

/// Space a storage node grants a user: `USER_ID` (unlimited) or `USER_ID=QUOTA` (`10GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The user.
    pub user: UserId,
    /// Bytes the user may own in total; `None` is unlimited.
    pub quota: Option<u64>,
}

/// Error parsing a [`Grant`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseGrantError {
    /// The user id part is not a user id.
    #[error("bad grant {0:?}: {1} (the user id is what `shoal user` prints)")]
    User(String, shoal_core::id::ParseIdError),
    /// The quota part is not a byte count.
    #[error("bad grant {0:?}: the quota must be a size like 500MiB or 10GiB")]
    Quota(String),
    /// The same user is granted twice with different quotas.
    #[error("user {0} is granted twice with different quotas: keep one --grant for it")]
    Twice(UserId),
}

impl FromStr for Grant {
    type Err = ParseGrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, quota) = match s.trim().split_once('=') {
            Some((u, q)) => (u, Some(q)),
            None => (s.trim(), None),
        };
        let user = user.trim().parse().map_err(|e| ParseGrantError::User(s.to_string(), e))?;
        let quota = match quota {
            Some(q) => Some(
                shoal_control::units::byte_count(q)
                    .ok_or_else(|| ParseGrantError::Quota(s.to_string()))?,
            ),
            None => None,
        };
        Ok(Grant { user, quota })
    }
}

/// The users a storage node accepts pushes from, with their quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(HashMap<UserId, Option<u64>>);

impl Grants {
    /// Grants from `USER_ID[=QUOTA]` items (flags and `SHOAL_GRANT`), validated once.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ParseGrantError> {
        let mut map = HashMap::new();
        for item in items.iter().map(AsRef::as_ref).filter(|i| !i.trim().is_empty()) {
            let g: Grant = item.parse()?;
            if map.insert(g.user, g.quota).is_some_and(|q| q != g.quota) {
                return Err(ParseGrantError::Twice(g.user));
            }
        }
        Ok(Self(map))
    }

    /// The quota of a granted user (`Some(None)`: unlimited); `None` if not granted.
    pub fn quota(&self, user: &UserId) -> Option<Option<u64>> {
        self.0.get(user).copied()
    }

    /// True if nobody is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub use shoal_control::units::{human_bytes, ParseRateError, Rate};

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The data dir: key, metadata, control address.
    pub data_dir: PathBuf,
    /// The UDP address for peers.
    pub listen: SocketAddr,
    /// Total upload cap.
    pub upload_limit: Option<Rate>,
    /// Total download cap.
    pub download_limit: Option<Rate>,
    /// Testing only: probability of flipping a byte in each uploaded piece.
    pub danger_corrupt_uploads: f64,
    /// Testing only: claim every piece of any content held in part (a lying bitfield).
    pub danger_lie_bitfield: bool,
    /// The tracker to register with (`host:port`), put in the tickets of added files.
    pub tracker: Option<String>,
    /// For a storage node: the object store URL (`file:///path` or `s3://bucket`).
    pub storage: Option<String>,
    /// S3 settings beyond the AWS environment variables.
    pub s3: shoal_cloud::backend::S3Options,
    /// For a storage node: the users it accepts pushes from, with their quotas (default:
    /// nobody; re-seed tokens from its tracker still count).
    pub grants: Grants,
    /// For a storage node: let offline tasks fetch from loopback, private and link-local
    /// addresses (off by default: no SSRF through storage).
    pub offline_allow_private: bool,
    /// Keep this directory in step with the user's space on storage (see `sync`).
    pub sync_dir: Option<PathBuf>,
    /// The region this node states to its trackers (default none: placed by address).
    pub region: Option<shoal_core::Region>,
    /// The name of the `listen` link (multi-link nodes), if any.
    pub listen_name: Option<String>,
    /// Further addresses to listen on (links), each with an optional name (default none).
    pub more_links: Vec<(SocketAddr, Option<String>)>,
    /// Addresses the node registers with its tracker and puts in its tickets besides (and
    /// before) those it listens on: for a node behind a port forward (default none). The
    /// tracker checks them like any registered address.
    pub advertise: Vec<SocketAddr>,
    /// For a storage node: bytes of the pull-through cache, contents fetched on request from
    /// the swarm (other regions) and dropped least recently used first (default 4 GiB; 0
    /// turns pulling through off).
    pub pull_through_cache: u64,
    /// Where to serve Prometheus `/metrics` besides the control API (`--metrics ADDR`;
    /// default: nowhere else).
    pub metrics: Option<SocketAddr>,
}

impl NodeConfig {
    /// Defaults for a data dir: listen on every interface on a free port, no limits.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: "0.0.0.0:0".parse().expect("valid address"),
            upload_limit: None,
            download_limit: None,
            danger_corrupt_uploads: 0.0,
            danger_lie_bitfield: false,
            tracker: None,
            storage: None,
            s3: shoal_cloud::backend::S3Options::default(),
            grants: Grants::default(),
            offline_allow_private: false,
            sync_dir: None,
            region: None,
            pull_through_cache: 4 << 30,
            listen_name: None,
            more_links: Vec::new(),
            advertise: Vec::new(),
            metrics: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_say_what_is_wrong() {
        let user = UserId::from(shoal_net::Identity::generate().node_id());
        let g = Grants::parse(&[format!("{user}=10GiB")]).unwrap();
        assert_eq!(g.quota(&user), Some(Some(10 * 1024 * 1024 * 1024)));
        let g = Grants::parse(&[user.to_string(), user.to_string()]).unwrap();
        assert_eq!(g.quota(&user), Some(None), "unlimited, and repeating it is harmless");
        assert!(Grants::parse::<&str>(&[]).unwrap().is_empty());
        let twice = Grants::parse(&[format!("{user}=1GiB"), format!("{user}=2GiB")]);
        assert!(matches!(twice, Err(ParseGrantError::Twice(_))));
        for (bad, says) in [
            ("nobody".to_string(), "shoal user"),
            (format!("{user}=lots"), "quota must be a size"),
            (format!("{user}=0"), "quota must be a size"),
            (format!("{user}="), "quota must be a size"),
        ] {
            let e = Grants::parse(std::slice::from_ref(&bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(says), "{bad}: {e}");
        }
    }
}
