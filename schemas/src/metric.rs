//! The metric catalogue (DOMAIN.md §1.2–§1.4): value kinds, canonical units, unit normalization and
//! the range checks applied after normalization.

use serde::{Deserialize, Serialize};

use crate::error::{Rejection, codes};

/// How a metric aggregates into a day (DOMAIN.md §1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ValueKind {
    /// Summed over time, split proportionally across buckets, merged by priority slices (M1).
    Cumulative,
    /// Point-like readings: count, sum, mean, min, max, last; pooled across sources.
    Discrete,
    /// Category samples with a duration: union of intervals.
    Interval,
}

impl ValueKind {
    /// The upper-case name used in views (`CUMULATIVE`, `DISCRETE`, `INTERVAL`).
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Cumulative => "CUMULATIVE",
            ValueKind::Discrete => "DISCRETE",
            ValueKind::Interval => "INTERVAL",
        }
    }
}

macro_rules! metrics {
    ($($variant:ident => $key:literal, $unit:literal, $kind:ident;)*) => {
        /// A metric of the catalogue (DOMAIN.md §1.3).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Metric { $($variant),* }

        impl Metric {
            /// Parses a `metricKey` such as `steps`.
            pub fn parse(key: &str) -> Option<Metric> {
                match key { $($key => Some(Metric::$variant),)* _ => None }
            }
            /// The `metricKey`.
            pub fn key(self) -> &'static str {
                match self { $(Metric::$variant => $key),* }
            }
            /// The canonical unit every stored value is in (§1.4).
            pub fn canonical_unit(self) -> &'static str {
                match self { $(Metric::$variant => $unit),* }
            }
            /// The value kind (§1.2).
            pub fn kind(self) -> ValueKind {
                match self { $(Metric::$variant => ValueKind::$kind),* }
            }
        }
    };
}

metrics! {
    Steps => "steps", "count", Cumulative;
    Distance => "distance", "m", Cumulative;
    ActiveEnergy => "active_energy", "kcal", Cumulative;
    BasalEnergy => "basal_energy", "kcal", Cumulative;
    BasalMetabolicRate => "basal_metabolic_rate", "kcal/d", Discrete;
    HeartRate => "heart_rate", "count/min", Discrete;
    RestingHeartRate => "resting_heart_rate", "count/min", Discrete;
    HrvSdnn => "hrv_sdnn", "ms", Discrete;
    HrvRmssd => "hrv_rmssd", "ms", Discrete;
    RespiratoryRate => "respiratory_rate", "count/min", Discrete;
    Spo2 => "spo2", "%", Discrete;
    BodyMass => "body_mass", "kg", Discrete;
    BodyTemperature => "body_temperature", "degC", Discrete;
    BloodGlucose => "blood_glucose", "mg/dL", Discrete;
    SleepAnalysis => "sleep_analysis", "min", Interval;
    MindfulMinutes => "mindful_minutes", "min", Interval;
    ExerciseMinutes => "exercise_minutes", "min", Cumulative;
}

/// The platform a batch came from; it decides the SpO2 percent scale (§1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    HealthKit,
    HealthConnect,
    Unknown,
}

impl Platform {
    /// Parses the request's `platform` field; anything unrecognised is `Unknown`.
    pub fn parse(s: Option<&str>) -> Platform {
        match s {
            Some("healthkit") => Platform::HealthKit,
            Some("health_connect") => Platform::HealthConnect,
            _ => Platform::Unknown,
        }
    }
}

