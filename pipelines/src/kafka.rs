//! Kafka plumbing shared by the services: client configuration, topic provisioning,
//! the output side (transactional or at-least-once) and the dead-letter queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::error::Broken;
use crate::topics::dlq_headers;
use crate::{Cluster, Guarantee};

/// Timeout of transaction and flush calls.
pub const TX_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Output`]'s transactional calls may block in all before the producer is given
/// up: their retries take up to twice [`TX_TIMEOUT`]; a call librdkafka never returns from
/// is caught 10 s after that.
const CALL_LIMIT: Duration = Duration::from_secs(2 * TX_TIMEOUT.as_secs() + 10);

/// Timeout of the committed-offsets fetch an idle processor makes to step over transaction
/// markers ([`Committed::step_over_markers`]); it blocks the processing loop while it waits.
const IDLE_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest record a producer of `cluster` may send: librdkafka's `message.max.bytes`
/// (1,000,000 unless the operator's `-X` properties say otherwise). Outputs over it are
/// refused before they are sent ([`crate::error::TooLarge`]).
pub fn max_record_bytes(cluster: &Cluster) -> usize {
    cluster
        .kafka
        .iter()
        .rev()
        .find(|(k, _)| k == "message.max.bytes")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Room left in a record for what is not key or payload (headers, framing).
const RECORD_OVERHEAD: usize = 1_024;

/// Base client configuration for `cluster`.
pub fn client_config(cluster: &Cluster) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cluster.brokers)
        .set("log_level", "4");
    overrides(&mut c, cluster);
    c
}

/// The operator's librdkafka properties ([`Cluster::kafka`]) win over ours.
fn overrides(c: &mut ClientConfig, cluster: &Cluster) {
    for (k, v) in &cluster.kafka {
        c.set(k, v);
    }
}

/// Configuration of a consumer in `group` that commits explicitly and reads only committed
/// transactional data.
pub fn consumer_config(cluster: &Cluster, group: &str) -> ClientConfig {
    let mut c = client_config(cluster);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        // librdkafka's fetcher stops when a consumer's queue holds `queued.min.messages`
        // and, once the consumer has drained it, waits `fetch.queue.backoff.ms` (1 s by
        // default) before it fetches again: any consumer slower than its fetcher idles for
        // up to a second at a time. Under a backlog that capped a processor near 100-150K
        // records/s, and a saga participant sharing a process with a dozen others spent most
        // of its time waiting on an empty queue (librdkafka #2879; BENCHMARKS.md).
        .set("fetch.queue.backoff.ms", "10")
        // A Rust process has no GC pauses to ride out, and heartbeats come from librdkafka's
        // own thread, however busy the processor: detect a dead instance in 6 s (the
        // broker's default minimum, `group.min.session.timeout.ms`), not the default 45 s.
        // A SIGKILLed instance's partitions were processed again 10.5 s after the kill at
        // 10 s, the rebalance and restore taking the last 0.5 s (issue 13's goal: 10 s).
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    overrides(&mut c, cluster);
    c
}

/// Configuration of a producer; keys hash with murmur2 like the Java client, so records
/// produced by any client land in the same partition for the same key.
pub fn producer_config(cluster: &Cluster) -> ClientConfig {
    let mut c = client_config(cluster);
    c.set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    overrides(&mut c, cluster);
    c
}

/// A topic and how it is kept.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: &'static str,
    pub partitions: i32,
    /// `delete` with infinite retention for event logs, `compact` for changelogs.
    pub compacted: bool,
}

/// Refuses to touch a store while its owner runs: a live instance would overwrite it.
pub fn ensure_group_stopped(cluster: &Cluster, group: &str) -> anyhow::Result<()> {
    let probe: BaseConsumer = client_config(cluster).create()?;
    let groups = probe
        .fetch_group_list(Some(group), TX_TIMEOUT)
        .with_context(|| format!("describing consumer group {group}"))?;
    if let Some(g) = groups.groups().iter().find(|g| !g.members().is_empty()) {
        bail!(
            "consumer group {group} has {} active member(s): stop the {group} processor before rebuilding its store",
            g.members().len()
        );
    }
    Ok(())
}

/// Deletes `topics` and waits until the cluster no longer lists them (deletion is
/// asynchronous; a topic recreated too early would vanish).
pub async fn delete_topics(cluster: &Cluster, topics: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(cluster).create()?;
    for result in admin
        .delete_topics(
            topics,
            &AdminOptions::new().operation_timeout(Some(TX_TIMEOUT)),
        )
        .await?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, e)) => bail!("cannot delete topic {topic}: {e}"),
        }
    }
    let probe: BaseConsumer = client_config(cluster).create()?;
    let deadline = std::time::Instant::now() + TX_TIMEOUT;
    loop {
        let metadata = probe.fetch_metadata(None, Duration::from_secs(10))?;
        let left: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|n| topics.contains(n))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("topics {left:?} still listed {TX_TIMEOUT:?} after their deletion");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the topics that do not exist yet (replicated as the broker's
/// `default.replication.factor` says), and checks the partition count of those that do.
pub async fn ensure_topics(cluster: &Cluster, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(cluster).create()?;
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            // -1: the broker's `default.replication.factor` (KIP-464), so a production
            // cluster replicates as its operators configured it (1 on the test broker).
            let t = NewTopic::new(s.name, s.partitions, TopicReplication::Fixed(-1));
            if s.compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t.set("retention.ms", "-1")
            }
        })
        .collect();
    for result in admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(TX_TIMEOUT)),
        )
        .await?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => bail!("cannot create topic {topic}: {e}"),
        }
    }
    let probe: BaseConsumer = client_config(cluster).create()?;
    for s in specs {
        let found = partition_count(&probe, s.name)?;
        if found != s.partitions as usize {
            bail!(
                "topic {} has {found} partitions, expected {}",
                s.name,
                s.partitions
            );
        }
    }
    Ok(())
}

/// Number of partitions of `topic` (waiting briefly for fresh metadata).
pub fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> anyhow::Result<usize> {
    // Right after creation a topic may report no partitions or NotLeaderForPartition until
    // its leaders are elected: retry for a while before calling it missing.
    let mut last = String::from("no metadata");
    for _ in 0..100 {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(md) => match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(t.partitions().len());
                }
                Some(t) => last = format!("{:?}", t.error()),
                None => {}
            },
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("topic {topic} is not available: {last}")
}

/// A client that reads partitions' ends: their high watermarks.
///
/// A read_committed client (librdkafka's default) is answered the *last stable offset*
/// instead: the first offset of the oldest open transaction. A killed member's transaction
/// stays open until the coordinator times it out, and committed records written after it
/// lie beyond that offset. A restore that stopped there rebuilt an older state than the
/// partition's committed offset belongs to, and a check that stopped there missed every
/// record after it. So ends come from a read_uncommitted probe, and readers that reach the
/// high watermark under read_committed have seen every transaction before it resolved.
pub struct Probe(BaseConsumer);

impl Probe {
    pub fn new(cluster: &Cluster) -> anyhow::Result<Self> {
        let mut config = client_config(cluster);
        config.set("isolation.level", "read_uncommitted");
        Ok(Probe(
            config.create().context("creating a watermark probe")?,
        ))
    }
}

impl std::ops::Deref for Probe {
    type Target = BaseConsumer;

    fn deref(&self) -> &BaseConsumer {
        &self.0
    }
}

/// High watermarks of every partition of `topic`.
pub fn high_watermarks(probe: &Probe, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let n = partition_count(&probe.0, topic)?;
    (0..n as i32)
        .map(|p| Ok((p, watermarks(probe, topic, p)?.1)))
        .collect()
}

/// Low and high watermarks of one partition, retrying while its leader moves or is being
/// elected (a topic just created answers `NotLeaderForPartition` for a moment) or a
/// request times out (a broker bouncing), up to [`TX_TIMEOUT`].
pub fn watermarks(probe: &Probe, topic: &str, p: i32) -> anyhow::Result<(i64, i64)> {
    let deadline = std::time::Instant::now() + TX_TIMEOUT;
    loop {
        match probe.0.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                // A request in flight to a broker handle librdkafka replaced (seen after a
                // hard bounce on three brokers).
                | RDKafkaErrorCode::DestroyBroker,
            )) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("fetching the watermarks of {topic}/{p}")));
            }
        }
    }
}

/// Committed offsets of `group` on `topic`; partitions without a commit are absent.
pub fn committed_offsets(
    cluster: &Cluster,
    group: &str,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = consumer_config(cluster, group).create()?;
    committed_by(&consumer, topic)
}

/// [`committed_offsets`] of the group `consumer` was configured with, through a client kept
/// between calls (for probes that sample often).
pub fn committed_by<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let n = partition_count(consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Counts failed deliveries so an at-least-once commit can refuse to move offsets past them.
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
    /// First and last offset delivered per (topic, partition) since the unit of work began,
    /// for the topics asked for.
    delivered: std::sync::Mutex<HashMap<(String, i32), (i64, i64)>>,
    /// Topics whose delivered offsets are kept (changelogs: a local snapshot names the last
    /// offset of this instance it covers).
    track: std::sync::OnceLock<Vec<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, topic = m.topic(), partition = m.partition(), "Delivery failed.");
            }
            Ok(m) => {
                if let Some(track) = self.track.get()
                    && track.iter().any(|t| t == m.topic())
                {
                    let mut delivered = self.delivered.lock().expect("not poisoned");
                    let (first, last) = delivered
                        .entry((m.topic().to_owned(), m.partition()))
                        .or_insert((m.offset(), m.offset()));
                    *first = (*first).min(m.offset());
                    *last = (*last).max(m.offset());
                }
            }
        }
    }
}

/// The output side of a consume–process–produce loop, used from one thread.
///
/// A `BaseProducer` polled by that thread, not a `ThreadedProducer`: with a background
/// poller, `flush` (and so every transaction commit) waited for its 100 ms poll tick to see
/// the last delivery reports.
pub struct Output {
    /// Shared with the thread a transactional call runs on ([`Output::transactional`]).
    producer: Arc<BaseProducer<DeliveryCounter>>,
    guarantee: Guarantee,
    /// How long a transactional call may block before the producer is given up.
    call_limit: Duration,
    unpolled: std::cell::Cell<u32>,
    /// With exactly-once, the instance written in [`WRITER_HEADER`].
    writer: Option<String>,
    /// Changelog partitions written in the transaction under way.
    marked: std::cell::RefCell<BTreeSet<i32>>,
    /// Key plus payload a record may have at most ([`max_record_bytes`] less headers' room).
    max_record: usize,
}

/// Header on the first record a transaction writes to each changelog partition: the
/// instance that wrote it. A transaction left open by a killed instance holds every
/// read_committed reader of the partition at that record (the partition's last stable
/// offset) until the coordinator aborts it: `transaction.timeout.ms` after it began, plus
/// up to the broker's `transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10-20 s.
/// The partition's next owner reads the writer there and, once that instance has left the
/// group, aborts the transaction itself ([`abort_departed`]).
pub const WRITER_HEADER: &str = "supplystream.writer";

