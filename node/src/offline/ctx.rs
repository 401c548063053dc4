//! What a storage node's offline tasks share: the cloud store, the origin client, the node key
//! (to sign proofs), the temporary area, grants, slots, reservations and counters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_cloud::origin::{Origin, Resource};
use shoal_cloud::{CloudError, CloudStore};
use shoal_core::offline::SegmentProof;
use shoal_core::{ContentId, PieceHash, PieceIndex, TaskId, UserId};
use tokio::sync::Semaphore;

use super::task;
use shoal_wire::tracker::StorageNode;

use crate::config::Grants;
use crate::net::Net;

/// Tasks of one user fetched at once (so one user cannot hold every slot of the node).
pub(crate) const MAX_RUNNING_PER_USER: usize = 2;
/// The longest a task may run (a slow origin cannot hold a slot for ever).
pub(crate) const TASK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// Now, ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a URL gave last time: an instant answer for the next task that names it, while the
/// origin still reports the same resource.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Seen {
    pub(crate) content: ContentId,
    pub(crate) resource: Resource,
}

/// What running tasks use: the store, the origin client, the node key (to sign proofs), the
/// temporary area, the grants and the running-task limit.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) cloud: CloudStore,
    pub(crate) origin: Origin,
    pub(crate) net: Arc<Net>,
    pub(crate) dir: PathBuf,
    pub(crate) grants: Grants,
    pub(crate) running: Arc<Semaphore>,
    /// Temporary bytes each task holds (its resource's size), by user. Held only for map
    /// access.
    pub(crate) reserved: Mutex<HashMap<TaskId, (UserId, u64)>>,
    /// Each user's running slots ([`MAX_RUNNING_PER_USER`]). Held only for map access.
    pub(crate) slots: Mutex<HashMap<UserId, Arc<Semaphore>>>,
    /// The tracker client: where the other storage nodes (helpers) are.
    pub(crate) trackers: Arc<crate::tracker::Trackers>,
    /// The longest resource the origin fetcher accepts.
    pub(crate) origin_max_size: u64,
    /// The other storage nodes the tracker listed last, and when (see `assist`). Held only for
    /// access.
    pub(crate) storage_list: Mutex<Option<(std::time::Instant, Vec<StorageNode>)>>,
    /// Bytes this node fetched from origins (its own tasks and assists).
    pub(crate) origin_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Ctx {
    /// The quota of a granted user (`Some(None)`: unlimited); `None` if not granted.
    pub(crate) fn quota(&self, user: UserId) -> Option<Option<u64>> {
        self.grants.quota(&user)
    }

    /// Reserves `size` temporary bytes for `task` of `user`: refused when what the user owns,
    /// what its other tasks hold and `size` together exceed its quota.
    pub(crate) fn reserve(&self, task: TaskId, user: UserId, size: u64) -> Result<(), CloudError> {
        let Some(quota) = self.quota(user) else {
            return Err(CloudError::QuotaExceeded { used: 0, quota: 0, need: size });
        };
        let used = self.cloud.usage(user)?;
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let others: u64 = reserved
            .iter()
            .filter(|(t, (u, _))| **t != task && *u == user)
            .map(|(_, (_, n))| *n)
            .fold(0u64, u64::saturating_add);
        if shoal_cloud::charge(used.saturating_add(others), size, quota).is_err() {
            return Err(CloudError::QuotaExceeded {
                used: used.saturating_add(others),
                quota: quota.unwrap_or(u64::MAX),
                need: size,
            });
        }
        reserved.insert(task, (user, size));
        Ok(())
    }

    /// The running slots of `user`.
    pub(crate) fn user_slots(&self, user: UserId) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Users without tasks waiting or running are dropped, so the map stays small.
        slots.retain(|_, s| Arc::strong_count(s) > 1);
        slots.entry(user).or_insert_with(|| Arc::new(Semaphore::new(MAX_RUNNING_PER_USER))).clone()
    }

    /// Gives a task's temporary bytes back.
    pub(crate) fn release(&self, task: TaskId) {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner()).remove(&task);
    }

    /// Where `task`'s temporary file is.
    pub(crate) fn part_path(&self, task: TaskId) -> PathBuf {
        part_file(&self.dir, task)
    }

    /// Writes a task's record (durable once it returns).
    pub(crate) async fn save(&self, id: TaskId, record: &task::Record) -> Result<(), CloudError> {
        self.cloud.put_task_record(id, &serde_json::to_vec(record).expect("serialises")).await
    }

    /// A signed proof of pieces `first..` of `task`.
    pub(crate) fn prove(
        &self,
        task: shoal_core::TaskId,
        size: u64,
        first: u32,
        hashes: Vec<PieceHash>,
    ) -> SegmentProof {
        let first = PieceIndex(first);
        let signed = SegmentProof::signed_bytes(&task, size, first, &hashes);
        let sig = self.net.identity.sign(&signed);
        // An ed25519 signature is always 64 bytes.
        let signature = sig.try_into().unwrap_or([0; 64]);
        SegmentProof { task, size, first, hashes, signature }
    }
}

/// The path of a task's temporary file.
pub(crate) fn part_file(dir: &std::path::Path, task: shoal_core::TaskId) -> PathBuf {
    dir.join(format!("{task}.part"))
}
