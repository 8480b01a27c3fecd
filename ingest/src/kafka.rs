//! The Kafka source: batch-upsert bodies on the samples topic (key = userId), domain-changes bodies
//! on the domain topic, the same JSON as over HTTP.
//!
//! Exactly-once into the views: the records of a poll and the positions they advance their
//! partitions to are committed to the durable store in one transaction ([`Ingest::source_commit`]).
//! A record below its partition's stored position was already applied and is skipped, so whatever
//! offset the consumer group resumes from (its committed offsets trail the store's), nothing counts
//! twice and nothing is skipped. Offsets are also committed to the group, after the store, for the
//! usual lag tools.
//!
//! A malformed record (bad JSON, unknown fields, too large, a bad requestId) is produced to the
//! dead-letter topic with headers `reason`, `original-topic`, `original-partition`,
//! `original-offset`, before its position is committed; consumption goes on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use vitalflow_schemas::Epoch;

use crate::error::IngestError;
use crate::http::{parse_batch, parse_domain, parse_json};
use crate::writer::{Ingest, SourceBody, SourceOutcome};

/// `[sources.kafka]` in `vitalflow.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    #[serde(alias = "bootstrap_servers", alias = "bootstrap.servers")]
    pub brokers: String,
    #[serde(alias = "group", alias = "consumer_group")]
    pub group_id: String,
    /// Values are batch-upsert bodies, keys are user ids.
    #[serde(alias = "samples", alias = "topic_samples")]
    pub samples_topic: String,
    /// Values are domain-changes bodies.
    #[serde(alias = "domain_changes_topic", alias = "domain", alias = "topic_domain_changes")]
    pub domain_topic: String,
    /// Where malformed records go.
    #[serde(alias = "dlq_topic", alias = "dead_letter", alias = "dlq")]
    pub dead_letter_topic: String,
    /// Records larger than this are malformed.
    pub max_message_bytes: usize,
    /// Pause consumption while the views trail the store by more than this many epochs.
    pub max_lag_epochs: u64,
    /// Most records applied in one store transaction.
    pub max_poll_records: usize,
    /// Extra librdkafka settings (e.g. `session.timeout.ms`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "vitalflow".into(),
            samples_topic: "vitalflow.samples".into(),
            domain_topic: "vitalflow.domain-changes".into(),
            dead_letter_topic: "vitalflow.dead-letter".into(),
            max_message_bytes: crate::http::DEFAULT_MAX_BODY_BYTES,
            max_lag_epochs: 64,
            max_poll_records: 500,
            properties: BTreeMap::new(),
        }
    }
}

/// One partition as `/v1/frontiers` shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Next offset to apply, as stored with the applied records.
    pub stored_offset: i64,
    /// The partition's high watermark when last asked.
    pub high_watermark: i64,
    pub lag: i64,
}

/// The Kafka source's state, for `/v1/frontiers`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaStatus {
    pub group_id: String,
    pub partitions: Vec<PartitionStatus>,
    /// Records applied (or dead-lettered) since start.
    pub consumed: u64,
    pub dead_lettered: u64,
    /// Bodies whose requestId had been applied before (sent twice by a producer; a record that was
    /// applied is never consumed again, so a crash does not make any).
    pub replayed: u64,
    /// Whether consumption is paused because the views fell behind.
    pub paused: bool,
    /// Times consumption was paused since start.
    pub pauses: u64,
    pub last_error: Option<String>,
}

