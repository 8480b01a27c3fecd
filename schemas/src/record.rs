//! The records of DOMAIN.md §0.1 as vitalflow stores them and feeds them to the dataflow.

use serde::{Deserialize, Serialize};

use crate::Epoch;
use crate::domain::{Product, Session};
use crate::metric::Metric;
use crate::ordf64::OrdF64;
use crate::sleep::SleepStage;
use crate::source::SourceClass;
use crate::zone::Zone;

/// A validated, normalized sample: what every view reads. Its identity (DOMAIN.md I2) is
/// `(user_id, source_id, source_record_id)`, without `startAt`. Values are in the canonical unit (G4);
/// the zone is resolved at ingest (Z1) and never changes (Z2).
///
/// One set of fields for every way a sample is held: owned ([`Sample`]), with its identifiers
/// borrowed from someone else's bytes ([`SampleRef`]: recovery reads each stored row in place,
/// issue 13 §6), or with its zone still a name (the store's in-place decode). `Id` is the
/// identifiers' type and `Z` the zone's; the fields' order is the stored rows' (bincode, ADR 0001).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SampleOf<Id, Z = Zone> {
    pub user_id: Id,
    pub source_id: Id,
    pub source_record_id: Id,
    pub metric: Metric,
    /// UTC milliseconds, inclusive.
    pub start_ms: i64,
    /// UTC milliseconds, exclusive; equal to `start_ms` for an instantaneous sample (G2).
    pub end_ms: i64,
    /// Canonical-unit value; `None` for sleep stages and interval samples sent without one.
    pub value: Option<OrdF64>,
    /// Sleep stage, for `sleep_analysis` only.
    pub category: Option<SleepStage>,
    pub source_class: SourceClass,
    pub zone: Z,
}

/// A sample that owns its identifiers: what ingest validates and the store keeps.
pub type Sample = SampleOf<String>;

/// A sample whose identifiers borrow someone else's bytes; `SampleRef::from(&sample)` views an
/// owned one.
pub type SampleRef<'a> = SampleOf<&'a str>;

impl<Id, Z> SampleOf<Id, Z> {
    /// The same sample with each identifier through `id` and the zone through `zone`.
    pub fn map<Id2, Z2>(self, mut id: impl FnMut(Id) -> Id2, zone: impl FnOnce(Z) -> Z2) -> SampleOf<Id2, Z2> {
        SampleOf {
            user_id: id(self.user_id),
            source_id: id(self.source_id),
            source_record_id: id(self.source_record_id),
            metric: self.metric,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            value: self.value,
            category: self.category,
            source_class: self.source_class,
            zone: zone(self.zone),
        }
    }
}

impl<'a> From<&'a Sample> for SampleRef<'a> {
    fn from(s: &'a Sample) -> SampleRef<'a> {
        SampleOf {
            user_id: &s.user_id,
            source_id: &s.source_id,
            source_record_id: &s.source_record_id,
            metric: s.metric,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            value: s.value,
            category: s.category,
            source_class: s.source_class,
            zone: s.zone,
        }
    }
}

impl From<SampleRef<'_>> for Sample {
    fn from(s: SampleRef<'_>) -> Sample {
        s.map(str::to_owned, |z| z)
    }
}

/// A sample as stored: the dataflow's fields plus what is kept but not interpreted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSample {
    pub sample: Sample,
    /// The request's `platform`, if any.
    pub platform: Option<String>,
    /// The sample's `metadata` as JSON text (kept, not interpreted beyond the named keys).
    pub metadata: String,
    /// `HKMetadataKeySyncVersion`, when the metadata carries one (I2).
    pub sync_version: Option<i64>,
}

/// A user's profile (DOMAIN.md §0.1).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserProfile {
    pub user_id: String,
    /// IANA zone; used at ingest (Z1 step 4).
    pub time_zone: Option<String>,
    pub allow_health_data_upload: bool,
    pub blocked_metrics: Vec<String>,
}

/// One change the dataflow sees: a record with a difference (+1 insert, −1 retract).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    Sample(Sample, i64),
    Profile(UserProfile, i64),
    Session(Session, i64),
    Product(Product, i64),
}

/// Everything one durable commit changed, stamped with its epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochBatch {
    pub epoch: Epoch,
    pub changes: Vec<Change>,
}
