//! The snapshot store. Per view it accumulates updates per user and, each time the view's frontier
//! advances, publishes a new immutable [`ViewSnapshot`]: 256 buckets of per-user shards, each shard
//! its rows sorted by key and one Arrow `RecordBatch`. Publishing rebuilds only the touched users'
//! shards and copies only their buckets' maps of `Arc`s, so its cost follows the change, not the
//! view. Readers clone an `Arc` and never block the writer.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use vitalflow_schemas::{Datum, Epoch, Row, ViewDef};

const BUCKETS: usize = 256;

/// One user's rows of a view.
#[derive(Debug)]
pub struct UserShard {
    /// Sorted by key.
    pub rows: Vec<Row>,
    pub batch: RecordBatch,
}

/// Users whose id hashes to the same bucket.
#[derive(Debug, Default, Clone)]
pub struct Bucket {
    pub users: BTreeMap<String, Arc<UserShard>>,
}

/// An immutable, consistent state of one view.
#[derive(Debug)]
pub struct ViewSnapshot {
    /// Every epoch ≤ `as_of` is reflected, none after.
    pub as_of: Epoch,
    pub buckets: Vec<Arc<Bucket>>,
    pub row_count: usize,
    pub published_at: SystemTime,
}

impl ViewSnapshot {
    fn empty() -> Self {
        ViewSnapshot {
            as_of: 0,
            buckets: (0..BUCKETS).map(|_| Arc::new(Bucket::default())).collect(),
            row_count: 0,
            published_at: SystemTime::now(),
        }
    }

    /// The shard of `user`, if the user has rows.
    pub fn user(&self, user: &str) -> Option<&Arc<UserShard>> {
        self.buckets[bucket_of(user)].users.get(user)
    }

    /// Every shard's record batch (cheap clones of `Arc`ed arrays).
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.buckets.iter().flat_map(|b| b.users.values().map(|s| s.batch.clone())).collect()
    }
}

fn bucket_of(user: &str) -> usize {
    let mut h = DefaultHasher::new();
    user.hash(&mut h);
    (h.finish() % BUCKETS as u64) as usize
}

struct ViewStore {
    def: ViewDef,
    /// Current multiplicity of every row, per user (the writer's side).
    state: Mutex<HashMap<String, BTreeMap<Row, i64>>>,
    current: RwLock<Arc<ViewSnapshot>>,
    as_of: watch::Sender<Epoch>,
}

/// Snapshots of every view.
pub struct SnapshotStore {
    views: Vec<ViewStore>,
    ready: AtomicBool,
}

impl SnapshotStore {
    /// An empty store for the given views (index = view id).
    pub fn new(defs: impl IntoIterator<Item = ViewDef>) -> Self {
        let views = defs
            .into_iter()
            .map(|def| ViewStore {
                def,
                state: Mutex::new(HashMap::new()),
                current: RwLock::new(Arc::new(ViewSnapshot::empty())),
                as_of: watch::channel(0).0,
            })
            .collect();
        SnapshotStore { views, ready: AtomicBool::new(false) }
    }

    /// Index of the view named `name` (its SQL name).
    pub fn view_by_name(&self, name: &str) -> Option<usize> {
        self.views.iter().position(|v| v.def.name == name)
    }

    /// Index of the view served under HTTP `route`.
    pub fn view_by_route(&self, route: &str) -> Option<usize> {
        self.views.iter().position(|v| v.def.route == Some(route))
    }

    /// The view's definition.
    pub fn def(&self, view: usize) -> &ViewDef {
        &self.views[view].def
    }

    /// The view's current snapshot.
    pub fn snapshot(&self, view: usize) -> Arc<ViewSnapshot> {
        self.views[view].current.read().clone()
    }

    /// Number of views.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether no view is registered.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Subscribes to the view's `asOfEpoch`.
    pub fn watch(&self, view: usize) -> watch::Receiver<Epoch> {
        self.views[view].as_of.subscribe()
    }