/// The transactional id of `pipeline`'s instance `instance`.
pub fn transactional_id(pipeline: &str, instance: &str) -> String {
    format!("supplystream-{pipeline}-{instance}")
}

/// The static membership id (`group.instance.id`) of instance `instance` in `group`; the
/// broker names the member `<group.instance.id>-<uuid>`.
pub fn group_instance_id(group: &str, instance: &str) -> String {
    format!("{group}-{instance}")
}

/// [`Output::transactional`]'s retries, on the calling thread: each call is given what is
/// left of twice [`TX_TIMEOUT`] (at most [`TX_TIMEOUT`]).
fn retried(
    producer: &BaseProducer<DeliveryCounter>,
    what: &'static str,
    call: impl Fn(&BaseProducer<DeliveryCounter>, Duration) -> rdkafka::error::KafkaResult<()>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + 2 * TX_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match call(producer, left.min(TX_TIMEOUT)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && std::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "{what}: retriable; trying again.");
            }
            Err(e) => {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    return Err(e)
                        .context(Broken(format!(
                            "producer failed for good: {code:?}: {reason}"
                        )))
                        .context(what);
                }
                return Err(e).context(what);
            }
        }
    }
}

impl Output {
    /// A producer for `service`; with exactly-once, transactional with id
    /// `supplystream-<service>-<instance>` and initialized (which fences older instances and
    /// aborts their open transaction).
    pub fn new(cluster: &Cluster, service: &str, instance: &str) -> anyhow::Result<Self> {
        let producer = transactional_producer(cluster, service, instance)?;
        Ok(Output {
            producer: Arc::new(producer),
            guarantee: cluster.guarantee,
            call_limit: CALL_LIMIT,
            unpolled: std::cell::Cell::new(0),
            writer: (cluster.guarantee == Guarantee::ExactlyOnce).then(|| instance.to_owned()),
            marked: Default::default(),
            max_record: max_record_bytes(cluster).saturating_sub(RECORD_OVERHEAD),
        })
    }

