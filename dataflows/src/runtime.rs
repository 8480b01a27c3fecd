//! The worker runtime: timely workers on their own threads, fed epoch batches over channels, each
//! view's complete epochs handed to the serving side as [`ViewProgress`].
//!
//! Every worker's input advances to every epoch together (timely waits for all of them); a batch's
//! changes are spread over workers by user and exchanged by key inside the graph. An idle worker
//! parks; [`Runtime::push`] unparks it, so an idle engine uses no CPU.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::input::Input;
use differential_dataflow::input::InputSession;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::execute::Config;
use vitalflow_schemas::domain::Product;
use vitalflow_schemas::{Change, Epoch, EpochBatch, Row, SampleRef, UserProfile};

use crate::introspection::{self, Attribution, Elapsed};
use crate::names::Interner;
use crate::records::{SampleRecord, SessionRecord};
use crate::registry::{Inputs, ViewSpec};

/// The updates of one view for every epoch below `frontier`, consolidated. After applying them the
/// view reflects all input through epoch `frontier − 1`, except at recovery's internal times
/// (frontiers up to the recovered epoch, [`Runtime::recovery_feed`], ADR 0014), where it reflects
/// part of the replay.
#[derive(Clone, Debug)]
pub struct ViewProgress {
    /// Index into the views the runtime was started with.
    pub view: usize,
    /// All epochs `< frontier` are complete.
    pub frontier: Epoch,
    pub updates: Vec<(Row, Epoch, i64)>,
}

enum WorkerMsg {
    /// Changes at an epoch; more may follow for the same epoch.
    Changes(Epoch, Vec<Update>),
    /// Every change below this epoch has been sent.
    Advance(Epoch),
    /// Test-only fault hook: the worker panics (see [`Runtime::inject_fault`]).
    Fault,
}

/// One change as a worker's inputs take it: samples and sessions with their identifiers interned
/// ([`SampleRecord`], [`SessionRecord`]), and a difference (+1 insert, −1 retract).
enum Update {
    Sample(SampleRecord, isize),
    Session(SessionRecord, isize),
    /// Boxed: products and profiles are rare and large (strings), and unboxed they would make
    /// every queued sample's update half again as large.
    Product(Box<Product>, isize),
    Profile(Box<UserProfile>, isize),
}

/// Messages queued to one worker before the writer waits (each is one chunk of changes or an
/// advance): the channel from the writer to the workers is bounded.
pub const WORKER_QUEUE: usize = 256;

/// Why the runtime cannot take a batch.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A worker thread has died (panicked); the views no longer advance.
    #[error("a dataflow worker has died")]
    WorkerDied,
}

/// Handle to the running workers.
pub struct Runtime {
    senders: Vec<Sender<WorkerMsg>>,
    threads: Vec<Thread>,
    guards: Option<timely::communication::initialize::WorkerGuards<()>>,
    frontier: Epoch,
    /// Workers that ended by unwinding (a panic), not by a clean shutdown.
    died: Arc<AtomicUsize>,
    /// Present with introspection on ([`RuntimeOptions::slow_epoch`]).
    elapsed: Option<Elapsed>,
    /// Per worker, the frontier of every view's output on that worker (all epochs below it are
    /// complete there), published after each step: what recovery waits on ([`RecoveryFeed`]).
    completed: Arc<Vec<AtomicU64>>,
}

/// How the runtime runs, beyond its views.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Introspection: account the workers' time per view ([`Elapsed`]), count the epochs that take
    /// at least this long, from the moment a worker takes the epoch's close off its queue to every
    /// view's output passing it on every worker ([`Elapsed::slow_epochs`], worker 0's count), and
    /// warn of them (at most once a second per worker). `None`: none of it, and no logging cost.
    pub slow_epoch: Option<Duration>,
    /// Idle merging: an arrangement whose trace is not yet in its compact form reschedules itself
    /// and keeps merging its batches, as if this many updates had arrived each time it is
    /// scheduled (differential's `idle_merge_effort`), so that retractions (a deletion, an
    /// erasure, an edit's old row) meet their insertions and free their memory without waiting
    /// for later writes to drive the merges. It merges during loads too (a quarter to a third of
    /// bulk throughput, benches/README.md). `None`: merges only as batches arrive.
    pub idle_merge_effort: Option<usize>,
}

