//! Where the workers' time goes, per view: each operator's exclusive scheduling time, from timely's
//! `Schedule` log events, summed into the view that built the operator; and a warning for every
//! epoch that takes a worker longer than a threshold, naming the views that spent the time.
//!
//! Accounts ([`Elapsed::accounts`]): one per view (its operators, and any shared intermediate
//! collection it was the first to build, such as the samples arranged by user), then
//! [`INPUTS`] (the input collections) and [`PROGRESS`] (the dataflow's own progress tracking: the
//! root scope's time less its operators'). The time a worker spends outside operators (reading its
//! channel, parking) is in none of them.
//!
//! Arrangements ([`Elapsed::arrangements`]): the updates each arrangement holds now (its trace's
//! batches, after merges) and how many wait in its batcher, summed over workers, from
//! differential's `differential/arrange` log (batch, merge and drop events; the same sums as
//! Materialize's `mz_arrangement_sizes`), each attributed to the view that built it as above.
//!
//! Cost: installed only when asked for (`RuntimeOptions::slow_epoch`). Once a `timely` logger is
//! registered, timely logs every operator's start and stop, every message batch on every channel
//! and every progress round, each with a clock read; this module keeps only the schedule events'
//! sums, in batches at each log flush (the end of every worker step), and retains nothing per
//! event. Differential then logs every batch an arrangement seals, every merge's start and end,
//! and every push to and pop from a batcher's chains; a flush with any of them takes one
//! process-wide lock to add them up (a few per step, never held across other work).
//! Wall-clock times: a worker preempted inside an operator counts the wait as the
//! operator's. Work done outside operators (the worker loop pushing its input batches into the
//! dataflow, reading its queue, parking) is in no account.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// The account of the input collections.
pub const INPUTS: &str = "inputs";
/// The account of timely's progress tracking in the dataflow's root scope.
pub const PROGRESS: &str = "progress";

/// Nanoseconds of worker time per account, summed over all workers; shared with the serving side.
#[derive(Clone, Debug)]
pub struct Elapsed {
    names: Arc<[&'static str]>,
    nanos: Arc<[AtomicU64]>,
    slow: Arc<AtomicU64>,
    arrangements: Arc<Mutex<Arrangements>>,
}

/// The size of one arrangement now, summed over all workers ([`Elapsed::arrangements`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArrangementSize {
    /// The account that built the arrangement's operator: a view, or [`INPUTS`].
    pub view: &'static str,
    /// The operator's name, e.g. `Arrange: M1: slice winner` (names are stable across versions;
    /// a few generic ones, such as `ArrangeByKey`, are shared by several operators of a view).
    pub operator: String,
    /// The operator's timely identifier: unique, in build order, so stable for one build of
    /// vitalflow but not across versions.
    pub operator_id: usize,
    /// Updates (`(key, value, epoch, difference)`) held in the trace's batches.
    pub records: i64,
    /// Updates in the batcher's sorted chains, not yet sealed into a batch (the batcher holds them
    /// until the frontier passes their epoch; a partly filled input chunk is not counted).
    pub batcher_records: i64,
}

/// What the differential logger has summed, by operator identifier, and the operators' names.
#[derive(Debug, Default)]
struct Arrangements {
    /// Operator id → (account, name), from timely's `Operates` events.
    operators: BTreeMap<usize, (usize, String)>,
    /// Operator id → sizes (only operators that logged an arrangement event).
    sizes: BTreeMap<usize, ArrangementSize>,
}