    /// Refuses a record of `key` and `payload` for `topic` over the size limit.
    pub fn check_size(&self, topic: &str, key: &[u8], payload: &[u8]) -> anyhow::Result<()> {
        let bytes = key.len() + payload.len();
        if bytes > self.max_record {
            return Err(crate::error::TooLarge {
                topic: topic.to_owned(),
                bytes,
                limit: self.max_record,
            }
            .into());
        }
        Ok(())
    }

    /// Enqueues one changelog record for partition `p` (`payload` `None`: a tombstone,
    /// which deletes `key` once compacted): the transaction's first on `p` carries
    /// [`WRITER_HEADER`].
    pub fn send_changelog(
        &self,
        topic: &str,
        p: i32,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let headers = match &self.writer {
            Some(writer) if self.marked.borrow_mut().insert(p) => {
                Some(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: WRITER_HEADER,
                    value: Some(writer.as_bytes()),
                }))
            }
            _ => None,
        };
        self.enqueue(topic, Some(p), key, payload, headers)
    }

    /// Starts a unit of work.
    pub fn begin(&self) -> anyhow::Result<()> {
        self.producer
            .context()
            .delivered
            .lock()
            .expect("not poisoned")
            .clear();
        self.marked.borrow_mut().clear();
        if self.guarantee == Guarantee::ExactlyOnce {
            self.producer
                .begin_transaction()
                .context("beginning transaction")?;
        }
        Ok(())
    }

    /// Enqueues one record, waiting while the local queue is full.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        self.enqueue(topic, partition, key, Some(payload), headers)
    }

    fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        // Serve delivery reports now and then so the local queue keeps moving.
        let unpolled = self.unpolled.get() + 1;
        if unpolled >= 1_000 {
            self.producer.poll(Duration::ZERO);
            self.unpolled.set(0);
        } else {
            self.unpolled.set(unpolled);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e).with_context(|| format!("producing to {topic}")),
            }
        }
    }

    /// Commits the unit of work together with the consumer's next `offsets`.
    pub fn commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
    ) -> anyhow::Result<()> {
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                let group = consumer
                    .group_metadata()
                    .context("consumer has no group metadata")?;
                // Flush first: commit_transaction flushes too, but without serving the
                // delivery reports this thread is responsible for.
                self.flush().context("outputs not delivered")?;
                if offsets.count() > 0 {
                    let offsets = offsets.clone();
                    self.transactional("sending offsets to transaction", move |p, timeout| {
                        p.send_offsets_to_transaction(&offsets, &group, timeout)
                    })?;
                }
                self.transactional("committing transaction", |p, timeout| {
                    p.commit_transaction(timeout)
                })?;
            }
            Guarantee::AtLeastOnce => {
                self.flush()
                    .context("outputs not delivered; offsets not committed")?;
                if offsets.count() > 0 {
                    consumer
                        .commit(offsets, rdkafka::consumer::CommitMode::Sync)
                        .context("committing offsets")?;
                }
            }
        }
        Ok(())
    }

    /// Waits until every record sent so far is delivered (for plain producers).
    pub fn flush(&self) -> anyhow::Result<()> {
        // rdkafka's `flush` polls in 100 ms slices and `poll` always waits out its timeout,
        // so a flush took at least 100 ms; short polls until nothing is in flight instead.
        let deadline = std::time::Instant::now() + TX_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} records still undelivered after {TX_TIMEOUT:?}",
                    self.producer.in_flight_count()
                );
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} records were not delivered");
        }
        Ok(())
    }

    /// Keeps the highest offset delivered per partition of `topics` (see [`Output::delivered`]);
    /// once per output (later calls change nothing).
    pub fn track_deliveries(&self, topics: &[&str]) {
        let unchanged = self
            .producer
            .context()
            .track
            .set(topics.iter().map(|t| (*t).to_owned()).collect());
        if unchanged.is_err() {
            tracing::debug!("Deliveries already tracked.");
        }
    }

    /// The first and last offset delivered per partition of tracked `topic` in the unit of
    /// work since [`Output::begin`] (after a commit: what it committed).
    pub fn delivered(&self, topic: &str) -> HashMap<i32, (i64, i64)> {
        let delivered = self
            .producer
            .context()
            .delivered
            .lock()
            .expect("not poisoned");
        delivered
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), o)| (*p, *o))
            .collect()
    }

    /// Ends a unit of work that consumed nothing (exactly-once: commits the transaction).
    pub fn end(&self) -> anyhow::Result<()> {
        self.flush().context("outputs not delivered")?;
        if self.guarantee == Guarantee::ExactlyOnce {
            self.transactional("committing transaction", |p, timeout| {
                p.commit_transaction(timeout)
            })?;
        }
        Ok(())
    }

    /// Runs a transactional call as librdkafka's contract says: a retriable error (a
    /// timeout) calls it again, for up to twice [`TX_TIMEOUT`] in all; an error that needs
    /// an abort is returned for the caller to abort; a fatal one (the producer can never
    /// go on) is [`Broken`]. Before this, a commit that timed out was followed by an abort
    /// that librdkafka refuses while committing, and every later `begin_transaction` failed.
    ///
    /// The calls run on a thread of their own, watched: librdkafka's
    /// `send_offsets_to_transaction` can block forever, past its timeout, when the group
    /// coordinator goes away (librdkafka #5456, worse since brokers that leave the metadata
    /// are decommissioned: #5511). The three-broker soak met it after a hard bounce: the
    /// processor thread never came back and the process could not even stop. A call still
    /// blocked after [`Output::call_limit`] is left to its thread, holding its producer
    /// (never destroyed under a call in flight), and the producer is [`Broken`]: the caller
    /// makes new clients, whose `init_transactions` fences the stuck one and aborts its
    /// transaction, so nothing is lost or doubled.
    fn transactional(
        &self,
        what: &'static str,
        call: impl Fn(&BaseProducer<DeliveryCounter>, Duration) -> rdkafka::error::KafkaResult<()>
        + Send
        + 'static,
    ) -> anyhow::Result<()> {
        let producer = Arc::clone(&self.producer);
        let span = tracing::Span::current();
        let (done, result) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("transactional".into())
            .spawn(move || {
                let _span = span.enter();
                // Nobody waits any more once the call was given up.
                done.send(retried(&producer, what, call)).ok();
            })
            .context("starting a thread for a transactional call")?;
        // While the call runs, this thread serves the delivery reports it owns, as librdkafka
        // asks ("the event queue must be polled for delivery report events in a separate
        // thread"): an abort with records still queued purges them and waits for their
        // reports, and timed out unserved, failing the abort for good (real Kafka, a batch
        // given up in the middle).
        let deadline = std::time::Instant::now() + self.call_limit;
        let outcome = loop {
            match result.recv_timeout(Duration::from_millis(5)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if std::time::Instant::now() < deadline =>
                {
                    self.producer.poll(Duration::ZERO);
                }
                other => break other,
            }
        };
        match outcome {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(anyhow::Error::new(Broken(format!(
                    "{what} did not return within {:?} (librdkafka #5456): the producer is \
                     given up",
                    self.call_limit
                )))
                .context(crate::error::GaveUp))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(anyhow::Error::new(
                Broken(format!("{what}: the thread calling librdkafka panicked")),
            )),
        }
    }

    /// Abandons the unit of work. Exactly-once: aborts the transaction (retrying what is
    /// retriable); an abort that fails leaves the producer where no transaction can begin
    /// again, so it is [`Broken`] and the caller makes a new one. At-least-once: what was
    /// sent cannot be taken back, so it waits (up to 5 s) for what is in flight to land
    /// first; a caller that then restores its state from a changelog sees every record the
    /// abandoned work delivered there, and does not produce its events a second time.
    pub fn abort(&self) -> anyhow::Result<()> {
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                let aborted = self.transactional("aborting transaction", |p, timeout| {
                    p.abort_transaction(timeout)
                });
                if let Err(e) = aborted {
                    self.producer.context().failed.store(0, Ordering::Relaxed);
                    return Err(e).context(Broken("the transaction could not be aborted".into()));
                }
            }
            Guarantee::AtLeastOnce => {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while self.producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
                    self.producer.poll(Duration::from_millis(1));
                }
            }
        }
        self.producer.context().failed.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `message` to `dlq` with the reason and source coordinates in headers; the key,
    /// payload and original headers are kept byte for byte.
    pub fn dead_letter(
        &self,
        dlq: &str,
        service: &str,
        message: &BorrowedMessage<'_>,
        kind: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new();
        let key = message.key().unwrap_or_default();
        // Room for the original headers after the key and ours (their values; the names and
        // the numbers fit in `RECORD_OVERHEAD`); original headers that do not fit are left
        // out (they stay on the source record).
        let ours = reason.len() + kind.len() + service.len() + message.topic().len();
        let mut room = self.max_record.saturating_sub(key.len() + ours);
        if let Some(original) = message.headers() {
            use rdkafka::message::Headers;
            let size: usize = original
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum();
            if size <= room {
                room -= size;
                for h in original.iter() {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
        }
        let headers = headers
            .insert(Header {
                key: dlq_headers::REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: dlq_headers::KIND,
                value: Some(kind),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: dlq_headers::SERVICE,
                value: Some(service),
            });
        tracing::debug!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            kind,
            reason,
            "Dead-lettered."
        );
        let mut payload = message.payload().unwrap_or_default();
        // A record the broker took can be over what this producer may send (a topic with a
        // larger max.message.bytes): its dead letter keeps what fits, and says so; the whole
        // record stays at its source offset.
        let headers = if payload.len() > room {
            let original = payload.len().to_string();
            payload = &payload[..room];
            headers.insert(Header {
                key: dlq_headers::TRUNCATED,
                value: Some(&original),
            })
        } else {
            headers
        };
        self.send(dlq, None, key, payload, Some(headers))
    }
}

