//! Persisted view snapshots (issue 14 §3): each view's live snapshot is written in the background
//! as an Arrow IPC file, and loaded at the next start, so that reads are served within seconds of
//! a restart while the dataflow rehydrates.
//!
//! ```text
//!  {data_dir}/snapshots/{view}.arrow   Arrow IPC file, the view's arrow_schema(), its rows in
//!                                      (user, key) order; schema metadata:
//!                                        vitalflow.view            the view's SQL name
//!                                        vitalflow.asOfEpoch       every epoch ≤ it is reflected
//!                                        vitalflow.storeId         the store it was computed from
//!                                        vitalflow.snapshotFormat  "1"
//! ```
//!
//! - Written off the ack path, every `interval` for views whose `asOfEpoch` advanced, and at a
//!   graceful stop: to a temporary file, fsynced, renamed over the old one, the directory fsynced.
//!   A crash leaves the old file or the new one, never half of one. Only the rename holds the
//!   persister's lock, so an erasure never waits for a file being written.
//! - Loaded at start before the dataflow replays the store. A file is used only if it names this
//!   view and this store, has the view's schema, and claims no epoch past the store's last
//!   commit; anything else (missing, corrupt, another version) only means that view waits for
//!   rehydration. Reads of a persisted snapshot carry its `asOfEpoch`, and `pending: true` for
//!   users with newer input.
//! - Erasure ([`Persister::invalidate`], called by the writer before an erasure commits) deletes
//!   every file and writes none again until the views reflect the erasure's epoch: a persisted
//!   snapshot never holds rows of a user erased after it was written.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use vitalflow_schemas::{Epoch, Row, ViewDef};

use crate::SnapshotStore;
use crate::snapshot::{Served, ViewSnapshot};

/// The on-disk format version; a file of another version is ignored.
pub const FORMAT: &str = "1";
const META_VIEW: &str = "vitalflow.view";
const META_AS_OF: &str = "vitalflow.asOfEpoch";
const META_STORE: &str = "vitalflow.storeId";
const META_FORMAT: &str = "vitalflow.snapshotFormat";
/// Rows per record batch in a file (chunks are concatenated up to this).
const FILE_BATCH_ROWS: usize = 16_384;

/// What loading one view's file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Served as of this epoch, with this many rows.
    Served { as_of: Epoch, rows: usize },
    /// No file: the view waits for rehydration.
    Missing,
    /// A file that cannot be used (why); the view waits for rehydration.
    Unusable(String),
}

/// Writes and loads the persisted snapshots of one store's views.
pub struct Persister {
    dir: PathBuf,
    store_id: String,
    state: Mutex<PersistState>,
}

struct PersistState {
    /// No file is written for a snapshot older than this (the epoch of the last erasure).
    min_as_of: Epoch,
    /// `asOfEpoch` of each view's file on disk.
    written: HashMap<&'static str, Epoch>,
}

