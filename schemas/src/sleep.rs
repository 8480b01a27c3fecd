//! Sleep stages (DOMAIN.md §3.2).

use serde::{Deserialize, Serialize};

/// Our sleep stage. `Unknown` is accepted at ingest and ignored by every view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SleepStage {
    InBed,
    Unspecified,
    Core,
    Deep,
    Rem,
    Awake,
    Unknown,
}

impl SleepStage {
    /// Parses our snake_case name, the HealthKit name or the Health Connect stage name.
    pub fn parse(s: &str) -> Option<SleepStage> {
        Some(match s {
            "in_bed" | "inBed" => SleepStage::InBed,
            "asleep_unspecified" | "asleepUnspecified" | "asleep" | "SLEEPING" => SleepStage::Unspecified,
            "asleep_core" | "asleepCore" | "LIGHT" => SleepStage::Core,
            "asleep_deep" | "asleepDeep" | "DEEP" => SleepStage::Deep,
            "asleep_rem" | "asleepREM" | "REM" => SleepStage::Rem,
            "awake" | "AWAKE" | "AWAKE_IN_BED" | "OUT_OF_BED" => SleepStage::Awake,
            "UNKNOWN" => SleepStage::Unknown,
            _ => return None,
        })
    }

    /// Whether the stage counts as asleep.
    pub fn is_asleep(self) -> bool {
        matches!(self, SleepStage::Unspecified | SleepStage::Core | SleepStage::Deep | SleepStage::Rem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_vendor_name() {
        assert_eq!(SleepStage::parse("asleep"), Some(SleepStage::Unspecified));
        assert_eq!(SleepStage::parse("LIGHT"), Some(SleepStage::Core));
        assert_eq!(SleepStage::parse("OUT_OF_BED"), Some(SleepStage::Awake));
        assert_eq!(SleepStage::parse("asleepREM"), Some(SleepStage::Rem));
        assert_eq!(SleepStage::parse("napping"), None);
        assert!(SleepStage::Deep.is_asleep() && !SleepStage::InBed.is_asleep());
    }
}
