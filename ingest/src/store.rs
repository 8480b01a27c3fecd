//! The durable store: redb (ACID, copy-on-write B-trees, fsync on commit). See
//! `docs/adr/0001-durable-store.md`. Tables hold the current rows, tombstones, the record of
//! requests (idempotency), profiles and the epoch counter, so that a restart can replay the current
//! state into the dataflow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use vitalflow_schemas::domain::{Product, Session};
use vitalflow_schemas::wire::{BatchUpsertResponse, HASH_SCHEME_JCS, payload_hash};
use vitalflow_schemas::{Epoch, SampleOf, SampleRef, StoredSample, UserProfile, Zone};

/// `(userId, sourceId, sourceRecordId)` → bincode `StoredSample`.
pub(crate) const SAMPLES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("samples");
/// `(userId, sourceId, sourceRecordId)` → epoch of the deletion.
pub(crate) const TOMBSTONES: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("tombstones");
/// `(userId, requestId)` → JSON [`RequestRecord`].
pub(crate) const REQUESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("requests");
/// `(storedAtMs, scope, requestId)` → (): request records by age, for retention.
pub(crate) const REQUEST_TIMES: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("request_times");
/// `(storedAtMs, userId, sourceId, sourceRecordId)` → (): tombstones by age, for retention.
pub(crate) const TOMBSTONE_TIMES: TableDefinition<(i64, &str, &str, &str), ()> =
    TableDefinition::new("tombstone_times");
/// `(scope, requestId)` → `storedAtMs` of its entry in [`REQUEST_TIMES`]: lets erasure find the
/// entry, and lets pruning tell a stale entry from the current one of a re-recorded request.
pub(crate) const REQUEST_STAMPS: TableDefinition<(&str, &str), i64> = TableDefinition::new("request_stamps");
/// `(userId, sourceId, sourceRecordId)` → `storedAtMs` of its entry in [`TOMBSTONE_TIMES`] (as
/// [`REQUEST_STAMPS`]).
pub(crate) const TOMBSTONE_STAMPS: TableDefinition<(&str, &str, &str), i64> = TableDefinition::new("tombstone_stamps");
/// `(userId, sessionId)` → JSON `Session`.
pub(crate) const SESSIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sessions");
/// `productId` → JSON `Product`.
pub(crate) const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
/// `userId` → JSON `UserProfile`.
pub(crate) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// `userId` → newest epoch that changed the user's data.
pub(crate) const USER_EPOCHS: TableDefinition<&str, u64> = TableDefinition::new("user_epochs");
/// A source's position key (`kafka/{topic}/{partition}`, `outbox/{table}`) → the next position to
/// consume. Written in the same transaction as the rows consumed up to it.
pub(crate) const SOURCE_POSITIONS: TableDefinition<&str, i64> = TableDefinition::new("source_positions");
/// `"epoch"` → newest committed epoch.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const EPOCH_KEY: &str = "epoch";
/// `"last_erasure_epoch"` → the epoch of the last user erasure (no user id): anything derived
/// from the store before it (a persisted view snapshot) may hold an erased user's rows.
pub(crate) const LAST_ERASURE_KEY: &str = "last_erasure_epoch";
/// `"format_version"` → the layout of this store's tables; see [`FORMAT_VERSION`].
const FORMAT_KEY: &str = "format_version";
/// The store layout this build reads and writes. A store with another version is refused at open
/// (a newer one was written by a newer vitalflow; an older one needs a migration).
pub const FORMAT_VERSION: u64 = 1;

/// The store's default page cache: 64 MiB (redb's own default is 1 GiB, which after a restart's
/// replay holds that much of the file resident for no reader: the views keep their own state, and
/// the writer's lookups touch a few pages per request). Configurable as `store_cache_mb`.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// `"store_id"` → a random identity given to the store when it is created (sinks use it to tell
/// their own earlier writes from another store's).
const STORE_ID_KEY: &str = "store_id";

/// What the store remembers of a processed request (DOMAIN.md I1).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestRecord<R = BatchUpsertResponse> {
    pub hash: String,
    /// The payload-hash scheme `hash` was computed under; absent in records stored before schemes
    /// were numbered, which are all scheme 1 (JCS).
    #[serde(default = "jcs_scheme")]
    pub scheme: u32,
    pub response: R,
}

fn jcs_scheme() -> u32 {
    HASH_SCHEME_JCS
}

