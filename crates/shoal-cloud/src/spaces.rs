//! Users' spaces: named entries `name → content` per user, temporary while an offline task
//! fetches them and permanent once complete; and the records offline tasks keep to survive a
//! restart.
//!
//! A temporary entry costs the user nothing. Making it permanent ([`CloudStore::commit_entry`])
//! claims the content for the user (charging its quota) and turns the entry permanent in one
//! sled transaction, so a crash leaves either a temporary entry and no charge, or a permanent
//! entry and its charge, never one without the other. Removing the last entry of a content
//! gives its size back.

use serde::{Deserialize, Serialize};
use shoal_core::{ContentId, TaskId, UserId};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::owners::{by_key, charge, owner_key, read_u64};
use crate::store::{CloudError, CloudStore};

/// The most entries one user's space holds.
pub const MAX_ENTRIES: usize = 1024;

/// One entry of a user's space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The content, once permanent.
    pub content: Option<ContentId>,
    /// Bytes (0 until the resource's size is known).
    pub size: u64,
    /// True once complete and charged to the user.
    pub permanent: bool,
    /// When it was made or last changed, ms since the Unix epoch.
    pub time_ms: u64,
    /// The offline task filling it, while temporary.
    pub task: Option<TaskId>,
}

/// What turns a temporary entry permanent: its task, the content and its size, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The task the entry belongs to.
    pub task: TaskId,
    /// The finished content.
    pub content: ContentId,
    /// Its size, charged to the user.
    pub size: u64,
    /// Now, ms since the Unix epoch.
    pub time_ms: u64,
}

