//! The records the dataflow sees (issue 13 §1, ADR 0010): the stored records of DOMAIN.md §0.1
//! with their identifiers interned as [`Name`]s, so that each is a fixed-size `Copy` value. They are
//! made where a change enters the runtime; views never see a `String` id.

use serde::{Deserialize, Serialize};
#[cfg(doc)]
use vitalflow_schemas::Sample;
use vitalflow_schemas::domain::Session;
use vitalflow_schemas::sleep::SleepStage;
use vitalflow_schemas::{Metric, OrdF64, SampleRef, SourceClass, Zone};

use crate::names::{Interner, Name};

/// A validated sample (DOMAIN.md §0.1) as the dataflow carries it: 48 bytes, `Copy`. Identity
/// (I2) is `(user_id, source_id, source_record_id)`; values are in the canonical unit (G4); the
/// zone was resolved at ingest (Z1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SampleRecord {
    pub user_id: Name,
    pub source_id: Name,
    pub source_record_id: Name,
    pub metric: Metric,
    /// UTC milliseconds, inclusive.
    pub start_ms: i64,
    /// UTC milliseconds, exclusive; equal to `start_ms` for an instantaneous sample (G2).
    pub end_ms: i64,
    /// Canonical-unit value, NaN for a sample without one (sleep stages, interval samples sent
    /// without a value): validation refuses non-finite values, so NaN stands for nothing else and
    /// the record needs no `Option` tag (8 bytes). Read it with [`SampleRecord::value`].
    value_or_nan: OrdF64,
    /// Sleep stage, for `sleep_analysis` only.
    pub category: Option<SleepStage>,
    pub source_class: SourceClass,
    pub zone: Zone,
}

impl SampleRecord {
    /// `s` with its identifiers interned (`SampleRef::from(&sample)` for an owned [`Sample`]).
    pub fn intern(s: SampleRef<'_>, names: &mut Interner) -> SampleRecord {
        SampleRecord {
            user_id: names.name(s.user_id),
            source_id: names.name(s.source_id),
            source_record_id: names.name(s.source_record_id),
            metric: s.metric,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            value_or_nan: s.value.unwrap_or(OrdF64(f64::NAN)),
            category: s.category,
            source_class: s.source_class,
            zone: s.zone,
        }
    }
}

impl SampleRecord {
    /// Canonical-unit value; `None` for sleep stages and interval samples sent without one.
    pub fn value(&self) -> Option<OrdF64> {
        (!self.value_or_nan.0.is_nan()).then_some(self.value_or_nan)
    }
}

/// A consumption session (DOMAIN.md §0.1, §4) as the dataflow carries it: `Copy`; `end_ms` is
/// `None` while it is open; the zone was resolved at ingest (Z5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: Name,
    pub session_id: Name,
    pub product_id: Name,
    /// UTC milliseconds.
    pub start_ms: i64,
    /// UTC milliseconds; `None` while open.
    pub end_ms: Option<i64>,
    pub quantity: OrdF64,
    pub zone: Zone,
}

impl SessionRecord {
    /// `s` with its identifiers interned.
    pub fn intern(s: &Session, names: &mut Interner) -> SessionRecord {
        SessionRecord {
            user_id: names.name(&s.user_id),
            session_id: names.name(&s.session_id),
            product_id: names.name(&s.product_id),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            quantity: s.quantity,
            zone: s.zone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_record_is_small_and_copy() {
        // Three 4-byte names, two instants, a value and four one-word-or-less fields (issue 13 §1).
        assert!(std::mem::size_of::<SampleRecord>() <= 48, "{}", std::mem::size_of::<SampleRecord>());
        assert!(std::mem::size_of::<vitalflow_schemas::Sample>() > 2 * std::mem::size_of::<SampleRecord>());
    }
}
