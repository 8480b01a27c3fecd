//! The snapshot store. Per view it accumulates updates per user and, each time the view's frontier
//! advances, publishes a new immutable [`ViewSnapshot`]: 256 buckets of per-user shards, each shard
//! a sorted run of chunks of at most [`CHUNK_ROWS`] × 2 rows, each chunk its rows sorted by key and
//! one Arrow `RecordBatch`. Publishing rebuilds only the chunks whose key range holds a changed
//! row, and copies only the touched buckets' maps of `Arc`s, so its cost follows the change, not
//! the view nor the user's history (issue 14 §1; `benches/publish.rs`). Readers clone an `Arc` and
//! never block the writer.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use vitalflow_schemas::{Datum, Epoch, Row, ViewDef};

const BUCKETS: usize = 256;

/// Rows per chunk a shard is built with; a chunk that grows past twice this is split.
pub const CHUNK_ROWS: usize = 256;

/// A run of one user's rows, sorted by key, with its Arrow batch.
#[derive(Debug)]
pub struct Chunk {
    /// The rows, shared with the view's multiplicities (`ViewStore::state`) and with the chunks of
    /// later snapshots: rebuilding a chunk copies pointers, not rows.
    pub rows: Vec<Arc<Row>>,
    pub batch: RecordBatch,
    /// The smallest and largest value of the view's `range_column` in this chunk when that column
    /// is a date (days since 1970-01-01); SQL skips chunks a date filter excludes.
    pub days: Option<(i32, i32)>,
}

/// One user's rows of a view: chunks in key order. Chunk `i` holds the rows with keys in
/// `[lower[i], lower[i + 1])`; the first chunk's range starts at the smallest key.
#[derive(Debug, Default)]
pub struct UserShard {
    lower: Vec<Arc<Row>>,
    chunks: Vec<Arc<Chunk>>,
    len: usize,
}

impl UserShard {
    /// Every row, sorted by key.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.chunks.iter().flat_map(|c| c.rows.iter().map(|r| &**r))
    }

    /// The chunks' record batches, in key order.
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.chunks.iter().map(|c| &c.batch)
    }

    /// The chunks, in key order (shared between snapshots while unchanged).
    pub fn chunks(&self) -> &[Arc<Chunk>] {
        &self.chunks
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard has no row.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rows whose key starts within `[lo, hi]`, in key order: a row is in when its first
    /// `lo.len()` columns are ≥ `lo` and its first `hi.len()` columns are ≤ `hi` (each compared as
    /// a prefix, so `hi = [user, "steps"]` takes every date of `steps`). A binary search over the
    /// chunks' lower bounds and then over one chunk's rows, then a scan of the rows returned only:
    /// O(log n + rows in range), however long the user's history.
    pub fn range<'a>(&'a self, lo: &'a [Datum], hi: &'a [Datum]) -> impl Iterator<Item = &'a Row> + 'a {
        fn prefix(r: &Row, n: usize) -> &[Datum] {
            r.get(..n).unwrap_or(r)
        }
        // Chunk `i` can hold a row ≥ `lo` only if the next chunk's lower bound is ≥ `lo`.
        let first = self.lower.get(1..).unwrap_or_default().partition_point(|l| prefix(l, lo.len()) < lo);
        let skip = self.chunks.get(first).map_or(0, |c| c.rows.partition_point(|r| prefix(r, lo.len()) < lo));
        self.chunks
            .get(first..)
            .unwrap_or_default()
            .iter()
            .flat_map(|c| c.rows.iter().map(|r| &**r))
            .skip(skip)
            .take_while(move |r| prefix(r, hi.len()) <= hi)
    }

    /// Index of the chunk whose range holds `row`.
    fn chunk_of(&self, row: &Row) -> usize {
        // lower[0] is never compared: the first chunk starts at the smallest key.
        self.lower[1..].partition_point(|l| **l <= *row)
    }
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

    /// Every chunk's record batch (cheap clones of `Arc`ed arrays).
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.buckets.iter().flat_map(|b| b.users.values().flat_map(|s| s.batches().cloned())).collect()
    }
}