/// One worker's watch for slow epochs: each closed epoch with the instant it closed, the worker's
/// CPU clock and the accounts then, until the probe over every view's output passes it.
struct SlowEpochs {
    threshold: Duration,
    elapsed: Elapsed,
    worker: usize,
    open: std::collections::VecDeque<(Epoch, std::time::Instant, Duration, Vec<u64>)>,
    /// When this worker last warned, and the slow epochs it has not warned of since.
    warned: Option<std::time::Instant>,
    unwarned: u64,
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

impl SlowEpochs {
    /// At most this many closed epochs are watched at once; while that many are open, newly
    /// closed epochs are not watched (a backlog is visible in the ones that are).
    const WATCHED: usize = 4096;
    /// At most one warning per worker this often; the slow epochs in between are counted in it.
    const WARN_EVERY: Duration = Duration::from_secs(1);

    fn new(threshold: Duration, elapsed: Elapsed, worker: usize) -> SlowEpochs {
        SlowEpochs { threshold, elapsed, worker, open: std::collections::VecDeque::new(), warned: None, unwarned: 0 }
    }

    /// The worker's inputs advanced to `frontier`: the epochs below it are closed.
    fn closed(&mut self, frontier: Epoch) {
        if self.open.len() < Self::WATCHED {
            self.open.push_back((frontier, std::time::Instant::now(), thread_cpu(), self.elapsed.sample()));
        }
    }