/// A request's payload hash (I1) under the scheme its path uses, and the body it came from, so
/// that a record stored under another scheme (an older vitalflow's) is compared under that
/// scheme: an upgrade never turns a replay into `IDEMPOTENCY_KEY_REUSED`.
#[derive(Clone, Debug)]
pub struct PayloadHash {
    pub scheme: u32,
    pub hex: String,
    /// The request body as received; read only to recompute a scheme-1 hash.
    pub body: axum::body::Bytes,
}

impl PayloadHash {
    /// Whether a stored `(scheme, hash)` is this payload's.
    pub fn matches(&self, scheme: u32, hash: &str) -> bool {
        if scheme == self.scheme {
            hash == self.hex
        } else if scheme == HASH_SCHEME_JCS {
            // Duplicate keys read last-wins here too, as scheme 1 always read them.
            serde_json::from_slice::<serde_json::Value>(&self.body).is_ok_and(|v| payload_hash(&v) == hash)
        } else {
            false
        }
    }
}

/// Gives every retention index row written before stamps existed a stamp (its newest time) and
/// drops the older rows of the same key, once: afterwards erasure finds every row naming a user,
/// and pruning never cuts a record short at a stale row. Runs only while the stamp tables are
/// empty and the time tables are not (a store from before this version).
fn stamp_legacy_retention_rows(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    use redb::ReadableTableMetadata;
    let mut stamps = txn.open_table(REQUEST_STAMPS)?;
    let mut times = txn.open_table(REQUEST_TIMES)?;
    if stamps.is_empty()? && !times.is_empty()? {
        let mut newest: HashMap<(String, String), i64> = HashMap::new();
        let mut stale: Vec<(i64, String, String)> = Vec::new();
        for e in times.iter()? {
            let (k, _) = e?;
            let (t, scope, id) = k.value();
            let key = (scope.to_owned(), id.to_owned());
            match newest.insert(key, t) {
                Some(old) if old > t => {
                    newest.insert((scope.to_owned(), id.to_owned()), old);
                    stale.push((t, scope.to_owned(), id.to_owned()));
                }
                Some(old) => stale.push((old, scope.to_owned(), id.to_owned())),
                None => {}
            }
        }
        for (t, scope, id) in &stale {
            times.remove((*t, scope.as_str(), id.as_str()))?;
        }
        for ((scope, id), t) in &newest {
            stamps.insert((scope.as_str(), id.as_str()), *t)?;
        }
    }
    let mut stamps = txn.open_table(TOMBSTONE_STAMPS)?;
    let mut times = txn.open_table(TOMBSTONE_TIMES)?;
    if stamps.is_empty()? && !times.is_empty()? {
        type Key = (String, String, String);
        let mut newest: HashMap<Key, i64> = HashMap::new();
        let mut stale: Vec<(i64, Key)> = Vec::new();
        for e in times.iter()? {
            let (k, _) = e?;
            let (t, u, src, rec) = k.value();
            let key = (u.to_owned(), src.to_owned(), rec.to_owned());
            match newest.insert(key.clone(), t) {
                Some(old) if old > t => {
                    newest.insert(key.clone(), old);
                    stale.push((t, key));
                }
                Some(old) => stale.push((old, key)),
                None => {}
            }
        }
        for (t, (u, src, rec)) in &stale {
            times.remove((*t, u.as_str(), src.as_str(), rec.as_str()))?;
        }
        for ((u, src, rec), t) in &newest {
            stamps.insert((u.as_str(), src.as_str(), rec.as_str()), *t)?;
        }
    }
    Ok(())
}

/// Errors of the store (redb's).
pub type StoreError = redb::Error;

/// The durable store.
pub struct Store {
    pub(crate) db: Database,
    path: PathBuf,
}

/// Test-only fault hook for storage failures: while the file named by `VITALFLOW_FAULT_STORAGE`
/// exists, every commit fails as a full disk or a failed fsync would (nothing is written). Unset
/// in production; tests use it where the machine cannot mount a size-limited filesystem.
pub(crate) fn fault_point() -> Result<(), crate::IngestError> {
    match std::env::var_os("VITALFLOW_FAULT_STORAGE") {
        Some(path) if Path::new(&path).exists() => {
            Err(crate::IngestError::Storage("injected storage fault (VITALFLOW_FAULT_STORAGE)".into()))
        }
        _ => Ok(()),
    }
}

