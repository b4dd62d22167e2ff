//! The one consume–decide–produce loop every stateful processor runs on.
//!
//! A [`Processor`] says what it reads, how a record finds its aggregate, what a record does to
//! that aggregate and what the aggregate's changelog records are; [`run`] does the rest, once
//! for all of them:
//!
//! - consumes its input topics as a member of its group ([`kafka::poll_member_batch`]: a
//!   batch never spans a rebalance, revoked partitions' records are dropped);
//! - keeps state per input partition: restored from the co-partitioned changelog (a local
//!   snapshot and the changelog's tail, see [`ChangelogCache`]) when a partition is assigned,
//!   suspended when it is revoked and resumed if the next assignment gives it back untouched
//!   ([`Suspended`]);
//! - decodes each record (waiting out a registry outage, never dead-lettering a good record
//!   for it), checks its key, hands it to the processor, dead-letters what is bad input with
//!   the reason in headers;
//! - fires deadlines the processor's state carries;
//! - writes the changelog records of every aggregate a batch changed, and commits outputs,
//!   changelog and input offsets together: one Kafka transaction under exactly-once,
//!   flush-then-commit under at-least-once;
//! - on a failed batch decides by the error's [`Domain`](crate::error::Domain): an external
//!   fault aborts, forgets the in-memory state, rewinds to the committed offsets and backs
//!   off; a fence or an internal fault stops the loop.
//!
//! Every input topic of a processor is keyed by the aggregate's id and has the same partition
//! count as its changelog, and the consumer uses the range assignor, so partition `p` of every
//! input and of the changelog land on the same instance: its store holds exactly the
//! aggregates it sees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::{DecodeError, Decoder, Encoder};
use schemas::record::RecordUnion;
use tokio::runtime::Handle;
use tracing::{debug, info, info_span, warn};

use crate::error::{self, BadInput, Domain, NotBegun, Poison, Retry, TooLarge};
use crate::kafka::{self, Output};
use crate::state::{ChangelogCache, Restored, Suspended};
use crate::{Cluster, Guarantee, Stop, wire};

/// What the loop needs to know about a processor besides its code.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Pipeline name: transactional id, state directory and log span.
    pub name: &'static str,
    /// Consumer group.
    pub group: String,
    /// The service that owns it, its changelog and every topic it writes.
    pub service: &'static str,
    /// Topics it reads, all keyed by the aggregate's id.
    pub inputs: &'static [&'static str],
    /// Its state (compacted), co-partitioned with the inputs.
    pub changelog: &'static str,
    /// Where records it cannot act on go, with the reason in headers.
    pub dlq: &'static str,
    /// What a record's key must equal, for the dead-letter reason (e.g. "the command's sku").
    pub key_name: &'static str,
    /// The keying rule, for the dead-letter reason (e.g. "commands must be keyed by sku").
    pub key_rule: &'static str,
}

/// How the loop runs: the options every processor shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: Cluster,
    /// Identity of this process among the group's instances (part of the transactional id).
    pub instance: String,
    /// Records per transaction at most.
    pub batch_size: usize,
    /// Root of the local state directories; `None`: restores read the whole changelog.
    pub state_dir: Option<std::path::PathBuf>,
    /// How often changed state is snapshotted there.
    pub snapshot_every: Duration,
    /// Fault injection for tests: how long each transaction stays open before it commits
    /// (a kill then lands inside one).
    pub hold_transactions: Duration,
}

/// What handling one record did.
#[derive(Debug)]
pub enum Handled {
    /// Applied; `emitted` outputs decided (events, replies).
    Applied { emitted: usize },
    /// Already applied (a redelivery the aggregate recognises): nothing to do.
    Redelivery,
    /// Refused by the aggregate's rules: dead-lettered as an invalid command.
    Invalid(String),
}

/// A partition's state as its changelog rebuilt it.
pub struct Rebuilt<S> {
    pub state: S,
    /// Keys the state holds, for the log.
    pub keys: usize,
    /// Changelog records of a batch whose state never landed (at-least-once only): the
    /// partition gets no local snapshot until it is restored again, since a snapshot keeps
    /// only the latest record per key and the next restore needs these.
    pub orphans: usize,
}

/// Hands each changelog record of one partition, decoded and in log order, to the callback.
pub type ReadChangelog<'a, C> =
    &'a mut dyn FnMut(&mut dyn FnMut(Read<'_, C>) -> anyhow::Result<()>) -> anyhow::Result<()>;

/// Keys of a changelog's meta records start with this byte (NUL, which no aggregate or saga
/// id may contain): records the processor keeps about a partition rather than one of its
/// aggregates (e.g. the horizon of the sagas it forgot). Their payload is the processor's
/// own bytes, not Avro; they are handed over undecoded.
pub const META_PREFIX: u8 = 0;