    /// Counts (worker 0) and reports the watched epochs that every view's output has now passed
    /// and that took at least the threshold.
    fn check(&mut self, probe: &timely::dataflow::ProbeHandle<Epoch>) {
        let elapsed = &self.elapsed;
        while self.open.front().is_some_and(|(frontier, _, _, _)| !probe.less_than(frontier)) {
            let Some((frontier, closed_at, cpu_at, before)) = self.open.pop_front() else { return };
            let took = closed_at.elapsed();
            if took < self.threshold {
                continue;
            }
            if self.worker == 0 {
                elapsed.count_slow_epoch();
            }
            if self.warned.is_some_and(|at| at.elapsed() < Self::WARN_EVERY) {
                self.unwarned += 1;
                continue;
            }
            // The accounts are as of timely's last log flush, at the end of the worker's last step.
            let top: Vec<String> = elapsed
                .top(&before, &elapsed.sample(), 4)
                .into_iter()
                .map(|(name, d)| format!("{name} {:.1} ms", d.as_secs_f64() * 1000.0))
                .collect();
            // This worker's own CPU meanwhile: far below `ms`, the worker waited (for a core, or
            // for the other workers) rather than worked.
            let cpu = thread_cpu().saturating_sub(cpu_at);
            tracing::warn!(
                worker = self.worker,
                epoch = frontier - 1,
                ms = %format!("{:.1}", took.as_secs_f64() * 1000.0),
                cpu_ms = %format!("{:.1}", cpu.as_secs_f64() * 1000.0),
                spent = ?top.join(", "),
                more = self.unwarned,
                "slow epoch"
            );
            self.warned = Some(std::time::Instant::now());
            self.unwarned = 0;
        }
        // The slow epochs held back at the end of a burst are told once the pause is over, not
        // only with the next slow epoch.
        if self.unwarned > 0 && self.warned.is_some_and(|at| at.elapsed() >= Self::WARN_EVERY) {
            tracing::warn!(worker = self.worker, more = self.unwarned, "slow epochs since the last warning");
            self.warned = Some(std::time::Instant::now());
            self.unwarned = 0;
        }
    }
}

/// Whether the runtime's workers are alive; see [`Runtime::health`].
#[derive(Clone, Debug)]
pub struct RuntimeHealth(Arc<AtomicUsize>);

impl RuntimeHealth {
    /// True while no worker has died.
    pub fn is_healthy(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// Counts a worker as died unless it is disarmed by a clean exit; dropped during a panic's unwind.
struct DeathWatch {
    died: Arc<AtomicUsize>,
    armed: bool,
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if self.armed {
            self.died.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Runtime {
    /// Starts `workers` timely workers that maintain `views` and send progress to `out`, with
    /// [`RuntimeOptions::default`].
    pub fn start(workers: usize, views: Vec<ViewSpec>, out: Sender<ViewProgress>) -> Result<Runtime, String> {
        Runtime::start_with(workers, views, out, RuntimeOptions::default())
    }

    /// Starts `workers` timely workers that maintain `views` and send progress to `out`.
    pub fn start_with(
        workers: usize,
        views: Vec<ViewSpec>,
        out: Sender<ViewProgress>,
        options: RuntimeOptions,
    ) -> Result<Runtime, String> {
        let workers = workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| crossbeam_channel::bounded(WORKER_QUEUE)).unzip();
        let died = Arc::new(AtomicUsize::new(0));
        let died_in_workers = died.clone();
        let receivers: Arc<Mutex<Vec<Option<Receiver<WorkerMsg>>>>> =
            Arc::new(Mutex::new(receivers.into_iter().map(Some).collect()));
        let (thread_tx, thread_rx) = crossbeam_channel::unbounded();
        let elapsed = options.slow_epoch.map(|_| Elapsed::new(&views.iter().map(|v| v.def.name).collect::<Vec<_>>()));
        let elapsed_in_workers = elapsed.clone();
        let completed: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
        let completed_in_workers = completed.clone();
        let mut config = Config::process(workers);
        if let Some(effort) = options.idle_merge_effort {
            let effort = isize::try_from(effort).unwrap_or(isize::MAX);
            differential_dataflow::configure(
                &mut config.worker,
                &differential_dataflow::Config { idle_merge_effort: Some(effort) },
            );
        }
        let guards = timely::execute(config, move |worker| {
            let index = worker.index();
            let rx = receivers.lock().ok().and_then(|mut r| r.get_mut(index).and_then(Option::take));
            let Some(rx) = rx else { return };
            let mut watch = DeathWatch { died: died_in_workers.clone(), armed: true };
            let _ = thread_tx.send((index, std::thread::current()));
            let out = out.clone();
            // Introspection only when asked for: timely logs every operator's scheduling, every
            // message and every progress round once a logger is registered.
            let attribution = Attribution::default();
            if let Some(elapsed) = &elapsed_in_workers {
                introspection::install(worker, elapsed.clone(), attribution.clone());
            }
            let probe = timely::dataflow::ProbeHandle::new();
            let input = worker.dataflow::<Epoch, _, _>(|scope| {
                let (samples_in, samples) = scope.new_collection::<SampleRecord, isize>();
                let (sessions_in, sessions) = scope.new_collection::<SessionRecord, isize>();
                let (products_in, products) = scope.new_collection::<Product, isize>();
                let (profiles_in, profiles) = scope.new_collection::<UserProfile, isize>();
                let inputs = Inputs::new(samples, sessions, products, profiles);
                for (view, spec) in views.iter().enumerate() {
                    attribution.building(scope.worker().peek_identifier(), view);
                    let rows = (spec.build)(&inputs);
                    let rows = rows.probe_with(&probe);
                    sink(view, spec.def.name, rows, index == 0, out.clone());
                }
                InputSessions {
                    samples: samples_in,
                    sessions: sessions_in,
                    products: products_in,
                    profiles: profiles_in,
                }
            });
            let mut slow = options
                .slow_epoch
                .zip(elapsed_in_workers.clone())
                .map(|(threshold, elapsed)| SlowEpochs::new(threshold, elapsed, index));
            let mut input = Some(input);
            while let Some(session) = input.as_mut() {
                loop {
                    match rx.try_recv() {
                        Ok(WorkerMsg::Changes(epoch, changes)) => session.apply(epoch, changes),
                        Ok(WorkerMsg::Advance(epoch)) => {
                            session.advance(epoch);
                            if let Some(slow) = slow.as_mut() {
                                slow.closed(epoch);
                            }
                        }
                        Ok(WorkerMsg::Fault) => panic!("injected fault: dataflow worker {index}"),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            input = None;
                            break;
                        }
                    }
                }
                worker.step_or_park(Some(Duration::from_millis(200)));
                if let Some(slow) = slow.as_mut() {
                    slow.check(&probe);
                }
                let done = probe.with_frontier(|f| f.iter().min().copied().unwrap_or(Epoch::MAX));
                completed_in_workers[index].store(done, Ordering::Release);
            }
            completed_in_workers[index].store(Epoch::MAX, Ordering::Release);
            while worker.step_or_park(None) {}
            watch.armed = false;
        })?;
        let mut threads: Vec<(usize, Thread)> = thread_rx.iter().take(workers).collect();
        threads.sort_by_key(|(i, _)| *i);
        Ok(Runtime {
            senders,
            threads: threads.into_iter().map(|(_, t)| t).collect(),
            guards: Some(guards),
            frontier: 0,
            died,
            elapsed,
            completed,
        })
    }

    /// The workers' time per view and the slow epochs, for metrics ([`Elapsed`]); `None` with
    /// introspection off ([`RuntimeOptions::slow_epoch`] `None`).
    pub fn elapsed(&self) -> Option<Elapsed> {
        self.elapsed.clone()
    }

    /// Whether every worker is alive (none has panicked). A dead worker stops every view.
    pub fn is_healthy(&self) -> bool {
        self.died.load(Ordering::SeqCst) == 0
    }

    /// A handle that tells whether every worker is alive, usable without the runtime (which the
    /// writer holds during recovery).
    pub fn health(&self) -> RuntimeHealth {
        RuntimeHealth(self.died.clone())
    }

    /// Test-only fault hook: makes worker 0 panic, as a bug in a view would.
    pub fn inject_fault(&self) {
        if let Some(tx) = self.senders.first() {
            let _ = tx.send(WorkerMsg::Fault);
        }
        for t in &self.threads {
            t.unpark();
        }
    }

    /// Sends a committed batch: its changes at `batch.epoch`, then every input advances past it.
    /// Blocks while a worker's queue is full ([`WORKER_QUEUE`]).
    ///
    /// Errors: [`RuntimeError::WorkerDied`] when a worker has died; the batch is durable and becomes
    /// visible after a restart.
    pub fn push(&mut self, batch: EpochBatch) -> Result<(), RuntimeError> {
        let epoch = batch.epoch;
        self.push_changes(epoch, batch.changes)?;
        self.advance(epoch + 1)
    }

    /// Sends changes at `epoch` without closing it (recovery sends its sessions, products and
    /// profiles this way, and its samples through [`Runtime::recovery_feed`]). Samples and
    /// sessions enter the dataflow here, their identifiers interned ([`crate::names`]).
    pub fn push_changes(&mut self, epoch: Epoch, changes: Vec<Change>) -> Result<(), RuntimeError> {
        if !self.is_healthy() {
            return Err(RuntimeError::WorkerDied);
        }
        let n = self.senders.len();
        let mut per_worker: Vec<Vec<Update>> = (0..n).map(|_| Vec::new()).collect();
        let mut names = Interner::lock();
        for change in changes {
            let (worker, update) = match change {
                Change::Sample(s, d) => {
                    let s = SampleRecord::intern(SampleRef::from(&s), &mut names);
                    (worker_for(&s.user_id, n), Update::Sample(s, d as isize))
                }
                Change::Session(s, d) => {
                    let s = SessionRecord::intern(&s, &mut names);
                    (worker_for(&s.user_id, n), Update::Session(s, d as isize))
                }
                Change::Profile(p, d) => (worker_for(&p.user_id, n), Update::Profile(Box::new(p), d as isize)),
                Change::Product(p, d) => (worker_for(&p.product_id, n), Update::Product(Box::new(p), d as isize)),
            };
            per_worker[worker].push(update);
        }
        drop(names);
        for (i, chunk) in per_worker.into_iter().enumerate() {
            if !chunk.is_empty() {
                self.send(i, WorkerMsg::Changes(epoch, chunk))?;
            }
        }
        Ok(())
    }

    /// Recovery's way in (issue 13 §6, ADR 0012, ADR 0014): stored samples, read in place, are
    /// interned straight into [`SampleRecord`]s and sent every `chunk` samples (at least one), so
    /// recovery holds one chunk, never the history, and builds no `Sample` on the way.
    ///
    /// The replay runs through internal times from the runtime's first open time up to `epoch`:
    /// after each chunk that brings the current time's samples to `samples_per_time` or more, the
    /// feed closes that time and moves to the next one (never past `epoch`), and the last step
    /// takes the rest. Before it sends a new time's first sample it waits until every worker has
    /// completed the time two back, so at most two steps are in the dataflow. Every arrangement
    /// then seals and merges the history in steps of about `samples_per_time` samples, as during
    /// a load, instead of holding all of it in its batcher until one seal (ADR 0014). The intermediate times are not epochs anyone committed: a view's
    /// state at them is partial, and the snapshot store holds it back until the frontier passes
    /// `epoch` (`SnapshotStore::set_recovery_epoch` in `vitalflow-serve`). Only the state at
    /// `epoch` is ever served, and it is the same however the replay was cut.
    ///
    /// `epoch` must not be below the runtime's first open time (recovery starts the runtime and
    /// feeds it before anything else). `epoch` itself stays open: [`Runtime::advance`] closes it
    /// after [`RecoveryFeed::finish`].
    pub fn recovery_feed(&mut self, epoch: Epoch, chunk: usize, samples_per_time: usize) -> RecoveryFeed<'_> {
        let workers = self.senders.len();
        let chunk = chunk.max(1);
        let per_worker = (0..workers).map(|_| Vec::with_capacity(chunk / workers + 1)).collect();
        debug_assert!(self.frontier <= epoch, "recovery feeds at or after the runtime's first open time");
        let time = self.frontier.min(epoch);
        RecoveryFeed {
            runtime: self,
            epoch,
            time,
            chunk,
            samples_per_time: samples_per_time.max(1),
            pending: 0,
            in_time: 0,
            last_sent: time,
            per_worker,
        }
    }

    /// Sends to worker `i`, waking it while its queue is full so that it drains.
    fn send(&self, i: usize, msg: WorkerMsg) -> Result<(), RuntimeError> {
        let mut msg = msg;
        loop {
            match self.senders[i].send_timeout(msg, Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Err(RuntimeError::WorkerDied),
                Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                    if !self.is_healthy() {
                        return Err(RuntimeError::WorkerDied);
                    }
                    self.threads[i].unpark();
                    msg = m;
                }
            }
        }
    }

