//! What ingestion knows about freshness: the newest committed epoch, when each recent epoch was
//! committed, and each user's newest epoch that changed their data (for `pending`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::RwLock;
use vitalflow_schemas::Epoch;

const COMMIT_TIMES_KEPT: usize = 100_000;

/// Shared, lock-light view of ingest progress.
#[derive(Debug, Default)]
pub struct IngestProgress {
    latest: AtomicU64,
    users: RwLock<HashMap<String, Epoch>>,
    commit_times: RwLock<VecDeque<(Epoch, SystemTime)>>,
}

impl IngestProgress {
    /// Progress as recovered from the store.
    pub fn new(latest: Epoch, users: HashMap<String, Epoch>) -> Self {
        IngestProgress { latest: AtomicU64::new(latest), users: RwLock::new(users), commit_times: Default::default() }
    }

    /// The newest durably committed epoch.
    pub fn latest_epoch(&self) -> Epoch {
        self.latest.load(Ordering::Acquire)
    }

    /// The newest epoch that changed `user`'s data, if any.
    pub fn user_epoch(&self, user: &str) -> Option<Epoch> {
        self.users.read().get(user).copied()
    }

    /// When `epoch` was committed, if it is recent enough to be remembered.
    pub fn committed_at(&self, epoch: Epoch) -> Option<SystemTime> {
        let times = self.commit_times.read();
        let first = times.front()?.0;
        let idx = usize::try_from(epoch.checked_sub(first)?).ok()?;
        times.get(idx).filter(|(e, _)| *e == epoch).map(|(_, t)| *t)
    }

    pub(crate) fn record_commit(&self, epoch: Epoch, users: impl IntoIterator<Item = String>) {
        {
            let mut map = self.users.write();
            for u in users {
                map.insert(u, epoch);
            }
        }
        {
            let mut times = self.commit_times.write();
            if times.back().is_some_and(|(e, _)| *e + 1 != epoch) {
                times.clear();
            }
            times.push_back((epoch, SystemTime::now()));
            if times.len() > COMMIT_TIMES_KEPT {
                times.pop_front();
            }
        }
        self.latest.store(epoch, Ordering::Release);
    }
}