/// A running Kafka source.
pub struct KafkaSource {
    status: Arc<Mutex<KafkaStatus>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaSource {
    /// Starts consuming. `visible` tells the newest epoch every view reflects (for backpressure);
    /// `runtime` runs the async parts (the writer's answer, dead-letter deliveries).
    pub fn start(
        config: KafkaConfig,
        ingest: Ingest,
        positions: HashMap<String, i64>,
        visible: Arc<dyn Fn() -> Epoch + Send + Sync>,
        runtime: tokio::runtime::Handle,
    ) -> Result<KafkaSource, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("client.id", "vitalflow")
            // Topics created after start are found within seconds, not librdkafka's 5 minutes.
            .set("topic.metadata.refresh.interval.ms", "5000")
            // Some brokers (tansu) hold a fetch for its whole wait even when data is there: keep
            // the wait short so a busy topic is drained at the speed of the writer, not of the wait.
            .set("fetch.wait.max.ms", "50");
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        let stored: HashMap<Partition, i64> = positions
            .into_iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix("kafka/")?;
                let (topic, partition) = rest.rsplit_once('/')?;
                Some(((topic.to_owned(), partition.parse().ok()?), v))
            })
            .collect();
        let shared = Arc::new(Mutex::new(stored.clone()));
        let consumer: BaseConsumer<StoreOffsets> =
            client.create_with_context(StoreOffsets { stored: shared.clone() })?;
        consumer.subscribe(&[&config.samples_topic, &config.domain_topic])?;
        let mut producer_config = ClientConfig::new();
        producer_config.set("bootstrap.servers", &config.brokers).set("message.timeout.ms", "30000");
        let producer: FutureProducer = producer_config.create()?;
        let status = Arc::new(Mutex::new(KafkaStatus { group_id: config.group_id.clone(), ..KafkaStatus::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            config,
            consumer,
            producer,
            ingest,
            visible,
            runtime,
            stored,
            shared,
            watermarks: HashMap::new(),
            status: status.clone(),
            stop: stop.clone(),
            paused: false,
        };
        let thread = std::thread::Builder::new()
            .name("vitalflow-kafka".into())
            .spawn(move || worker.run())
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(KafkaSource { status, stop, thread: Some(thread) })
    }

    /// A handle to the status that outlives `self`.
    pub fn status_handle(&self) -> Arc<Mutex<KafkaStatus>> {
        self.status.clone()
    }

    /// Stops consuming and waits for the last commit.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Partition = (String, i32);

/// The consumer's context: on every partition assignment it starts each partition at the offset
/// stored with the applied rows (the store is the truth, not the consumer group), or at the
/// beginning when the store has none — so a new data directory or a second instance in the group
/// never skips records.
struct StoreOffsets {
    stored: Arc<Mutex<HashMap<Partition, i64>>>,
}

impl ClientContext for StoreOffsets {}

impl ConsumerContext for StoreOffsets {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<Partition> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                {
                    let stored = self.stored.lock();
                    for (topic, partition) in &parts {
                        let offset =
                            stored.get(&(topic.clone(), *partition)).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                        if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                            tracing::error!(error = %e, "cannot set a partition's start offset");
                        }
                    }
                }
                tracing::info!(partitions = parts.len(), "kafka partitions assigned; starting at the stored offsets");
                if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "kafka rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "kafka (un)assignment failed");
        }
    }
}

/// Backpressure with hysteresis: pause beyond `limit` epochs of lag, resume at or below half of it.
fn should_pause(paused: bool, lag: u64, limit: u64) -> bool {
    let limit = limit.max(1);
    if paused { lag > limit / 2 } else { lag > limit }
}

struct Worker {
    config: KafkaConfig,
    consumer: BaseConsumer<StoreOffsets>,
    producer: FutureProducer,
    ingest: Ingest,
    visible: Arc<dyn Fn() -> Epoch + Send + Sync>,
    runtime: tokio::runtime::Handle,
    /// Next offset to apply per partition, as in the store.
    stored: HashMap<Partition, i64>,
    /// The same positions, for the rebalance callback.
    shared: Arc<Mutex<HashMap<Partition, i64>>>,
    watermarks: HashMap<Partition, i64>,
    status: Arc<Mutex<KafkaStatus>>,
    stop: Arc<AtomicBool>,
    paused: bool,
}

/// A record that must go to the dead-letter topic.
struct DeadLetter {
    reason: &'static str,
    message: OwnedMessage,
}