/// One changelog record as a restore hands it to a processor.
#[derive(Debug)]
pub enum Read<'a, C> {
    /// An aggregate's record, decoded, and its timestamp (ms since the epoch: when it was
    /// written).
    Record { record: C, at: i64 },
    /// A tombstone: the key's state was deleted (e.g. a saga forgotten after its
    /// retention).
    Deleted { key: &'a [u8] },
    /// A meta record: its key (past [`META_PREFIX`]) and payload.
    Meta { key: &'a [u8], payload: &'a [u8] },
}

/// A stateful processor: the decisions are its own (in `processors`); the loop is [`run`].
pub trait Processor {
    /// What its input topics carry.
    type Input: RecordUnion;
    /// What its changelog carries.
    type Changelog: RecordUnion;
    /// The state of one input partition (every aggregate keyed to it).
    type Partition: Default + Send + 'static;

    fn spec(&self) -> &Spec;

    /// Whether a record of another type found on `topic` is meant for another reader of a
    /// shared topic (skipped) rather than bad input (dead-lettered).
    fn ignores(&self, _topic: &str, _record: &str) -> bool {
        false
    }

    /// The aggregate `input` (found on `topic`) belongs to, which its record key must equal.
    fn route<'i>(&self, topic: &str, input: &'i Self::Input) -> Result<&'i str, BadInput>;

    /// Handles one record against its partition's state. Outputs go through `out`; every
    /// aggregate changed is marked with [`Batch::changed`].
    fn handle(
        &mut self,
        out: &mut Batch<'_>,
        state: &mut Self::Partition,
        key: &str,
        input: &Self::Input,
        message: &BorrowedMessage<'_>,
        now: i64,
    ) -> anyhow::Result<Handled>;

    /// Whether any aggregate of the processor can have a deadline (scanned every 200 ms).
    fn has_deadlines(&self) -> bool {
        false
    }

    /// Keys of `state` whose deadline passed by `now`.
    fn due(&self, _state: &Self::Partition, _now: i64, _due: &mut Vec<String>) {}

    /// Acts on `key`'s passed deadline: `Some(outputs emitted)` if it expired a step.
    fn expire(
        &mut self,
        _out: &mut Batch<'_>,
        _state: &mut Self::Partition,
        _key: &str,
        _now: i64,
    ) -> anyhow::Result<Option<usize>> {
        Ok(None)
    }

    /// Writes `key`'s changelog record(s) after a batch changed it (see [`Batch::changelog`]).
    fn write_changelog(
        &mut self,
        out: &mut Batch<'_>,
        state: &Self::Partition,
        key: &str,
    ) -> anyhow::Result<()>;

    /// Rebuilds partition `p`'s state from its changelog records.
    fn rebuild(
        &self,
        p: i32,
        read: ReadChangelog<'_, Self::Changelog>,
    ) -> anyhow::Result<Rebuilt<Self::Partition>>;
}

/// Counters of one run, for logs, tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Input records consumed.
    pub records: u64,
    /// Outputs decided (events, replies; not changelog records).
    pub emitted: u64,
    pub dead_letters: u64,
    /// Redeliveries recognised, and records of a shared topic meant for other readers.
    pub skipped: u64,
    /// Deadlines that expired a step.
    pub expired: u64,
    pub transactions: u64,
    /// Time spent waiting in poll, processing records (decode, decide, encode, enqueue) and
    /// committing (flush, offsets, end of transaction).
    pub poll_time: Duration,
    pub process_time: Duration,
    pub commit_time: Duration,
}

impl Stats {
    fn add(&mut self, b: &Stats) {
        self.records += b.records;
        self.emitted += b.emitted;
        self.dead_letters += b.dead_letters;
        self.skipped += b.skipped;
        self.expired += b.expired;
        self.transactions += b.transactions;
        self.poll_time += b.poll_time;
        self.process_time += b.process_time;
        self.commit_time += b.commit_time;
    }
}

/// The unit of work a batch is: where a processor's outputs and changelog records go.
pub struct Batch<'a> {
    output: &'a Output,
    cache: &'a mut ChangelogCache,
    spec: &'a Spec,
    /// The encode buffer: [`Batch::encode`] fills it, [`Batch::send`] sends it.
    buf: &'a mut Vec<u8>,
    /// Partition of the record (or deadline) being handled.
    partition: i32,
    /// Keys changed, per partition (a key is copied once per batch, not once per record),
    /// with the index in the batch of the last input record that changed it.
    changed: BTreeMap<i32, BTreeMap<String, Option<usize>>>,
    /// Index in the batch of the input record being handled (`None`: a deadline).
    current: Option<usize>,
    /// The unit of work's clock (ms since the epoch): what its changelog records are
    /// stamped with in the cache.
    now: i64,
}

