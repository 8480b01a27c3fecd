//! View tests in the style of differential and Feldera: feed deltas step by step through the real
//! runtime and check each step's consolidated output; and a property test against a from-scratch
//! oracle written separately from the dataflow.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use vitalflow_schemas::split::{SLICE_MS, share};
use vitalflow_schemas::time::{date_to_days, parse_date, parse_instant};
use vitalflow_schemas::{Change, Datum, EpochBatch, Metric, OrdF64, Row, Sample, SampleRef, SourceClass, Zone};

use crate::registry::view_index;
use crate::runtime::{Runtime, RuntimeOptions, ViewProgress};

/// A running dataflow and the accumulated contents of every view.
struct Harness {
    runtime: Option<Runtime>,
    rx: crossbeam_channel::Receiver<ViewProgress>,
    views: Vec<BTreeMap<Row, i64>>,
    frontiers: Vec<u64>,
    epoch: u64,
    /// Every time an update of any view arrived at.
    times_seen: BTreeSet<u64>,
}

impl Harness {
    fn new(workers: usize) -> Self {
        Harness::with_options(workers, RuntimeOptions::default())
    }

    fn with_options(workers: usize, options: RuntimeOptions) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let runtime = Runtime::start_with(workers, crate::VIEWS.to_vec(), tx, options).expect("runtime");
        let n = crate::VIEWS.len();
        Harness {
            runtime: Some(runtime),
            rx,
            views: vec![BTreeMap::new(); n],
            frontiers: vec![0; n],
            epoch: 0,
            times_seen: BTreeSet::new(),
        }
    }

    /// Commits one epoch of changes and waits until every view has caught up with it.
    fn step(&mut self, changes: Vec<Change>) {
        self.epoch += 1;
        let epoch = self.epoch;
        if let Some(rt) = self.runtime.as_mut() {
            rt.push(EpochBatch { epoch, changes }).expect("push");
        }
        self.wait(epoch);
    }

    /// Feeds `changes` and then `samples` as recovery does ([`Runtime::recovery_feed`]: chunks
    /// of `chunk`, internal times of `per_time` samples, ending at an epoch `span` past the last
    /// one), and waits until every view has caught up with it. Returns how many internal times
    /// the feed closed before its last one.
    fn recover(&mut self, changes: Vec<Change>, samples: &[Sample], chunk: usize, per_time: usize, span: u64) -> u64 {
        self.epoch += span;
        let epoch = self.epoch;
        let mut times = 0;
        if let Some(rt) = self.runtime.as_mut() {
            let mut feed = rt.recovery_feed(epoch, chunk, per_time);
            let first = feed.time();
            feed.push_changes(changes).expect("changes");
            for s in samples {
                let before = feed.time();
                feed.push(SampleRef::from(s)).expect("feed");
                if feed.time() > before {
                    // A new time opens only once the one before the time just closed is complete
                    // on every worker: at most two steps are in flight.
                    assert!(
                        feed.completed().saturating_add(1) >= feed.time(),
                        "{} behind {}",
                        feed.completed(),
                        feed.time()
                    );
                }
            }
            times = feed.time() - first;
            feed.finish().expect("finish");
            rt.advance(epoch + 1).expect("advance");
        }
        self.wait(epoch);
        times
    }

    fn wait(&mut self, epoch: u64) {
        while self.frontiers.iter().any(|f| *f <= epoch) {
            let p = self.rx.recv_timeout(std::time::Duration::from_secs(60)).expect("view progress");
            for (row, t, diff) in p.updates {
                assert!(t < p.frontier);
                self.times_seen.insert(t);
                let c = self.views[p.view].entry(row.clone()).or_insert(0);
                *c += diff;
                if *c == 0 {
                    self.views[p.view].remove(&row);
                }
            }
            self.frontiers[p.view] = p.frontier;
        }
    }

    fn rows(&self, view: &str) -> Vec<Row> {
        let v = view_index(view).expect("view");
        for (row, c) in &self.views[v] {
            assert_eq!(*c, 1, "row with multiplicity {c}: {row:?}");
        }
        self.views[v].keys().cloned().collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown();
        }
    }
}

fn ms(s: &str) -> i64 {
    parse_instant(s).expect(s)
}

fn day(s: &str) -> i32 {
    date_to_days(parse_date(s).expect(s))
}

#[allow(clippy::too_many_arguments)]
fn sample(
    user: &str,
    source: &str,
    rec: &str,
    metric: Metric,
    start: i64,
    end: i64,
    value: f64,
    class: SourceClass,
    zone: &str,
) -> Sample {
    Sample {
        user_id: user.into(),
        source_id: source.into(),
        source_record_id: rec.into(),
        metric,
        start_ms: start,
        end_ms: end,
        value: Some(OrdF64(value)),
        category: None,
        source_class: class,
        zone: Zone::parse(zone).expect(zone),
    }
}

fn float(d: &Datum) -> Option<f64> {
    match d {
        Datum::Float(f) => Some(f.0),
        _ => None,
    }
}

/// `(local_date, count, sum)` of the daily_rollups rows of one metric.
fn cumulative_days(h: &Harness, metric: &str) -> Vec<(i32, i64, f64)> {
    h.rows("daily_rollups")
        .into_iter()
        .filter(|r| r[1] == Datum::Str(metric.into()))
        .map(|r| match (&r[2], &r[5]) {
            (Datum::Date(d), Datum::Int(c)) => (*d, *c, float(&r[6]).unwrap_or(f64::NAN)),
            _ => panic!("bad row {r:?}"),
        })
        .collect()
}

/// Worked example 2a's sample (DOMAIN.md): 1,200 steps from a watch, 03:50–04:30 UTC, with device
/// zone `zone` (the example's is America/New_York).
fn example_2a_sample(zone: &str) -> Sample {
    sample(
        "u1",
        "watch-1",
        "a1",
        Metric::Steps,
        ms("2024-06-01T03:50:00Z"),
        ms("2024-06-01T04:30:00Z"),
        1200.0,
        SourceClass::Watch,
        zone,
    )
}

/// Recovery's feed (issue 13 §6, ADR 0012, ADR 0014) gives every view the rows that pushing the
/// same samples, sessions, products and profiles as one batch gives, whatever the chunk size
/// (1, 3, more than all) and however many internal times the replay is cut into (one per
/// sample, a few, capped by the recovered epoch, one).
#[test]
fn a_recovery_feed_gives_every_view_what_a_push_gives() {
    let mut samples = Vec::new();
    let mut changes = Vec::new();
    for (u, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        let zone = ["America/New_York", "+05:45", "UTC"][u];
        for i in 0..5_i64 {
            let t = ms("2024-06-01T03:50:00Z") + i * 3_600_000 + u as i64 * 60_000;
            samples.push(sample(
                user,
                "watch",
                &format!("s{i}"),
                Metric::Steps,
                t,
                t + 600_000,
                100.0 + i as f64,
                SourceClass::Watch,
                zone,
            ));
            samples.push(sample(
                user,
                "phone",
                &format!("p{i}"),
                Metric::Steps,
                t,
                t + 1_200_000,
                50.0,
                SourceClass::Phone,
                zone,
            ));
            samples.push(sample(
                user,
                "watch",
                &format!("h{i}"),
                Metric::HeartRate,
                t,
                t,
                60.0 + i as f64,
                SourceClass::Watch,
                zone,
            ));
        }
        let start = ms("2024-06-01T05:00:00Z") + u as i64 * 60_000;
        let mut s = session(user, &format!("c{u}"), ["p1", "p2", "p1"][u], start, zone);
        s.end_ms = Some(start + 1_800_000);
        changes.push(Change::Session(s, 1));
        changes.push(Change::Profile(
            vitalflow_schemas::UserProfile {
                user_id: user.into(),
                time_zone: Some(["Europe/Berlin", "Asia/Kathmandu", "UTC"][u].into()),
                allow_health_data_upload: true,
                blocked_metrics: vec![],
            },
            1,
        ));
    }
    changes.push(Change::Product(
        vitalflow_schemas::domain::Product {
            product_id: "p1".into(),
            name: "coffee".into(),
            category: Some("c".into()),
        },
        1,
    ));
    let mut pushed = Harness::new(2);
    pushed.step(changes.iter().cloned().chain(samples.iter().cloned().map(|s| Change::Sample(s, 1))).collect());
    assert!(!pushed.rows("daily_rollups").is_empty());
    assert!(!pushed.rows("session_impacts").is_empty());
    let all = samples.len();
    assert_eq!(all, 45);
    // (chunk, samples per internal time, epochs from the last one to the recovered epoch, the
    // internal times the feed closes before its last): a time closes at the first flush that
    // brings it to `per_time` samples, and the recovered epoch is the last time.
    let cuts = [
        (1, 1, 1_000, 45),
        (3, 1, 1_000, 15),
        (3, 7, 1_000, 5),
        (1, 1, 5, 5),
        (all + 1, 1, 1_000, 0),
        (1, usize::MAX, 1_000, 0),
    ];
    for (chunk, per_time, span, want_times) in cuts {
        let mut recovered = Harness::new(2);
        let times = recovered.recover(changes.clone(), &samples, chunk, per_time, span);
        assert_eq!(times, want_times, "chunks of {chunk}, {per_time} per time");
        // The views' rows came at the internal times the samples were sent at, not all at one.
        assert_eq!(recovered.times_seen.len() > 1, want_times > 0, "{:?}", recovered.times_seen);
        for view in crate::VIEWS {
            assert_eq!(
                recovered.rows(view.def.name),
                pushed.rows(view.def.name),
                "{} with chunks of {chunk}, {per_time} per time",
                view.def.name
            );
        }
    }
}

/// Introspection (docs/operations.md, "Slow epochs"): the workers' time is spent in, and
/// attributed to, every view, the inputs and timely's progress tracking, not lumped together; and
/// each epoch past the threshold is counted once.
#[test]
fn worker_time_is_attributed_to_each_view() {
    // A zero threshold: every epoch counts as slow, so the count is the number of epochs closed.
    let mut h = Harness::with_options(
        2,
        RuntimeOptions { slow_epoch: Some(std::time::Duration::ZERO), idle_merge_effort: None },
    );
    let s = example_2a_sample("UTC");
    h.step(vec![Change::Sample(s.clone(), 1)]);
    let elapsed = h.runtime.as_ref().and_then(Runtime::elapsed).expect("introspection is on");
    // The input arrangement of the M1 slice winners holds the sample's three 15-minute slices
    // (03:50–04:30 UTC touches those starting 03:45, 04:00 and 04:15), on one of the two
    // workers; sizes are logged at the end of a step, and the arrangement belongs to the view
    // that built it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let slices = || elapsed.arrangements().into_iter().find(|a| a.operator == "Arrange: M1: slice winner");
    while slices().is_none_or(|a| a.records != 3) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let arranged = slices().expect("the M1 slices' arrangement is reported");
    assert_eq!((arranged.view, arranged.records, arranged.batcher_records), ("daily_rollups", 3, 0), "{arranged:?}");
    h.step(vec![]);
    h.step(vec![Change::Sample(s, -1)]);
    // Worker 0 counts an epoch once every view's output on every worker has passed it, after its
    // next step; it steps at least every 200 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while elapsed.slow_epochs() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(elapsed.slow_epochs(), 3, "each of the three epochs once");
    // The workers' logs are flushed at the end of every step, and when they stop.
    if let Some(rt) = h.runtime.take() {
        rt.shutdown();
    }
    let accounts = elapsed.accounts();
    let names: Vec<&str> = accounts.iter().map(|(n, _)| *n).collect();
    let expected: Vec<&str> = crate::VIEWS.iter().map(|v| v.def.name).chain(["inputs", "progress"]).collect();
    assert_eq!(names, expected);
    for (name, spent) in &accounts {
        assert!(!spent.is_zero(), "no worker time attributed to {name}: {accounts:?}");
    }
}