/// Notes `consumer`'s positions in `positions` (per topic and partition); whether any moved.
/// Positions, not last offsets + 1: they step over transaction markers, so a caught-up
/// view's positions equal the topics' high watermarks.
pub fn note_positions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    positions: &mut BTreeMap<String, BTreeMap<i32, i64>>,
) -> anyhow::Result<bool> {
    let mut moved = false;
    for e in consumer.position()?.elements() {
        if let Offset::Offset(o) = e.offset() {
            let at = positions.entry(e.topic().to_owned()).or_default();
            moved |= at.insert(e.partition(), o) != Some(o);
        }
    }
    Ok(moved)
}

/// Polls up to `max` messages, waiting at most `wait` for the first one.
pub fn poll_batch<'c, C: ConsumerContext>(
    consumer: &'c BaseConsumer<C>,
    max: usize,
    wait: Duration,
) -> anyhow::Result<Vec<BorrowedMessage<'c>>> {
    let mut batch = Vec::new();
    let mut timeout = wait;
    while batch.len() < max {
        match consumer.poll(timeout) {
            None => break,
            Some(Ok(m)) => batch.push(m),
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                consumer_error(&e, batch.is_empty());
                break;
            }
        }
        timeout = Duration::ZERO;
    }
    Ok(batch)
}

