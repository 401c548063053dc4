//! Ownership per (user, content) and quotas.
//!
//! A user owns a content once it claimed it (by pushing its manifest); its usage is the sum of
//! the sizes of the contents it owns, charged in full at the claim, so a storage node's disk is
//! bounded by its grants before any piece arrives. The check and the charge are one sled
//! transaction over the owner records and the usage counters, so concurrent claims never
//! overshoot a quota and a crash never leaves one without the other.

use shoal_core::{ContentId, UserId};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::store::{CloudError, CloudStore};

/// The outcome of a successful [`CloudStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The user owned the content before: nothing was charged.
    pub already_owned: bool,
    /// Bytes the user owns now.
    pub used: u64,
}

/// The usage after charging `size` to a user using `used` with `quota` (`None`: unlimited),
/// or `Err((used, quota))` when it would not fit. Overflow counts as not fitting.
pub fn charge(used: u64, size: u64, quota: Option<u64>) -> Result<u64, (u64, u64)> {
    let total = used.checked_add(size);
    match (total, quota) {
        (Some(t), None) => Ok(t),
        (Some(t), Some(q)) if t <= q => Ok(t),
        (_, q) => Err((used, q.unwrap_or(u64::MAX))),
    }
}

pub(crate) fn owner_key(user: UserId, content: ContentId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(user.public_key_bytes());
    k[32..].copy_from_slice(content.as_bytes());
    k
}

/// The reverse of [`owner_key`]: content id || user key, so a content's owners are one prefix.
pub(crate) fn by_key(user: UserId, content: ContentId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(content.as_bytes());
    k[32..].copy_from_slice(user.public_key_bytes());
    k
}

pub(crate) fn read_u64(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes)
}

impl CloudStore {
    /// Records that `user` owns `content` of `size` bytes, charging the size to its usage
    /// unless it owned it already. Refuses with [`CloudError::QuotaExceeded`] (recording
    /// nothing) when `quota` cannot hold it. Atomic; durable once it returns.
    pub async fn claim(
        &self,
        user: UserId,
        content: ContentId,
        size: u64,
        quota: Option<u64>,
    ) -> Result<Claimed, CloudError> {
        let key = owner_key(user, content);
        let result =
            (&self.owners, &self.usage, &self.owned_by).transaction(|(owners, usage, by)| {
                let used = read_u64(usage.get(user.public_key_bytes())?);
                if owners.get(key)?.is_some() {
                    return Ok(Claimed { already_owned: true, used });
                }
                let total = charge(used, size, quota).map_err(|(used, quota)| {
                    ConflictableTransactionError::Abort(CloudError::QuotaExceeded {
                        used,
                        quota,
                        need: size,
                    })
                })?;
                owners.insert(&key[..], &size.to_be_bytes())?;
                by.insert(&by_key(user, content)[..], &[])?;
                usage.insert(user.public_key_bytes(), &total.to_be_bytes())?;
                Ok(Claimed { already_owned: false, used: total })
            });
        let claimed = match result {
            Ok(c) => c,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        if !claimed.already_owned {
            self.flush().await?;
        }
        Ok(claimed)
    }

    /// Drops `user`'s ownership of `content` and gives its size back; false if it owned none.
    pub async fn release(&self, user: UserId, content: ContentId) -> Result<bool, CloudError> {
        let key = owner_key(user, content);
        let result =
            (&self.owners, &self.usage, &self.owned_by).transaction(|(owners, usage, by)| {
                let Some(size) = owners.remove(&key[..])? else { return Ok(false) };
                by.remove(&by_key(user, content)[..])?;
                let used = read_u64(usage.get(user.public_key_bytes())?);
                let size = read_u64(Some(size));
                usage.insert(user.public_key_bytes(), &used.saturating_sub(size).to_be_bytes())?;
                Ok(true)
            });
        let released = result.map_err(|e: TransactionError<CloudError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        })?;
        if released {
            self.flush().await?;
        }
        Ok(released)
    }

    /// True if `user` owns `content`.
    pub fn owns(&self, user: UserId, content: ContentId) -> Result<bool, CloudError> {
        Ok(self.owners.contains_key(owner_key(user, content))?)
    }

    /// True if some user owns `content`.
    pub fn is_owned(&self, content: ContentId) -> Result<bool, CloudError> {
        Ok(self.owned_by.scan_prefix(content.as_bytes()).next().transpose()?.is_some())
    }

    /// Bytes `user` owns.
    pub fn usage(&self, user: UserId) -> Result<u64, CloudError> {
        Ok(read_u64(self.usage.get(user.public_key_bytes())?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use shoal_core::NodeId;

    use super::*;

    fn user() -> UserId {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        UserId::from(NodeId::from_public_key(&kp.public()).unwrap())
    }

    #[test]
    fn quota_arithmetic() {
        // Each row: used, size, quota, outcome.
        type Row = (u64, u64, Option<u64>, Result<u64, (u64, u64)>);
        let table: [Row; 7] = [
            (0, 0, Some(0), Ok(0)),                         // nothing into nothing fits
            (0, 10, None, Ok(10)),                          // unlimited
            (0, 10, Some(10), Ok(10)),                      // exactly full
            (5, 6, Some(10), Err((5, 10))),                 // one byte over
            (5, 5, Some(10), Ok(10)),                       // fills the rest
            (u64::MAX, 1, None, Err((u64::MAX, u64::MAX))), // overflow is over quota
            (u64::MAX - 1, 1, None, Ok(u64::MAX)),          // up to the edge
        ];
        for (used, size, quota, want) in table {
            assert_eq!(charge(used, size, quota), want, "{used}+{size} in {quota:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_claims_never_overshoot_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = CloudStore::open(Arc::new(InMemory::new()), dir.path()).unwrap();
        let alice = user();
        let claims = (0..20u8).map(|i| {
            let store = store.clone();
            let id = ContentId([i; 32]);
            tokio::spawn(async move { store.claim(alice, id, 10, Some(55)).await.is_ok() })
        });
        let mut won = 0;
        for c in claims {
            won += usize::from(c.await.unwrap());
        }
        assert_eq!(won, 5);
        assert_eq!(store.usage(alice).unwrap(), 50);
    }
}