#[test]
fn idle_merging_frees_a_deleted_samples_updates() {
    // With idle merging on, the M1 input's three slices and their three retractions cancel once
    // the workers are idle, with no later write to drive the merges (docs/operations.md,
    // "Arrangement sizes").
    let options =
        RuntimeOptions { slow_epoch: Some(std::time::Duration::from_secs(60)), idle_merge_effort: Some(1_000) };
    let mut h = Harness::with_options(2, options);
    let s = example_2a_sample("UTC");
    h.step(vec![Change::Sample(s.clone(), 1)]);
    h.step(vec![Change::Sample(s, -1)]);
    assert!(h.rows("daily_rollups").is_empty());
    let elapsed = h.runtime.as_ref().and_then(Runtime::elapsed).expect("introspection is on");
    let held =
        || elapsed.arrangements().into_iter().find(|a| a.operator == "Arrange: M1: slice winner").map(|a| a.records);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while held() != Some(0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(held(), Some(0), "{:?}", elapsed.arrangements());
}

/// M1 decides a UTC slice among every sample touching it, whatever their zones (§1.5 rule 3), and
/// a local date counts a sample once however many UTC days its winning slices lie in (rule 5).
#[test]
fn m1_slices_compete_across_zones_and_count_a_sample_once_across_utc_midnight() {
    let mut h = Harness::new(2);
    // 18:30–19:30 in New York (EST) on 2024-03-09 is 23:30–00:30 UTC: four slices, two in each
    // UTC day, all on one local date.
    let phone = sample(
        "u",
        "phone",
        "p1",
        Metric::Steps,
        ms("2024-03-09T23:30:00Z"),
        ms("2024-03-10T00:30:00Z"),
        400.0,
        SourceClass::Phone,
        "America/New_York",
    );
    h.step(vec![Change::Sample(phone.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-03-09"), 1, 400.0)]);
    // A watch in Kathmandu (UTC+5:45) over 00:00–00:30 UTC, local 2024-03-10: it wins the phone's
    // two slices after the UTC midnight, whose shares go to its own local date; the phone keeps
    // its first two slices and is counted once on its date.
    let watch = sample(
        "u",
        "watch",
        "w1",
        Metric::Steps,
        ms("2024-03-10T00:00:00Z"),
        ms("2024-03-10T00:30:00Z"),
        90.0,
        SourceClass::Watch,
        "Asia/Kathmandu",
    );
    h.step(vec![Change::Sample(watch.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-03-09"), 1, 200.0), (day("2024-03-10"), 1, 90.0)]);
    // The watch over the phone's first half instead (23:30–00:00 UTC is still 2024-03-10 in
    // Kathmandu): the phone wins only after the UTC midnight.
    let earlier = sample(
        "u",
        "watch",
        "w1",
        Metric::Steps,
        ms("2024-03-09T23:30:00Z"),
        ms("2024-03-10T00:00:00Z"),
        30.0,
        SourceClass::Watch,
        "Asia/Kathmandu",
    );
    h.step(vec![Change::Sample(watch, -1), Change::Sample(earlier.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-03-09"), 1, 200.0), (day("2024-03-10"), 1, 30.0)]);
    // Without the watch, the phone wins all four again: one sample, one count.
    h.step(vec![Change::Sample(earlier, -1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-03-09"), 1, 400.0)]);
    h.step(vec![Change::Sample(phone, -1)]);
    assert!(cumulative_days(&h, "steps").is_empty());
}

/// A zone that falls back across local midnight revisits a date after the next one began:
/// America/St_Johns fell back at 00:01 NDT on 2010-11-07 (02:31 UTC), so the slice at 02:30 UTC is
/// on 11-07 and the one at 02:45 UTC on 11-06 again. M1 and the by-source view count the sample
/// once on 11-06, with all of its shares there.
#[test]
fn m1_and_by_source_count_once_a_date_revisited_after_a_utc_midnight() {
    let mut h = Harness::new(2);
    let by_source = |h: &Harness| -> Vec<(i32, Datum, Datum, Option<f64>)> {
        h.rows("daily_rollups_by_source")
            .into_iter()
            .filter_map(|r| match &r[2] {
                Datum::Date(d) => Some((*d, r[3].clone(), r[6].clone(), float(&r[7]))),
                _ => None,
            })
            .collect()
    };
    // 14 slices of 100: 11-06 has 23:30Z, 23:45Z (UTC 11-06), 00:00–02:15Z and 02:45Z (UTC
    // 11-07); 11-07 has 02:30Z.
    let phone = sample(
        "u",
        "phone",
        "p1",
        Metric::Steps,
        ms("2010-11-06T23:30:00Z"),
        ms("2010-11-07T03:00:00Z"),
        1400.0,
        SourceClass::Phone,
        "America/St_Johns",
    );
    h.step(vec![Change::Sample(phone.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2010-11-06"), 1, 1300.0), (day("2010-11-07"), 1, 100.0)]);
    // A UTC watch wins 00:00–02:15Z (5 each): the phone keeps 23:30Z, 23:45Z and the revisited
    // 02:45Z on 11-06.
    let watch = sample(
        "u",
        "watch",
        "w1",
        Metric::Steps,
        ms("2010-11-07T00:00:00Z"),
        ms("2010-11-07T02:30:00Z"),
        50.0,
        SourceClass::Watch,
        "UTC",
    );
    h.step(vec![Change::Sample(watch.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2010-11-06"), 1, 300.0), (day("2010-11-07"), 2, 150.0)]);
    let (p, w) = (Datum::Str("phone".into()), Datum::Str("watch".into()));
    assert_eq!(
        by_source(&h),
        vec![
            (day("2010-11-06"), p.clone(), Datum::Int(1), Some(1300.0)),
            (day("2010-11-07"), p, Datum::Int(1), Some(100.0)),
            (day("2010-11-07"), w, Datum::Int(1), Some(50.0)),
        ]
    );
    h.step(vec![Change::Sample(watch, -1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2010-11-06"), 1, 1300.0), (day("2010-11-07"), 1, 100.0)]);
    h.step(vec![Change::Sample(phone, -1)]);
    assert!(cumulative_days(&h, "steps").is_empty() && by_source(&h).is_empty());
}

#[test]
fn worked_example_2a_step_by_step_with_edit_and_delete() {
    let mut h = Harness::new(2);
    let s = example_2a_sample("America/New_York");
    h.step(vec![Change::Sample(s.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-05-31"), 1, 300.0), (day("2024-06-01"), 1, 900.0)]);
    let by_source = h.rows("daily_rollups_by_source");
    assert_eq!(by_source.len(), 2);
    assert_eq!(by_source[0][3], Datum::Str("watch-1".into()));

    // An edit moves the row's contribution: retraction of the old, insertion of the new.
    let mut edited = s.clone();
    edited.value = Some(OrdF64(2400.0));
    h.step(vec![Change::Sample(s, -1), Change::Sample(edited.clone(), 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-05-31"), 1, 600.0), (day("2024-06-01"), 1, 1800.0)]);

    // An empty epoch changes nothing.
    h.step(vec![]);
    assert_eq!(cumulative_days(&h, "steps").len(), 2);

    h.step(vec![Change::Sample(edited, -1)]);
    assert!(h.rows("daily_rollups").is_empty());
    assert!(h.rows("daily_rollups_by_source").is_empty());
}

#[test]
fn worked_example_2b_dst_spring_forward() {
    let mut h = Harness::new(1);
    let s = sample(
        "u1",
        "w",
        "a",
        Metric::Steps,
        ms("2024-03-10T04:00:00Z"),
        ms("2024-03-10T07:00:00Z"),
        1200.0,
        SourceClass::Watch,
        "America/New_York",
    );
    h.step(vec![Change::Sample(s, 1)]);
    let days = cumulative_days(&h, "steps");
    assert_eq!(days.len(), 2);
    assert_eq!((days[0].0, days[0].1), (day("2024-03-09"), 1));
    assert!((days[0].2 - 400.0).abs() < 1e-9);
    assert!((days[1].2 - 800.0).abs() < 1e-9 && days[1].0 == day("2024-03-10"));
}

#[test]
fn m1_priority_slices_prefer_the_watch_and_keep_every_source_by_source() {
    let mut h = Harness::new(2);
    // Phone and watch both count 08:00–09:00; the watch wins every slice, even with a zero.
    let t0 = ms("2024-06-01T08:00:00Z");
    let phone = sample("u1", "iphone", "p1", Metric::Steps, t0, t0 + 3_600_000, 1000.0, SourceClass::Phone, "UTC");
    let watch = sample("u1", "watch", "w1", Metric::Steps, t0, t0 + 1_800_000, 0.0, SourceClass::Watch, "UTC");
    h.step(vec![Change::Sample(phone.clone(), 1), Change::Sample(watch.clone(), 1)]);
    // Slices 08:00–08:30 go to the watch (0 steps), 08:30–09:00 to the phone (500).
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-06-01"), 2, 500.0)]);
    let by_source: Vec<(String, f64)> = h
        .rows("daily_rollups_by_source")
        .into_iter()
        .map(|r| (r[3].as_str().unwrap_or_default().to_owned(), float(&r[7]).unwrap_or(f64::NAN)))
        .collect();
    assert_eq!(by_source, vec![("iphone".into(), 1000.0), ("watch".into(), 0.0)]);
    // Deleting the watch sample hands its slices back to the phone.
    h.step(vec![Change::Sample(watch, -1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-06-01"), 1, 1000.0)]);
}

/// Issue 12: one origin writing steps for a band and a phone is two streams; the band (rank 3)
/// beats the phone (rank 5) in every slice, so the day is the band's alone, while the by-source
/// view keeps the origin's unmerged total.
#[test]
fn m1_one_origin_writing_for_a_band_and_a_phone_is_two_streams() {
    let mut h = Harness::new(2);
    let origin = "com.example.health";
    let hour = |rec: &str, at: &str, v: f64, class: SourceClass| {
        let t = ms(&format!("2024-06-03T{at}:00:00Z"));
        sample("u1", origin, rec, Metric::Steps, t, t + 3_600_000, v, class, "UTC")
    };
    let band = [
        hour("b07", "07", 2000.0, SourceClass::Band),
        hour("b12", "12", 3000.0, SourceClass::Band),
        hour("b18", "18", 2639.0, SourceClass::Band),
    ];
    let phone = [
        hour("p07", "07", 1900.0, SourceClass::Phone),
        hour("p12", "12", 2200.0, SourceClass::Phone),
        hour("p18", "18", 1666.0, SourceClass::Phone),
    ];
    h.step(band.iter().chain(&phone).map(|s| Change::Sample(s.clone(), 1)).collect());
    // 2000 + 3000 + 2639 = 7639 from the three band samples; the phone's 5766 does not count.
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-06-03"), 3, 7639.0)]);
    // By source: every class of the origin, unmerged: 7639 + 5766 = 13405 over 6 samples.
    let by_source: Vec<(Datum, Datum, Option<f64>)> =
        h.rows("daily_rollups_by_source").into_iter().map(|r| (r[3].clone(), r[6].clone(), float(&r[7]))).collect();
    assert_eq!(by_source, vec![(Datum::Str(origin.into()), Datum::Int(6), Some(13405.0))]);
    // With the band's samples gone, the phone stream of the same origin wins every slice.
    h.step(band.iter().map(|s| Change::Sample(s.clone(), -1)).collect());
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-06-03"), 3, 5766.0)]);
    // A band sample over 12:00–12:15 only takes that one slice from the phone: 5766 − 2200/4 + 500.
    let t = ms("2024-06-03T12:00:00Z");
    let short = sample("u1", origin, "b12s", Metric::Steps, t, t + 900_000, 500.0, SourceClass::Band, "UTC");
    h.step(vec![Change::Sample(short, 1)]);
    assert_eq!(cumulative_days(&h, "steps"), vec![(day("2024-06-03"), 4, 5716.0)]);
}

#[test]
fn discrete_stats_and_last_with_ties() {
    let mut h = Harness::new(2);
    let t = ms("2024-06-01T10:00:00Z");
    let a = sample("u1", "w", "b", Metric::HeartRate, t, t, 60.0, SourceClass::Watch, "UTC");
    let b = sample("u1", "w", "a", Metric::HeartRate, t, t, 80.0, SourceClass::Watch, "UTC");
    let c = sample("u1", "p", "c", Metric::HeartRate, t - 60_000, t - 60_000, 100.0, SourceClass::Phone, "UTC");
    h.step(vec![Change::Sample(a.clone(), 1), Change::Sample(b, 1), Change::Sample(c, 1)]);
    let rows = h.rows("daily_rollups");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r[5], Datum::Int(3));
    assert_eq!([6, 7, 8, 9, 10].map(|i| float(&r[i]).unwrap_or(f64::NAN)), [240.0, 80.0, 60.0, 100.0, 60.0]);
    assert_eq!(r[11], Datum::Null);
    // Each source's own figures, from the same day group of readings (§1.5 rule 6).
    let by_source = |h: &Harness| -> Vec<(Datum, Datum, [f64; 3])> {
        h.rows("daily_rollups_by_source")
            .into_iter()
            .map(|r| (r[3].clone(), r[6].clone(), [7, 8, 9].map(|i| float(&r[i]).unwrap_or(f64::NAN))))
            .collect()
    };
    assert_eq!(
        by_source(&h),
        vec![
            (Datum::Str("p".into()), Datum::Int(1), [100.0, 100.0, 100.0]),
            (Datum::Str("w".into()), Datum::Int(2), [140.0, 60.0, 80.0]),
        ]
    );
    // Retracting the current `last` makes the tie-break pick the other sample at the same instant.
    h.step(vec![Change::Sample(a, -1)]);
    let r = &h.rows("daily_rollups")[0];
    assert_eq!([8, 9, 10].map(|i| float(&r[i]).unwrap_or(f64::NAN)), [80.0, 100.0, 80.0]);
    assert_eq!(
        by_source(&h),
        vec![
            (Datum::Str("p".into()), Datum::Int(1), [100.0, 100.0, 100.0]),
            (Datum::Str("w".into()), Datum::Int(1), [80.0, 80.0, 80.0]),
        ]
    );
}

#[test]
fn interval_minutes_are_a_union_across_sources() {
    let mut h = Harness::new(1);
    let t = ms("2024-06-01T23:30:00Z");
    let mut a = sample("u1", "w", "m1", Metric::MindfulMinutes, t, t + 3_600_000, 60.0, SourceClass::Watch, "UTC");
    a.value = None;
    let b =
        sample("u1", "p", "m2", Metric::MindfulMinutes, t + 600_000, t + 1_200_000, 10.0, SourceClass::Phone, "UTC");
    h.step(vec![Change::Sample(a, 1), Change::Sample(b, 1)]);
    let rows: Vec<(i32, Datum, Option<f64>)> = h
        .rows("daily_rollups")
        .into_iter()
        .map(|r| {
            (
                match r[2] {
                    Datum::Date(d) => d,
                    _ => 0,
                },
                r[5].clone(),
                float(&r[11]),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![(day("2024-06-01"), Datum::Int(2), Some(30.0)), (day("2024-06-02"), Datum::Int(0), Some(30.0))]
    );
}

// ---- property test against a from-scratch oracle ----

/// The oracle: `daily_rollups` for CUMULATIVE metrics computed directly from the final rows, by
/// the letter of M1: for every slice, the samples touching it are grouped by stream
/// `(sourceId, sourceClass)`; the stream with the best (rank, sourceId) wins and only its samples
/// count, so one sourceId writing under two classes is two competitors, not one.
fn oracle_cumulative(rows: &[Sample]) -> BTreeMap<(String, String, i32), (i64, f64)> {
    let mut slices: BTreeMap<(String, Metric, i64), Vec<&Sample>> = BTreeMap::new();
    for s in rows {
        let first = s.start_ms.div_euclid(SLICE_MS);
        let last = if s.end_ms > s.start_ms { (s.end_ms - 1).div_euclid(SLICE_MS) } else { first };
        for k in first..=last {
            slices.entry((s.user_id.clone(), s.metric, k)).or_default().push(s);
        }
    }
    type Contribs = (BTreeSet<(String, String)>, Vec<(String, String, f64)>);
    let mut days: BTreeMap<(String, String, i32), Contribs> = BTreeMap::new();
    for ((user, metric, k), samples) in slices {
        let mut streams: BTreeMap<(u8, &str, SourceClass), Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            streams.entry((s.source_class.rank(), &s.source_id, s.source_class)).or_default().push(s);
        }
        let Some((_, winners)) = streams.into_iter().next() else { continue };
        for s in winners {
            let a = k * SLICE_MS;
            let c = share(s.start_ms, s.end_ms, s.value.map_or(0.0, |v| v.0), a, a + SLICE_MS);
            let d = date_to_days(s.zone.local_date(a));
            let e = days.entry((user.clone(), metric.key().to_owned(), d)).or_default();
            e.0.insert((s.source_id.clone(), s.source_record_id.clone()));
            e.1.push((s.source_id.clone(), s.source_record_id.clone(), c));
        }
    }
    days.into_iter()
        .map(|(k, (ids, mut contribs))| {
            contribs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)).then(a.2.total_cmp(&b.2)));
            (k, (ids.len() as i64, contribs.iter().map(|c| c.2).sum()))
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Upsert { user: u8, source: u8, rec: u8, class: u8, start_q: u16, len_min: u16, value: u16, zone: u8 },
    Delete { user: u8, source: u8, rec: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..3u8, 0..6u8, 0..2u8, 0..300u16, 0..400u16, 0..1000u16, 0..3u8).prop_map(|(user, source, rec, class, start_q, len_min, value, zone)| Op::Upsert { user, source, rec, class, start_q, len_min, value, zone }),
        1 => (0..2u8, 0..3u8, 0..6u8).prop_map(|(user, source, rec)| Op::Delete { user, source, rec }),
    ]
}

const ZONES: [&str; 3] = ["America/New_York", "Asia/Kathmandu", "UTC"];
/// The classes each source writes under, picked per sample (an edit may move a sample between
/// them): `s0` is one app writing for a watch and a phone, `s1` for a band and a phone, `s2` for
/// the phone only (so two sources tie on the phone's rank and `sourceId` decides).
const CLASSES: [[SourceClass; 2]; 3] = [
    [SourceClass::Watch, SourceClass::Phone],
    [SourceClass::Band, SourceClass::Phone],
    [SourceClass::Phone, SourceClass::Phone],
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random inserts, edits and deletes in random batches, from sources that write under several
    /// classes, give the same `daily_rollups`, `daily_rollups_by_source` (keyed by sourceId, all of
    /// its classes) and `weekly_steps` as a from-scratch computation over the final rows.
    #[test]
    fn daily_rollups_equal_the_oracle(ops in prop::collection::vec(op(), 1..80), cuts in prop::collection::vec(1..12usize, 1..10)) {
        let mut h = Harness::new(2);
        let mut current: BTreeMap<(u8, u8, u8), Sample> = BTreeMap::new();
        let base = ms("2024-03-09T12:00:00Z");
        let mut pending = Vec::new();
        let mut cut = cuts.iter().cycle();
        let mut until_cut = *cut.next().unwrap_or(&1);
        for op in ops {
            match op {
                Op::Upsert { user, source, rec, class, start_q, len_min, value, zone } => {
                    let start = base + i64::from(start_q) * 7 * 60_000 + i64::from(rec) * 1_000;
                    let class = CLASSES[source as usize][class as usize];
                    let s = sample(&format!("u{user}"), &format!("s{source}"), &format!("r{rec}"), Metric::Steps,
                        start, start + i64::from(len_min) * 60_000, f64::from(value), class, ZONES[zone as usize]);
                    if let Some(old) = current.insert((user, source, rec), s.clone()) {
                        pending.push(Change::Sample(old, -1));
                    }
                    pending.push(Change::Sample(s, 1));
                }
                Op::Delete { user, source, rec } => {
                    if let Some(old) = current.remove(&(user, source, rec)) {
                        pending.push(Change::Sample(old, -1));
                    }
                }
            }
            until_cut -= 1;
            if until_cut == 0 {
                h.step(std::mem::take(&mut pending));
                until_cut = *cut.next().unwrap_or(&1);
            }
        }
        h.step(pending);
        let rows: Vec<Sample> = current.into_values().collect();
        let want = oracle_cumulative(&rows);
        let got: BTreeMap<(String, String, i32), (i64, f64)> = h
            .rows("daily_rollups")
            .into_iter()
            .map(|r| match (&r[0], &r[1], &r[2], &r[5]) {
                (Datum::Str(u), Datum::Str(m), Datum::Date(d), Datum::Int(c)) => ((u.clone(), m.clone(), *d), (*c, float(&r[6]).unwrap_or(f64::NAN))),
                _ => panic!("bad row {r:?}"),
            })
            .collect();
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, (c, s)) in &want {
            let (gc, gs) = got[k];
            prop_assert_eq!(gc, *c, "count of {:?}", k);
            prop_assert!((gs - s).abs() <= 1e-9 * s.abs().max(1.0), "sum of {:?}: {} vs {}", k, gs, s);
        }
        // weekly_steps: the oracle's step days summed per ISO week.
        let mut weeks: BTreeMap<(String, i32), (f64, i64)> = BTreeMap::new();
        for ((u, m, d), (_, sum)) in &want {
            if m == "steps" {
                let date = vitalflow_schemas::time::days_to_date(*d);
                let monday = *d - i32::try_from(chrono::Datelike::weekday(&date).num_days_from_monday()).unwrap_or(0);
                let e = weeks.entry((u.clone(), monday)).or_insert((0.0, 0));
                e.0 += sum;
                e.1 += 1;
            }
        }
        let got_weeks: BTreeMap<(String, i32), (f64, i64)> = h
            .rows("weekly_steps")
            .into_iter()
            .map(|r| match (&r[0], &r[1], &r[3]) {
                (Datum::Str(u), Datum::Date(w), Datum::Int(n)) => ((u.clone(), *w), (float(&r[2]).unwrap_or(f64::NAN), *n)),
                _ => panic!("bad row {r:?}"),
            })
            .collect();
        prop_assert_eq!(got_weeks.keys().collect::<Vec<_>>(), weeks.keys().collect::<Vec<_>>());
        for (k, (sum, n)) in &weeks {
            let (gs, gn) = got_weeks[k];
            prop_assert_eq!(gn, *n);
            prop_assert!((gs - sum).abs() <= 1e-9 * sum.abs().max(1.0), "week {:?}: {} vs {}", k, gs, sum);
        }
        // daily_rollups_by_source: every source's own C1/C3 day shares, no merge.
        let mut by_source: BTreeMap<(String, i32, String), (i64, f64)> = BTreeMap::new();
        for x in &rows {
            for (d, share, _) in vitalflow_schemas::split::day_shares(x.start_ms, x.end_ms, x.value.map_or(0.0, |v| v.0), x.zone) {
                let e = by_source.entry((x.user_id.clone(), d, x.source_id.clone())).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += share;
            }
        }
        let got_by_source: BTreeMap<(String, i32, String), (i64, f64)> = h
            .rows("daily_rollups_by_source")
            .into_iter()
            .map(|r| match (&r[0], &r[2], &r[3], &r[6]) {
                (Datum::Str(u), Datum::Date(d), Datum::Str(src), Datum::Int(c)) => ((u.clone(), *d, src.clone()), (*c, float(&r[7]).unwrap_or(f64::NAN))),
                _ => panic!("bad row {r:?}"),
            })
            .collect();
        prop_assert_eq!(got_by_source.keys().collect::<Vec<_>>(), by_source.keys().collect::<Vec<_>>());
        for (k, (c, s)) in &by_source {
            let (gc, gs) = got_by_source[k];
            prop_assert_eq!(gc, *c, "by-source count of {:?}", k);
            prop_assert!((gs - s).abs() <= 1e-9 * s.abs().max(1.0), "by-source sum of {:?}: {} vs {}", k, gs, s);
        }
    }
}

// ---- routine bins (DOMAIN.md §5) ----

fn session(user: &str, id: &str, product: &str, start: i64, zone: &str) -> vitalflow_schemas::domain::Session {
    vitalflow_schemas::domain::Session {
        user_id: user.into(),
        session_id: id.into(),
        product_id: product.into(),
        start_ms: start,
        end_ms: Some(start + 600_000),
        quantity: OrdF64(1.0),
        zone: Zone::parse(zone).expect(zone),
    }
}

#[test]
fn bin_index_test_vectors() {
    use crate::routine_bins::bin_index;
    let bin = |instant: &str, zone: &str| bin_index(Zone::parse(zone).expect(zone).local(ms(instant)));
    let ny = "America/New_York";
    assert_eq!(bin("2024-03-11T12:30:00Z", ny), 8);
    assert_eq!(bin("2024-03-10T06:30:00Z", ny), 145);
    assert_eq!(bin("2024-03-10T07:30:00Z", ny), 147);
    assert_eq!(bin("2024-11-03T05:30:00Z", ny), 145);
    assert_eq!(bin("2024-11-03T06:30:00Z", ny), 145);
    assert_eq!(bin("2024-06-02T22:59:59Z", "Europe/London"), 167);
    assert_eq!(bin("2024-06-02T23:00:00Z", "Europe/London"), 0);
}

#[test]
fn worked_example_5_routine_peaks() {
    let mut h = Harness::new(2);
    // Mondays 08h (bin 8) ×6, Tuesdays 08h (bin 32) ×3, Saturday 23h (bin 143) ×1, all in UTC.
    let monday = ms("2024-06-03T08:10:00Z");
    let mut changes = Vec::new();
    for i in 0..6 {
        changes.push(Change::Session(session("u1", &format!("m{i}"), "coffee", monday + i * 7 * 86_400_000, "UTC"), 1));
    }
    for i in 0..3 {
        changes.push(Change::Session(
            session("u1", &format!("t{i}"), "coffee", monday + 86_400_000 + i * 7 * 86_400_000, "UTC"),
            1,
        ));
    }
    changes.push(Change::Session(session("u1", "s0", "tea", ms("2024-06-08T23:30:00Z"), "UTC"), 1));
    h.step(changes);
    let rows: Vec<(String, i64, i64, i64, f64, f64, bool)> = h
        .rows("routine_bins")
        .into_iter()
        .map(|r| match (&r[1], &r[2], &r[5], &r[6], &r[9]) {
            (Datum::Str(scope), Datum::Int(bin), Datum::Int(c), Datum::Int(n), Datum::Bool(peak)) => {
                (scope.clone(), *bin, *c, *n, float(&r[7]).unwrap_or(f64::NAN), float(&r[8]).unwrap_or(f64::NAN), *peak)
            }
            _ => panic!("bad row {r:?}"),
        })
        .collect();
    let all: Vec<_> = rows.iter().filter(|r| r.0 == "*").collect();
    assert_eq!(all.len(), 3);
    let expect =
        [(8, 6, 0.069_148_9, 11.617, true), (32, 3, 0.037_234_0, 6.255, true), (143, 1, 0.015_957_4, 2.681, false)];
    for (row, (bin, c, p, lift, peak)) in all.iter().zip(expect) {
        assert_eq!((row.1, row.2, row.3, row.6), (bin, c, 10, peak));
        assert!((row.4 - p).abs() < 1e-6 && (row.5 - lift).abs() < 1e-3, "{row:?}");
    }
    // Per product: coffee has N = 9 (peaks 8 and 32), tea N = 1 (not enough data, no peak).
    let tea: Vec<_> = rows.iter().filter(|r| r.0 == "tea").collect();
    assert_eq!(tea.len(), 1);
    assert!(!tea[0].6 && tea[0].3 == 1);
    assert_eq!(rows.iter().filter(|r| r.0 == "coffee" && r.6).count(), 2);
    // Deleting sessions retracts exactly: with N = 4 nothing is a peak any more.
    let mut dels = Vec::new();
    for i in 0..6 {
        dels.push(Change::Session(session("u1", &format!("m{i}"), "coffee", monday + i * 7 * 86_400_000, "UTC"), -1));
    }
    h.step(dels);
    let rows = h.rows("routine_bins");
    assert!(rows.iter().all(|r| r[9] == Datum::Bool(false)
        && r[6]
            == Datum::Int(if r[1] == Datum::Str("tea".into()) {
                1
            } else if r[1] == Datum::Str("*".into()) {
                4
            } else {
                3
            })));
}

// ---- session and product impacts (DOMAIN.md §4) ----

fn closed_session(id: &str, start: i64, end: i64) -> vitalflow_schemas::domain::Session {
    let mut s = session("u1", id, "p1", start, "UTC");
    s.end_ms = Some(end);
    s
}

fn hr(rec: &str, t: i64, v: f64) -> Sample {
    sample("u1", "watch", rec, Metric::HeartRate, t, t, v, SourceClass::Watch, "UTC")
}

fn col(h: &Harness, view: &str, name: &str) -> Vec<Datum> {
    let def = crate::VIEWS[view_index(view).expect("view")].def;
    let i = def.column_index(name).expect("column");
    h.rows(view).into_iter().map(|r| r[i].clone()).collect()
}

#[test]
fn worked_example_4_through_the_dataflow() {
    let mut h = Harness::new(2);
    let mut changes = Vec::new();
    for (i, delta) in [15.0, 5.0, 10.0].into_iter().enumerate() {
        let noon = ms("2024-06-01T12:00:00Z") + i as i64 * 86_400_000;
        changes.push(Change::Session(closed_session(&format!("s{i}"), noon, noon + 1_800_000), 1));
        changes.push(Change::Sample(hr(&format!("b{i}"), noon - 1_800_000, 60.0), 1));
        changes.push(Change::Sample(hr(&format!("d{i}"), noon + 600_000, 60.0 + delta), 1));
    }
    h.step(changes);
    assert_eq!(col(&h, "session_impacts", "delta_during"), [15.0, 5.0, 10.0].map(|d| Datum::float(Some(d))).to_vec());
    assert_eq!(col(&h, "session_impacts", "after_n"), vec![Datum::Int(0); 3]);
    assert_eq!(col(&h, "session_impacts", "delta_after"), vec![Datum::Null; 3]);
    let stats = |h: &Harness| {
        ["delta_during_n", "delta_during_mean", "delta_during_variance", "delta_during_sd", "session_count"]
            .map(|c| col(h, "product_impacts", c).pop().unwrap_or(Datum::Null))
    };
    assert_eq!(
        stats(&h),
        [Datum::Int(3), Datum::float(Some(10.0)), Datum::float(Some(25.0)), Datum::float(Some(5.0)), Datum::Int(3)]
    );
    // Removing the session with delta 5 retracts it from the statistics.
    let noon = ms("2024-06-02T12:00:00Z");
    h.step(vec![Change::Session(closed_session("s1", noon, noon + 1_800_000), -1)]);
    assert_eq!(
        stats(&h),
        [
            Datum::Int(2),
            Datum::float(Some(12.5)),
            Datum::float(Some(12.5)),
            Datum::float(Some(12.5f64.sqrt())),
            Datum::Int(2)
        ]
    );
}

#[test]
fn impacts_use_the_best_source_rate_and_flag_contamination() {
    let mut h = Harness::new(1);
    let s = ms("2024-06-01T12:00:00Z");
    let steps = |src: &str, rec: &str, a: i64, b: i64, v: f64, class| {
        sample("u1", src, rec, Metric::Steps, a, b, v, class, "UTC")
    };
    h.step(vec![
        Change::Session(closed_session("s", s, s + 3_600_000), 1),
        // BEFORE [11:00, 12:00): the watch wins over the phone; 300 steps in 1 h → 300/h.
        Change::Sample(steps("watch", "w1", s - 1_800_000, s, 300.0, SourceClass::Watch), 1),
        Change::Sample(steps("phone", "p1", s - 3_600_000, s, 900.0, SourceClass::Phone), 1),
        // DURING [12:00, 13:00): only the phone, half of a 2 h sample → 600 steps/h.
        Change::Sample(steps("phone", "p2", s, s + 7_200_000, 1200.0, SourceClass::Phone), 1),
    ]);
    let row = |h: &Harness, c: &str| col(h, "session_impacts", c).pop().unwrap_or(Datum::Null);
    assert_eq!(row(&h, "before_mean"), Datum::float(Some(300.0)));
    assert_eq!(row(&h, "before_n"), Datum::Int(1));
    assert_eq!(row(&h, "during_mean"), Datum::float(Some(600.0)));
    // AFTER [13:00, 15:00): the same phone sample's other half: 600 steps over 2 h → 300/h.
    assert_eq!(row(&h, "after_mean"), Datum::float(Some(300.0)));
    assert_eq!(row(&h, "pct_delta_during"), Datum::float(Some(1.0)));
    assert_eq!(row(&h, "baseline_contaminated"), Datum::Bool(false));
    // An open session 30 min before contaminates the baseline; it has no impact itself.
    h.step(
        vec![Change::Session(session("u1", "open", "p2", s - 1_800_000, "UTC"), 1)]
            .into_iter()
            .map(|c| match c {
                Change::Session(mut x, d) => {
                    x.end_ms = None;
                    Change::Session(x, d)
                }
                other => other,
            })
            .collect(),
    );
    assert_eq!(row(&h, "baseline_contaminated"), Datum::Bool(true));
    assert_eq!(h.rows("session_impacts").len(), 1);
}

/// §4 with many sources and short windows: a window's best source is the best stream overlapping
/// it, wherever in the window (whole hours, parts of hours, parts of one minute), and its total is
/// that `sourceId`'s samples of every class.
#[test]
fn the_best_source_is_found_in_any_part_of_a_window() {
    let mut h = Harness::new(1);
    let s = ms("2024-06-01T12:05:10Z");
    let steps = |src: &str, rec: &str, a: i64, b: i64, v: f64, class| {
        sample("u1", src, rec, Metric::Steps, a, b, v, class, "UTC")
    };
    let mut changes = vec![Change::Session(closed_session("short", s, s + 30_000), 1)];
    // Many phones over the whole hour 12:00–13:00.
    for i in 0..50 {
        let start = ms("2024-06-01T12:00:00Z");
        changes.push(Change::Sample(
            steps(&format!("phone-{i:02}"), &format!("p{i}"), start, start + 3_600_000, 3600.0, SourceClass::Phone),
            1,
        ));
    }
    // A watch sample ending 20 s into the 30 s session, and one of the same watch, as a phone,
    // in the session's last 5 s: both count for the watch.
    changes.push(Change::Sample(steps("watch", "w1", s - 10_000, s + 20_000, 6.0, SourceClass::Watch), 1));
    changes.push(Change::Sample(steps("watch", "w2", s + 25_000, s + 35_000, 2.0, SourceClass::Phone), 1));
    h.step(changes);
    let row = |h: &Harness, c: &str| float(&col(h, "session_impacts", c).pop().unwrap_or(Datum::Null));
    // DURING [12:05:10, 12:05:40), 1/120 h long, holds 20 s of w1's 30 s and 5 s of w2's 10 s.
    let during = (6.0 * 20.0 / 30.0 + 2.0 * 5.0 / 10.0) * 120.0;
    assert!((row(&h, "during_mean").unwrap_or(f64::NAN) - during).abs() < 1e-9, "{:?}", row(&h, "during_mean"));
    assert_eq!(col(&h, "session_impacts", "during_n"), vec![Datum::Int(2)]);
    // BEFORE [11:05:10, 12:05:10) meets the watch for its last 10 s, so the watch wins there too.
    assert!((row(&h, "before_mean").unwrap_or(f64::NAN) - 6.0 * 10.0 / 30.0).abs() < 1e-9);
    // Removing the watch: phone-00 (the smallest sourceId among equal classes) wins, at 3600/h.
    h.step(vec![
        Change::Sample(steps("watch", "w1", s - 10_000, s + 20_000, 6.0, SourceClass::Watch), -1),
        Change::Sample(steps("watch", "w2", s + 25_000, s + 35_000, 2.0, SourceClass::Phone), -1),
    ]);
    assert!((row(&h, "during_mean").unwrap_or(f64::NAN) - 3600.0).abs() < 1e-9);
    assert_eq!(col(&h, "session_impacts", "during_n"), vec![Datum::Int(1)]);
}

/// Tiny shares keep their precision: a 1 mm distance sample over 24 h with 1 ms in BEFORE, and
/// 1 mm over one minute in DURING (found by a break attempt on a 2⁻⁶⁴ fixed point).
#[test]
fn tiny_shares_keep_their_precision() {
    let mut h = Harness::new(1);
    let s = ms("2024-06-02T12:00:00Z");
    let distance = |rec: &str, a: i64, b: i64| {
        sample("u1", "phone", rec, Metric::Distance, a, b, 0.001, SourceClass::Phone, "UTC")
    };
    let long_start = s - 86_400_000 - 3_600_000 + 1;
    h.step(vec![
        Change::Session(closed_session("s", s, s + 600_000), 1),
        Change::Sample(distance("d1", long_start, long_start + 86_400_000), 1),
        Change::Sample(distance("d2", s + 60_000, s + 120_000), 1),
    ]);
    let row = |c: &str| float(&col(&h, "session_impacts", c).pop().unwrap_or(Datum::Null));
    // BEFORE holds 1 ms of the day-long sample; the rate is per hour of window.
    let before = 0.001 * 1.0 / 86_400_000.0;
    let during = 0.001 / (600_000.0 / 3_600_000.0);
    let want = (during - before) / before;
    let got = row("pct_delta_during").unwrap_or(f64::NAN);
    assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
    assert!((row("before_mean").unwrap_or(f64::NAN) - before).abs() <= 1e-15 * before);
}

/// `deltaDuring` is the difference of the exact means: equal means of 2.5·10⁸ give 0, not an ulp of
/// the means between their two roundings (G4 compares a delta near 0 to 1e-9; found by a break attempt).
#[test]
fn equal_large_means_give_a_zero_delta() {
    for during_ms in [1, 7, 1_000, 60_000] {
        let mut h = Harness::new(1);
        let s = ms("2024-03-10T05:00:00Z");
        h.step(vec![
            Change::Session(closed_session("s", s, s + during_ms), 1),
            Change::Sample(
                sample("u1", "w", "big", Metric::Steps, s - 3_600_000, s + 10_800_000, 1e9, SourceClass::Watch, "UTC"),
                1,
            ),
        ]);
        let row = |c: &str| float(&col(&h, "session_impacts", c).pop().unwrap_or(Datum::Null));
        let mean = 1e9 / 4.0;
        assert!((row("before_mean").unwrap_or(f64::NAN) - mean).abs() <= 1e-9 * mean, "{during_ms}");
        assert!((row("during_mean").unwrap_or(f64::NAN) - mean).abs() <= 1e-9 * mean, "{during_ms}");
        for c in ["delta_during", "delta_after", "pct_delta_during", "pct_delta_after"] {
            assert!(row(c).unwrap_or(f64::NAN).abs() <= 1e-9, "{c} of a {during_ms} ms session: {:?}", row(c));
        }
    }
}

// ---- sleep nights (DOMAIN.md §3) ----

fn stage(
    source: &str,
    rec: &str,
    class: SourceClass,
    stage: vitalflow_schemas::sleep::SleepStage,
    a: &str,
    b: &str,
) -> Change {
    let mut s = sample("u1", source, rec, Metric::SleepAnalysis, ms(a), ms(b), 0.0, class, "America/New_York");
    s.value = None;
    s.category = Some(stage);
    Change::Sample(s, 1)
}

#[test]
fn worked_example_3_sleep_night() {
    use vitalflow_schemas::sleep::SleepStage::*;
    let w = |rec: &str, st, a: &str, b: &str| {
        stage("W", rec, SourceClass::Watch, st, &format!("2024-06-02T{a}:00Z"), &format!("2024-06-02T{b}:00Z"))
    };
    // Source W's night (samples 1–9), then its afternoon nap (10), P's in-bed and R's sleep.
    let night = vec![
        w("1", Core, "03:05", "04:30"),
        w("2", Deep, "04:30", "05:15"),
        w("3", Core, "05:15", "06:40"),
        w("4", Awake, "06:40", "06:55"),
        w("5", Rem, "06:55", "07:40"),
        w("6", Core, "07:40", "09:10"),
        w("7", Core, "09:50", "10:30"),
        w("8", Awake, "10:30", "10:40"),
        w("9", Rem, "10:40", "11:00"),
    ];
    let mut h = Harness::new(2);
    let mut first = night.clone();
    first.extend([
        w("10", Core, "18:00", "18:35"),
        stage("P", "ib", SourceClass::Phone, InBed, "2024-06-02T02:45:00Z", "2024-06-02T11:10:00Z"),
        stage("R", "r1", SourceClass::Ring, Unspecified, "2024-06-02T03:20:00Z", "2024-06-02T10:50:00Z"),
    ]);
    let oracle_input: Vec<Sample> =
        first.iter().filter_map(|c| if let Change::Sample(s, _) = c { Some(s.clone()) } else { None }).collect();
    h.step(first);
    let def = crate::VIEWS[view_index("sleep_nights").expect("view")].def;
    let rows = h.rows("sleep_nights");
    assert_eq!(rows.len(), 2);
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(sorted, sleep_oracle(&oracle_input), "the oracle agrees on worked example 3");
    let get = |r: &Row, c: &str| r[def.column_index(c).expect(c)].clone();
    let f = |x: f64| Datum::float(Some(x));
    let main = &rows[0];
    assert_eq!(get(main, "night_date"), Datum::Date(day("2024-06-02")));
    assert_eq!(get(main, "sleep_onset_at"), Datum::Ts(ms("2024-06-02T03:05:00Z")));
    assert_eq!(get(main, "wake_at"), Datum::Ts(ms("2024-06-02T11:00:00Z")));
    for (c, v) in [
        ("total_asleep_min", 410.0),
        ("core_min", 300.0),
        ("deep_min", 45.0),
        ("rem_min", 65.0),
        ("unspecified_min", 0.0),
        ("waso_min", 65.0),
        ("time_in_bed_min", 505.0),
        ("sleep_latency_min", 20.0),
    ] {
        assert_eq!(get(main, c), f(v), "{c}");
    }
    assert_eq!(get(main, "awakenings_count"), Datum::Int(3));
    assert_eq!(get(main, "bedtime_at"), Datum::Ts(ms("2024-06-02T02:45:00Z")));
    assert_eq!(get(main, "rise_at"), Datum::Ts(ms("2024-06-02T11:10:00Z")));
    let Datum::Float(eff) = get(main, "efficiency") else { panic!("efficiency") };
    assert!((eff.0 - 410.0 / 505.0).abs() < 1e-12);
    assert_eq!(get(main, "canonical_source_id"), Datum::Str("W".into()));
    assert_eq!(get(main, "source_count"), Datum::Int(2));
    assert_eq!(get(main, "has_stages"), Datum::Bool(true));
    assert_eq!(get(main, "is_main"), Datum::Bool(true));
    assert_eq!(get(main, "zone_id"), Datum::Str("America/New_York".into()));
    let nap = &rows[1];
    assert_eq!(get(nap, "night_date"), Datum::Date(day("2024-06-02")));
    assert_eq!(get(nap, "total_asleep_min"), f(35.0));
    assert_eq!(get(nap, "is_main"), Datum::Bool(false));
    assert_eq!(get(nap, "sleep_latency_min"), Datum::Null, "not augmented with P's in-bed interval");
    assert_eq!(get(nap, "time_in_bed_min"), f(35.0));

    // Late data: deleting the watch's night makes the ring canonical for it.
    h.step(
        night
            .into_iter()
            .map(|c| match c {
                Change::Sample(s, _) => Change::Sample(s, -1),
                other => other,
            })
            .collect(),
    );
    let rows = h.rows("sleep_nights");
    assert_eq!(rows.len(), 2);
    let main = rows.iter().find(|r| get(r, "is_main") == Datum::Bool(true)).expect("main");
    assert_eq!(get(main, "canonical_source_id"), Datum::Str("R".into()));
    assert_eq!(get(main, "total_asleep_min"), f(450.0));
    assert_eq!(get(main, "unspecified_min"), f(450.0));
    assert_eq!(get(main, "has_stages"), Datum::Bool(false));
    assert_eq!(get(main, "sleep_latency_min"), f(35.0));
}

// ---- weekly_steps: the view docs/adding-a-view.md walks through ----

#[test]
fn weekly_steps_as_the_walkthrough_describes() {
    let mut h = Harness::new(2);
    let steps = |rec: &str, at: &str, v: f64| {
        sample("u1", "w", rec, Metric::Steps, ms(at), ms(at) + 600_000, v, SourceClass::Watch, "UTC")
    };
    let sunday = steps("b", "2024-06-09T10:00:00Z", 50.0);
    let next_monday = steps("c", "2024-06-10T10:00:00Z", 7.0);
    h.step(vec![
        Change::Sample(steps("a", "2024-06-03T10:00:00Z", 100.0), 1),
        Change::Sample(sunday.clone(), 1),
        Change::Sample(next_monday.clone(), 1),
    ]);
    let weeks = |h: &Harness| -> Vec<(i32, f64, i64)> {
        h.rows("weekly_steps")
            .into_iter()
            .map(|r| match (&r[1], &r[2], &r[3]) {
                (Datum::Date(d), Datum::Float(s), Datum::Int(n)) => (*d, s.0, *n),
                _ => panic!("bad row {r:?}"),
            })
            .collect()
    };
    assert_eq!(weeks(&h), vec![(day("2024-06-03"), 150.0, 2), (day("2024-06-10"), 7.0, 1)]);
    let mut edited = sunday.clone();
    edited.value = Some(OrdF64(70.0));
    h.step(vec![Change::Sample(sunday, -1), Change::Sample(edited, 1), Change::Sample(next_monday, -1)]);
    assert_eq!(weeks(&h), vec![(day("2024-06-03"), 170.0, 2)]);
}

// ---- routine_bins against a from-scratch oracle ----

type RoutineRows = BTreeMap<(String, String, i64), (i64, i64, f64, bool)>;

/// The oracle: §5 computed directly from the final sessions.
fn oracle_routines(sessions: &[vitalflow_schemas::domain::Session]) -> RoutineRows {
    use crate::routine_bins::{ALPHA, C_MIN, K, LIFT_MIN, MAX_PEAKS, N_MIN, bin_index};
    let mut counts: BTreeMap<(String, String), BTreeMap<i64, i64>> = BTreeMap::new();
    for s in sessions {
        let bin = i64::from(bin_index(s.zone.local(s.start_ms)));
        for scope in ["*".to_owned(), s.product_id.clone()] {
            *counts.entry((s.user_id.clone(), scope)).or_default().entry(bin).or_insert(0) += 1;
        }
    }
    let mut out = BTreeMap::new();
    for ((user, scope), bins) in counts {
        let n: i64 = bins.values().sum();
        let p = |c: i64| (c as f64 + ALPHA) / (n as f64 + f64::from(K) * ALPHA);
        let mut eligible: Vec<(i64, f64)> = bins
            .iter()
            .filter(|(_, c)| n >= N_MIN && **c >= C_MIN && p(**c) * f64::from(K) >= LIFT_MIN)
            .map(|(b, c)| (*b, p(*c)))
            .collect();
        eligible.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let peaks: Vec<i64> = eligible.iter().take(MAX_PEAKS).map(|e| e.0).collect();
        for (b, c) in bins {
            out.insert((user.clone(), scope.clone(), b), (c, n, p(c), peaks.contains(&b)));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random session inserts, edits and deletes in random batches give the oracle's routine bins.
    #[test]
    fn routine_bins_equal_the_oracle(
        ops in prop::collection::vec((0..2u8, 0..12u8, prop::option::of((0..3u8, 0..40u16, 0..3u8))), 1..70),
        cut in 1..9usize,
    ) {
        let mut h = Harness::new(2);
        let mut current: BTreeMap<(u8, u8), vitalflow_schemas::domain::Session> = BTreeMap::new();
        let base = ms("2024-06-03T06:00:00Z");
        let mut pending = Vec::new();
        for (i, (user, id, upsert)) in ops.into_iter().enumerate() {
            if let Some(old) = current.remove(&(user, id)) {
                pending.push(Change::Session(old, -1));
            }
            if let Some((product, slot, zone)) = upsert {
                // Slots a few hours apart over two weeks, so bins collide often enough to make peaks.
                let start = base + i64::from(slot % 8) * 3_600_000 + i64::from(slot / 8) * 86_400_000 * 7 / 5;
                let s = session(&format!("u{user}"), &format!("s{id}"), &format!("p{product}"), start, ZONES[zone as usize]);
                current.insert((user, id), s.clone());
                pending.push(Change::Session(s, 1));
            }
            if (i + 1) % cut == 0 {
                h.step(std::mem::take(&mut pending));
            }
        }
        h.step(pending);
        let sessions: Vec<_> = current.into_values().collect();
        let want = oracle_routines(&sessions);
        let got: RoutineRows = h
            .rows("routine_bins")
            .into_iter()
            .map(|r| match (&r[0], &r[1], &r[2], &r[5], &r[6], &r[9]) {
                (Datum::Str(u), Datum::Str(sc), Datum::Int(b), Datum::Int(c), Datum::Int(n), Datum::Bool(pk)) => {
                    ((u.clone(), sc.clone(), *b), (*c, *n, float(&r[7]).unwrap_or(f64::NAN), *pk))
                }
                _ => panic!("bad row {r:?}"),
            })
            .collect();
        prop_assert_eq!(got.len(), want.len());
        for (k, (c, n, p, peak)) in &want {
            let (gc, gn, gp, gpeak) = got[k];
            prop_assert_eq!((gc, gn, gpeak), (*c, *n, *peak), "{:?}", k);
            prop_assert!((gp - p).abs() < 1e-12);
        }
    }
}

// ---- session_impacts and product_impacts against a brute-force oracle ----

type OracleWindows = [Option<(Option<f64>, i64)>; 3];
type ImpactRows = BTreeMap<(String, String, String), OracleWindows>;

/// Offsets (ms) that put instants on and off minute boundaries.
const JITTER_MS: [i64; 4] = [0, 1, 29_999, 59_999];

/// §4 by brute force: every session against every sample of its user, no buckets, no joins.
fn oracle_impacts(sessions: &[vitalflow_schemas::domain::Session], samples: &[Sample]) -> ImpactRows {
    use crate::session_impacts::{AFTER_MS, BEFORE_MS, has_impact};
    let mut out = BTreeMap::new();
    for s in sessions {
        let Some(e) = s.end_ms.filter(|e| *e >= s.start_ms && *e - s.start_ms <= 86_400_000) else { continue };
        let ranges = [(s.start_ms - BEFORE_MS, s.start_ms), (s.start_ms, e), (e, e + AFTER_MS)];
        let metrics: BTreeSet<Metric> =
            samples.iter().filter(|x| x.user_id == s.user_id && has_impact(x.metric)).map(|x| x.metric).collect();
        for m in metrics {
            let xs: Vec<&Sample> = samples.iter().filter(|x| x.user_id == s.user_id && x.metric == m).collect();
            let windows = ranges.map(|(a, b)| {
                if m.kind() == vitalflow_schemas::ValueKind::Cumulative {
                    let touching: Vec<&&Sample> = xs
                        .iter()
                        .filter(|x| {
                            if x.end_ms > x.start_ms {
                                x.start_ms < b && x.end_ms > a
                            } else {
                                a <= x.start_ms && x.start_ms < b
                            }
                        })
                        .collect();
                    let best = touching.iter().map(|x| (x.source_class.rank(), x.source_id.clone())).min();
                    match best {
                        Some((_, src)) if b > a => {
                            let mine: Vec<&&&Sample> = touching.iter().filter(|x| x.source_id == src).collect();
                            let total: f64 = mine
                                .iter()
                                .map(|x| share(x.start_ms, x.end_ms, x.value.map_or(0.0, |v| v.0), a, b))
                                .sum();
                            Some((Some(total / ((b - a) as f64 / 3_600_000.0)), mine.len() as i64))
                        }
                        _ => None,
                    }
                } else {
                    let vals: Vec<f64> = xs
                        .iter()
                        .filter(|x| a <= x.start_ms && x.start_ms < b)
                        .filter_map(|x| x.value.map(|v| v.0))
                        .collect();
                    (!vals.is_empty()).then(|| (Some(vals.iter().sum::<f64>() / vals.len() as f64), vals.len() as i64))
                }
            });
            if windows.iter().any(|w| w.is_some_and(|w| w.1 >= 1)) {
                out.insert((s.user_id.clone(), s.session_id.clone(), m.key().to_owned()), windows);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random samples and sessions, edited and deleted in random batches, give the brute-force
    /// impacts (the hour buckets pair every session with every nearby sample exactly once), and
    /// `product_impacts` summarises exactly those impacts.
    #[test]
    fn session_impacts_equal_the_oracle(
        sample_ops in prop::collection::vec((0..96u8, prop::option::weighted(0.9, (0..7u8, 0..90u16, 0..90u16, 40..120u16, 0..4u8))), 1..200),
        session_ops in prop::collection::vec((0..4u8, prop::option::of((0..40u16, 0..200u16, 0..4u8))), 1..12),
        cut in 1..8usize,
    ) {
        let mut h = Harness::new(2);
        let base = ms("2024-06-01T06:00:00Z");
        let (mut samples, mut sessions) = (BTreeMap::new(), BTreeMap::new());
        let mut pending = Vec::new();
        let mut n = 0;
        let flush = |pending: &mut Vec<Change>, h: &mut Harness, n: &mut usize| {
            *n += 1;
            if (*n).is_multiple_of(cut) {
                h.step(std::mem::take(pending));
            }
        };
        for (rec, op) in sample_ops {
            if let Some(old) = samples.remove(&rec) {
                pending.push(Change::Sample(old, -1));
            }
            if let Some((kind, at, len, v, jitter)) = op {
                // Off the minute (and the hour) too, so that partly covered minutes are exercised;
                // dense enough (90 minutes, nine ops in ten writing, heart rate three times in
                // seven) that in about two cases of five an hour holds more heart-rate readings than
                // one prefix sum covers (17 or more).
                let start = base + i64::from(at) * 60_000 + JITTER_MS[usize::from(jitter)];
                // Two CUMULATIVE and two DISCRETE metrics: an hour holds several of each.
                let metric = [Metric::Steps, Metric::Steps, Metric::HeartRate, Metric::HeartRate, Metric::HeartRate,
                    Metric::Distance, Metric::RespiratoryRate][usize::from(kind)];
                // Three sources, each with samples of three classes: the best source of a window
                // may count samples of a class that ranks below another source's (§4 sums a
                // `sourceId` over its classes), and equal classes tie on the `sourceId`.
                let source = ["watch", "phone", "ring"][usize::from(rec % 3)];
                let class = [SourceClass::Watch, SourceClass::Phone, SourceClass::Ring][usize::from(rec / 3 % 3)];
                let x = if metric.kind() == vitalflow_schemas::ValueKind::Cumulative {
                    sample("u1", source, &format!("r{rec}"), metric, start,
                        start + i64::from(len) * 60_000 + JITTER_MS[usize::from(jitter)] / 2, f64::from(v), class, "UTC")
                } else {
                    sample("u1", "watch", &format!("r{rec}"), metric, start, start, f64::from(v), SourceClass::Watch, "UTC")
                };
                samples.insert(rec, x.clone());
                pending.push(Change::Sample(x, 1));
            }
            flush(&mut pending, &mut h, &mut n);
        }
        for (id, op) in session_ops {
            if let Some(old) = sessions.remove(&id) {
                pending.push(Change::Session(old, -1));
            }
            if let Some((at, len, jitter)) = op {
                let start = base + i64::from(at) * 3 * 60_000 + JITTER_MS[usize::from(jitter)];
                let mut s = session("u1", &format!("s{id}"), "p", start, "UTC");
                // One session in ten is shorter than a minute (its DURING lies inside one minute).
                let minutes = if len < 20 { 0 } else { i64::from(len) };
                s.end_ms = Some(start + minutes * 60_000 + JITTER_MS[usize::from(3 - jitter)]);
                sessions.insert(id, s.clone());
                pending.push(Change::Session(s, 1));
            }
            flush(&mut pending, &mut h, &mut n);
        }
        h.step(pending);
        let sessions: Vec<_> = sessions.into_values().collect();
        let samples: Vec<_> = samples.into_values().collect();
        let want = oracle_impacts(&sessions, &samples);
        let def = crate::VIEWS[view_index("session_impacts").expect("view")].def;
        let rows = h.rows("session_impacts");
        prop_assert_eq!(rows.len(), want.len());
        for r in rows {
            let key = (r[0].as_str().unwrap_or("").to_owned(), r[1].as_str().unwrap_or("").to_owned(), r[2].as_str().unwrap_or("").to_owned());
            let w = want.get(&key).copied();
            prop_assert!(w.is_some(), "unexpected row {:?}", r);
            for (i, name) in ["before", "during", "after"].iter().enumerate() {
                let (mean, n) = w.and_then(|w| w[i]).unwrap_or((None, 0));
                prop_assert_eq!(r[def.column_index(&format!("{name}_n")).unwrap_or(0)].clone(), Datum::Int(n), "{} n of {:?}", name, key);
                let got = float(&r[def.column_index(&format!("{name}_mean")).unwrap_or(0)]);
                match (got, mean) {
                    (Some(g), Some(m)) => prop_assert!((g - m).abs() <= 1e-9 * m.abs().max(1.0), "{} mean of {:?}: {} vs {}", name, key, g, m),
                    (None, None) => {}
                    (g, m) => prop_assert!(false, "{} mean of {:?}: {:?} vs {:?}", name, key, g, m),
                }
            }
        }
        // product_impacts over the same impacts: counts and delta statistics per metric.
        let pdef = crate::VIEWS[view_index("product_impacts").expect("view")].def;
        let products = h.rows("product_impacts");
        let metrics: BTreeSet<&String> = want.keys().map(|k| &k.2).collect();
        prop_assert_eq!(products.len(), metrics.len());
        for r in products {
            let metric = r[2].as_str().unwrap_or("").to_owned();
            let mine: Vec<&OracleWindows> = want.iter().filter(|(k, _)| k.2 == metric).map(|(_, w)| w).collect();
            let mean_of = |w: &OracleWindows, i: usize| w[i].and_then(|x| x.0);
            let deltas: Vec<f64> = mine.iter().filter_map(|w| Some(mean_of(w, 1)? - mean_of(w, 0)?)).collect();
            let get = |c: &str| r[pdef.column_index(c).unwrap_or(0)].clone();
            prop_assert_eq!(get("session_count"), Datum::Int(mine.len() as i64));
            prop_assert_eq!(get("delta_during_n"), Datum::Int(deltas.len() as i64));
            match (float(&get("delta_during_mean")), deltas.is_empty()) {
                (None, true) => {}
                (Some(g), false) => {
                    let m = deltas.iter().sum::<f64>() / deltas.len() as f64;
                    prop_assert!((g - m).abs() <= 1e-9 * m.abs().max(1.0), "delta mean {} vs {}", g, m);
                }
                (g, _) => prop_assert!(false, "delta mean {:?} with {} deltas", g, deltas.len()),
            }
        }
    }
}

// ---- sleep_nights: an oracle written from DOMAIN.md §3.3 alone ----

/// §3.3 computed the plain way, apart from the dataflow: elementary intervals instead of a sweep,
/// union-find over all episode pairs instead of a sorted merge.
fn sleep_oracle(samples: &[Sample]) -> Vec<Row> {
    use vitalflow_schemas::sleep::SleepStage;
    const MIN: i64 = 60_000;
    let usable =
        |s: &&Sample| s.metric == Metric::SleepAnalysis && s.category.is_some_and(|c| c != SleepStage::Unknown);
    let asleep = |s: &Sample| s.category.is_some_and(|c| c.is_asleep()) && s.end_ms > s.start_ms;
    // Step 0: the noon-to-noon window of startAt, local time.
    let window = |s: &Sample| {
        let local = s.zone.local(s.start_ms);
        if local.time() >= chrono::NaiveTime::from_hms_opt(12, 0, 0).expect("noon") {
            local.date() + chrono::Duration::days(1)
        } else {
            local.date()
        }
    };
    let mut groups: BTreeMap<(String, chrono::NaiveDate), Vec<&Sample>> = BTreeMap::new();
    for s in samples.iter().filter(usable) {
        groups.entry((s.user_id.clone(), window(s))).or_default().push(s);
    }
    // Covered elementary intervals of a set of asleep samples, each with its winning stage.
    let elementary = |set: &[&Sample]| -> Vec<(i64, i64, SleepStage)> {
        let mut cuts: Vec<i64> = set.iter().flat_map(|s| [s.start_ms, s.end_ms]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let order = [SleepStage::Deep, SleepStage::Rem, SleepStage::Core, SleepStage::Unspecified];
        cuts.windows(2)
            .filter_map(|w| {
                let covering: Vec<SleepStage> =
                    set.iter().filter(|s| s.start_ms <= w[0] && s.end_ms >= w[1]).filter_map(|s| s.category).collect();
                order.iter().find(|st| covering.contains(st)).map(|st| (w[0], w[1], *st))
            })
            .collect()
    };
    let runs = |pieces: &[(i64, i64, SleepStage)]| -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = Vec::new();
        for (a, b, _) in pieces {
            match out.last_mut() {
                Some(r) if r.1 == *a => r.1 = *b,
                _ => out.push((*a, *b)),
            }
        }
        out
    };
    struct P {
        user: String,
        onset: i64,
        wake: i64,
        bed: Option<(i64, i64)>,
        stages: [i64; 4], // core, deep, rem, unspecified
        awakenings: i64,
        canonical: String,
        sources: i64,
        zone: Zone,
        night: chrono::NaiveDate,
    }
    let mut periods: Vec<P> = Vec::new();
    for ((user, _), group) in &groups {
        let sources: BTreeSet<&str> = group.iter().map(|s| s.source_id.as_str()).collect();
        // Steps 1–2: fragments and episodes per source.
        let mut episodes: Vec<(i64, i64, &str)> = Vec::new();
        for src in &sources {
            let own: Vec<&Sample> = group.iter().copied().filter(|s| s.source_id == *src && asleep(s)).collect();
            let frags = runs(&elementary(&own));
            let mut current: Option<(i64, i64)> = None;
            for (a, b) in frags {
                current = match current {
                    Some((ea, eb)) if a - eb < 60 * MIN => Some((ea, b)),
                    Some(e) => {
                        episodes.push((e.0, e.1, src));
                        Some((a, b))
                    }
                    None => Some((a, b)),
                };
            }
            if let Some(e) = current {
                episodes.push((e.0, e.1, src));
            }
        }
        // Step 3: union-find over overlapping episodes.
        let mut parent: Vec<usize> = (0..episodes.len()).collect();
        fn find(p: &mut Vec<usize>, i: usize) -> usize {
            if p[i] != i {
                let r = find(p, p[i]);
                p[i] = r;
            }
            p[i]
        }
        for i in 0..episodes.len() {
            for j in 0..episodes.len() {
                if episodes[i].0 < episodes[j].1 && episodes[j].0 < episodes[i].1 {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
            }
        }
        let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..episodes.len() {
            let r = find(&mut parent, i);
            members.entry(r).or_default().push(i);
        }
        for idx in members.values() {
            let span = |i: &usize| (episodes[*i].0, episodes[*i].1);
            let srcs: BTreeSet<&str> = idx.iter().map(|i| episodes[*i].2).collect();
            // The asleep samples of `src` inside this period's episodes.
            let inside = |src: &str| -> Vec<&Sample> {
                group
                    .iter()
                    .copied()
                    .filter(|s| s.source_id == src && asleep(s))
                    .filter(|s| idx.iter().map(span).any(|(a, b)| s.start_ms >= a && s.end_ms <= b))
                    .collect()
            };
            let minutes = |src: &str| elementary(&inside(src)).iter().map(|(a, b, _)| b - a).sum::<i64>();
            let rank = |src: &str| group.iter().filter(|s| s.source_id == src).map(|s| s.source_class.rank()).min();
            // Step 4: best rank, then most asleep, then lowest id.
            let canonical = *srcs.iter().min_by_key(|s| (rank(s), -minutes(s), s.to_string())).expect("a source");
            let own = inside(canonical);
            let pieces = elementary(&own);
            let frags = runs(&pieces);
            let onset = frags.first().expect("fragment").0;
            let wake = frags.last().expect("fragment").1;
            let mut stages = [0i64; 4];
            for (a, b, st) in &pieces {
                let slot = match st {
                    SleepStage::Core => 0,
                    SleepStage::Deep => 1,
                    SleepStage::Rem => 2,
                    _ => 3,
                };
                stages[slot] += b - a;
            }
            let awakenings = frags.windows(2).filter(|w| w[1].0 - w[0].1 >= 5 * MIN).count() as i64;
            let overlaps = |s: &&Sample| s.category == Some(SleepStage::InBed) && s.start_ms < wake && s.end_ms > onset;
            let mine: Vec<&Sample> =
                group.iter().copied().filter(overlaps).filter(|s| s.source_id == canonical).collect();
            let cands = if mine.is_empty() { group.iter().copied().filter(overlaps).collect() } else { mine };
            let bed = (!cands.is_empty()).then(|| {
                (
                    cands.iter().map(|s| s.start_ms).min().unwrap_or(onset).min(onset),
                    cands.iter().map(|s| s.end_ms).max().unwrap_or(wake).max(wake),
                )
            });
            // Step 6: the zone of the period's last asleep sample.
            let last = srcs
                .iter()
                .flat_map(|s| inside(s))
                .max_by_key(|s| (s.end_ms, s.start_ms, s.source_id.clone()))
                .expect("an asleep sample");
            periods.push(P {
                user: user.clone(),
                onset,
                wake,
                bed,
                stages,
                awakenings,
                canonical: canonical.to_owned(),
                sources: srcs.len() as i64,
                zone: last.zone,
                night: last.zone.local_date(wake),
            });
        }
    }
    // Step 7: the main sleep of each (user, night).
    let total = |p: &P| p.stages.iter().sum::<i64>();
    let mut rows = Vec::new();
    for p in &periods {
        let main = periods
            .iter()
            .filter(|q| q.user == p.user && q.night == p.night)
            .max_by(|a, b| (total(a), a.wake).cmp(&(total(b), b.wake)).then(b.canonical.cmp(&a.canonical)))
            .is_some_and(|m| std::ptr::eq(m, p));
        let min = |ms: i64| Datum::Float(OrdF64(ms as f64 / MIN as f64));
        let (bedtime, rise) = p.bed.unwrap_or((p.onset, p.wake));
        let tib = rise - bedtime;
        rows.push(vec![
            Datum::Str(p.user.clone()),
            Datum::Date(date_to_days(p.night)),
            Datum::Ts(p.onset),
            Datum::Ts(p.wake),
            Datum::Ts(bedtime),
            Datum::Ts(rise),
            min(total(p)),
            min(p.stages[0]),
            min(p.stages[1]),
            min(p.stages[2]),
            min(p.stages[3]),
            min(p.wake - p.onset - total(p)),
            Datum::Int(p.awakenings),
            min(tib),
            if p.bed.is_some() { min(p.onset - bedtime) } else { Datum::Null },
            if tib > 0 { Datum::Float(OrdF64(total(p) as f64 / tib as f64)) } else { Datum::Null },
            Datum::Bool(p.stages[0] + p.stages[1] + p.stages[2] > 0),
            Datum::Str(p.canonical.clone()),
            Datum::Int(p.sources),
            Datum::Str(p.zone.name()),
            Datum::Bool(main),
        ]);
    }
    rows.sort();
    rows
}

// ---- sleep_nights: incremental equals from scratch ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random sleep stages from three sources, edited and deleted in random batches, give the same
    /// rows as one from-scratch run over the final samples (retraction-safe, order-independent), and
    /// every row keeps the invariants of §3.3 (stage minutes sum to the total, WASO = span − asleep,
    /// bed ⊇ sleep, one main sleep per night).
    #[test]
    fn sleep_nights_incremental_equals_from_scratch(
        ops in prop::collection::vec((0..14u8, prop::option::of((0..3u8, 0..6u8, 0..160u16, 1..20u16))), 1..60),
        cut in 1..8usize,
    ) {
        use vitalflow_schemas::sleep::SleepStage;
        const STAGES: [SleepStage; 6] =
            [SleepStage::Core, SleepStage::Deep, SleepStage::Rem, SleepStage::Unspecified, SleepStage::Awake, SleepStage::InBed];
        const SOURCES: [(&str, SourceClass); 3] = [("W", SourceClass::Watch), ("R", SourceClass::Ring), ("P", SourceClass::Phone)];
        let mut h = Harness::new(2);
        let base = ms("2024-06-01T20:00:00Z");
        let mut current: BTreeMap<u8, Sample> = BTreeMap::new();
        let mut pending = Vec::new();
        for (i, (rec, op)) in ops.into_iter().enumerate() {
            if let Some(old) = current.remove(&rec) {
                pending.push(Change::Sample(old, -1));
            }
            if let Some((src, st, at, len)) = op {
                let start = base + i64::from(at) * 10 * 60_000;
                let (source, class) = SOURCES[src as usize];
                let mut s = sample("u1", source, &format!("z{rec}"), Metric::SleepAnalysis, start,
                    start + i64::from(len) * 10 * 60_000, 0.0, class, "America/New_York");
                s.value = None;
                s.category = Some(STAGES[st as usize]);
                current.insert(rec, s.clone());
                pending.push(Change::Sample(s, 1));
            }
            if (i + 1).is_multiple_of(cut) {
                h.step(std::mem::take(&mut pending));
            }
        }
        h.step(pending);
        let incremental = h.rows("sleep_nights");
        let finals: Vec<Sample> = current.into_values().collect();
        let mut want = sleep_oracle(&finals);
        let mut got = incremental.clone();
        want.sort();
        got.sort();
        prop_assert_eq!(&got, &want, "the dataflow against the oracle of §3.3");
        let mut fresh = Harness::new(1);
        fresh.step(finals.into_iter().map(|s| Change::Sample(s, 1)).collect());
        prop_assert_eq!(&incremental, &fresh.rows("sleep_nights"));
        // Invariants of §3.3 that hold whatever the input.
        let def = crate::VIEWS[view_index("sleep_nights").expect("view")].def;
        let get = |r: &Row, c: &str| r[def.column_index(c).unwrap_or(0)].clone();
        let num = |d: Datum| match d {
            Datum::Float(f) => f.0,
            Datum::Ts(t) => t as f64 / 60_000.0,
            Datum::Int(i) => i as f64,
            _ => f64::NAN,
        };
        let mut mains: BTreeMap<Datum, i64> = BTreeMap::new();
        for r in &incremental {
            let total = num(get(r, "total_asleep_min"));
            let stages: f64 = ["core_min", "deep_min", "rem_min", "unspecified_min"].iter().map(|c| num(get(r, c))).sum();
            prop_assert!((stages - total).abs() < 1e-9, "stages {} vs total {}", stages, total);
            let span = num(get(r, "wake_at")) - num(get(r, "sleep_onset_at"));
            prop_assert!((num(get(r, "waso_min")) - (span - total)).abs() < 1e-9 && total > 0.0 && total <= span + 1e-9);
            prop_assert!(num(get(r, "bedtime_at")) <= num(get(r, "sleep_onset_at")) && num(get(r, "rise_at")) >= num(get(r, "wake_at")));
            prop_assert!((num(get(r, "time_in_bed_min")) - (num(get(r, "rise_at")) - num(get(r, "bedtime_at")))).abs() < 1e-9);
            prop_assert!(num(get(r, "efficiency")) <= 1.0 + 1e-12);
            if get(r, "is_main") == Datum::Bool(true) {
                *mains.entry(get(r, "night_date")).or_insert(0) += 1;
            }
        }
        let nights: BTreeSet<Datum> = incremental.iter().map(|r| get(r, "night_date")).collect();
        prop_assert_eq!(mains.len(), nights.len(), "every night has a main sleep");
        prop_assert!(mains.values().all(|n| *n == 1), "exactly one main sleep per night: {:?}", mains);
    }
}

// ---- sessions, products, user_profiles: the current records, as ingested ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random upserts and deletes of sessions, products and profiles, in random batches, leave
    /// exactly the final records in the three record views.
    #[test]
    fn record_views_hold_exactly_the_current_records(
        ops in prop::collection::vec((0..3u8, 0..5u8, prop::option::of(0..4u8)), 1..60),
        cut in 1..8usize,
    ) {
        use vitalflow_schemas::domain::Product;
        let mut h = Harness::new(2);
        let (mut sessions, mut products, mut profiles) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        let mut pending = Vec::new();
        for (i, (kind, id, value)) in ops.into_iter().enumerate() {
            match kind {
                0 => {
                    if let Some(old) = sessions.remove(&id) {
                        pending.push(Change::Session(old, -1));
                    }
                    if let Some(v) = value {
                        let s = session("u1", &format!("s{id}"), &format!("p{v}"), ms("2024-06-03T08:00:00Z") + i64::from(v) * 60_000, "UTC");
                        sessions.insert(id, s.clone());
                        pending.push(Change::Session(s, 1));
                    }
                }
                1 => {
                    if let Some(old) = products.remove(&id) {
                        pending.push(Change::Product(old, -1));
                    }
                    if let Some(v) = value {
                        let p = Product { product_id: format!("p{id}"), name: format!("name {v}"), category: (v % 2 == 0).then(|| "c".into()) };
                        products.insert(id, p.clone());
                        pending.push(Change::Product(p, 1));
                    }
                }
                _ => {
                    if let Some(old) = profiles.remove(&id) {
                        pending.push(Change::Profile(old, -1));
                    }
                    if let Some(v) = value {
                        let p = vitalflow_schemas::UserProfile {
                            user_id: format!("u{id}"),
                            time_zone: (v > 0).then(|| ZONES[v as usize % 3].to_owned()),
                            allow_health_data_upload: v != 3,
                            blocked_metrics: if v == 2 { vec!["spo2".into()] } else { vec![] },
                        };
                        profiles.insert(id, p.clone());
                        pending.push(Change::Profile(p, 1));
                    }
                }
            }
            if (i + 1).is_multiple_of(cut) {
                h.step(std::mem::take(&mut pending));
            }
        }
        h.step(pending);
        let ids = |view: &str, col: usize| -> Vec<String> {
            h.rows(view).iter().map(|r| r[col].as_str().unwrap_or("").to_owned()).collect()
        };
        prop_assert_eq!(ids("sessions", 1), sessions.values().map(|s| s.session_id.clone()).collect::<Vec<_>>());
        prop_assert_eq!(ids("sessions", 2), sessions.values().map(|s| s.product_id.clone()).collect::<Vec<_>>());
        prop_assert_eq!(ids("products", 1), products.values().map(|p| p.name.clone()).collect::<Vec<_>>());
        prop_assert_eq!(ids("user_profiles", 0), profiles.values().map(|p| p.user_id.clone()).collect::<Vec<_>>());
        let flags: Vec<Datum> = h.rows("user_profiles").iter().map(|r| r[2].clone()).collect();
        prop_assert_eq!(flags, profiles.values().map(|p| Datum::Bool(p.allow_health_data_upload)).collect::<Vec<_>>());
    }
}

#[test]
fn views_can_be_selected_by_name() {
    let all = crate::select(None).expect("all");
    assert_eq!(all.len(), crate::VIEWS.len());
    let some = crate::select(Some(&["weekly_steps".into(), "daily_rollups".into()])).expect("some");
    let names: Vec<&str> = some.iter().map(|v| v.def.name).collect();
    assert_eq!(names, vec!["daily_rollups", "weekly_steps"], "registry order");
    let err = crate::select(Some(&["daily_rollup".into()])).err().unwrap_or_default();
    assert!(err.contains("unknown view 'daily_rollup'") && err.contains("daily_rollups"));
}

/// The sort-and-sweep contamination flags equal the definition checked pair by pair: `o` touches
/// `[s − B, s)` as an interval `[start, end)`, or as the point `start` when open or empty.
#[test]
fn contamination_flags_equal_the_pairwise_definition() {
    use crate::session_impacts::{BEFORE_MS, contamination_flags};
    // §4: an interval `[startAt, endAt)`, a point while open or when `endAt == startAt`; an
    // `endAt` before `startAt` is an empty interval, which overlaps nothing.
    let touches = |o: &vitalflow_schemas::domain::Session, a: i64, b: i64| match o.end_ms {
        Some(e) if e > o.start_ms => o.start_ms < b && e > a,
        Some(e) if e < o.start_ms => false,
        _ => a <= o.start_ms && o.start_ms < b,
    };
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let base = ms("2024-06-01T06:00:00Z");
    for _ in 0..300 {
        let n = 1 + next(12) as usize;
        let sessions: Vec<vitalflow_schemas::domain::Session> = (0..n)
            .map(|i| {
                // Starts on a coarse grid (ties happen), ends open, empty or within a few hours.
                let start = base + (next(16) as i64) * 20 * 60_000;
                let mut s = session("u1", &format!("s{i}"), "p", start, "UTC");
                s.end_ms = match next(5) {
                    0 => None,
                    1 => Some(start),
                    2 => Some(start - (1 + next(90) as i64) * 60_000),
                    _ => Some(start + (1 + next(200) as i64) * 60_000),
                };
                s
            })
            .collect();
        let mut names = crate::names::Interner::lock();
        let records: Vec<crate::SessionRecord> =
            sessions.iter().map(|s| crate::SessionRecord::intern(s, &mut names)).collect();
        drop(names);
        let mut got: Vec<(String, bool)> =
            contamination_flags(records.iter().collect()).into_iter().map(|(s, d)| (s.to_string(), d)).collect();
        got.sort();
        let mut want: Vec<(String, bool)> = sessions
            .iter()
            .filter(|s| s.end_ms.is_some())
            .map(|s| {
                let dirty = sessions
                    .iter()
                    .any(|o| o.session_id != s.session_id && touches(o, s.start_ms - BEFORE_MS, s.start_ms));
                (s.session_id.clone(), dirty)
            })
            .collect();
        want.sort();
        assert_eq!(got, want, "{sessions:?}");
    }
}