impl Batch<'_> {
    /// Encodes `record` into the buffer the next send sends.
    pub fn encode<R: RecordUnion>(
        &mut self,
        encoder: &Encoder<R>,
        record: &R,
    ) -> anyhow::Result<()> {
        Ok(encoder.encode_into(record, self.buf)?)
    }

    /// Sends the encoded record to `topic` (partitioned by key), which the processor's
    /// service must own.
    pub fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> anyhow::Result<()> {
        self.output.check_size(topic, key, self.buf)?;
        self.output.send(topic, None, key, self.buf, headers)
    }

    /// Sends the encoded record to the changelog, on the partition being handled.
    pub fn changelog(&mut self, key: &[u8]) -> anyhow::Result<()> {
        let p = self.partition;
        self.output.check_size(self.spec.changelog, key, self.buf)?;
        self.output
            .send_changelog(self.spec.changelog, p, key, Some(self.buf))?;
        self.cache.record(p, key, Some(self.buf), self.now);
        Ok(())
    }

    /// Writes meta record `key` (without its [`META_PREFIX`], which this adds) of the
    /// partition being handled: `payload` is handed back as it is by [`Read::Meta`].
    pub fn meta(&mut self, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        let p = self.partition;
        let mut full = Vec::with_capacity(1 + key.len());
        full.push(META_PREFIX);
        full.extend_from_slice(key.as_bytes());
        self.output
            .send_changelog(self.spec.changelog, p, &full, Some(payload))?;
        self.cache.record(p, &full, Some(payload), self.now);
        Ok(())
    }

    /// Deletes `key` from the changelog (a tombstone), on the partition being handled: for
    /// state a processor forgets by its own rule (an id past its horizon).
    pub fn forget(&mut self, key: &[u8]) -> anyhow::Result<()> {
        let p = self.partition;
        self.output
            .send_changelog(self.spec.changelog, p, key, None)?;
        self.cache.record(p, key, None, self.now);
        Ok(())
    }

    /// Marks aggregate `key` (of the partition being handled) changed: its changelog
    /// record is written at the end of the batch.
    pub fn changed(&mut self, key: &str) {
        let keys = self.changed.entry(self.partition).or_default();
        match keys.get_mut(key) {
            // A deadline after a record keeps the record's blame (see `poisoned`).
            Some(last) => *last = self.current.or(*last),
            None => {
                keys.insert(key.to_owned(), self.current);
            }
        }
    }

    /// The partition being handled.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

type Store<S> = HashMap<i32, S>;

/// How long a batch waits for the registry before it is given up (and tried again after a
/// backoff): well inside `transaction.timeout.ms` (10 s) and `max.poll.interval.ms`.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(5);

/// Fences within [`FENCES_WINDOW`] after which a processor stops rather than start again:
/// another process runs as the same instance.
const FENCES_TO_STOP: usize = 3;
const FENCES_WINDOW: Duration = Duration::from_secs(300);

/// Runs processor `p` until `stop`. Blocking: call from a dedicated thread.
pub fn run<P: Processor>(
    p: &mut P,
    settings: &Settings,
    registry: Registry,
    rt: &Handle,
    stop: &Stop,
) -> anyhow::Result<Stats> {
    let spec = p.spec().clone();
    let span = info_span!("processor", name = spec.name, instance = %settings.instance);
    let _guard = span.enter();
    // Opened once: it holds the lock of the instance's state directory.
    let mut cache = ChangelogCache::open(
        settings.state_dir.as_deref(),
        spec.service,
        spec.name,
        spec.changelog,
        &settings.cluster,
        settings.snapshot_every,
    )?;
    if settings.cluster.guarantee == Guarantee::ExactlyOnce {
        cache.abort_departed(kafka::Writers {
            pipeline: spec.name.to_owned(),
            group: spec.group.clone(),
            instance: settings.instance.clone(),
        });
    }
    let mut stats = Stats::default();
    let mut rebuilds = 0u32;
    // Records whose outputs are over the size limit (see `error::Poison`): few, and kept
    // (across new clients too) until a batch commits past them.
    let mut poison: Vec<Poison> = Vec::new();
    let mut fences: Vec<Instant> = Vec::new();
    loop {
        let clients = with_clients(
            p,
            settings,
            &registry,
            rt,
            stop,
            &mut cache,
            &mut stats,
            &mut poison,
        );
        let failed = match clients {
            Ok(()) => return Ok(stats),
            Err(e) if matches!(error::domain(&e), Domain::Internal | Domain::BadInput) => {
                return Err(e);
            }
            Err(e) => e,
        };
        // A fence or a broken client. Kafka cannot say who fenced whom: a consumer's own
        // JoinGroup retried across a broker pause fences it (`FencedInstanceId`) as surely
        // as a second process with the same `group.instance.id` does, and a transaction the
        // coordinator timed out fences the producer as another `init_transactions` does (a
        // static member replaced keeps the old member's client id in the group's listing,
        // so the listing cannot tell either). So new clients are tried, as a restart of the
        // process would, without an operator; but two live processes sharing an instance
        // fence each other over and over, so the third fence within five minutes stops
        // this one. An external fault outside a batch (a restore, or a producer's
        // initialization, timed out while the broker was away) also starts again.
        let now = Instant::now();
        if matches!(error::domain(&failed), Domain::Fenced | Domain::Broken)
            && !error::carries::<error::GaveUp>(&failed)
        {
            fences.retain(|t| now.duration_since(*t) < FENCES_WINDOW);
            fences.push(now);
            if fences.len() >= FENCES_TO_STOP {
                bail!(
                    "instance {:?} of {} was fenced {} times within {:?}: another process is \
                     running as this instance (the same --instance, or a copy of the same state \
                     directory); stopping this one. The last fence: {failed:#}",
                    settings.instance,
                    spec.name,
                    fences.len(),
                    now.duration_since(fences[0]),
                );
            }
        }
        rebuilds += 1;
        let backoff =
            (Duration::from_secs(1) * 2u32.pow(rebuilds.min(5))).min(Duration::from_secs(30));
        warn!(error = %format!("{failed:#}"), ?backoff, rebuilds, fences = fences.len(), "The loop failed: starting again with new clients.");
        cache.clear();
        stop.sleep(backoff);
        if stop.is_stopped() {
            return Ok(stats);
        }
    }
}

