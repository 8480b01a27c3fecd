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
//! Cost: installed only when asked for (`RuntimeOptions::slow_epoch`). Once a `timely` logger is
//! registered, timely logs every operator's start and stop, every message batch on every channel
//! and every progress round, each with a clock read; this module keeps only the schedule events'
//! sums, in batches at each log flush (the end of every worker step), and retains nothing per
//! event. Wall-clock times: a worker preempted inside an operator counts the wait as the
//! operator's. Work done outside operators (the worker loop pushing its input batches into the
//! dataflow, reading its queue, parking) is in no account.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
}

impl Elapsed {
    /// Accounts for `views` (in the runtime's order), then [`INPUTS`] and [`PROGRESS`].
    pub(crate) fn new(views: &[&'static str]) -> Elapsed {
        let names: Vec<&'static str> = views.iter().copied().chain([INPUTS, PROGRESS]).collect();
        let nanos: Vec<AtomicU64> = names.iter().map(|_| AtomicU64::new(0)).collect();
        Elapsed { names: names.into(), nanos: nanos.into(), slow: Arc::new(AtomicU64::new(0)) }
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
    if let Some(mut registry) = worker.log_register() {
        registry.insert::<TimelyEventBuilder, _>("timely", action);
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
