//! The index's swarms, each behind a lock of its own, so that lookups of different contents
//! run in parallel.
//!
//! The tracker keeps its index behind a read-write lock: registrations, announces and
//! expiry take it for writing and reach every swarm through `&mut` (no locking, [`Swarms::get_mut`]),
//! while lookups share it for reading and lock only the swarm they rank
//! ([`Swarms::lock`]). One lookup locks one swarm at a time, never two, so swarm locks cannot
//! deadlock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use shoal_core::ContentId;

use crate::swarm::Swarm;

/// Swarms by content, each behind its own lock.
#[derive(Debug, Default)]
pub(crate) struct Swarms(HashMap<ContentId, Mutex<Swarm>>);

/// A locked swarm, as a lookup or a reader sees it.
pub(crate) type Locked<'a> = MutexGuard<'a, Swarm>;

/// A swarm's lock, even if a thread panicked while it held it: a lookup that panics leaves
/// counts that are at worst off by its own changes, and the index keeps serving.
fn unpoison<T>(r: Result<T, PoisonError<T>>) -> T {
    r.unwrap_or_else(PoisonError::into_inner)
}

impl Swarms {
    /// The swarm of `content`, locked.
    pub(crate) fn lock(&self, content: &ContentId) -> Option<Locked<'_>> {
        self.0.get(content).map(|m| unpoison(m.lock()))
    }

    /// The swarm of `content`, for a caller that holds the index exclusively: no lock taken.
    pub(crate) fn get_mut(&mut self, content: &ContentId) -> Option<&mut Swarm> {
        self.0.get_mut(content).map(|m| unpoison(m.get_mut()))
    }

    pub(crate) fn contains_key(&self, content: &ContentId) -> bool {
        self.0.contains_key(content)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &ContentId> {
        self.0.keys()
    }

    pub(crate) fn insert(&mut self, content: ContentId, swarm: Swarm) {
        self.0.insert(content, Mutex::new(swarm));
    }

    pub(crate) fn remove(&mut self, content: &ContentId) -> Option<Swarm> {
        self.0.remove(content).map(|m| unpoison(m.into_inner()))
    }

    /// Every swarm, each locked in turn.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ContentId, Locked<'_>)> {
        self.0.iter().map(|(c, m)| (c, unpoison(m.lock())))
    }
}