/// An error `poll` returned, which ends the batch: reported (and, for a topic not there yet,
/// waited on briefly) when it came first. Transient broker errors surface here; librdkafka
/// retries internally.
fn consumer_error(e: &KafkaError, first: bool) {
    if first {
        tracing::warn!(error = %e, "Consumer error.");
        if matches!(
            e,
            KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)
        ) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The consumer context of a group member: remembers which partitions rebalances took away
/// since the processing loop last looked, so the loop never acts on a record of a partition
/// it no longer owns (see [`poll_member_batch`]).
///
/// librdkafka calls it from inside `poll`, on the polling thread.
#[derive(Debug, Default)]
pub struct Membership {
    revoked: std::sync::Mutex<BTreeSet<i32>>,
    /// Partitions (re)assigned whose position is not yet known to be their committed offset
    /// (see [`poll_member_batch`]); touched only by the polling thread.
    unsettled: std::sync::Mutex<BTreeMap<i32, std::time::Instant>>,
    /// Partitions held out of processing (their state could not be restored): their records
    /// are dropped and their positions never committed until [`Membership::release`].
    held: std::sync::Mutex<BTreeSet<i32>>,
}

impl Membership {
    /// Partition numbers revoked (or lost) since the last call.
    fn take_revoked(&self) -> BTreeSet<i32> {
        std::mem::take(&mut *self.revoked.lock().expect("not poisoned"))
    }

    /// Whether partition `p`'s position may be committed (it is not waiting to be rewound,
    /// nor held).
    pub fn settled(&self, p: i32) -> bool {
        !self
            .unsettled
            .lock()
            .expect("not poisoned")
            .contains_key(&p)
            && !self.held.lock().expect("not poisoned").contains(&p)
    }

    /// Holds partition `p` out of processing: [`poll_member_batch`] drops its records and
    /// its position is not committed, until [`Membership::release`].
    pub fn hold(&self, p: i32) {
        self.held.lock().expect("not poisoned").insert(p);
    }

    /// Ends [`Membership::hold`]: `p` starts again from its committed offset.
    pub fn release(&self, p: i32) {
        self.held.lock().expect("not poisoned").remove(&p);
        self.rewind(p);
    }

    /// Rewinds partition `p` to its committed offset before the next batch uses it: its
    /// records are dropped until then (see [`poll_member_batch`]). For a member that commits
    /// where it wants to start from first (a view, from its table's checkpoint).
    pub fn rewind(&self, p: i32) {
        self.unsettled
            .lock()
            .expect("not poisoned")
            .entry(p)
            .or_insert_with(std::time::Instant::now);
    }

    /// Partitions waiting to be rewound, or held, at the moment of the call.
    fn unsettled(&self) -> BTreeSet<i32> {
        let mut out: BTreeSet<i32> = self
            .unsettled
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        out.extend(self.held.lock().expect("not poisoned").iter().copied());
        out
    }
}

impl ClientContext for Membership {}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let gone: Vec<i32> = match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?partitions_of(tpl), "Partitions assigned.");
                return;
            }
            Rebalance::Revoke(tpl) => partitions_of(tpl),
            // rdkafka then unassigns everything.
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Rebalance failed; dropping the whole assignment.");
                consumer
                    .assignment()
                    .map(|tpl| partitions_of(&tpl))
                    .unwrap_or_default()
            }
        };
        tracing::info!(partitions = ?gone, "Partitions revoked.");
        self.revoked.lock().expect("not poisoned").extend(gone);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    ps.sort_unstable();
    ps.dedup();
    ps
}

/// A consumer that is a member of a group and tracks what rebalances take from it.
pub type GroupConsumer = BaseConsumer<Membership>;

/// Leaves the group and serves the revocation before the consumer is dropped.
///
/// rdkafka's `Drop` closes the consumer and serves the events still queued; a revocation
/// served there calls `rd_kafka_rebalance_protocol`, which can wait for good on a consumer
/// group that is closing (librdkafka #4041): a `run saga` member stopped by SIGINT hung in
/// it with every other participant stopped (gdb). Served here, by a normal poll, it cannot.
/// Records polled meanwhile are dropped: uncommitted, the next owner reads them again.
pub fn leave(consumer: &GroupConsumer) {
    consumer.unsubscribe();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        drop(consumer.poll(Duration::from_millis(100)));
        if consumer.assignment().map_or(true, |a| a.count() == 0) {
            return;
        }
    }
    tracing::warn!("The revocation did not come within 10 s of leaving the group.");
}

/// How the partitions a processor keeps state for changed in one poll.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Drop the state of these: another member may own them now (or did for a while).
    pub revoked: BTreeSet<i32>,
    /// Restore the state of these before processing the batch.
    pub assigned: BTreeSet<i32>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.assigned.is_empty()
    }
}