impl Persister {
    /// Persisted snapshots of the store `store_id`, in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, store_id: impl Into<String>) -> std::io::Result<Persister> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        // A `.tmp` left by a crash mid-write is garbage.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.path().extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Persister {
            dir,
            store_id: store_id.into(),
            state: Mutex::new(PersistState { min_as_of: 0, written: HashMap::new() }),
        })
    }

    /// The file of view `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.arrow"))
    }

    /// Loads every view's file into `store` (as [`SnapshotStore::install_persisted`]); a file
    /// claiming an epoch past `last_epoch` (the store's last commit), or older than
    /// `last_erasure` (the store's last user erasure: the file may hold the user's rows, say a
    /// file restored from a backup), is unusable, as is a corrupt one or another store's. An
    /// unusable file is deleted: it can never become usable, and a future epoch's file left in
    /// place would pass the check once a restored, older store has committed that many epochs.
    pub fn load(&self, store: &SnapshotStore, last_epoch: Epoch, last_erasure: Epoch) -> Vec<(&'static str, Loaded)> {
        let mut out = Vec::with_capacity(store.len());
        for view in 0..store.len() {
            let def = *store.def(view);
            let path = self.path(def.name);
            let loaded = match read_file(&path, &def, &self.store_id, last_epoch) {
                Ok(None) => Loaded::Missing,
                Ok(Some((as_of, _))) if as_of < last_erasure => Loaded::Unusable(format!(
                    "written as of epoch {as_of}, before the erasure at epoch {last_erasure}: it may hold the erased user's rows"
                )),
                Ok(Some((as_of, rows))) => match store.install_persisted(view, as_of, rows) {
                    Ok(rows) => {
                        self.state.lock().written.insert(def.name, as_of);
                        Loaded::Served { as_of, rows }
                    }
                    Err(e) => Loaded::Unusable(e),
                },
                Err(e) => Loaded::Unusable(e),
            };
            if let Loaded::Unusable(why) = &loaded {
                // Never usable later either: a future epoch belongs to another history (a store
                // restored from an older backup), even once this store passes that epoch.
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(view = def.name, error = %e, why = %why, "could not delete an unusable snapshot file");
                }
            }
            out.push((def.name, loaded));
        }
        out
    }

    /// Writes the live snapshot of every view whose `asOfEpoch` advanced since its file was
    /// written (views still serving a persisted snapshot are skipped). Returns the views written.
    /// Errors: the first I/O error (the other views are still tried; the old files stay).
    pub fn persist(&self, store: &SnapshotStore) -> Result<usize, String> {
        let mut written = 0;
        let mut first_error = None;
        for view in 0..store.len() {
            if store.served(view) == Served::Persisted {
                continue;
            }
            let def = *store.def(view);
            let snap = store.live_snapshot(view);
            let wanted = |state: &PersistState| {
                snap.as_of > 0
                    && snap.as_of >= state.min_as_of
                    && state.written.get(def.name).is_none_or(|w| *w < snap.as_of)
            };
            if !wanted(&self.state.lock()) {
                continue;
            }
            // The file is written without the lock (an erasure does not wait for it); the rename
            // happens under the lock, and only if no erasure came in meanwhile.
            let tmp = self.path(def.name).with_extension("tmp");
            let outcome = write_tmp(&tmp, &def, &snap, &self.store_id).and_then(|()| {
                let mut state = self.state.lock();
                if !wanted(&state) {
                    let _ = std::fs::remove_file(&tmp);
                    return Ok(false);
                }
                std::fs::rename(&tmp, self.path(def.name)).map_err(|e| e.to_string())?;
                sync_dir(&self.dir).map_err(|e| e.to_string())?;
                state.written.insert(def.name, snap.as_of);
                Ok(true)
            });
            match outcome {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    first_error.get_or_insert(format!("{}: {e}", def.name));
                }
            }
        }
        first_error.map_or(Ok(written), Err)
    }

    /// Before an erasure that commits as `epoch`: deletes every file, and writes none again for
    /// a snapshot older than `epoch`. Errors: a file that cannot be deleted (the erasure is then
    /// refused).
    pub fn invalidate(&self, epoch: Epoch) -> Result<(), String> {
        let mut state = self.state.lock();
        state.min_as_of = state.min_as_of.max(epoch);
        state.written.clear();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            // A `.tmp` being written belongs to `persist`, which discards it (its rename is refused).
            if path.extension().is_some_and(|x| x == "arrow") {
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        sync_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `snap` to the file `tmp` and fsyncs it (the caller renames it into place).
fn write_tmp(tmp: &Path, def: &ViewDef, snap: &ViewSnapshot, store_id: &str) -> Result<(), String> {
    let metadata = HashMap::from([
        (META_VIEW.to_owned(), def.name.to_owned()),
        (META_AS_OF.to_owned(), snap.as_of.to_string()),
        (META_STORE.to_owned(), store_id.to_owned()),
        (META_FORMAT.to_owned(), FORMAT.to_owned()),
    ]);
    let schema = def.arrow_schema();
    let file_schema = std::sync::Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
    let result = (|| -> Result<(), String> {
        let file = File::create(tmp).map_err(|e| e.to_string())?;
        let mut w = FileWriter::try_new(BufWriter::new(file), &file_schema).map_err(|e| e.to_string())?;
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        let flush = |pending: &mut Vec<RecordBatch>, w: &mut FileWriter<BufWriter<File>>| -> Result<(), String> {
            if pending.is_empty() {
                return Ok(());
            }
            let batch = concat_batches(&schema, pending.iter()).map_err(|e| e.to_string())?;
            let batch = batch.with_schema(file_schema.clone()).map_err(|e| e.to_string())?;
            pending.clear();
            w.write(&batch).map_err(|e| e.to_string())
        };
        for bucket in &snap.buckets {
            for shard in bucket.users.values() {
                for batch in shard.batches() {
                    pending_rows += batch.num_rows();
                    pending.push(batch.clone());
                    if pending_rows >= FILE_BATCH_ROWS {
                        flush(&mut pending, &mut w)?;
                        pending_rows = 0;
                    }
                }
            }
        }
        flush(&mut pending, &mut w)?;
        w.finish().map_err(|e| e.to_string())?;
        let file = w.into_inner().map_err(|e| e.to_string())?.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// The rows and `asOfEpoch` of a view's file; `None` when there is none.
fn read_file(
    path: &Path,
    def: &ViewDef,
    store_id: &str,
    last_epoch: Epoch,
) -> Result<Option<(Epoch, Vec<Row>)>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let reader = FileReader::try_new(std::io::BufReader::new(file), None).map_err(|e| e.to_string())?;
    let meta = reader.schema().metadata().clone();
    let get = |k: &str| meta.get(k).map(String::as_str);
    if get(META_FORMAT) != Some(FORMAT) {
        return Err(format!("snapshot format {:?}, not {FORMAT}", get(META_FORMAT)));
    }
    if get(META_VIEW) != Some(def.name) {
        return Err(format!("the file is of view {:?}", get(META_VIEW)));
    }
    if get(META_STORE) != Some(store_id) {
        return Err("the file was computed from another store".into());
    }
    let as_of: Epoch = get(META_AS_OF).and_then(|s| s.parse().ok()).ok_or("no asOfEpoch")?;
    if as_of > last_epoch {
        return Err(format!("asOfEpoch {as_of} is past the store's last epoch {last_epoch}"));
    }
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        rows.extend(def.rows_from_record_batch(&batch).map_err(|e| e.to_string())?);
    }
    Ok(Some((as_of, rows)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalflow_schemas::Datum;
    use vitalflow_schemas::view::{ColumnType, col};

    const DEF: ViewDef = ViewDef {
        name: "t",
        columns: &[col("user_id", ColumnType::Str), col("n", ColumnType::Int), col("x", ColumnType::Float)],
        key_len: 2,
        route: Some("t"),
        filters: &[],
        range_column: None,
        range_via: None,
    };

    fn row(u: &str, n: i64) -> Row {
        vec![Datum::Str(u.into()), Datum::Int(n), Datum::float(Some(n as f64 / 2.0))]
    }

    /// A store with 3 users × 700 rows (several chunks each) published as of epoch 4.
    fn published() -> SnapshotStore {
        let store = SnapshotStore::new([DEF]);
        let rows = ["a", "b", "c"].iter().flat_map(|u| (0..700).map(|n| (row(u, n), 1))).collect();
        store.apply(0, 5, rows);
        store
    }

    fn rows_of(store: &SnapshotStore) -> Vec<Row> {
        let snap = store.snapshot(0);
        let mut rows: Vec<Row> =
            snap.buckets.iter().flat_map(|b| b.users.values().flat_map(|s| s.rows().cloned())).collect();
        rows.sort();
        rows
    }

    #[test]
    fn a_persisted_snapshot_is_served_until_the_live_one_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = published();
        let p = Persister::new(dir.path(), "store-1").unwrap();
        assert_eq!(p.persist(&store), Ok(1));
        assert_eq!(p.persist(&store), Ok(0), "nothing advanced, nothing written");

        let next = SnapshotStore::new([DEF]);
        next.set_recovery_epoch(9);
        let p2 = Persister::new(dir.path(), "store-1").unwrap();
        assert_eq!(p2.load(&next, 9, 0), vec![("t", Loaded::Served { as_of: 4, rows: 2100 })]);
        assert_eq!((next.served(0), next.snapshot(0).as_of), (Served::Persisted, 4));
        assert_eq!(rows_of(&next), rows_of(&store));
        // The frontier reaching the recovery epoch claims nothing: the persisted one stays.
        next.apply(0, 9, vec![(row("a", 1), 1)]);
        assert_eq!((next.served(0), next.snapshot(0).as_of), (Served::Persisted, 4));
        assert_eq!(next.live_snapshot(0).as_of, 0, "a live snapshot claims no epoch during recovery");
        next.apply(0, 10, vec![(row("z", 1), 1)]);
        assert_eq!((next.served(0), next.snapshot(0).as_of), (Served::Live, 9));
        assert_eq!(rows_of(&next), vec![row("a", 1), row("z", 1)]);
    }

    #[test]
    fn unusable_files_leave_the_view_to_rehydration_and_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = published();
        let path = dir.path().join("t.arrow");
        let write = || Persister::new(dir.path(), "store-1").unwrap().persist(&store).unwrap();
        // Unusable now means unusable for good (a future epoch stays another history's even once
        // the store passes it), so the file is deleted.
        let unusable = |store_id: &str, last_epoch: Epoch, last_erasure: Epoch| {
            let next = SnapshotStore::new([DEF]);
            let loaded = Persister::new(dir.path(), store_id).unwrap().load(&next, last_epoch, last_erasure);
            assert_eq!((next.served(0), next.snapshot(0).as_of), (Served::Live, 0));
            matches!(loaded[0].1, Loaded::Unusable(_)) && !path.exists()
        };
        write();
        assert!(unusable("store-2", 9, 0), "another store's file");
        write();
        assert!(unusable("store-1", 3, 0), "a file claiming an epoch the store has not committed");
        write();
        assert!(unusable("store-1", 9, 5), "a file older than the last erasure");
        write();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(unusable("store-1", 9, 0), "a truncated file");
        std::fs::write(&path, b"not arrow").unwrap();
        assert!(unusable("store-1", 9, 0), "garbage");
        let next = SnapshotStore::new([DEF]);
        assert_eq!(Persister::new(dir.path(), "store-1").unwrap().load(&next, 9, 0), vec![("t", Loaded::Missing)]);
    }

    #[test]
    fn invalidation_deletes_the_files_and_refuses_older_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = published();
        let p = Persister::new(dir.path(), "store-1").unwrap();
        p.persist(&store).unwrap();
        assert!(p.path("t").exists());
        p.invalidate(6).unwrap();
        assert!(!p.path("t").exists());
        assert_eq!(p.persist(&store), Ok(0), "a snapshot older than the erasure is never written");
        store.apply(0, 7, vec![(row("a", 0), -1)]);
        assert_eq!(p.persist(&store), Ok(1), "as of 6, it reflects the erasure");
        assert!(p.path("t").exists());
    }
}