/// One life of the loop, with its own consumer and producer: ends on a stop, or with the
/// error that ended it (the caller decides whether new clients go on).
#[allow(clippy::too_many_arguments)]
fn with_clients<P: Processor>(
    p: &mut P,
    settings: &Settings,
    registry: &Registry,
    rt: &Handle,
    stop: &Stop,
    cache: &mut ChangelogCache,
    stats: &mut Stats,
    poison: &mut Vec<Poison>,
) -> anyhow::Result<()> {
    let spec = p.spec().clone();
    let mut input = Decoder::<P::Input>::new(registry.clone());
    let mut changelog = Decoder::<P::Changelog>::new(registry.clone());

    // Initializing transactions first fences a previous incarnation and aborts its open
    // transaction, so the changelog reads below are not blocked by it.
    let output = Output::new(&settings.cluster, spec.name, &settings.instance)?;
    output.track_deliveries(&[spec.changelog]);
    let mut config = kafka::consumer_config(&settings.cluster, &spec.group);
    // Co-partitioning needs the same partition of every input on one instance: range does it.
    config.set("partition.assignment.strategy", "range");
    // Static membership: a restarted instance takes its partitions back at once instead of
    // waiting for the old member's session to time out. The mock broker does not replace
    // static members (a restart would wait out the whole session), so only on real brokers.
    if settings.cluster.guarantee == Guarantee::ExactlyOnce {
        let member = kafka::group_instance_id(&spec.group, &settings.instance);
        // The client id too: the group's listing shows it, to operators and to the next
        // owner of a partition whose restore this instance's open transaction holds.
        config
            .set("group.instance.id", &member)
            .set("client.id", &member);
    }
    let consumer: kafka::GroupConsumer = config.create_with_context(kafka::Membership::default())?;
    consumer.subscribe(spec.inputs)?;

    let mut store: Store<P::Partition> = HashMap::new();
    // State of revoked partitions, resumed if the next assignment gives them back untouched.
    let mut suspended = Suspended::default();
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    let mut quarantine = Quarantine::new(spec.inputs);
    let mut last_scan = Instant::now();
    let mut committed = kafka::Committed::default();
    let mut buf = Vec::with_capacity(512);
    // Consecutive failed batches: the retry waits 0.5 s, 1 s, 2 s, … up to 30 s.
    let mut failures = 0u32;
    info!(group = %spec.group, inputs = ?spec.inputs, guarantee = ?settings.cluster.guarantee, "Processor started.");

    while !stop.is_stopped() {
        let polled = Instant::now();
        let (batch, changes) = kafka::poll_member_batch(
            &consumer,
            &mut owned,
            settings.batch_size,
            Duration::from_millis(100),
        )?;
        stats.poll_time += polled.elapsed();
        if !changes.is_empty() {
            committed.forget();
            sync_assignment(
                p,
                rt,
                &consumer,
                &changes,
                &mut store,
                &mut suspended,
                cache,
                &mut changelog,
                &mut quarantine,
            )?;
        }
        for partition in quarantine.due() {
            if let Some(state) = restore_partition(
                p,
                rt,
                partition,
                cache,
                &mut changelog,
                &mut quarantine,
                &consumer,
            )? {
                info!(
                    partition,
                    "Restored after its quarantine: processing it again."
                );
                store.insert(partition, state);
            }
        }
        let now = wire::now_ms();
        let mut due = Vec::new();
        if p.has_deadlines() && last_scan.elapsed() >= Duration::from_millis(200) {
            last_scan = Instant::now();
            for (&partition, state) in &store {
                let mut keys = Vec::new();
                p.due(state, now, &mut keys);
                due.extend(keys.into_iter().map(|k| (partition, k)));
            }
        }
        if batch.is_empty() && due.is_empty() {
            // Inputs written transactionally end in markers no record follows.
            if let Err(e) = committed.step_over_markers(&consumer, &output) {
                if error::domain(&e) == Domain::Broken {
                    return Err(e);
                }
                warn!(error = %format!("{e:#}"), "Could not commit past transaction markers; will retry.");
                committed.forget();
            }
            continue;
        }
        let mut unit = Unit {
            spec: &spec,
            rt,
            consumer: &consumer,
            output: &output,
            input: &mut input,
            buf: &mut buf,
            stop,
            hold: settings.hold_transactions,
            poison: &poison[..],
        };
        match unit.process(p, &batch, &due, &mut store, cache, now) {
            Ok((s, offsets)) => {
                failures = 0;
                // A poison record committed past (dead-lettered) is not met again.
                poison.retain(|q| {
                    !offsets.elements().iter().any(|e| {
                        e.topic() == q.topic
                            && e.partition() == q.partition
                            && matches!(e.offset(), Offset::Offset(o) if o > q.offset)
                    })
                });
                committed.record(&offsets);
                cache.committed(&output.delivered(spec.changelog), false)?;
                stats.add(&s);
            }
            // Bad input is dead-lettered record by record inside the unit of work: one that
            // escapes it is a bug, and retrying the batch would meet it again. A fence or a
            // broken client is the caller's to judge.
            Err(e) if !matches!(error::domain(&e).retry(), Retry::WithBackoff) => {
                return Err(e);
            }
            Err(e) if error::carries::<NotBegun>(&e) => {
                // Nothing applied, nothing sent: the state stays, the consumer goes back.
                warn!(error = %format!("{e:#}"), "Batch given up before it began; reading it again.");
                drop(batch);
                kafka::rewind(&consumer)?;
                committed.forget();
                let backoff = error::backoff(failures);
                failures += 1;
                stop.sleep(backoff);
            }
            Err(e) => {
                // Nothing of the batch is committed: abort, forget in-memory state, and resume
                // from the committed offsets and the changelog.
                warn!(error = %format!("{e:#}"), "Batch failed; rewinding to committed state.");
                let poisoned = e.downcast_ref::<Poison>().cloned();
                output.abort().with_context(|| format!("after {e:#}"))?;
                drop(batch);
                kafka::rewind(&consumer)?;
                committed.forget();
                store.clear();
                suspended.clear();
                cache.clear();
                owned.clear();
                if let Some(poison_pill) = poisoned {
                    // Not a fault to back off from: the batch goes again at once, with the
                    // record dead-lettered.
                    warn!(record = %poison_pill, "Dead-lettering a record whose outputs are over the size limit.");
                    poison.push(poison_pill);
                    continue;
                }
                let backoff = error::backoff(failures);
                failures += 1;
                std::thread::sleep(backoff);
            }
        }
    }
    // What is in the cache was committed with the last batch (a failed one clears it).
    cache.committed(&output.delivered(spec.changelog), true)?;
    // Leave the group now rather than when the session times out, so a successor (or the
    // same instance restarted) gets the partitions at once.
    kafka::leave(&consumer);
    info!(?stats, "Processor stopped.");
    Ok(())
}