/// Polls a batch like [`poll_batch`] for a group member whose state is kept per partition
/// number (`owned`: the partitions the caller holds state for, updated here), and says how
/// that state must change before the batch is processed.
///
/// A rebalance can happen inside any `poll` of a batch. Records collected before it of a
/// partition it revoked belong to whoever owns that partition now: acting on them against
/// state this member no longer holds, and committing their offsets (the classic group
/// coordinator checks the generation, not who owns a partition), rebuilt aggregates from
/// nothing mid-stream. So the batch ends at the rebalance, drops those records, and every
/// revoked partition's state is dropped, even when the same rebalance gave the partition back
/// (someone else may have processed it in between). Every newly assigned partition is rewound
/// to its committed offset before its records or its position are used, so what was dropped
/// is read again after the restore.
pub fn poll_member_batch<'c>(
    consumer: &'c GroupConsumer,
    owned: &mut BTreeSet<i32>,
    max: usize,
    wait: Duration,
) -> anyhow::Result<(Vec<BorrowedMessage<'c>>, Changes)> {
    settle(consumer)?;
    // Changes only in `settle` and below, not while polling: read once per batch.
    let unsettled = consumer.context().unsettled();
    let mut batch = Vec::new();
    let mut revoked = consumer.context().take_revoked();
    let mut timeout = wait;
    while batch.len() < max {
        let polled = consumer.poll(timeout);
        let gone = consumer.context().take_revoked();
        if !gone.is_empty() {
            batch.retain(|m: &BorrowedMessage<'_>| !gone.contains(&m.partition()));
            revoked.extend(gone);
        }
        match polled {
            None => break,
            Some(Ok(m)) => {
                // A partition not yet rewound is read again once it is.
                if !revoked.contains(&m.partition()) && !unsettled.contains(&m.partition()) {
                    batch.push(m);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                // librdkafka's fatal state (e.g. `FencedInstanceId`): this consumer will never
                // deliver again; it was a silent zombie when only logged.
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    return Err(Broken(format!(
                        "consumer failed for good: {code:?}: {reason}"
                    )))
                    .context("polling");
                }
                consumer_error(&e, batch.is_empty());
                break;
            }
        }
        if !revoked.is_empty() {
            break;
        }
        timeout = Duration::ZERO;
    }
    let assignment = consumer.assignment()?;
    let assigned: BTreeSet<i32> = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    let mut changes = Changes::default();
    for &p in owned.iter() {
        if revoked.contains(&p) || !assigned.contains(&p) {
            changes.revoked.insert(p);
        }
    }
    owned.retain(|p| !changes.revoked.contains(p));
    changes.assigned = assigned.difference(owned).copied().collect();
    // Every partition this member (again) holds state for starts from its committed offset:
    // records of it polled above may have been dropped, and committing the position they
    // advanced when idle ([`Committed::step_over_markers`]) would skip them.
    if !changes.assigned.is_empty() {
        // Read again after the rewind, against the state the caller restores first.
        batch.retain(|m| !changes.assigned.contains(&m.partition()));
        let now = std::time::Instant::now();
        let mut unsettled = consumer.context().unsettled.lock().expect("not poisoned");
        for &p in &changes.assigned {
            unsettled.entry(p).or_insert(now);
        }
    }
    owned.extend(changes.assigned.iter().copied());
    settle(consumer)?;
    Ok((batch, changes))
}

/// Pauses (or resumes) partition `p` of each of `topics`. Named, not taken from the
/// assignment: librdkafka keeps an application's pause on a partition across its revocation
/// and reassignment, so a revoked partition must be resumed too.
pub fn pause_partition(
    consumer: &GroupConsumer,
    topics: &[&str],
    p: i32,
    pause: bool,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        tpl.add_partition(topic, p);
    }
    if pause {
        consumer.pause(&tpl)?;
    } else {
        consumer.resume(&tpl)?;
    }
    Ok(())
}

/// Rewinds the unsettled partitions still assigned to their committed offsets. librdkafka
/// refuses to seek a partition whose fetcher has not started yet ("Erroneous state"): such a
/// partition stays unsettled (its records are dropped, its position not committed) and is
/// tried again at the next poll.
fn settle(consumer: &GroupConsumer) -> anyhow::Result<()> {
    let pending: Vec<(i32, std::time::Instant)> = {
        let unsettled = consumer.context().unsettled.lock().expect("not poisoned");
        if unsettled.is_empty() {
            return Ok(());
        }
        unsettled.iter().map(|(p, t)| (*p, *t)).collect()
    };
    let assignment = consumer.assignment()?;
    for (p, since) in pending {
        let mut tpl = TopicPartitionList::new();
        for e in assignment.elements().iter().filter(|e| e.partition() == p) {
            tpl.add_partition(e.topic(), e.partition());
        }
        let settled = if tpl.count() == 0 {
            true // no longer assigned: settled again when next assigned
        } else {
            match rewind_partitions(consumer, tpl) {
                Ok(()) => true,
                Err(e) => {
                    if since.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(partition = p, error = %format!("{e:#}"), "Partition still not rewound after its assignment; retrying.");
                    }
                    false
                }
            }
        };
        if settled {
            consumer
                .context()
                .unsettled
                .lock()
                .expect("not poisoned")
                .remove(&p);
        }
    }
    Ok(())
}

/// Whether a commit error means this instance was fenced (another took over).
pub fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<KafkaError>().is_some_and(|k| {
            matches!(
                k.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::FencedInstanceId
                )
            )
        })
    })
}

/// A producer for `service`'s instance `instance`; with exactly-once transactional (with
/// [`transactional_id`]) and initialized, which fences older incarnations and aborts their
/// open transaction.
fn transactional_producer(
    cluster: &Cluster,
    service: &str,
    instance: &str,
) -> anyhow::Result<BaseProducer<DeliveryCounter>> {
    let mut config = producer_config(cluster);
    if cluster.guarantee == Guarantee::ExactlyOnce {
        config
            .set("transactional.id", transactional_id(service, instance))
            // A transaction left open by a killed instance holds every read_committed
            // reader of its partitions until the coordinator aborts it: 10 s, like Kafka
            // Streams under exactly-once, not librdkafka's 60 s (and see `abort_departed`).
            .set("transaction.timeout.ms", "10000");
    }
    let producer: BaseProducer<DeliveryCounter> = config
        .create_with_context(DeliveryCounter::default())
        .context("creating producer")?;
    if cluster.guarantee == Guarantee::ExactlyOnce {
        producer
            .init_transactions(TX_TIMEOUT)
            .context("initializing transactions")?;
    }
    Ok(producer)
}