    /// Advances every worker's input to `epoch`: all epochs below it are closed.
    pub fn advance(&mut self, epoch: Epoch) -> Result<(), RuntimeError> {
        if epoch <= self.frontier {
            return Ok(());
        }
        self.frontier = epoch;
        for i in 0..self.senders.len() {
            self.send(i, WorkerMsg::Advance(epoch))?;
            self.threads[i].unpark();
        }
        Ok(())
    }

    /// Waits until every worker has completed every epoch below `epoch` in every view (each
    /// publishes its output frontier after a step), waking them meanwhile.
    ///
    /// Errors: [`RuntimeError::WorkerDied`] when a worker has died.
    fn wait_completed(&self, epoch: Epoch) -> Result<(), RuntimeError> {
        while self.completed.iter().any(|c| c.load(Ordering::Acquire) < epoch) {
            if !self.is_healthy() {
                return Err(RuntimeError::WorkerDied);
            }
            for t in &self.threads {
                t.unpark();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Closes the inputs and waits for the workers to drain and exit.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.senders.clear();
        for t in &self.threads {
            t.unpark();
        }
        if let Some(guards) = self.guards.take() {
            for result in guards.join() {
                if let Err(e) = result {
                    tracing::error!(error = %e, "dataflow worker failed");
                }
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.close();
    }
}

/// One worker's input handles, one per input collection; they advance together.
struct InputSessions {
    samples: InputSession<Epoch, SampleRecord, isize>,
    sessions: InputSession<Epoch, SessionRecord, isize>,
    products: InputSession<Epoch, Product, isize>,
    profiles: InputSession<Epoch, UserProfile, isize>,
}

impl InputSessions {
    fn apply(&mut self, epoch: Epoch, updates: Vec<Update>) {
        self.advance_to(epoch);
        for update in updates {
            match update {
                Update::Sample(s, d) => self.samples.update(s, d),
                Update::Session(s, d) => self.sessions.update(s, d),
                Update::Product(p, d) => self.products.update(*p, d),
                Update::Profile(p, d) => self.profiles.update(*p, d),
            }
        }
    }

    fn advance_to(&mut self, epoch: Epoch) {
        self.samples.advance_to(epoch);
        self.sessions.advance_to(epoch);
        self.products.advance_to(epoch);
        self.profiles.advance_to(epoch);
    }

    fn advance(&mut self, epoch: Epoch) {
        self.advance_to(epoch);
        self.samples.flush();
        self.sessions.flush();
        self.products.flush();
        self.profiles.flush();
    }
}

/// The worker that owns `key`: for a user's [`Name`], the one differential's exchange sends that
/// key to, so the shared by-user arrangement of samples ([`crate::SamplesByUser`]) moves no data
/// between workers.
fn worker_for<K: Hashable<Output = u64>>(key: &K, workers: usize) -> usize {
    (key.hashed() % workers as u64) as usize
}

/// Feeds recovered samples into a [`Runtime`]: see [`Runtime::recovery_feed`]. Dropping it
/// without [`RecoveryFeed::finish`] loses the last, partial chunk.
#[must_use = "the last chunk is sent only by `finish`"]
pub struct RecoveryFeed<'r> {
    runtime: &'r mut Runtime,
    /// The recovered epoch: no internal time passes it.
    epoch: Epoch,
    /// The internal time the next chunk is sent at (`<= epoch`).
    time: Epoch,
    chunk: usize,
    samples_per_time: usize,
    /// Samples gathered and not yet sent.
    pending: usize,
    /// Samples sent at `time` so far.
    in_time: usize,
    /// The last internal time a chunk of samples was sent at.
    last_sent: Epoch,
    per_worker: Vec<Vec<Update>>,
}

impl RecoveryFeed<'_> {
    /// Sends stored sessions, products and profiles (each a +1) at the feed's current time:
    /// recovery sends them before the first sample, so that no view computes a user's rows
    /// without them and again with them.
    ///
    /// Errors: [`RuntimeError::WorkerDied`] when a worker has died.
    pub fn push_changes(&mut self, changes: Vec<Change>) -> Result<(), RuntimeError> {
        self.runtime.push_changes(self.time, changes)
    }

    /// Adds one stored sample (a +1 at the feed's current time); sends the chunk once it is
    /// full, and moves to the next internal time once this one has its samples.
    ///
    /// Errors: [`RuntimeError::WorkerDied`] when a worker has died.
    pub fn push(&mut self, s: SampleRef<'_>) -> Result<(), RuntimeError> {
        // Locked per sample (uncontended, tens of nanoseconds), not per chunk: between two rows the
        // writer reads the store, and a worker building the dataflow interns its constants.
        let s = SampleRecord::intern(s, &mut Interner::lock());
        let worker = worker_for(&s.user_id, self.per_worker.len());
        self.per_worker[worker].push(Update::Sample(s, 1));
        self.pending += 1;
        if self.pending >= self.chunk {
            self.flush()?;
        }
        Ok(())
    }

    /// The internal time the next sample is sent at.
    pub fn time(&self) -> Epoch {
        self.time
    }

    /// The earliest time any worker has not completed in every view: the replay's progress
    /// through the dataflow. The feed keeps it at most one behind [`RecoveryFeed::time`] when it
    /// opens a new time.
    pub fn completed(&self) -> Epoch {
        self.runtime.completed.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap_or(Epoch::MAX)
    }

    /// Sends what is left (at the current internal time; the caller closes `epoch`), and returns
    /// the last internal time any sample was sent at.
    ///
    /// Errors: [`RuntimeError::WorkerDied`] when a worker has died.
    pub fn finish(mut self) -> Result<Epoch, RuntimeError> {
        self.flush()?;
        Ok(self.last_sent)
    }

    fn flush(&mut self) -> Result<(), RuntimeError> {
        if !self.runtime.is_healthy() {
            return Err(RuntimeError::WorkerDied);
        }
        let capacity = self.chunk / self.per_worker.len() + 1;
        for (i, chunk) in self.per_worker.iter_mut().enumerate() {
            if !chunk.is_empty() {
                let full = std::mem::replace(chunk, Vec::with_capacity(capacity));
                self.runtime.send(i, WorkerMsg::Changes(self.time, full))?;
                self.last_sent = self.time;
            }
        }
        self.in_time += self.pending;
        self.pending = 0;
        if self.in_time >= self.samples_per_time && self.time < self.epoch {
            self.time += 1;
            self.in_time = 0;
            self.runtime.advance(self.time)?;
            // At most two steps in flight: the one just closed, computing, and the next one
            // coming in. Without the wait the feed outruns the workers, which take everything
            // queued before they step, and every step would pile up before the first is sealed.
            self.runtime.wait_completed(self.time - 1)?;
        }
        Ok(())
    }
}

/// Gathers a view's updates on worker 0 and, each time the view's frontier advances, sends the
/// consolidated updates of the epochs it completed.
fn sink(view: usize, name: &str, rows: VecCollection<'_, Epoch, Row>, report: bool, out: Sender<ViewProgress>) {
    let mut stash: BTreeMap<Epoch, Vec<(Row, isize)>> = BTreeMap::new();
    let mut reported: Epoch = 0;
    rows.inner.sink(
        Exchange::new(|_: &(Row, Epoch, isize)| 0u64),
        &format!("Sink: {name}"),
        move |(input, frontier)| {
            input.for_each(|_cap, data| {
                for (row, t, r) in data.drain(..) {
                    stash.entry(t).or_default().push((row, r));
                }
            });
            if !report {
                return;
            }
            let f = frontier.frontier().iter().min().copied().unwrap_or(Epoch::MAX);
            if f > reported {
                let later = stash.split_off(&f);
                let done = std::mem::replace(&mut stash, later);
                let mut updates: Vec<(Row, Epoch, i64)> =
                    done.into_iter().flat_map(|(t, v)| v.into_iter().map(move |(row, r)| (row, t, r as i64))).collect();
                consolidate_updates(&mut updates);
                reported = f;
                let _ = out.send(ViewProgress { view, frontier: f, updates });
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued sample costs its record, its difference and the tag: the rare, large products
    /// and profiles are boxed so that they do not set the size of every update.
    #[test]
    fn a_queued_update_is_64_bytes() {
        assert_eq!(std::mem::size_of::<SampleRecord>(), 48);
        assert_eq!(std::mem::size_of::<Update>(), 64);
    }
}