/// What one batch is processed with.
struct Unit<'a, I: RecordUnion> {
    spec: &'a Spec,
    rt: &'a Handle,
    consumer: &'a kafka::GroupConsumer,
    output: &'a Output,
    input: &'a mut Decoder<I>,
    buf: &'a mut Vec<u8>,
    stop: &'a Stop,
    hold: Duration,
    /// Input records dead-lettered instead of applied: their outputs are over the size limit.
    poison: &'a [Poison],
}

/// `e`, marked as [`Poison`] for `message` when it is an output over the size limit.
fn poisoned(e: anyhow::Error, message: &BorrowedMessage<'_>, what: &str) -> anyhow::Error {
    let Some(too_large) = e.downcast_ref::<TooLarge>() else {
        return e;
    };
    let reason = format!("{what} of this record cannot be written: {too_large}");
    e.context(Poison {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        reason,
    })
}

impl<I: RecordUnion> Unit<'_, I> {
    fn process<P: Processor<Input = I>>(
        &mut self,
        p: &mut P,
        batch: &[BorrowedMessage<'_>],
        due: &[(i32, String)],
        store: &mut Store<P::Partition>,
        cache: &mut ChangelogCache,
        now: i64,
    ) -> anyhow::Result<(Stats, TopicPartitionList)> {
        let started = Instant::now();
        let spec = self.spec;
        let mut stats = Stats::default();
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        // Every schema the batch needs is learned before the transaction begins: a registry
        // outage then never holds one open past its timeout (the coordinator would abort it
        // and fence the producer, and the member would be evicted for not polling).
        let payloads = batch.iter().map(|m| m.payload().unwrap_or_default());
        if let Err(e) = wire::learn_all(self.rt, self.input, payloads, self.stop, REGISTRY_PATIENCE)
        {
            return Err(anyhow::Error::new(e).context(NotBegun));
        }
        self.output.begin()?;
        let mut out = Batch {
            output: self.output,
            cache,
            spec,
            buf: self.buf,
            partition: 0,
            changed: BTreeMap::new(),
            current: None,
            now,
        };
        for (i, message) in batch.iter().enumerate() {
            let (partition, offset) = (message.partition(), message.offset());
            next.insert((message.topic(), partition), offset + 1);
            stats.records += 1;
            let dead = |kind: &str, reason: &str| {
                self.output
                    .dead_letter(spec.dlq, spec.service, message, kind, reason)
            };
            if let Some(poison) = self.poison.iter().find(|q| {
                q.offset == offset && q.partition == partition && q.topic == message.topic()
            }) {
                dead("output-too-large", &poison.reason)?;
                stats.dead_letters += 1;
                continue;
            }
            let payload = message.payload().unwrap_or_default();
            let input = match wire::decode(self.rt, self.input, payload, self.stop) {
                Ok(i) => i,
                // Never dead-letter a good record because the registry is down: abandon the
                // batch.
                Err(e) if e.is_transient() => {
                    bail!("stopping while the registry is unavailable: {e}")
                }
                // A record that belongs on this topic but is not for this processor (the
                // topic is shared with other readers): not ours to act on.
                Err(DecodeError::UnexpectedRecord { name, .. })
                    if p.ignores(message.topic(), &name) =>
                {
                    stats.skipped += 1;
                    continue;
                }
                Err(e) => {
                    dead(e.kind(), &e.to_string())?;
                    stats.dead_letters += 1;
                    continue;
                }
            };
            let key = match p.route(message.topic(), &input) {
                Ok(key) => key,
                Err(reject) => {
                    dead(reject.kind, &reject.reason)?;
                    stats.dead_letters += 1;
                    continue;
                }
            };
            if message.key() != Some(key.as_bytes()) {
                let got = message
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let reason = format!(
                    "record key {got:?} differs from {} {key:?}; {}",
                    spec.key_name, spec.key_rule
                );
                dead("wrong-key", &reason)?;
                stats.dead_letters += 1;
                continue;
            }
            out.partition = partition;
            out.current = Some(i);
            let state = store.entry(partition).or_default();
            let handled = p
                .handle(&mut out, state, key, &input, message, now)
                .map_err(|e| poisoned(e, message, "an output"))?;
            match handled {
                Handled::Applied { emitted } => stats.emitted += emitted as u64,
                Handled::Redelivery => stats.skipped += 1,
                Handled::Invalid(reason) => {
                    dead("invalid-command", &reason)?;
                    stats.dead_letters += 1;
                }
            }
        }
        out.current = None;
        for (partition, key) in due {
            out.partition = *partition;
            let state = store.entry(*partition).or_default();
            if let Some(emitted) = p.expire(&mut out, state, key, now)? {
                stats.expired += 1;
                stats.emitted += emitted as u64;
            }
        }
        for (partition, keys) in std::mem::take(&mut out.changed) {
            out.partition = partition;
            for (key, last) in keys {
                p.write_changelog(&mut out, &store[&partition], &key)
                    .map_err(|e| match last {
                        // The last record that changed the key takes the blame: tried again
                        // without it, the state may fit (if not, the one before it is next).
                        Some(i) => poisoned(e, &batch[i], "the state it leads to"),
                        None => e,
                    })?;
            }
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, p), o) in &next {
            offsets.add_partition_offset(topic, *p, Offset::Offset(*o))?;
        }
        // A unit of work of deadlines only consumed nothing; it still sends the positions of
        // what it owns, so that the commit checks its group generation: an instance that has
        // lost its partitions (a zombie) must not commit what their new owner now decides.
        let fenced_by_group = if offsets.count() == 0 {
            let mut owned = TopicPartitionList::new();
            for e in self.consumer.position()?.elements() {
                // An unsettled partition's position may be past records dropped unprocessed.
                if let Offset::Offset(o) = e.offset()
                    && self.consumer.context().settled(e.partition())
                {
                    owned.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
                }
            }
            owned
        } else {
            offsets.clone()
        };
        if !self.hold.is_zero() {
            std::thread::sleep(self.hold);
        }
        let committing = Instant::now();
        stats.process_time = committing - started;
        self.output.commit(self.consumer, &fenced_by_group)?;
        stats.commit_time = committing.elapsed();
        stats.transactions = 1;
        debug!(
            records = stats.records,
            emitted = stats.emitted,
            ?next,
            "Batch committed."
        );
        Ok((stats, offsets))
    }
}