/// Who may hold a changelog partition's restore with an open transaction: the instances of
/// `pipeline` in consumer group `group`, of which this process is `instance`.
#[derive(Debug, Clone)]
pub struct Writers {
    pub pipeline: String,
    pub group: String,
    pub instance: String,
}

/// Aborts the open transaction that holds `topic`/`p`'s readers at its last stable offset,
/// if the instance that wrote it (its [`WRITER_HEADER`]) is no longer a member of the
/// group: killed, or cut off long enough to lose its partitions. Initializing its
/// transactional id fences it (a zombie that comes back finds its producer fenced and
/// starts with new clients) and makes the coordinator abort the transaction at once, where
/// waiting for the transaction's timeout held a killed instance's partitions for 10-20 s.
/// A live member's transaction is left to end (a revoking member commits before it lets a
/// partition go). Returns the instance whose transaction was aborted.
pub fn abort_departed(
    cluster: &Cluster,
    writers: &Writers,
    topic: &str,
    p: i32,
) -> anyhow::Result<Option<String>> {
    // A read_committed client is answered the last stable offset for the partition's end.
    let committed: BaseConsumer = client_config(cluster).create()?;
    let (_, stable) = committed.fetch_watermarks(topic, p, Duration::from_secs(10))?;
    let (_, high) = watermarks(&Probe::new(cluster)?, topic, p)?;
    if stable >= high {
        return Ok(None);
    }
    // The record at the last stable offset is the open transaction's first on `p`. (An
    // assigned reader joins no group, but librdkafka wants a group id to fetch.)
    let mut config = consumer_config(cluster, &format!("{}.probe", writers.group));
    config.set("isolation.level", "read_uncommitted");
    let reader: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(stable))?;
    reader.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let writer = loop {
        if std::time::Instant::now() > deadline {
            return Ok(None);
        }
        let Some(m) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        if m.offset() != stable {
            return Ok(None);
        }
        break m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == WRITER_HEADER)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
    };
    let Some(writer) = writer else {
        return Ok(None);
    };
    // This process's own earlier incarnation was fenced when its producer was initialized.
    if writer == writers.instance {
        return Ok(None);
    }
    let member = group_instance_id(&writers.group, &writer);
    let groups = committed
        .fetch_group_list(Some(&writers.group), TX_TIMEOUT)
        .with_context(|| format!("describing consumer group {}", writers.group))?;
    let alive = groups.groups().iter().any(|g| {
        g.members().iter().any(|m| {
            m.client_id() == member
                || m.id()
                    .strip_prefix(member.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
        })
    });
    if alive {
        return Ok(None);
    }
    drop(
        transactional_producer(cluster, &writers.pipeline, &writer).with_context(|| {
            format!("aborting the open transaction of departed instance {writer}")
        })?,
    );
    Ok(Some(writer))
}

/// Reads partition `p` of `topic` from its beginning to its high watermark (read_committed),
/// handing each record to `f`; used to restore state stores from changelogs.
///
/// Call it after the service's transactional producer is initialized: that fences and aborts
/// any open transaction of an older incarnation, so the committed end is reachable (the
/// consumer's position steps over commit markers up to the high watermark).
pub fn read_partition_to_end(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    p: i32,
    f: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    read_partition_from(cluster, group, topic, p, None, None, f).map(|_| ())
}

/// [`read_partition_to_end`] from offset `from` (`None`: the beginning); returns the high
/// watermark it read up to. When the read stops moving for 200 ms (a healthy read moves at
/// every 100 ms poll), and every 5 s after, `unstick` is called (a restore's
/// [`abort_departed`]).
pub fn read_partition_from(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    p: i32,
    from: Option<i64>,
    mut unstick: Option<&mut dyn FnMut() -> anyhow::Result<()>>,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<i64> {
    let reader: BaseConsumer = consumer_config(cluster, group).create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, from.map_or(Offset::Beginning, Offset::Offset))?;
    reader.assign(&tpl)?;
    // To the high watermark, not the last stable offset: see [`Probe`]. A transaction left
    // open by a killed writer holds the read back until the coordinator aborts it
    // (`transaction.timeout.ms`).
    let (low, high) = watermarks(&Probe::new(cluster)?, topic, p)?;
    let low = from.map_or(low, |o| o.max(low));
    if high <= low {
        return Ok(high);
    }
    // A stall, not a long read, is the error: a big changelog may take minutes.
    let mut last_progress = std::time::Instant::now();
    let mut last_position = low;
    let mut last_unstick: Option<std::time::Instant> = None;
    let position = |c: &BaseConsumer| -> anyhow::Result<i64> {
        Ok(
            match c.position()?.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            },
        )
    };
    // The position is checked once per batch, not per record: `position()` copies the
    // assignment list, and the per-record check made restores several times slower.
    loop {
        let at = position(&reader)?;
        if at >= high {
            break;
        }
        if at > last_position {
            last_position = at;
            last_progress = std::time::Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(120) {
            bail!("reading {topic}/{p} stalled at offset {at} for 120 s (end: {high})");
        } else if let Some(unstick) = unstick.as_mut()
            && last_progress.elapsed() > Duration::from_millis(200)
            && last_unstick.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
        {
            last_unstick = Some(std::time::Instant::now());
            unstick()?;
        }
        for m in poll_batch(&reader, 10_000, Duration::from_millis(100))? {
            f(&m)?;
        }
    }
    Ok(high)
}

