//! Serving: the snapshot store that turns view updates into immutable, sharded Arrow snapshots,
//! and the read API over them (per-user reads, SQL through DataFusion, frontiers, health).
//!
//! ```text
//!  view updates of complete epochs ─▶ SnapshotStore::apply ─▶ rebuild touched user shards
//!                                                             └▶ swap Arc<ViewSnapshot> (asOfEpoch)
//!  GET /v1/users/{u}/daily-rollups ─▶ one shard ─▶ JSON | Arrow IPC
//!  POST /v1/sql ─▶ DataFusion MemTable over every shard (no copy) ─▶ JSON | Arrow IPC
//!  snapshots advance ─▶ pg_sink: difference of snapshots ─▶ one Postgres transaction per view
//! ```

pub mod http;
pub mod persist;
pub mod pg_sink;
pub mod snapshot;
pub mod sql;

pub use http::{Freshness, ServeConfig};
pub use snapshot::{Served, SnapshotStore, ViewSnapshot};