impl Worker {
    fn run(&mut self) {
        let mut last_watermarks = Instant::now() - Duration::from_secs(10);
        while !self.stop.load(Ordering::Acquire) {
            self.backpressure();
            let records = self.poll();
            if !records.is_empty() {
                self.apply(records);
            }
            if last_watermarks.elapsed() >= Duration::from_secs(1) {
                self.refresh_watermarks();
                last_watermarks = Instant::now();
            }
        }
        tracing::info!("kafka source stopped");
    }

    /// Pauses the assigned partitions while the views trail the store by more than the limit,
    /// resumes them once they are within half of it.
    fn backpressure(&mut self) {
        let lag = self.ingest.progress().latest_epoch().saturating_sub((self.visible)());
        let limit = self.config.max_lag_epochs;
        let want_paused = should_pause(self.paused, lag, limit);
        let Ok(assignment) = self.consumer.assignment() else { return };
        if want_paused {
            // Re-applied every round: partitions assigned by a rebalance start unpaused.
            let _ = self.consumer.pause(&assignment);
            if !self.paused {
                tracing::info!(lag, limit, "views behind; kafka partitions paused");
                self.status.lock().pauses += 1;
            }
        } else if self.paused {
            let _ = self.consumer.resume(&assignment);
            tracing::info!(lag, "views caught up; kafka partitions resumed");
        }
        self.paused = want_paused;
        self.status.lock().paused = want_paused;
    }