/// Converts `value` given in `unit` into `metric`'s canonical unit (§1.4). Unit strings match
/// exactly after trimming (`Cal` is kcal, `cal` is a small calorie).
pub fn normalize(metric: Metric, unit: &str, value: f64, platform: Platform) -> Result<f64, Rejection> {
    let unit = unit.trim();
    let canonical = metric.canonical_unit();
    let converted = match canonical {
        "count" => match unit {
            "count" => Some(value),
            _ => None,
        },
        "count/min" => match unit {
            "count/min" | "bpm" | "beats/min" | "/min" | "breaths/min" => Some(value),
            "count/s" => Some(value * 60.0),
            _ => None,
        },
        "m" => match unit {
            "m" => Some(value),
            "km" => Some(value * 1000.0),
            "mi" => Some(value * 1609.344),
            "ft" => Some(value * 0.3048),
            "yd" => Some(value * 0.9144),
            _ => None,
        },
        "kcal" => match unit {
            "kcal" | "Cal" => Some(value),
            "kJ" => Some(value / 4.184),
            "J" => Some(value / 4184.0),
            "cal" => Some(value / 1000.0),
            _ => None,
        },
        "kcal/d" => match unit {
            "kcal/d" => Some(value),
            "W" => Some(value * 20.650),
            _ => None,
        },
        "kg" => match unit {
            "kg" => Some(value),
            "g" => Some(value * 0.001),
            "lb" => Some(value * 0.453_592_37),
            "st" => Some(value * 6.350_293_18),
            "oz" => Some(value * 0.028_349_523_125),
            _ => None,
        },
        "degC" => match unit {
            "degC" | "°C" => Some(value),
            "degF" | "°F" => Some((value - 32.0) * 5.0 / 9.0),
            "K" => Some(value - 273.15),
            _ => None,
        },
        "mg/dL" => match unit {
            "mg/dL" | "mg/dl" => Some(value),
            "mmol/L" => Some(value * 18.0),
            u if is_molar_glucose(u) => Some(value * 18.0),
            _ => None,
        },
        "%" => match unit {
            "%" => Some(match platform {
                Platform::HealthKit => value * 100.0,
                Platform::HealthConnect => value,
                Platform::Unknown if value <= 1.0 => value * 100.0,
                Platform::Unknown => value,
            }),
            _ => None,
        },
        "ms" => match unit {
            "ms" => Some(value),
            "s" => Some(value * 1000.0),
            _ => None,
        },
        "min" => match unit {
            "min" => Some(value),
            "s" => Some(value / 60.0),
            "hr" | "h" => Some(value * 60.0),
            _ => None,
        },
        _ => None,
    };
    converted.ok_or_else(|| {
        Rejection::new(
            codes::UNIT_UNSUPPORTED,
            format!("unit '{unit}' is not accepted for {} (canonical unit {canonical})", metric.key()),
        )
    })
}

/// `mmol<…>/L` or `mmol<…>/l`, HealthKit's molar-mass glucose units.
fn is_molar_glucose(unit: &str) -> bool {
    unit.strip_prefix("mmol<")
        .and_then(|rest| rest.strip_suffix(">/L").or_else(|| rest.strip_suffix(">/l")))
        .is_some_and(|mass| !mass.is_empty() && !mass.contains(['<', '>']))
}

/// The largest magnitude of a value in its canonical unit [OURS, issue 10]. No metric comes near it
/// (a billion steps, metres, kcal…), and below it the views' sums, C1 shares (`v × overlap`, with
/// an overlap of up to 8.64e7 ms) and Welford statistics stay finite; a value near `f64::MAX` would
/// turn them into infinities.
pub const MAX_ABS_VALUE: f64 = 1e9;

