//! The differential dataflow graph of vitalflow: one view per file, the registry that lists them,
//! and the worker runtime that feeds epochs in and hands view updates out.
//!
//! ```text
//!  EpochBatch ─▶ Runtime::push ─▶ worker inputs (advance to every epoch together)
//!                │ ids interned: SampleRecord, SessionRecord (`Copy`, no `String`; names.rs)
//!                                     │ samples arranged by user once (SamplesByUser)
//!                                     ▼
//!                       registry::VIEWS[i].build(&inputs) ─▶ VecCollection<Epoch, Row>
//!                                     │ sink (worker 0): updates of complete epochs
//!                                     ▼
//!                              ViewProgress { view, frontier, updates } ─▶ serving side
//! ```
//!
//! Only timely and differential live here: no tokio, no HTTP.

pub mod daily_rollups;
pub mod daily_rollups_by_source;
pub mod exact;
pub mod introspection;
pub mod names;
pub mod product_impacts;
pub mod records;
pub mod registry;
pub mod routine_bins;
pub mod runtime;
pub mod session_impacts;
pub mod sessions;
pub mod sleep_nights;
mod stats;
pub mod weekly_steps;

pub use introspection::Elapsed;
pub use names::Name;
pub use records::{SampleRecord, SessionRecord};
pub use registry::{Inputs, SamplesByUser, VIEWS, ViewSpec, select};
pub use runtime::{RecoveryFeed, Runtime, RuntimeError, RuntimeHealth, RuntimeOptions, ViewProgress};

#[cfg(test)]
mod tests;