fn bucket_of(user: &str) -> usize {
    let mut h = DefaultHasher::new();
    user.hash(&mut h);
    (h.finish() % BUCKETS as u64) as usize
}

struct ViewStore {
    def: ViewDef,
    /// Current multiplicity of every row, per user (the writer's side). The chunks of the
    /// published snapshots share these rows.
    state: Mutex<HashMap<String, BTreeMap<Arc<Row>, i64>>>,
    /// Users whose rows changed at recovery's internal times, before the view's frontier passed
    /// the recovery epoch: their shards are built when it does (ADR 0014). Locked after `state`.
    held: Mutex<BTreeSet<String>>,
    current: RwLock<Arc<ViewSnapshot>>,
    /// A snapshot persisted by an earlier run ([`crate::persist`]), served until the dataflow's
    /// own snapshot reaches its `asOfEpoch` (issue 14 §3).
    persisted: RwLock<Option<Arc<ViewSnapshot>>>,
    /// `asOfEpoch` of the snapshot served (persisted or live).
    as_of: watch::Sender<Epoch>,
}

/// Where a view's served snapshot comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The dataflow's own snapshot (fresh once recovery has finished).
    Live,
    /// A snapshot persisted by an earlier run, while the dataflow rehydrates.
    Persisted,
}

/// Snapshots of every view.
pub struct SnapshotStore {
    views: Vec<ViewStore>,
    ready: AtomicBool,
    /// The epoch recovery replays the store up to (ADR 0014): until a view's frontier passes it,
    /// the view's updates are held back (applied to its state, not published) and its live
    /// snapshot reflects no epoch at all (`asOfEpoch` 0), however far the frontier is.
    recovery_epoch: AtomicU64,
}

impl SnapshotStore {
    /// An empty store for the given views (index = view id).
    pub fn new(defs: impl IntoIterator<Item = ViewDef>) -> Self {
        let views = defs
            .into_iter()
            .map(|def| ViewStore {
                def,
                state: Mutex::new(HashMap::new()),
                held: Mutex::new(BTreeSet::new()),
                current: RwLock::new(Arc::new(ViewSnapshot::empty())),
                persisted: RwLock::new(None),
                as_of: watch::channel(0).0,
            })
            .collect();
        SnapshotStore { views, ready: AtomicBool::new(false), recovery_epoch: AtomicU64::new(0) }
    }

    /// Declares that recovery replays the store up to `epoch` (ADR 0014): until a view's frontier
    /// passes it, the view's updates are applied to its state but nothing is published (the
    /// states at recovery's internal times are partial), and its live snapshot claims no epoch
    /// (else, during recovery, an empty view would claim `epoch − 1`).
    pub fn set_recovery_epoch(&self, epoch: Epoch) {
        self.recovery_epoch.store(epoch, Ordering::Release);
    }

    /// Serves `rows` (any order; the first column is the user) as `view`'s snapshot as of
    /// `as_of` until the live snapshot reaches that epoch. Errors: rows that do not fit the
    /// view's Arrow schema.
    pub fn install_persisted(&self, view: usize, as_of: Epoch, rows: Vec<Row>) -> Result<usize, String> {
        let Some(vs) = self.views.get(view) else { return Err(format!("no view {view}")) };
        let mut by_user: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for row in rows {
            let Some(user) = row.first().and_then(Datum::as_str).map(str::to_owned) else {
                return Err(format!("{}: a row without a user_id", vs.def.name));
            };
            by_user.entry(user).or_default().push(row);
        }
        let mut snap = ViewSnapshot::empty();
        snap.as_of = as_of;
        for (user, mut rows) in by_user {
            rows.sort();
            rows.dedup();
            let rows: Vec<Arc<Row>> = rows.into_iter().map(Arc::new).collect();
            let mut shard = UserShard::default();
            let Some(lower) = rows.first().cloned() else { continue };
            snap.row_count += rows.len();
            push_split(&vs.def, &mut shard, lower, rows).map_err(|e| e.to_string())?;
            Arc::make_mut(&mut snap.buckets[bucket_of(&user)]).users.insert(user, Arc::new(shard));
        }
        let rows = snap.row_count;
        let mut persisted = vs.persisted.write();
        if vs.current.read().as_of >= as_of {
            return Ok(rows); // the live snapshot is already as fresh
        }
        *persisted = Some(Arc::new(snap));
        vs.as_of.send_replace(as_of);
        Ok(rows)
    }