/// Range checks after normalization (§1.4), and the bound [`MAX_ABS_VALUE`].
pub fn check_range(metric: Metric, value: f64) -> Result<(), Rejection> {
    let out = |what: &str| {
        // 1.7e308 in plain notation is 309 digits: large values are shown in exponent notation.
        let shown = if value.abs() >= 1e15 { format!("{value:e}") } else { format!("{value}") };
        Err(Rejection::new(codes::OUT_OF_RANGE, format!("{} value {shown} {what}", metric.key())))
    };
    if !value.is_finite() {
        return out("is not a finite number");
    }
    if value.abs() > MAX_ABS_VALUE {
        return out("is implausibly large (more than 1e9 in the canonical unit)");
    }
    if metric.kind() == ValueKind::Cumulative && value < 0.0 {
        return out("is negative");
    }
    match metric {
        Metric::Spo2 if !(0.0..=100.0).contains(&value) => out("is outside 0–100 %"),
        Metric::HeartRate if !(20.0..=300.0).contains(&value) => out("is outside 20–300 count/min"),
        Metric::HrvSdnn | Metric::HrvRmssd if !(1.0..=300.0).contains(&value) => out("is outside 1–300 ms"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn units_convert_to_canonical() {
        let p = Platform::Unknown;
        let cases: &[(Metric, &str, f64, f64)] = &[
            (Metric::Steps, "count", 12.0, 12.0),
            (Metric::HeartRate, "bpm", 60.0, 60.0),
            (Metric::HeartRate, "count/s", 1.5, 90.0),
            (Metric::RespiratoryRate, "breaths/min", 14.0, 14.0),
            (Metric::Distance, "km", 1.2, 1200.0),
            (Metric::Distance, "mi", 1.0, 1609.344),
            (Metric::Distance, "ft", 10.0, 3.048),
            (Metric::Distance, "yd", 1.0, 0.9144),
            (Metric::ActiveEnergy, "Cal", 5.0, 5.0),
            (Metric::ActiveEnergy, "cal", 5000.0, 5.0),
            (Metric::ActiveEnergy, "kJ", 4.184, 1.0),
            (Metric::ActiveEnergy, "J", 4184.0, 1.0),
            (Metric::BasalMetabolicRate, "W", 1.0, 20.65),
            (Metric::BodyMass, "lb", 1.0, 0.45359237),
            (Metric::BodyMass, "st", 1.0, 6.35029318),
            (Metric::BodyMass, "oz", 1.0, 0.028349523125),
            (Metric::BodyMass, "g", 70000.0, 70.0),
            (Metric::BodyTemperature, "degF", 98.6, 37.0),
            (Metric::BodyTemperature, "°C", 36.6, 36.6),
            (Metric::BodyTemperature, "K", 310.15, 37.0),
            (Metric::BloodGlucose, "mmol/L", 5.0, 90.0),
            (Metric::BloodGlucose, "mmol<180.1558800000541>/L", 5.0, 90.0),
            (Metric::BloodGlucose, "mg/dl", 90.0, 90.0),
            (Metric::HrvSdnn, "s", 0.05, 50.0),
            (Metric::MindfulMinutes, "s", 90.0, 1.5),
            (Metric::ExerciseMinutes, "hr", 0.5, 30.0),
            (Metric::Steps, " count ", 3.0, 3.0),
        ];
        for &(m, u, v, want) in cases {
            let got = normalize(m, u, v, p).expect(u);
            assert!(close(got, want), "{m:?} {u} {v}: got {got}, want {want}");
        }
    }

    #[test]
    fn unknown_units_are_rejected_case_sensitively() {
        for (m, u) in [
            (Metric::ActiveEnergy, "KCAL"),
            (Metric::Steps, "steps"),
            (Metric::BloodGlucose, "mmol<>/L"),
            (Metric::Distance, "s"),
        ] {
            let err = normalize(m, u, 1.0, Platform::Unknown).unwrap_err();
            assert_eq!(err.code, codes::UNIT_UNSUPPORTED);
        }
    }

    #[test]
    fn spo2_scale_follows_platform() {
        assert!(close(normalize(Metric::Spo2, "%", 0.97, Platform::HealthKit).unwrap(), 97.0));
        assert!(close(normalize(Metric::Spo2, "%", 97.0, Platform::HealthConnect).unwrap(), 97.0));
        assert!(close(normalize(Metric::Spo2, "%", 0.95, Platform::Unknown).unwrap(), 95.0));
        assert!(close(normalize(Metric::Spo2, "%", 95.0, Platform::Unknown).unwrap(), 95.0));
    }

    #[test]
    fn ranges_are_checked_after_normalization() {
        assert!(check_range(Metric::Steps, -1.0).is_err());
        assert!(check_range(Metric::Steps, 0.0).is_ok());
        assert!(check_range(Metric::HeartRate, 19.9).is_err());
        assert!(check_range(Metric::HeartRate, 300.0).is_ok());
        assert!(check_range(Metric::HrvRmssd, 0.5).is_err());
        assert!(check_range(Metric::Spo2, 100.5).is_err());
        assert!(check_range(Metric::BodyTemperature, -5.0).is_ok());
        assert!(check_range(Metric::Steps, f64::NAN).is_err());
        assert!(check_range(Metric::Steps, f64::INFINITY).is_err());
        assert!(check_range(Metric::Steps, MAX_ABS_VALUE).is_ok());
        assert!(check_range(Metric::RespiratoryRate, 1e308).is_err());
        assert!(check_range(Metric::BodyTemperature, -1e10).is_err());
        assert!(check_range(Metric::Distance, 1.7e308 * 1609.344).is_err());
    }
}