/// Suspends revoked partitions and restores newly assigned ones from the changelog, or
/// resumes them when no one wrote their changelog since this instance had them (see
/// [`ChangelogCache::resume`]): eager rebalancing revokes every partition of every member,
/// and most come straight back. A partition whose changelog cannot be read is held out of
/// processing ([`Quarantine`]).
#[allow(clippy::too_many_arguments)]
fn sync_assignment<P: Processor>(
    p: &P,
    rt: &Handle,
    consumer: &kafka::GroupConsumer,
    changes: &kafka::Changes,
    store: &mut Store<P::Partition>,
    suspended: &mut Suspended<P::Partition>,
    cache: &mut ChangelogCache,
    decoder: &mut Decoder<P::Changelog>,
    quarantine: &mut Quarantine,
) -> anyhow::Result<()> {
    for &partition in &changes.revoked {
        // Whoever gets it next restores it.
        quarantine.release(consumer, partition);
        suspended.revoke(partition, store.remove(&partition), cache);
    }
    for &partition in &changes.assigned {
        if let Some(state) = suspended.resume(partition, cache) {
            info!(partition, "Resumed as it was revoked.");
            store.insert(partition, state);
            continue;
        }
        if let Some(state) =
            restore_partition(p, rt, partition, cache, decoder, quarantine, consumer)?
        {
            store.insert(partition, state);
        }
    }
    if !changes.assigned.is_empty() {
        suspended.assigned(cache);
    }
    Ok(())
}