    fn poll(&mut self) -> Vec<OwnedMessage> {
        let mut out = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while out.len() < self.config.max_poll_records.max(1) {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => out.push(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll");
                    self.status.lock().last_error = Some(e.to_string());
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        out
    }

    fn classify(&self, m: &OwnedMessage) -> Result<SourceBody, &'static str> {
        let Some(payload) = m.payload() else { return Err("EMPTY_MESSAGE") };
        if payload.len() > self.config.max_message_bytes {
            return Err("PAYLOAD_TOO_LARGE");
        }
        let limits = crate::limits();
        let parsed = if m.topic() == self.config.domain_topic {
            parse_json(payload, limits)
                .and_then(|value| parse_domain(value, limits))
                .map(|(r, h)| SourceBody::Domain(r, h))
        } else {
            parse_batch(axum::body::Bytes::copy_from_slice(payload), limits).map(|(r, h)| SourceBody::Batch(r, h))
        };
        parsed.map_err(|e| e.code())
    }

    fn apply(&mut self, records: Vec<OwnedMessage>) {
        let mut items = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        let mut next: BTreeMap<Partition, i64> = BTreeMap::new();
        let mut kept = Vec::with_capacity(records.len());
        for m in records {
            let key = (m.topic().to_owned(), m.partition());
            if m.offset() < self.stored.get(&key).copied().unwrap_or(0) {
                continue; // applied before a crash or a rebalance; the store says so
            }
            next.insert(key, m.offset() + 1);
            match self.classify(&m) {
                Ok(body) => items.push(body),
                Err(reason) => {
                    items.push(SourceBody::Skip);
                    dead.push(DeadLetter { reason, message: m.clone() });
                }
            }
            kept.push(m);
        }
        if next.is_empty() {
            return;
        }
        // Dead letters are delivered before their positions are committed: a crash in between
        // repeats a dead letter, never loses one.
        for d in &dead {
            self.dead_letter(d);
        }
        let positions: Vec<(String, i64)> = next.iter().map(|((t, p), o)| (format!("kafka/{t}/{p}"), *o)).collect();
        let mut backoff = Duration::from_millis(50);
        let outcomes = loop {
            match self.runtime.block_on(self.ingest.source_commit(std::mem::take(&mut items), positions.clone())) {
                Ok(o) => break o,
                Err(IngestError::Unavailable) => return, // shutting down; positions not stored
                Err(e) => {
                    // Nothing of the group was applied: rebuild the items and retry.
                    tracing::error!(error = %e, "kafka records not committed; retrying");
                    self.status.lock().last_error = Some(e.to_string());
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    items = kept.iter().map(|m| self.classify(m).unwrap_or(SourceBody::Skip)).collect();
                }
            }
        };
        let dead_count = dead.len() as u64;
        // A body that parsed but failed as a whole (a requestId reused with another payload) is
        // dead-lettered after the fact.
        let replayed = outcomes
            .iter()
            .filter(|o| {
                matches!(o, SourceOutcome::Batch(Ok(r)) if r.replayed)
                    || matches!(o, SourceOutcome::Domain(Ok(r)) if r.replayed)
            })
            .count() as u64;
        let mut refused = false;
        for (m, outcome) in kept.iter().zip(&outcomes) {
            let failed = match outcome {
                SourceOutcome::Batch(Err(e)) => Some(e.code()),
                SourceOutcome::Domain(Err(e)) => Some(e.code()),
                _ => None,
            };
            if let Some(reason) = failed {
                self.dead_letter(&DeadLetter { reason, message: m.clone() });
                self.status.lock().dead_lettered += 1;
                refused = true;
            }
        }
        if refused {
            // The writer kept the positions back until the refused records were dead-lettered.
            loop {
                match self.runtime.block_on(self.ingest.source_commit(Vec::new(), positions.clone())) {
                    Ok(_) => break,
                    Err(IngestError::Unavailable) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "kafka positions not committed; retrying");
                        if self.stop.load(Ordering::Acquire) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &next {
            self.stored.insert((t.clone(), *p), *o);
            self.shared.lock().insert((t.clone(), *p), *o);
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "group offset commit");
        }
        let mut status = self.status.lock();
        status.consumed += kept.len() as u64;
        status.dead_lettered += dead_count;
        status.replayed += replayed;
        drop(status);
        self.publish_status();
    }

    /// Produces `d` to the dead-letter topic, retrying until delivered or stopped.
    fn dead_letter(&self, d: &DeadLetter) {
        let m = &d.message;
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let mut backoff = Duration::from_millis(50);
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "reason", value: Some(d.reason) })
                .insert(Header { key: "original-topic", value: Some(m.topic()) })
                .insert(Header { key: "original-partition", value: Some(partition.as_str()) })
                .insert(Header { key: "original-offset", value: Some(offset.as_str()) });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.config.dead_letter_topic).headers(headers);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(p) = m.payload() {
                record = record.payload(p);
            }
            match self.runtime.block_on(self.producer.send(record, Duration::from_secs(10))) {
                Ok(_) => {
                    tracing::warn!(
                        reason = d.reason,
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "record dead-lettered"
                    );
                    return;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, "dead-letter delivery failed; retrying");
                    self.status.lock().last_error = Some(format!("dead-letter: {e}"));
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn refresh_watermarks(&mut self) {
        let Ok(assignment) = self.consumer.assignment() else { return };
        for e in assignment.elements() {
            if let Ok((_, high)) = self.consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500))
            {
                self.watermarks.insert((e.topic().to_owned(), e.partition()), high);
            }
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        let mut keys: Vec<&Partition> = self.watermarks.keys().chain(self.stored.keys()).collect();
        keys.sort();
        keys.dedup();
        let partitions = keys
            .into_iter()
            .map(|k| {
                let stored_offset = self.stored.get(k).copied().unwrap_or(0);
                let high_watermark = self.watermarks.get(k).copied().unwrap_or(stored_offset);
                PartitionStatus {
                    topic: k.0.clone(),
                    partition: k.1,
                    stored_offset,
                    high_watermark,
                    lag: (high_watermark - stored_offset).max(0),
                }
            })
            .collect();
        self.status.lock().partitions = partitions;
    }
}

#[cfg(test)]
mod tests {
    use super::should_pause;

    #[test]
    fn backpressure_pauses_beyond_the_limit_and_resumes_at_half() {
        assert!(!should_pause(false, 64, 64));
        assert!(should_pause(false, 65, 64));
        assert!(should_pause(true, 33, 64), "stays paused above half the limit");
        assert!(!should_pause(true, 32, 64), "resumes at half");
        assert!(should_pause(false, 2, 0), "a zero limit means one epoch");
    }
}
