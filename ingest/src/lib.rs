//! Ingestion: the HTTP handlers that take batches in, and the durable store they commit to.
//!
//! ```text
//!  POST batch-upsert ─▶ parse + hash ─▶ Writer (one thread, group commit) ─▶ redb txn + fsync
//!                                              │ after commit: EpochBatch ─▶ on_commit (dataflow)
//!                                              └ reply to every request of the group
//! ```
//!
//! A request is answered only after its commit is on disk; each commit gets the next epoch.
//!
//! Kafka ([`kafka`]) and the PostgreSQL outbox ([`outbox`]) carry the same JSON bodies and go
//! through the same writer; each stores its position in the transaction of the rows it brought.

mod domain;
pub mod error;
pub mod http;
pub mod kafka;
pub mod outbox;
pub mod progress;
pub mod store;
pub mod writer;

pub use error::IngestError;
pub use progress::IngestProgress;
pub use store::Store;
pub use writer::{Ingest, OnCommit, SourceBody, SourceOutcome, Startup};

/// The input limits in force (issue 10 §2): set once by the binary from its configuration before
/// ingestion starts; [`vitalflow_schemas::Limits::DEFAULT`] until then (and in tests).
static LIMITS: std::sync::OnceLock<vitalflow_schemas::Limits> = std::sync::OnceLock::new();

/// Sets the input limits for every ingestion path (HTTP, Kafka, the outbox). Only the first call
/// counts; returns whether it did.
pub fn configure_limits(limits: vitalflow_schemas::Limits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// The input limits in force.
pub fn limits() -> &'static vitalflow_schemas::Limits {
    LIMITS.get().unwrap_or(&vitalflow_schemas::Limits::DEFAULT)
}

#[cfg(test)]
mod tests;