    /// Marks recovery finished (`/readyz` turns ready).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether recovery finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Applies the consolidated updates of every epoch below `frontier` and publishes a snapshot
    /// with `asOfEpoch = frontier − 1`.
    pub fn apply(&self, view: usize, frontier: Epoch, updates: Vec<(Row, i64)>) {
        let Some(vs) = self.views.get(view) else { return };
        let mut state = vs.state.lock();
        let mut touched = BTreeSet::new();
        for (row, diff) in updates {
            let Some(user) = row.first().and_then(Datum::as_str).map(str::to_owned) else {
                tracing::error!(view = vs.def.name, "view row without a user_id; ignored");
                continue;
            };
            let rows = state.entry(user.clone()).or_default();
            match rows.get_mut(&row) {
                Some(count) => {
                    *count += diff;
                    if *count == 0 {
                        rows.remove(&row);
                    }
                }
                None => {
                    rows.insert(row, diff);
                }
            }
            touched.insert(user);
        }
        let prev = vs.current.read().clone();
        let mut buckets = prev.buckets.clone();
        let mut row_count = prev.row_count as i64;
        for user in touched {
            let b = bucket_of(&user);
            let bucket = Arc::make_mut(&mut buckets[b]);
            if let Some(old) = bucket.users.remove(&user) {
                row_count -= old.rows.len() as i64;
            }
            let rows: Vec<Row> = match state.get(&user) {
                Some(map) => map.iter().filter(|(_, c)| **c > 0).map(|(r, _)| r.clone()).collect(),
                None => Vec::new(),
            };
            if rows.is_empty() {
                state.remove(&user);
                continue;
            }
            match vs.def.to_record_batch(&rows) {
                Ok(batch) => {
                    row_count += rows.len() as i64;
                    bucket.users.insert(user, Arc::new(UserShard { rows, batch }));
                }
                Err(e) => tracing::error!(view = vs.def.name, error = %e, "cannot build a shard"),
            }
        }
        let as_of = if frontier == Epoch::MAX { prev.as_of } else { frontier.saturating_sub(1).max(prev.as_of) };
        let snap =
            ViewSnapshot { as_of, buckets, row_count: row_count.max(0) as usize, published_at: SystemTime::now() };
        *vs.current.write() = Arc::new(snap);
        drop(state);
        vs.as_of.send_replace(as_of);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalflow_schemas::view::{ColumnType, col};

    const DEF: ViewDef = ViewDef {
        name: "t",
        columns: &[col("user_id", ColumnType::Str), col("n", ColumnType::Int)],
        key_len: 2,
        route: Some("t"),
        filters: &[],
        range_column: None,
        range_via: None,
    };

    fn row(u: &str, n: i64) -> Row {
        vec![Datum::Str(u.into()), Datum::Int(n)]
    }

    #[test]
    fn publishes_only_touched_shards() {
        let store = SnapshotStore::new([DEF]);
        store.apply(0, 2, vec![(row("a", 1), 1), (row("b", 1), 1), (row("b", 2), 1)]);
        let s1 = store.snapshot(0);
        assert_eq!((s1.as_of, s1.row_count), (1, 3));
        store.apply(0, 3, vec![(row("b", 1), -1)]);
        let s2 = store.snapshot(0);
        assert_eq!((s2.as_of, s2.row_count), (2, 2));
        assert!(Arc::ptr_eq(s1.user("a").unwrap(), s2.user("a").unwrap()), "untouched shard is shared");
        assert_eq!(s2.user("b").unwrap().rows, vec![row("b", 2)]);
        assert_eq!(s1.user("b").unwrap().rows.len(), 2, "old snapshot is immutable");
        store.apply(0, 4, vec![(row("b", 2), -1)]);
        assert!(store.snapshot(0).user("b").is_none());
    }
}