/// Whether the test-only fault hooks are on (`VITALFLOW_FAULT_INJECTION=1`).
pub(crate) fn fault_injection_enabled() -> bool {
    std::env::var_os("VITALFLOW_FAULT_INJECTION").is_some_and(|v| v == "1")
}

impl Store {
    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or creates) the store in `dir`, with a page cache of [`DEFAULT_CACHE_BYTES`].
    ///
    /// Errors: as [`Store::open_with_cache`].
    pub fn open(dir: &Path) -> Result<Store, redb::Error> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir`, keeping at most `cache_bytes` of its pages in memory
    /// (pages beyond it are read through the operating system's page cache).
    ///
    /// Errors: any I/O or redb error, a corrupted file, and a store whose format version is not
    /// [`FORMAT_VERSION`] (`Corrupted` with a message saying which version it has).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Store, redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let path = dir.join("vitalflow.redb");
        let db = Database::builder().set_cache_size(cache_bytes).create(&path)?;
        {
            // A store that has data but no version (written before versions existed) is version 1.
            let txn = db.begin_read()?;
            if let Ok(meta) = txn.open_table(META)
                && let Some(v) = meta.get(FORMAT_KEY)?
                && v.value() != FORMAT_VERSION
            {
                let found = v.value();
                let why = if found > FORMAT_VERSION { "a newer vitalflow wrote it" } else { "it needs a migration" };
                return Err(redb::Error::Corrupted(format!(
                    "{} has store format version {found}; this vitalflow reads version {FORMAT_VERSION} ({why})",
                    path.display()
                )));
            }
        }
        let txn = db.begin_write()?;
        {
            txn.open_table(SAMPLES)?;
            txn.open_table(TOMBSTONES)?;
            txn.open_table(REQUESTS)?;
            txn.open_table(REQUEST_TIMES)?;
            txn.open_table(TOMBSTONE_TIMES)?;
            txn.open_table(REQUEST_STAMPS)?;
            txn.open_table(TOMBSTONE_STAMPS)?;
            txn.open_table(PROFILES)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(PRODUCTS)?;
            txn.open_table(USER_EPOCHS)?;
            let mut meta = txn.open_table(META)?;
            if meta.get(STORE_ID_KEY)?.is_none() {
                meta.insert(STORE_ID_KEY, new_store_id())?;
            }
            if meta.get(FORMAT_KEY)?.is_none() {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)?;
            }
            txn.open_table(SOURCE_POSITIONS)?;
            stamp_legacy_retention_rows(&txn)?;
        }
        txn.commit()?;
        Ok(Store { db, path })
    }

    /// Test-only: writes `version` as the store's format version (to show that an unknown
    /// version is refused at the next open).
    pub fn set_format_version(&self, version: u64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(FORMAT_KEY, version)?;
        txn.commit()?;
        Ok(())
    }

    /// The newest committed epoch (0 for a new store).
    pub fn last_epoch(&self) -> Result<Epoch, redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(EPOCH_KEY)?.map_or(0, |v| v.value()))
    }

    /// The epoch of the last user erasure; 0 if none was recorded.
    pub fn last_erasure_epoch(&self) -> Result<Epoch, redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(LAST_ERASURE_KEY)?.map_or(0, |v| v.value()))
    }

    /// The store's identity (fixed when it was created).
    pub fn store_id(&self) -> Result<String, redb::Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(format!("{:016x}", meta.get(STORE_ID_KEY)?.map_or(0, |v| v.value())))
    }

    /// Every source position (key → next position to consume).
    pub fn source_positions(&self) -> Result<HashMap<String, i64>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SOURCE_POSITIONS)?;
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    /// Each user's newest epoch that changed their data.
    pub fn user_epochs(&self) -> Result<HashMap<String, Epoch>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USER_EPOCHS)?;
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    /// Calls `f` with every current sample, read in place (issue 13 §6, ADR 0012): every string
    /// borrows the store's page (the metadata and platform are checked, never copied), and a run of
    /// rows in one zone parses the zone once. Recovery interns each row straight into the dataflow's records
    /// and sends them in bounded chunks, so no `Sample` is built on the way.
    ///
    /// Errors: a read error, an undecodable sample (`Corrupted`: recovery fails closed rather
    /// than serve partial views), or the first error `f` returns (`Corrupted` with its message).
    pub fn scan_samples(&self, mut f: impl FnMut(SampleRef<'_>) -> Result<(), String>) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SAMPLES)?;
        let mut zones = ZoneCache::default();
        let mut total = 0;
        for entry in table.iter()? {
            let (k, v) = entry?;
            let Some(sample) = decode_head(v.value(), &mut zones) else {
                let (_, source, _) = k.value();
                return Err(redb::Error::Corrupted(format!("undecodable stored sample (source '{source}')")));
            };
            f(sample).map_err(redb::Error::Corrupted)?;
            total += 1;
        }
        Ok(total)
    }

    /// Every stored profile.
    pub fn profiles(&self) -> Result<Vec<UserProfile>, redb::Error> {
        self.json_values(PROFILES)
    }

    /// Every stored session.
    pub fn sessions(&self) -> Result<Vec<Session>, redb::Error> {
        self.json_values(SESSIONS)
    }

    /// Every stored product.
    pub fn products(&self) -> Result<Vec<Product>, redb::Error> {
        self.json_values(PRODUCTS)
    }

    fn json_values<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(def)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            match serde_json::from_slice(v.value()) {
                Ok(x) => out.push(x),
                Err(e) => {
                    return Err(redb::Error::Corrupted(format!("undecodable record in table {}: {e}", def.name())));
                }
            }
        }
        Ok(out)
    }
}

fn new_store_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// A stored row's bytes read in place: a [`StoredSample`] is encoded field by field (bincode), so
/// these fields decode the same bytes, with every string borrowed. Both the writer's owned decode
/// ([`decode_sample`]) and recovery's ([`decode_head`]) go through it.
#[derive(Deserialize)]
struct StoredHead<'a> {
    #[serde(borrow)]
    sample: SampleHead<'a>,
    platform: Option<&'a str>,
    metadata: &'a str,
    sync_version: Option<i64>,
}

/// A stored row's sample with the identifiers and the zone's name borrowed.
type SampleHead<'a> = SampleOf<&'a str, &'a str>;

/// The zone of the previous row, by name: a user's rows are stored together and mostly share one
/// zone, so a scan parses each run's zone once.
#[derive(Default)]
struct ZoneCache {
    last: Option<(String, Zone)>,
}

impl ZoneCache {
    fn parse(&mut self, name: &str) -> Option<Zone> {
        match &self.last {
            Some((n, z)) if n == name => Some(*z),
            _ => {
                let z = Zone::parse(name)?;
                self.last = Some((name.to_owned(), z));
                Some(z)
            }
        }
    }
}

/// A stored row read in place, with its parsed zone; `None` (logged) for bytes that are not a
/// stored sample: they do not decode (bounds-checked: a corrupted length fails instead of
/// allocating), the zone is unknown, or the value is not finite (validation refuses those, so
/// only corruption stores one).
fn decode_row<'a>(bytes: &'a [u8], zones: &mut ZoneCache) -> Option<(StoredHead<'a>, Zone)> {
    let row: StoredHead<'a> = match bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard()) {
        Ok((row, _)) => row,
        Err(e) => {
            tracing::error!(error = %e, "undecodable stored sample");
            return None;
        }
    };
    let Some(zone) = zones.parse(row.sample.zone) else {
        tracing::error!(zone = row.sample.zone, "stored sample with an unknown zone");
        return None;
    };
    if row.sample.value.is_some_and(|v| !v.0.is_finite()) {
        tracing::error!("stored sample with a non-finite value");
        return None;
    }
    Some((row, zone))
}

/// A stored row's sample, read in place (recovery); `None` as [`decode_row`].
fn decode_head<'a>(bytes: &'a [u8], zones: &mut ZoneCache) -> Option<SampleRef<'a>> {
    let (row, zone) = decode_row(bytes, zones)?;
    Some(row.sample.map(|id| id, |_| zone))
}

pub(crate) fn encode_sample(s: &StoredSample) -> Vec<u8> {
    bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap_or_default()
}

/// A stored row as an owned [`StoredSample`] (the writer); `None` as [`decode_row`], so the
/// writer and recovery accept exactly the same rows.
pub(crate) fn decode_sample(bytes: &[u8]) -> Option<StoredSample> {
    let (row, zone) = decode_row(bytes, &mut ZoneCache::default())?;
    Some(StoredSample {
        sample: row.sample.map(str::to_owned, |_| zone),
        platform: row.platform.map(str::to_owned),
        metadata: row.metadata.to_owned(),
        sync_version: row.sync_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalflow_schemas::sleep::SleepStage;
    use vitalflow_schemas::{Metric, OrdF64, SourceClass};

    /// Recovery's in-place read gives every field of the stored sample, whatever follows it in
    /// the row, for each kind of zone, value and category.
    #[test]
    fn a_stored_row_reads_in_place_as_its_sample() {
        use vitalflow_schemas::Sample;
        let base = Sample {
            user_id: "u-é".into(),
            source_id: "com.apple.health.7F3A".into(),
            source_record_id: "2F0C8D7E-rec".into(),
            metric: Metric::HeartRate,
            start_ms: 1_717_200_000_123,
            end_ms: 1_717_200_000_123,
            value: Some(OrdF64(72.5)),
            category: None,
            source_class: SourceClass::Watch,
            zone: Zone::parse("America/New_York").expect("zone"),
        };
        let sleep = Sample {
            metric: Metric::SleepAnalysis,
            end_ms: 1_717_203_600_000,
            value: None,
            category: Some(SleepStage::Deep),
            zone: Zone::parse("+05:45").expect("zone"),
            ..base.clone()
        };
        let negative = Sample { start_ms: -5, end_ms: -5, value: Some(OrdF64(-0.0)), zone: Zone::UTC, ..base.clone() };
        let mut zones = ZoneCache::default();
        for (sample, platform, metadata) in [
            (&base, Some("ios".to_owned()), r#"{"HKMetadataKeySyncVersion":3}"#.to_owned()),
            (&sleep, None, String::new()),
            (&negative, Some("android".to_owned()), "x".repeat(5_000)),
            (&base, None, "{}".to_owned()),
        ] {
            let stored = StoredSample { sample: sample.clone(), platform, metadata, sync_version: Some(3) };
            let bytes = encode_sample(&stored);
            assert_eq!(decode_head(&bytes, &mut zones), Some(SampleRef::from(sample)));
            assert!(decode_head(&bytes[..bytes.len().min(20)], &mut zones).is_none());
            // A row whose end is cut is refused by both decoders, so recovery and the writer
            // agree on which rows exist.
            let cut = &bytes[..bytes.len() - 1];
            assert!(decode_head(cut, &mut zones).is_none() && decode_sample(cut).is_none());
        }
        // Metadata that is not UTF-8 ("ab" → "\xFFb", then the sync version's `None` byte).
        let stored = StoredSample { sample: base.clone(), platform: None, metadata: "ab".into(), sync_version: None };
        let mut bytes = encode_sample(&stored);
        let at = bytes.len() - 3;
        assert_eq!(bytes[at], b'a');
        bytes[at] = 0xFF;
        assert!(decode_head(&bytes, &mut zones).is_none() && decode_sample(&bytes).is_none());
        // A corrupted length prefix (the metadata's, one varint byte: 2) is refused, not allocated.
        // (Metadata itself has no size limit here: `max_metadata_bytes` is configurable.)
        let mut huge = encode_sample(&stored);
        let len_at = huge.len() - 4;
        assert_eq!(huge[len_at], 2);
        huge.splice(len_at..=len_at, [0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(decode_head(&huge, &mut zones).is_none() && decode_sample(&huge).is_none());
        // A value validation would have refused (only corruption stores one) is refused by both.
        for bad in [f64::NAN, f64::INFINITY] {
            let row = StoredSample { sample: Sample { value: Some(OrdF64(bad)), ..base.clone() }, ..stored.clone() };
            let bytes = encode_sample(&row);
            assert!(decode_head(&bytes, &mut zones).is_none() && decode_sample(&bytes).is_none());
        }
        // The owned decode gives back what was stored, metadata of any size included.
        let big = StoredSample { metadata: "m".repeat(20 << 20), platform: Some("ios".into()), ..stored.clone() };
        assert_eq!(decode_sample(&encode_sample(&big)), Some(big));
    }

    /// Records stored before hash schemes were numbered have no `scheme`: they are scheme 1.
    #[test]
    fn a_record_without_a_scheme_is_jcs() {
        let record: RequestRecord = serde_json::from_str(
            r#"{"hash":"ab","response":{"requestId":"r","epoch":1,"accepted":0,"unchanged":0,"stale":0,"deleted":0,"rejected":[],"replayed":false}}"#,
        )
        .expect("a legacy record");
        assert_eq!(record.scheme, HASH_SCHEME_JCS);
    }
}