impl Elapsed {
    /// Accounts for `views` (in the runtime's order), then [`INPUTS`] and [`PROGRESS`].
    pub(crate) fn new(views: &[&'static str]) -> Elapsed {
        let names: Vec<&'static str> = views.iter().copied().chain([INPUTS, PROGRESS]).collect();
        let nanos: Vec<AtomicU64> = names.iter().map(|_| AtomicU64::new(0)).collect();
        Elapsed {
            names: names.into(),
            nanos: nanos.into(),
            slow: Arc::new(AtomicU64::new(0)),
            arrangements: Arc::new(Mutex::new(Arrangements::default())),
        }
    }

    /// Every arrange and reduce operator that has logged since start (an empty batch is logged
    /// too, so in practice all of them), in build order, with its current size (all workers
    /// together).
    pub fn arrangements(&self) -> Vec<ArrangementSize> {
        let a = self.arrangements.lock().unwrap_or_else(PoisonError::into_inner);
        a.sizes
            .iter()
            .map(|(id, size)| {
                let (account, name) = a.operators.get(id).map_or((usize::MAX, "?"), |(acc, n)| (*acc, n.as_str()));
                ArrangementSize {
                    view: self.names.get(account).copied().unwrap_or(INPUTS),
                    operator: name.to_owned(),
                    operator_id: *id,
                    ..size.clone()
                }
            })
            .collect()
    }

    /// Every account and the worker time it has spent since start (all workers together).
    pub fn accounts(&self) -> Vec<(&'static str, Duration)> {
        self.names
            .iter()
            .zip(self.nanos.iter())
            .map(|(n, v)| (*n, Duration::from_nanos(v.load(Ordering::Relaxed))))
            .collect()
    }

    /// Epochs that took at least the slow-epoch threshold (`RuntimeOptions::slow_epoch`) since
    /// start, as worker 0 saw them.
    pub fn slow_epochs(&self) -> u64 {
        self.slow.load(Ordering::Relaxed)
    }

    pub(crate) fn count_slow_epoch(&self) {
        self.slow.fetch_add(1, Ordering::Relaxed);
    }

    /// The accounts' nanoseconds now, in [`Elapsed::accounts`]' order.
    pub(crate) fn sample(&self) -> Vec<u64> {
        self.nanos.iter().map(|v| v.load(Ordering::Relaxed)).collect()
    }

    /// The `n` accounts that grew most from `before` to `after`, with their growth, largest first.
    pub(crate) fn top(&self, before: &[u64], after: &[u64], n: usize) -> Vec<(&'static str, Duration)> {
        let mut grown: Vec<(&'static str, Duration)> = self
            .names
            .iter()
            .zip(before.iter().zip(after))
            .map(|(name, (b, a))| (*name, Duration::from_nanos(a.saturating_sub(*b))))
            .filter(|(_, d)| !d.is_zero())
            .collect();
        grown.sort_by(|a, b| b.1.cmp(&a.1));
        grown.truncate(n);
        grown
    }

    fn add(&self, account: usize, d: Duration) {
        if let Some(v) = self.nanos.get(account) {
            v.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// One worker's attribution of operators to accounts while the dataflow is built: the first
/// operator identifier of each view's build ([`Attribution::building`]).
#[derive(Clone, Default)]
pub(crate) struct Attribution {
    /// `(first operator id, account)`, in increasing id order.
    starts: Rc<RefCell<Vec<(usize, usize)>>>,
}

impl Attribution {
    /// Operators from identifier `first_id` on belong to `account` (until the next call).
    pub(crate) fn building(&self, first_id: usize, account: usize) {
        self.starts.borrow_mut().push((first_id, account));
    }

    fn account_of(&self, id: usize) -> Option<usize> {
        let starts = self.starts.borrow();
        let i = starts.partition_point(|(first, _)| *first <= id);
        i.checked_sub(1).map(|i| starts[i].1)
    }
}

/// Registers the worker's `timely` logger that sums operators' exclusive time into `elapsed`.
/// Call before building the dataflow, so that every operator's creation is seen.
pub(crate) fn install(worker: &mut timely::worker::Worker, elapsed: Elapsed, attribution: Attribution) {
    let (inputs, progress) = (elapsed.names.len() - 2, elapsed.names.len() - 1);
    let arrangements = elapsed.arrangements.clone();
    let sized = elapsed.arrangements.clone();
    // Account per operator id; the operators being scheduled, innermost last, each with its start
    // and the time its nested operators took.
    let mut account_of: Vec<usize> = Vec::new();
    let mut running: Vec<(usize, Duration, Duration)> = Vec::new();
    let action = move |_now: &Duration, batch: &mut Option<Vec<(Duration, TimelyEvent)>>| {
        let Some(events) = batch.as_mut() else { return };
        for (t, event) in events.drain(..) {
            match event {
                TimelyEvent::Operates(op) => {
                    // The root scope of the dataflow: its exclusive time is progress tracking.
                    // Operators built before the first view are the inputs.
                    let account =
                        if op.addr.len() <= 1 { progress } else { attribution.account_of(op.id).unwrap_or(inputs) };
                    if account_of.len() <= op.id {
                        account_of.resize(op.id + 1, usize::MAX);
                    }
                    account_of[op.id] = account;
                    // Every worker builds the same dataflow, so the first worker's entry stands.
                    arrangements
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .operators
                        .entry(op.id)
                        .or_insert_with(|| (account, op.name.clone()));
                }
                TimelyEvent::Schedule(s) => match s.start_stop {
                    StartStop::Start => {
                        let account = account_of.get(s.id).copied().unwrap_or(usize::MAX);
                        running.push((account, t, Duration::ZERO));
                    }
                    StartStop::Stop => {
                        let Some((account, start, nested)) = running.pop() else { continue };
                        let spent = t.saturating_sub(start);
                        elapsed.add(account, spent.saturating_sub(nested));
                        if let Some(outer) = running.last_mut() {
                            outer.2 += spent;
                        }
                    }
                },
                _ => {}
            }
        }
    };
    let sizes = move |_now: &Duration, batch: &mut Option<Vec<(Duration, DifferentialEvent)>>| {
        let Some(events) = batch.as_mut() else { return };
        if events.is_empty() {
            return;
        }
        let mut a = sized.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, event) in events.drain(..) {
            apply(&mut a.sizes, event);
        }
    };
    if let Some(mut registry) = worker.log_register() {
        registry.insert::<TimelyEventBuilder, _>("timely", action);
        registry.insert::<DifferentialEventBuilder, _>("differential/arrange", sizes);
    }
}

/// Adds one differential event to the sizes: a new batch adds its updates, a completed merge
/// adds its output less its two inputs, a dropped batch (the trace dropped) removes its updates;
/// batcher events carry their own differences (differential 0.26's `Vec` batcher reports records
/// but no bytes). An arrangement whose trace no operator reads (only its stream of batches is
/// used) keeps no batches and logs none: it stays at zero records.
fn apply(sizes: &mut BTreeMap<usize, ArrangementSize>, event: DifferentialEvent) {
    let signed = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    match event {
        DifferentialEvent::Batch(b) => sizes.entry(b.operator).or_default().records += signed(b.length),
        DifferentialEvent::Merge(m) => {
            if let Some(done) = m.complete {
                sizes.entry(m.operator).or_default().records += signed(done) - signed(m.length1) - signed(m.length2);
            }
        }
        DifferentialEvent::Drop(d) => sizes.entry(d.operator).or_default().records -= signed(d.length),
        DifferentialEvent::Batcher(b) => {
            sizes.entry(b.operator).or_default().batcher_records += i64::try_from(b.records_diff).unwrap_or(0);
        }
        DifferentialEvent::MergeShortfall(_) | DifferentialEvent::TraceShare(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_belong_to_the_view_that_built_them() {
        let a = Attribution::default();
        a.building(3, 0);
        a.building(10, 1);
        a.building(12, 2);
        assert_eq!(a.account_of(2), None);
        assert_eq!(a.account_of(3), Some(0));
        assert_eq!(a.account_of(9), Some(0));
        assert_eq!(a.account_of(10), Some(1));
        assert_eq!(a.account_of(500), Some(2));
    }

    #[test]
    fn an_arrangement_holds_its_batches_less_what_merges_and_drops_removed() {
        use differential_dataflow::logging::{BatchEvent, BatcherEvent, DropEvent, MergeEvent};
        let mut sizes = BTreeMap::new();
        apply(&mut sizes, BatchEvent { operator: 7, length: 10 }.into());
        apply(&mut sizes, BatchEvent { operator: 7, length: 6 }.into());
        // A merge that starts changes nothing; its completion replaces 16 updates by 12 (4
        // cancelled or consolidated).
        apply(&mut sizes, MergeEvent { operator: 7, scale: 1, length1: 10, length2: 6, complete: None }.into());
        assert_eq!(sizes[&7].records, 16);
        apply(&mut sizes, MergeEvent { operator: 7, scale: 1, length1: 10, length2: 6, complete: Some(12) }.into());
        assert_eq!(sizes[&7].records, 12);
        let batcher = |records_diff| BatcherEvent {
            operator: 9,
            records_diff,
            size_diff: 0,
            capacity_diff: 0,
            allocations_diff: 0,
        };
        apply(&mut sizes, batcher(100).into());
        apply(&mut sizes, batcher(-40).into());
        assert_eq!(sizes[&9].batcher_records, 60);
        apply(&mut sizes, DropEvent { operator: 7, length: 12 }.into());
        assert_eq!(sizes[&7].records, 0);
    }

    #[test]
    fn the_top_accounts_are_the_largest_growth() {
        let e = Elapsed::new(&["a", "b"]);
        e.add(0, Duration::from_millis(5));
        e.add(2, Duration::from_millis(9));
        let before = vec![0, 0, 1_000_000, 0];
        let top = e.top(&before, &e.sample(), 5);
        assert_eq!(top, vec![(INPUTS, Duration::from_millis(8)), ("a", Duration::from_millis(5))]);
        assert_eq!(e.accounts().len(), 4);
    }
}