fn entry_key(user: UserId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + name.len());
    k.extend_from_slice(user.public_key_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn encode(e: &Entry) -> Vec<u8> {
    serde_json::to_vec(e).expect("an entry serialises")
}

fn abort(e: CloudError) -> ConflictableTransactionError<CloudError> {
    ConflictableTransactionError::Abort(e)
}

fn flatten(e: TransactionError<CloudError>) -> CloudError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

impl CloudStore {
    /// The entries of `user`'s space, by name.
    pub fn entries(&self, user: UserId) -> Result<Vec<(String, Entry)>, CloudError> {
        let mut out = Vec::new();
        for kv in self.spaces.scan_prefix(user.public_key_bytes()) {
            let (k, v) = kv?;
            let (Ok(name), Ok(e)) =
                (String::from_utf8(k[32..].to_vec()), serde_json::from_slice::<Entry>(&v))
            else {
                continue;
            };
            out.push((name, e));
        }
        Ok(out)
    }

    /// One entry of `user`'s space.
    pub fn entry(&self, user: UserId, name: &str) -> Result<Option<Entry>, CloudError> {
        Ok(self.spaces.get(entry_key(user, name))?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Makes a temporary entry for `task`. Refuses a name already in the space
    /// ([`CloudError::EntryExists`]) and a space of [`MAX_ENTRIES`] entries.
    pub async fn add_temporary(
        &self,
        user: UserId,
        name: &str,
        task: TaskId,
        time_ms: u64,
    ) -> Result<(), CloudError> {
        let _serial = self.space_lock.lock().await;
        if self.spaces.scan_prefix(user.public_key_bytes()).keys().count() >= MAX_ENTRIES {
            return Err(CloudError::SpaceFull { max: MAX_ENTRIES });
        }
        let e = Entry { content: None, size: 0, permanent: false, time_ms, task: Some(task) };
        let old =
            self.spaces.compare_and_swap(entry_key(user, name), None::<&[u8]>, Some(encode(&e)))?;
        if old.is_err() {
            return Err(CloudError::EntryExists(name.to_string()));
        }
        self.flush().await
    }

    /// Turns the temporary entry of `commit.task` permanent for its content, claiming the
    /// content for `user` within `quota`, atomically. [`CloudError::QuotaExceeded`] changes
    /// nothing; an entry that is gone or belongs to another task is [`CloudError::NoEntry`].
    pub async fn commit_entry(
        &self,
        user: UserId,
        name: &str,
        commit: Commit,
        quota: Option<u64>,
    ) -> Result<(), CloudError> {
        let Commit { task, content, size, time_ms } = commit;
        let _serial = self.space_lock.lock().await;
        let ekey = entry_key(user, name);
        let okey = owner_key(user, content);
        let bkey = by_key(user, content);
        let trees = (&self.spaces, &self.owners, &self.usage, &self.owned_by);
        let result = trees.transaction(|(spaces, owners, usage, by)| {
            let current: Option<Entry> =
                spaces.get(&ekey)?.and_then(|v| serde_json::from_slice(&v).ok());
            if current.is_none_or(|e| e.task != Some(task)) {
                return Err(abort(CloudError::NoEntry(name.to_string())));
            }
            if owners.get(okey)?.is_none() {
                let used = read_u64(usage.get(user.public_key_bytes())?);
                let total = charge(used, size, quota).map_err(|(used, quota)| {
                    abort(CloudError::QuotaExceeded { used, quota, need: size })
                })?;
                owners.insert(&okey[..], &size.to_be_bytes())?;
                by.insert(&bkey[..], &[])?;
                usage.insert(user.public_key_bytes(), &total.to_be_bytes())?;
            }
            let e = Entry { content: Some(content), size, permanent: true, time_ms, task: None };
            spaces.insert(ekey.as_slice(), encode(&e))?;
            Ok(())
        });
        result.map_err(flatten)?;
        self.flush().await
    }

    /// Records the size of `task`'s temporary entry once the resource is found (no charge).
    pub fn set_temporary_size(
        &self,
        user: UserId,
        name: &str,
        task: TaskId,
        size: u64,
    ) -> Result<(), CloudError> {
        self.spaces.update_and_fetch(entry_key(user, name), |old| {
            let mut e: Entry = serde_json::from_slice(old?).ok()?;
            if !e.permanent && e.task == Some(task) {
                e.size = size;
            }
            Some(encode(&e))
        })?;
        Ok(())
    }

    /// Removes an entry and returns it. When no other entry of the user names its content, the
    /// user no longer owns the content and its charge is given back; the caller then deletes
    /// the content if nobody owns it ([`CloudStore::delete_if_unowned`]), so a user's quota
    /// keeps bounding what it stores. Without `task`, a temporary entry is refused
    /// ([`CloudError::Fetching`]: cancel its task instead); with `task`, only that task's
    /// temporary entry is removed (a cancel or a failure cleaning up).
    pub async fn remove_entry(
        &self,
        user: UserId,
        name: &str,
        task: Option<TaskId>,
    ) -> Result<Option<Entry>, CloudError> {
        let _serial = self.space_lock.lock().await;
        let ekey = entry_key(user, name);
        // Other entries of the user naming the same content keep it owned (read under the
        // space lock: no entry changes meanwhile).
        let siblings = self.entries(user)?;
        let trees = (&self.spaces, &self.owners, &self.usage, &self.owned_by);
        let result = trees.transaction(|(spaces, owners, usage, by)| {
            let Some(raw) = spaces.get(&ekey)? else { return Ok(None) };
            let Ok(e) = serde_json::from_slice::<Entry>(&raw) else {
                spaces.remove(ekey.as_slice())?;
                return Ok(None);
            };
            match task {
                Some(t) if e.permanent || e.task != Some(t) => return Ok(None),
                None if !e.permanent => {
                    return Err(abort(CloudError::Fetching(name.to_string())));
                }
                _ => {}
            }
            spaces.remove(ekey.as_slice())?;
            if let Some(content) = e.content.filter(|_| e.permanent) {
                let shared = siblings
                    .iter()
                    .any(|(n, s)| n != name && s.permanent && s.content == Some(content));
                let okey = owner_key(user, content);
                if !shared {
                    if let Some(size) = owners.remove(&okey[..])? {
                        by.remove(&by_key(user, content)[..])?;
                        let used = read_u64(usage.get(user.public_key_bytes())?);
                        let left = used.saturating_sub(read_u64(Some(size)));
                        usage.insert(user.public_key_bytes(), &left.to_be_bytes())?;
                    }
                }
            }
            Ok(Some(e))
        });
        let removed = result.map_err(flatten)?;
        if removed.is_some() {
            self.flush().await?;
        }
        Ok(removed)
    }

    /// Every offline task record (its JSON), for a restart to resume.
    pub fn task_records(&self) -> Result<Vec<(TaskId, Vec<u8>)>, CloudError> {
        let mut out = Vec::new();
        for kv in self.tasks.iter() {
            let (k, v) = kv?;
            if let Ok(id) = <[u8; 16]>::try_from(k.as_ref()) {
                out.push((TaskId(id), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Writes a task record (durable once it returns).
    pub async fn put_task_record(&self, task: TaskId, record: &[u8]) -> Result<(), CloudError> {
        self.tasks.insert(task.0, record)?;
        self.flush().await
    }

    /// Drops a task record.
    pub async fn remove_task_record(&self, task: TaskId) -> Result<(), CloudError> {
        self.tasks.remove(task.0)?;
        self.flush().await
    }

    /// What storage fetched from a URL before (a record the caller wrote), for instant tasks.
    pub fn resource_record(&self, url: &str) -> Result<Option<Vec<u8>>, CloudError> {
        Ok(self.resources.get(resource_key(url))?.map(|v| v.to_vec()))
    }

    /// Remembers what a URL gave. At most [`MAX_RESOURCES`] URLs are remembered: past that,
    /// one other record is forgotten (its URL is then fetched again, not answered instantly).
    pub async fn put_resource_record(&self, url: &str, record: &[u8]) -> Result<(), CloudError> {
        self.put_resource_capped(url, record, MAX_RESOURCES)?;
        self.flush().await
    }

    fn put_resource_capped(&self, url: &str, record: &[u8], cap: usize) -> Result<(), CloudError> {
        let key = resource_key(url);
        if !self.resources.contains_key(key)? && self.resources.len() >= cap {
            // Keys are hashes: the first is as good as a random one to forget.
            if let Some((old, _)) = self.resources.first()? {
                self.resources.remove(old)?;
            }
        }
        self.resources.insert(key, record)?;
        Ok(())
    }
}

/// URLs remembered for instant tasks, at most (each record about 300 bytes: about 5 MiB).
pub const MAX_RESOURCES: usize = 16 * 1024;

/// A URL's key in the resource records: its BLAKE3 hash, so a record costs 32 bytes of key
/// whatever the URL's length.
fn resource_key(url: &str) -> [u8; 32] {
    *blake3::hash(url.as_bytes()).as_bytes()
}

#[cfg(test)]
mod tests;