/// Changelog records no decoder can read (not a registry outage: bad bytes, a schema the
/// registry does not have, a record of another type). A changelog is compacted: only a
/// key's last record counts, and any earlier one may be gone already. So, the rule:
///
/// - an unreadable record that a later record of the same key supersedes (or a tombstone
///   deletes) is skipped, as compaction would have dropped it, and logged with its
///   coordinates;
/// - an unreadable record that is its key's last leaves that aggregate's state unknown:
///   the partition is held out of processing (its input records wait, uncommitted, for as
///   long as it takes; the other partitions go on) and its restore is tried again every
///   [`QUARANTINE_RETRY`]. A good record of the key written after it (the operator's
///   repair, e.g. `replay` rebuilding the store from its event log) ends the quarantine.
///
/// Before, such a record ended the restore with an error, and the process exited at every
/// start: a crash loop.
#[derive(Debug)]
pub struct Quarantine {
    /// Held partitions and when to try their restore again.
    held: BTreeMap<i32, Instant>,
    /// The processor's input topics (what is paused).
    inputs: &'static [&'static str],
}

/// How often a held partition's restore is tried again.
pub const QUARANTINE_RETRY: Duration = Duration::from_secs(10);

impl Quarantine {
    fn new(inputs: &'static [&'static str]) -> Self {
        Quarantine {
            held: BTreeMap::new(),
            inputs,
        }
    }

    fn hold(&mut self, consumer: &kafka::GroupConsumer, partition: i32) {
        if self
            .held
            .insert(partition, Instant::now() + QUARANTINE_RETRY)
            .is_none()
        {
            consumer.context().hold(partition);
            // Fetching it only to drop what comes would be wasted: paused until released.
            if let Err(e) = kafka::pause_partition(consumer, self.inputs, partition, true) {
                warn!(partition, error = %format!("{e:#}"), "Could not pause a held partition; its records are dropped until it is released.");
            }
        }
    }

    /// Ends a hold: the partition restored, or revoked (resumed all the same: librdkafka
    /// keeps an application's pause across reassignment, and it may come back here).
    fn release(&mut self, consumer: &kafka::GroupConsumer, partition: i32) {
        if self.held.remove(&partition).is_some() {
            if let Err(e) = kafka::pause_partition(consumer, self.inputs, partition, false) {
                warn!(partition, error = %format!("{e:#}"), "Could not resume a held partition.");
            }
            consumer.context().release(partition);
        }
    }

    fn is_held(&self, partition: i32) -> bool {
        self.held.contains_key(&partition)
    }

    /// Held partitions whose retry is due.
    fn due(&self) -> Vec<i32> {
        let now = Instant::now();
        self.held
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// One record that could not be decoded, for the log.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// Its offset in the changelog (`None`: it came from the local snapshot).
    pub offset: Option<i64>,
    pub reason: String,
}

/// What [`read_changelog`] read of one partition.
#[derive(Debug, Default)]
pub struct ChangelogRead {
    pub restored: Restored,
    /// Unreadable records a later record of their key superseded (skipped).
    pub superseded: usize,
    /// Unreadable records that are their key's last, by key.
    pub unreadable: HashMap<Vec<u8>, Unreadable>,
}

