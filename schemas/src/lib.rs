//! Record types, units, validation and Arrow schemas of vitalflow. No I/O lives here.
//!
//! ```text
//!  wire (JSON, camelCase) ──validate──▶ StoredSample ──▶ Sample (what the dataflow sees)
//!                                                          │
//!  ViewDef (columns, key) ◀── views in `dataflows` ──▶ Row (Vec<Datum>) ──▶ Arrow / JSON
//! ```
//!
//! Every rule implemented here is fixed by `DOMAIN.md`; the section is named at each item.

pub mod auth;
pub mod domain;
pub mod error;
pub mod limits;
pub mod metric;
pub mod ordf64;
pub mod record;
pub mod sleep;
pub mod source;
pub mod split;
pub mod time;
pub mod validate;
pub mod view;
pub mod wire;
pub mod zone;

pub use error::Rejection;
pub use limits::Limits;
pub use metric::{Metric, ValueKind};
pub use ordf64::OrdF64;
pub use record::{Change, EpochBatch, Sample, SampleOf, SampleRef, StoredSample, UserProfile};
pub use source::SourceClass;
pub use view::{Column, ColumnType, Datum, Row, ViewDef};
pub use zone::Zone;

/// Differential time: the epoch of a durably committed ingest batch.
pub type Epoch = u64;