/// The offsets a processor has committed, so that when idle it can commit positions that
/// moved past them over transaction markers (and aborted records) only.
///
/// A transactional producer ends every transaction with a commit marker, which takes an
/// offset: a processor that commits "last record + 1" stays one offset behind the high
/// watermark on every partition written transactionally, and its lag never reads 0. The
/// consumer's position steps over markers, so committing it when nothing is left to process
/// makes "caught up" exact.
#[derive(Debug, Default)]
pub struct Committed {
    offsets: HashMap<(String, i32), i64>,
    checked: Option<std::time::Instant>,
}

impl Committed {
    /// Remembers offsets just committed.
    pub fn record(&mut self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.offsets
                    .insert((e.topic().to_owned(), e.partition()), o);
            }
        }
    }

    /// Forgets everything (after a rewind or a new assignment); reloaded when next idle.
    pub fn forget(&mut self) {
        self.offsets.clear();
        self.checked = None;
    }

    /// When idle (at most once a second): commits positions beyond the committed offsets.
    pub fn step_over_markers(
        &mut self,
        consumer: &GroupConsumer,
        output: &Output,
    ) -> anyhow::Result<()> {
        if self
            .checked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.checked = Some(std::time::Instant::now());
        let assignment = consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(());
        }
        // Every assigned partition it has no committed offset for, not only when it knows
        // none: a loop that records its batches' commits (the saga runtime) knew the
        // partitions of its first batch after a rebalance and never looked up the others,
        // whose trailing commit markers then stayed uncommitted (lag 1 for good).
        let mut unknown = TopicPartitionList::new();
        for e in assignment.elements() {
            if !self
                .offsets
                .contains_key(&(e.topic().to_owned(), e.partition()))
            {
                unknown.add_partition(e.topic(), e.partition());
            }
        }
        if unknown.count() > 0 {
            // This runs in the processing loop: a slow answer must not hold records back
            // for long (an error is retried at the next idle second).
            let committed = consumer.committed_offsets(unknown, IDLE_FETCH_TIMEOUT)?;
            self.record(&committed);
        }
        let mut ahead = TopicPartitionList::new();
        for e in consumer.position()?.elements() {
            let key = (e.topic().to_owned(), e.partition());
            // An unsettled partition's position may be past records dropped unprocessed.
            if let (Offset::Offset(at), Some(done)) = (e.offset(), self.offsets.get(&key))
                && at > *done
                && consumer.context().settled(e.partition())
            {
                ahead.add_partition_offset(e.topic(), e.partition(), Offset::Offset(at))?;
            }
        }
        if ahead.count() > 0 {
            tracing::debug!(from = ?self.offsets, to = ?ahead, "Committing positions past transaction markers.");
            output.begin()?;
            if let Err(e) = output.commit(consumer, &ahead) {
                // A broken producer (or one given up under a call) is not touched again.
                if crate::error::carries::<Broken>(&e) {
                    return Err(e);
                }
                if let Err(a) = output.abort() {
                    return Err(a.context(format!("after {e:#}")));
                }
                return Err(e);
            }
            self.record(&ahead);
        }
        Ok(())
    }
}

/// Seeks every assigned partition back to its committed offset (after a failed batch: what
/// was consumed since is processed again, against state restored from the changelog).
pub fn rewind<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
    rewind_partitions(consumer, consumer.assignment()?)
}

/// Seeks `partitions` (assigned ones) back to their committed offsets.
fn rewind_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: TopicPartitionList,
) -> anyhow::Result<()> {
    let committed = consumer.committed_offsets(partitions, TX_TIMEOUT)?;
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        tracing::debug!(
            topic = e.topic(),
            partition = e.partition(),
            ?offset,
            "Rewinding to the committed offset."
        );
        consumer.seek(e.topic(), e.partition(), offset, TX_TIMEOUT)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::{MockCluster, MockCoordinator};

    /// librdkafka #5456: `send_offsets_to_transaction` with the group coordinator down
    /// blocks past its timeout, for as long as the coordinator stays down. The commit gives
    /// the producer up as [`Broken`] instead of blocking its caller with it.
    #[test]
    fn a_transactional_call_that_never_returns_gives_the_producer_up() {
        let mock = MockCluster::new(2).expect("mock cluster");
        mock.create_topic("in", 1, 1).expect("topic");
        mock.create_topic("out", 1, 1).expect("topic");
        // Everything on broker 1 but the group's coordinator, which goes away.
        mock.partition_leader("in", 0, Some(1)).expect("leader");
        mock.partition_leader("out", 0, Some(1)).expect("leader");
        mock.coordinator(MockCoordinator::Group("g".into()), 2)
            .expect("group coordinator");
        mock.coordinator(
            MockCoordinator::Transaction(transactional_id("svc", "0")),
            1,
        )
        .expect("transaction coordinator");
        let cluster = Cluster {
            brokers: mock.bootstrap_servers(),
            registry: String::new(),
            guarantee: Guarantee::ExactlyOnce,
            kafka: Vec::new(),
        };
        let mut output = Output::new(&cluster, "svc", "0").expect("producer");
        output.call_limit = Duration::from_secs(5);
        let consumer: BaseConsumer = consumer_config(&cluster, "g").create().expect("consumer");
        output.begin().expect("begin");
        output.send("out", Some(0), b"k", b"v", None).expect("send");
        output.flush().expect("delivered");
        mock.broker_down(2).expect("coordinator down");

        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("in", 0, Offset::Offset(1))
            .expect("offset");
        // On a thread of its own, so that without the watch this test fails instead of
        // hanging with the call.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let committed = output.commit(&consumer, &offsets);
            done.send((committed.map_err(|e| format!("{e:#}")), started.elapsed()))
                .ok();
        });
        let (committed, took) = result
            .recv_timeout(Duration::from_secs(30))
            .expect("the commit never returned");
        let error = committed.expect_err("committed with the group coordinator down");
        assert!(error.contains("librdkafka #5456"), "{error}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}