/// Reads changelog partition `partition` through `cache` by [`Quarantine`]'s rule, handing
/// each readable record to `f` in log order: an unreadable record a later one of its key
/// supersedes is skipped; one that stays its key's last is returned in
/// [`ChangelogRead::unreadable`] for the caller to judge. A registry outage is an error (the
/// caller tries again). The processor loop's restores and the `replay --check` tools read
/// changelogs with it, so they agree on what a changelog holds.
pub fn read_changelog<C: RecordUnion>(
    cache: &mut ChangelogCache,
    partition: i32,
    changelog: &str,
    mut decode: impl FnMut(&[u8]) -> Result<C, DecodeError>,
    f: &mut dyn FnMut(Read<'_, C>) -> anyhow::Result<()>,
) -> anyhow::Result<ChangelogRead> {
    let mut read = ChangelogRead::default();
    let (unreadable, superseded) = (&mut read.unreadable, &mut read.superseded);
    read.restored = cache.restore(partition, |key, payload, offset, at| {
        let Some(payload) = payload else {
            *superseded += usize::from(unreadable.remove(key).is_some());
            if key.first() == Some(&META_PREFIX) {
                return Ok(());
            }
            return f(Read::Deleted { key });
        };
        if let Some((&META_PREFIX, key)) = key.split_first() {
            return f(Read::Meta { key, payload });
        }
        match decode(payload) {
            Ok(record) => {
                if let Some(bad) = unreadable.remove(key) {
                    *superseded += 1;
                    warn!(
                        changelog,
                        partition,
                        offset = ?bad.offset,
                        key = %String::from_utf8_lossy(key),
                        reason = bad.reason,
                        "Skipped an unreadable changelog record: a later record of its key supersedes it."
                    );
                }
                f(Read::Record { record, at })
            }
            Err(e) if e.is_transient() => Err(anyhow::Error::new(e).context(format!(
                "reading {changelog}/{partition}: the registry is unavailable"
            ))),
            Err(e) => {
                unreadable.insert(
                    key.to_vec(),
                    Unreadable {
                        offset,
                        reason: e.to_string(),
                    },
                );
                Ok(())
            }
        }
    })?;
    Ok(read)
}

impl ChangelogRead {
    /// For tools that must see every key's state (`replay --check`): an error naming the
    /// first unreadable record that is its key's last.
    pub fn complete(&self, changelog: &str, partition: i32) -> anyhow::Result<()> {
        match self.unreadable.iter().next() {
            None => Ok(()),
            Some((key, bad)) => bail!(
                "{changelog}/{partition}: the record of key {:?} at {} is unreadable ({}), and \
                 it is the key's last: its state is unknown ({} such keys in the partition)",
                String::from_utf8_lossy(key),
                bad.offset
                    .map_or("the local snapshot".to_owned(), |o| format!("offset {o}")),
                bad.reason,
                self.unreadable.len()
            ),
        }
    }
}

/// Restores `partition` from its changelog by [`Quarantine`]'s rule: its state, or `None`
/// when an unreadable record is its key's last (the partition is then held).
fn restore_partition<P: Processor>(
    p: &P,
    rt: &Handle,
    partition: i32,
    cache: &mut ChangelogCache,
    decoder: &mut Decoder<P::Changelog>,
    quarantine: &mut Quarantine,
    consumer: &kafka::GroupConsumer,
) -> anyhow::Result<Option<P::Partition>> {
    let changelog = p.spec().changelog;
    let mut read = ChangelogRead::default();
    let rebuilt = p.rebuild(partition, &mut |f| {
        read = read_changelog(
            cache,
            partition,
            changelog,
            |payload| decode_changelog(rt, decoder, payload),
            f,
        )?;
        Ok(())
    })?;
    let ChangelogRead {
        restored: read,
        superseded,
        unreadable,
    } = read;
    if !unreadable.is_empty() {
        // In detail when the hold begins; each retry after that only says it is still held.
        if !quarantine.is_held(partition) {
            for (key, bad) in unreadable.iter().take(10) {
                tracing::error!(
                    changelog,
                    partition,
                    offset = ?bad.offset,
                    key = %String::from_utf8_lossy(key),
                    reason = bad.reason,
                    "Unreadable changelog record, its key's last: the key's state is unknown. The partition is held out of processing (its inputs wait) until a good record of the key is written after it (e.g. by `supplystream replay`)."
                );
            }
        }
        warn!(
            changelog,
            partition,
            unreadable = unreadable.len(),
            retry = ?QUARANTINE_RETRY,
            "Partition held: restore tried again later."
        );
        quarantine.hold(consumer, partition);
        return Ok(None);
    }
    if rebuilt.orphans > 0 {
        cache.hold(partition);
        warn!(
            partition,
            orphans = rebuilt.orphans,
            "Changelog records of an unfinished batch: no local snapshot of this partition until its next restore."
        );
    }
    info!(
        partition,
        keys = rebuilt.keys,
        from_snapshot = read.from_snapshot,
        from_changelog = read.from_topic,
        superseded,
        "Restored."
    );
    quarantine.release(consumer, partition);
    Ok(Some(rebuilt.state))
}

/// Decodes a changelog record, learning a writer schema it has not seen from the registry.
pub fn decode_changelog<C: RecordUnion>(
    rt: &Handle,
    decoder: &mut Decoder<C>,
    payload: &[u8],
) -> Result<C, DecodeError> {
    match decoder.decode(payload) {
        Err(DecodeError::NotCached(_)) => rt.block_on(decoder.decode_learning(payload)),
        other => other,
    }
}