    /// Whether the view serves its live snapshot or a persisted one.
    pub fn served(&self, view: usize) -> Served {
        if self.views[view].persisted.read().is_some() { Served::Persisted } else { Served::Live }
    }

    /// The view's live snapshot (never a persisted one): what [`crate::persist`] writes.
    pub fn live_snapshot(&self, view: usize) -> Arc<ViewSnapshot> {
        self.views[view].current.read().clone()
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

    /// The view's served snapshot: the live one, or, while the dataflow rehydrates after a
    /// restart, the persisted one (see [`SnapshotStore::served`]).
    pub fn snapshot(&self, view: usize) -> Arc<ViewSnapshot> {
        let vs = &self.views[view];
        if let Some(p) = vs.persisted.read().as_ref() {
            return p.clone();
        }
        vs.current.read().clone()
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
    /// with `asOfEpoch = frontier − 1`. Cost: the changed rows (log n each) plus the chunks they
    /// fall in, however many rows the view or the user holds. While `frontier` has not passed the
    /// recovery epoch ([`SnapshotStore::set_recovery_epoch`]) the updates are only applied to the
    /// state; the first frontier past it publishes every user they touched.
    pub fn apply(&self, view: usize, frontier: Epoch, updates: Vec<(Row, i64)>) {
        let Some(vs) = self.views.get(view) else { return };
        let recovering = frontier <= self.recovery_epoch.load(Ordering::Acquire);
        let mut state = vs.state.lock();
        let prev = vs.current.read().clone();
        // Per touched user, the chunks of the published shard that hold a changed row (found as
        // the rows go by, so no row is kept or cloned for it).
        let mut touched: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut held = vs.held.lock();
        for (row, diff) in updates {
            let Some(user) = row.first().and_then(Datum::as_str).map(str::to_owned) else {
                tracing::error!(view = vs.def.name, "view row without a user_id; ignored");
                continue;
            };
            if recovering {
                if !held.contains(&user) {
                    held.insert(user.clone());
                }
            } else {
                let dirty = touched.entry(user.clone()).or_default();
                if let Some(shard) = prev.user(&user).filter(|s| !s.chunks.is_empty()) {
                    dirty.insert(shard.chunk_of(&row));
                }
            }
            let rows = state.entry(user).or_default();
            match rows.get_mut(&row) {
                Some(count) => {
                    *count += diff;
                    if *count == 0 {
                        rows.remove(&row);
                    }
                }
                None => {
                    rows.insert(Arc::new(row), diff);
                }
            }
        }
        if recovering {
            return;
        }
        for user in std::mem::take(&mut *held) {
            let chunks = prev.user(&user).map_or(0, |s| s.chunks.len());
            touched.entry(user).or_default().extend(0..chunks);
        }
        drop(held);
        let mut buckets = prev.buckets.clone();
        let mut row_count = prev.row_count as i64;
        for (user, dirty) in touched {
            let b = bucket_of(&user);
            let bucket = Arc::make_mut(&mut buckets[b]);
            let old = bucket.users.remove(&user);
            let Some(rows) = state.get(&user).filter(|m| !m.is_empty()) else {
                state.remove(&user);
                row_count -= old.map_or(0, |o| o.len() as i64);
                continue;
            };
            match rebuild(&vs.def, old.as_deref(), rows, &dirty) {
                Ok(shard) => {
                    row_count += shard.len() as i64 - old.map_or(0, |o| o.len() as i64);
                    if !shard.is_empty() {
                        bucket.users.insert(user, Arc::new(shard));
                    }
                }
                Err(e) => {
                    tracing::error!(view = vs.def.name, error = %e, "cannot build a shard");
                    if let Some(o) = old {
                        bucket.users.insert(user, o);
                    }
                }
            }
        }
        let as_of = if frontier == Epoch::MAX { prev.as_of } else { frontier.saturating_sub(1).max(prev.as_of) };
        let snap =
            ViewSnapshot { as_of, buckets, row_count: row_count.max(0) as usize, published_at: SystemTime::now() };
        let mut persisted = vs.persisted.write();
        *vs.current.write() = Arc::new(snap);
        if persisted.as_ref().is_some_and(|p| p.as_of <= as_of) {
            *persisted = None;
        }
        let served = persisted.as_ref().map_or(as_of, |p| p.as_of);
        drop(persisted);
        drop(state);
        vs.as_of.send_replace(served);
    }
}

type ArrowResult<T> = Result<T, datafusion::arrow::error::ArrowError>;

/// Appends `run` (sorted, non-empty or skipped) as one chunk starting the range at `lower`.
fn push(def: &ViewDef, shard: &mut UserShard, lower: Arc<Row>, run: Vec<Arc<Row>>) -> ArrowResult<()> {
    if run.is_empty() {
        return Ok(());
    }
    let batch = def.to_record_batch(run.iter().map(|r| &**r))?;
    shard.len += run.len();
    shard.lower.push(lower);
    let days = def
        .range_column
        .and_then(|c| def.column_index(c))
        .filter(|i| def.columns[*i].ty == vitalflow_schemas::view::ColumnType::Date)
        .and_then(|i| {
            let mut dates = run.iter().filter_map(|r| match r.get(i) {
                Some(Datum::Date(d)) => Some(*d),
                _ => None,
            });
            let first = dates.next()?;
            Some(dates.fold((first, first), |(lo, hi), d| (lo.min(d), hi.max(d))))
        });
    shard.chunks.push(Arc::new(Chunk { rows: run, batch, days }));
    Ok(())
}

/// Appends `run` as chunks of [`CHUNK_ROWS`] when it is longer than twice that (the first piece
/// keeps `lower`, the others start at their first row), else as one chunk.
fn push_split(def: &ViewDef, shard: &mut UserShard, lower: Arc<Row>, run: Vec<Arc<Row>>) -> ArrowResult<()> {
    if run.len() <= 2 * CHUNK_ROWS {
        return push(def, shard, lower, run);
    }
    let mut lower = Some(lower);
    for piece in run.chunks(CHUNK_ROWS) {
        let lo = lower.take().unwrap_or_else(|| piece[0].clone());
        push(def, shard, lo, piece.to_vec())?;
    }
    Ok(())
}

/// The user's new shard: `old`'s chunks not in `dirty` (none of their rows changed) are kept
/// (shared); the others are rebuilt from `rows` (the user's current multiplicities, whose rows
/// the new chunks share), split when they grow past 2 × [`CHUNK_ROWS`], dropped when empty.
fn rebuild(
    def: &ViewDef,
    old: Option<&UserShard>,
    rows: &BTreeMap<Arc<Row>, i64>,
    dirty: &BTreeSet<usize>,
) -> ArrowResult<UserShard> {
    let live = |r: &(&Arc<Row>, &i64)| *r.1 > 0;
    let mut shard = UserShard::default();
    let Some(old) = old.filter(|o| !o.chunks.is_empty()) else {
        let run: Vec<Arc<Row>> = rows.iter().filter(live).map(|(r, _)| r.clone()).collect();
        if let Some(lower) = run.first().cloned() {
            push_split(def, &mut shard, lower, run)?;
        }
        return Ok(shard);
    };
    for (i, chunk) in old.chunks.iter().enumerate() {
        let lower = old.lower[i].clone();
        if !dirty.contains(&i) {
            shard.len += chunk.rows.len();
            shard.lower.push(lower);
            shard.chunks.push(chunk.clone());
            continue;
        }
        let (lo, upper): (&Row, Option<&Row>) = (&lower, old.lower.get(i + 1).map(|u| &**u));
        let range = match (i, upper) {
            (0, None) => rows.range::<Row, _>(..),
            (0, Some(u)) => rows.range::<Row, _>(..u),
            (_, None) => rows.range::<Row, _>(lo..),
            (_, Some(u)) => rows.range::<Row, _>(lo..u),
        };
        let run: Vec<Arc<Row>> = range.filter(live).map(|(r, _)| r.clone()).collect();
        push_split(def, &mut shard, lower, run)?;
    }
    Ok(shard)
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

    /// A deterministic generator: `next(n)` is in `0..n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

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
        assert_eq!(s2.user("b").unwrap().rows().cloned().collect::<Vec<_>>(), vec![row("b", 2)]);
        assert_eq!(s1.user("b").unwrap().len(), 2, "old snapshot is immutable");
        store.apply(0, 4, vec![(row("b", 2), -1)]);
        assert!(store.snapshot(0).user("b").is_none());
    }

    /// Rebuilding the chunk a change falls in reuses the rows it already held: the rows that did
    /// not change are the same allocations in both snapshots (a publish copies pointers).
    #[test]
    fn a_rebuilt_chunk_shares_its_unchanged_rows() {
        let store = SnapshotStore::new([DEF]);
        store.apply(0, 2, (0..100).map(|n| (row("a", n), 1)).collect());
        let s1 = store.snapshot(0);
        store.apply(0, 3, vec![(row("a", 50), -1), (row("a", 1000), 1)]);
        let s2 = store.snapshot(0);
        let (c1, c2) = (&s1.user("a").unwrap().chunks()[0], &s2.user("a").unwrap().chunks()[0]);
        assert!(!Arc::ptr_eq(c1, c2), "the chunk holding the change is rebuilt");
        assert_eq!(c2.rows.len(), 100);
        let old: Vec<&Arc<Row>> = c1.rows.iter().filter(|r| r[1] != Datum::Int(50)).collect();
        assert_eq!(old.len(), 99);
        assert!(old.iter().zip(&c2.rows).all(|(a, b)| Arc::ptr_eq(a, b)), "unchanged rows are shared");
        assert_eq!(*c2.rows[99], row("a", 1000));
    }

    /// A range over a shard of many chunks returns exactly the rows a full scan would keep, for
    /// random bounds of every prefix length (equal bounds, empty ranges and bounds outside the
    /// rows included).
    #[test]
    fn a_range_is_a_filtered_scan() {
        const DEF3: ViewDef = ViewDef {
            name: "t3",
            columns: &[col("user_id", ColumnType::Str), col("m", ColumnType::Str), col("d", ColumnType::Date)],
            key_len: 3,
            route: Some("t3"),
            filters: &[],
            range_column: Some("d"),
            range_via: None,
        };
        let r3 = |m: &str, d: i32| vec![Datum::Str("a".into()), Datum::Str(m.into()), Datum::Date(d)];
        let store = SnapshotStore::new([DEF3]);
        let metrics = ["hr", "sleep", "steps"];
        let rows: Vec<Row> = metrics.iter().flat_map(|m| (0..400).map(move |d| r3(m, d * 2))).collect();
        store.apply(0, 2, rows.iter().map(|r| (r.clone(), 1)).collect());
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut check = |shard: &UserShard| {
            let mut bound = || -> Row {
                let m = ["a", "hr", "sleep", "steps", "z"][next(5) as usize];
                let mut b = r3(m, next(900) as i32 - 50);
                b.truncate(1 + next(3) as usize);
                b
            };
            for _ in 0..2_000 {
                let (lo, hi) = (bound(), bound());
                let want: Vec<&Row> =
                    shard.rows().filter(|r| r[..lo.len()] >= lo[..] && r[..hi.len()] <= hi[..]).collect();
                let got: Vec<&Row> = shard.range(&lo, &hi).collect();
                assert_eq!(got, want, "lo {lo:?} hi {hi:?}");
            }
        };
        let snap = store.snapshot(0);
        let shard = snap.user("a").expect("shard");
        assert!(shard.chunks().len() > 3, "the test needs several chunks");
        check(shard);
        // Retract the first chunks whole (every `hr` row) and every third `steps` row, add rows
        // between the old ones: chunks are rebuilt, merged and split, and lower bounds go stale.
        let mut updates: Vec<(Row, i64)> = (0..400).map(|d| (r3("hr", d * 2), -1)).collect();
        updates.extend((0..400).filter(|d| d % 3 == 0).map(|d| (r3("steps", d * 2), -1)));
        updates.extend((0..400).filter(|d| d % 5 == 0).map(|d| (r3("sleep", d * 2 + 1), 1)));
        store.apply(0, 3, updates);
        let snap = store.snapshot(0);
        let shard = snap.user("a").expect("shard");
        assert!(shard.rows().all(|r| r[1] != Datum::Str("hr".into())));
        check(shard);
        let (lo, hi) = (r3("steps", 100), r3("steps", 110));
        // 102 and 108 were retracted (days 51 and 54).
        let want: Vec<Row> = [100, 104, 106, 110].into_iter().map(|d| r3("steps", d)).collect();
        assert_eq!(shard.range(&lo, &hi).cloned().collect::<Vec<_>>(), want);
    }

    /// ADR 0014: recovery's internal times (frontiers up to the recovery epoch) publish nothing
    /// and claim no epoch; the first frontier past it publishes the sum of every update, the
    /// same snapshot as one apply of the consolidated history, with rows inserted and retracted
    /// between internal times gone and users whose rows all cancelled absent.
    #[test]
    fn recovery_states_are_held_back_until_the_recovery_epoch_passes() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut history: Vec<Vec<(Row, i64)>> = Vec::new();
        let mut model: BTreeMap<Row, i64> = BTreeMap::new();
        for _ in 0..12 {
            let mut updates = Vec::new();
            for _ in 0..200 {
                let user = ["a", "b", "c", "d"][next(4) as usize];
                let r = row(user, next(1500) as i64);
                let diff = if model.get(&r).copied().unwrap_or(0) > 0 && next(3) == 0 { -1 } else { 1 };
                if diff == 1 && model.contains_key(&r) {
                    continue;
                }
                *model.entry(r.clone()).or_default() += diff;
                model.retain(|_, c| *c != 0);
                updates.push((r, diff));
            }
            history.push(updates);
        }
        // "d-gone" is inserted early and retracted at a later internal time: absent at the end.
        history[0].push((row("d-gone", 7), 1));
        history[5].push((row("d-gone", 7), -1));

        let replayed = SnapshotStore::new([DEF]);
        replayed.set_recovery_epoch(40);
        let mut seen = replayed.watch(0);
        for (i, updates) in history.iter().enumerate() {
            replayed.apply(0, 1 + i as Epoch, updates.clone());
            let snap = replayed.snapshot(0);
            assert_eq!((snap.as_of, snap.row_count), (0, 0), "internal time {i}: nothing is published");
            assert!(!seen.has_changed().unwrap(), "internal time {i}: asOfEpoch does not move");
        }
        replayed.apply(0, 41, vec![]);
        let at_once = SnapshotStore::new([DEF]);
        at_once.set_recovery_epoch(40);
        at_once.apply(0, 41, model.iter().map(|(r, c)| (r.clone(), *c)).collect());

        let (got, want) = (replayed.snapshot(0), at_once.snapshot(0));
        assert_eq!((got.as_of, got.row_count), (40, model.len()));
        assert_eq!(*seen.borrow_and_update(), 40);
        assert!(got.user("d-gone").is_none());
        for user in ["a", "b", "c", "d"] {
            let rows = |s: &ViewSnapshot| s.user(user).map(|u| u.rows().cloned().collect::<Vec<_>>());
            assert_eq!(rows(&got), rows(&want), "user {user}");
            let batch_rows: usize = got.user(user).map_or(0, |u| u.batches().map(RecordBatch::num_rows).sum());
            assert_eq!(batch_rows, got.user(user).map_or(0, |u| u.len()));
        }
        // After recovery, updates publish as usual, from the shards recovery built.
        replayed.apply(0, 42, vec![(row("a", 5000), 1)]);
        assert_eq!(replayed.snapshot(0).as_of, 41);
        assert_eq!(replayed.snapshot(0).row_count, model.len() + 1);
    }

    /// Random inserts and retractions over users with long histories: every snapshot holds
    /// exactly the live rows, sorted, in chunks of at most 2 × CHUNK_ROWS; a change leaves the
    /// chunks away from it shared with the previous snapshot.
    #[test]
    fn chunks_follow_the_changes_and_match_a_model() {
        let store = SnapshotStore::new([DEF]);
        let mut model: BTreeMap<Row, i64> = BTreeMap::new();
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        let mut shared_seen = 0;
        for epoch in 1..=60_u64 {
            let mut updates = Vec::new();
            // Mostly appends at the end of history, some edits and retractions anywhere.
            for _ in 0..(if epoch < 5 { 900 } else { 40 }) {
                let user = ["a", "b", "c"][next(3) as usize];
                let n = if next(4) == 0 { next(4000) as i64 } else { 3000 + (epoch as i64) * 50 + next(50) as i64 };
                let r = row(user, n);
                let present = model.get(&r).copied().unwrap_or(0) > 0;
                let diff = if present && next(2) == 0 {
                    -1
                } else if present {
                    0
                } else {
                    1
                };
                if diff != 0 {
                    *model.entry(r.clone()).or_default() += diff;
                    if model[&r] == 0 {
                        model.remove(&r);
                    }
                    updates.push((r, diff));
                }
            }
            let before = store.snapshot(0);
            store.apply(0, epoch + 1, updates.clone());
            let after = store.snapshot(0);
            assert_eq!(after.row_count, model.len());
            for user in ["a", "b", "c"] {
                let want: Vec<Row> = model.keys().filter(|r| r[0] == Datum::Str(user.into())).cloned().collect();
                let got: Vec<Row> = after.user(user).map(|s| s.rows().cloned().collect()).unwrap_or_default();
                assert_eq!(got, want, "epoch {epoch}, user {user}");
                let Some(shard) = after.user(user) else { continue };
                let batch_rows: usize = shard.batches().map(RecordBatch::num_rows).sum();
                assert_eq!(batch_rows, want.len());
                assert!(shard.chunks().iter().all(|c| !c.rows.is_empty() && c.rows.len() <= 2 * CHUNK_ROWS));
                // Chunks holding no changed row are the previous snapshot's, shared.
                if let Some(prev) = before.user(user) {
                    let changed: BTreeSet<&Row> =
                        updates.iter().map(|(r, _)| r).filter(|r| r[0] == Datum::Str(user.into())).collect();
                    let shared =
                        shard.chunks().iter().filter(|c| prev.chunks().iter().any(|p| Arc::ptr_eq(p, c))).count();
                    // A changed row dirties at most one old chunk, rebuilt into at most three.
                    let rebuilt = shard.chunks().len() - shared;
                    assert!(
                        rebuilt <= 3 * changed.len(),
                        "epoch {epoch}: {rebuilt} chunks rebuilt for {} changed rows",
                        changed.len()
                    );
                    shared_seen += shared;
                }
            }
        }
        assert!(shared_seen > 0, "no chunk was ever shared between snapshots");
    }
}
