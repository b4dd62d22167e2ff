//! The runtime of a saga participant: consume its input topics, fold each saga's state with
//! the pure participant, publish what it emits, keep the state in a co-partitioned changelog,
//! fire the initiator's deadlines — per batch in one Kafka transaction (exactly-once) or
//! flush-then-commit (at-least-once, where the participants' dedup absorbs redeliveries).
//!
//! Every input topic of a participant is keyed by saga id and has the same partition count as
//! its changelog, and the consumer uses the range assignor, so partition `p` of every input
//! and of the changelog land on the same instance: its store holds exactly the sagas it sees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use processors::saga::{Participant, Reaction};
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Metadata;
use schemas::Registry;
use schemas::codec::{Decoder, Encoder};
use schemas::record::RecordUnion;
use schemas::saga::expected_topic;
use tokio::runtime::Handle;
use tracing::{debug, debug_span, info, info_span, warn};

use super::Options;
use crate::kafka::{self, Output};
use crate::state::{ChangelogCache, Suspended};
use crate::topics::saga_headers;
use crate::{Guarantee, Stop, wire};

/// How a participant is wired to Kafka: its name, its topics, its store.
pub trait Wiring:
    Participant<Input: RecordUnion, Output: RecordUnion, State: Clone + Send + 'static>
    + Send
    + Sync
    + 'static
{
    /// Consumer group, transactional id and log span of this processor.
    const NAME: &'static str;
    /// The service that owns it (and every topic it writes), from the service registry.
    fn service() -> &'static str {
        crate::registry::service_of(Self::NAME)
    }
    /// Topics it reads, all keyed by saga id.
    const INPUTS: &'static [&'static str];
    /// Topics it writes (its own: database per service).
    const OUTPUTS: &'static [&'static str];
    /// Its state, one record per saga (compacted), co-partitioned with the inputs.
    const CHANGELOG: &'static str;
    /// Where records it cannot act on go, with the reason in headers.
    const DLQ: &'static str;

    /// The changelog's record union.
    type Changelog: RecordUnion;
    fn to_changelog(state: &Self::State) -> Self::Changelog;
    fn from_changelog(record: Self::Changelog) -> Self::State;
    fn state_key(state: &Self::State) -> &str;
    fn input_metadata(input: &Self::Input) -> &Metadata;
    fn output_metadata(output: &Self::Output) -> &Metadata;
    /// Where the answer to `output` is expected (its `reply-to` header).
    fn reply_to(output: &Self::Output) -> Option<&'static str>;
}

/// Counters of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub messages: u64,
    pub emitted: u64,
    pub dead_letters: u64,
    /// Records of an input topic meant for other readers.
    pub skipped: u64,
    pub expired: u64,
    pub transactions: u64,
}

/// An error that rewinding cannot fix: the process must stop.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

struct Codecs<W: Wiring> {
    input: Decoder<W::Input>,
    outputs: HashMap<&'static str, Encoder<W::Output>>,
    changelog: Encoder<W::Changelog>,
    buf: Vec<u8>,
}

type Store<S> = HashMap<i32, HashMap<String, S>>;

/// Runs participant `w` until `stop`. Blocking: call from a dedicated thread.
pub fn run<W: Wiring>(w: &W, opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<Stats> {
    let span = info_span!("participant", name = W::NAME, instance = %opts.instance);
    let _guard = span.enter();
    let registry = Registry::new(&opts.cluster.registry);
    let mut outputs = HashMap::new();
    for &topic in W::OUTPUTS {
        let encoder = rt.block_on(Encoder::register_where(&registry, topic, |name| {
            expected_topic(name) == Some(topic)
        }))?;
        outputs.insert(topic, encoder);
    }
    let mut codecs = Codecs::<W> {
        input: Decoder::new(registry.clone()),
        outputs,
        changelog: rt.block_on(Encoder::register(&registry, W::CHANGELOG))?,
        buf: Vec::with_capacity(512),
    };
    let mut changelog_decoder = Decoder::<W::Changelog>::new(registry);

    let output = Output::new(&opts.cluster, W::NAME, &opts.instance)?;
    output.track_deliveries(&[W::CHANGELOG]);
    let mut cache = ChangelogCache::open(
        opts.state_dir.as_deref(),
        W::service(),
        W::NAME,
        W::CHANGELOG,
        &opts.cluster,
        opts.snapshot_every,
    )?;
    let mut config = kafka::consumer_config(&opts.cluster, W::NAME);
    // Co-partitioning needs the same partition of every input on one instance: range does it.
    config.set("partition.assignment.strategy", "range");
    if opts.cluster.guarantee == Guarantee::ExactlyOnce {
        config.set(
            "group.instance.id",
            format!("{}-{}", W::NAME, opts.instance),
        );
    }
    let consumer: kafka::GroupConsumer = config.create_with_context(kafka::Membership::default())?;
    consumer.subscribe(W::INPUTS)?;

    let mut store: Store<W::State> = HashMap::new();
    // State of revoked partitions, resumed if the next assignment gives them back untouched.
    let mut suspended = Suspended::default();
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    let mut stats = Stats::default();
    let mut last_scan = Instant::now();
    let mut committed = kafka::Committed::default();
    // Consecutive failed batches: the retry waits 0.5 s, 1 s, 2 s, … up to 30 s.
    let mut failures = 0u32;
    info!(group = W::NAME, inputs = ?W::INPUTS, "Participant started.");

    while !stop.is_stopped() {
        let (batch, changes) = kafka::poll_member_batch(
            &consumer,
            &mut owned,
            opts.batch_size,
            Duration::from_millis(100),
        )?;
        if !changes.is_empty() {
            committed.forget();
            sync_assignment::<W>(
                rt,
                &changes,
                &mut store,
                &mut suspended,
                &mut cache,
                &mut changelog_decoder,
            )?;
        }
        let now = wire::now_ms();
        let due = if last_scan.elapsed() >= Duration::from_millis(200) {
            last_scan = Instant::now();
            due_deadlines(w, &store, now)
        } else {
            Vec::new()
        };
        if batch.is_empty() && due.is_empty() {
            if let Err(e) = committed.step_over_markers(&consumer, &output) {
                warn!(error = %format!("{e:#}"), "Could not commit past transaction markers; will retry.");
                committed.forget();
            }
            continue;
        }
        match process::<W>(
            w,
            opts,
            rt,
            &consumer,
            &output,
            &batch,
            &due,
            &mut store,
            &mut codecs,
            &mut cache,
            now,
            stop,
        ) {
            Ok((s, offsets)) => {
                failures = 0;
                committed.record(&offsets);
                cache.committed(&output.delivered(W::CHANGELOG), false)?;
                stats.messages += s.messages;
                stats.emitted += s.emitted;
                stats.dead_letters += s.dead_letters;
                stats.skipped += s.skipped;
                stats.expired += s.expired;
                stats.transactions += 1;
            }
            Err(e) if kafka::is_fenced(&e) => {
                bail!("fenced by a newer instance of {}: {e:#}", W::NAME)
            }
            Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "Batch failed; rewinding to committed state.");
                output.abort();
                drop(batch);
                kafka::rewind(&consumer)?;
                committed.forget();
                store.clear();
                suspended.clear();
                cache.clear();
                owned.clear();
                let backoff = Duration::from_millis(500) * 2u32.pow(failures.min(6));
                failures += 1;
                std::thread::sleep(backoff.min(Duration::from_secs(30)));
            }
        }
    }
    // What is in the cache was committed with the last batch (a failed one clears it).
    cache.committed(&output.delivered(W::CHANGELOG), true)?;
    kafka::leave(&consumer);
    info!(?stats, "Participant stopped.");
    Ok(stats)
}

fn due_deadlines<W: Wiring>(w: &W, store: &Store<W::State>, now: i64) -> Vec<(i32, String)> {
    let mut due = Vec::new();
    for (p, states) in store {
        for (key, s) in states {
            if w.deadline(s).is_some_and(|d| d <= now) {
                due.push((*p, key.clone()));
            }
        }
    }
    due
}

#[allow(clippy::too_many_arguments)]
fn process<W: Wiring>(
    w: &W,
    opts: &Options,
    rt: &Handle,
    consumer: &kafka::GroupConsumer,
    output: &Output,
    batch: &[BorrowedMessage<'_>],
    due: &[(i32, String)],
    store: &mut Store<W::State>,
    codecs: &mut Codecs<W>,
    cache: &mut ChangelogCache,
    now: i64,
    stop: &Stop,
) -> anyhow::Result<(Stats, TopicPartitionList)> {
    let mut stats = Stats::default();
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut dirty: BTreeSet<(i32, String)> = BTreeSet::new();
    output.begin()?;
    for message in batch {
        let (partition, offset) = (message.partition(), message.offset());
        next.insert((message.topic().to_owned(), partition), offset + 1);
        stats.messages += 1;
        let dead = |kind: &str, reason: &str| {
            output.dead_letter(W::DLQ, W::service(), message, kind, reason)
        };
        let payload = message.payload().unwrap_or_default();
        let input = match wire::decode(rt, &mut codecs.input, payload, stop) {
            Ok(i) => i,
            Err(e) if e.is_transient() => bail!("stopping while the registry is unavailable: {e}"),
            // A record that belongs on this topic but is not for this participant (the
            // topic is shared with other readers): not ours to act on, nothing wrong with it.
            Err(schemas::DecodeError::UnexpectedRecord { name, .. })
                if expected_topic(&name) == Some(message.topic()) =>
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
        if expected_topic(input.record_name()) != Some(message.topic()) {
            let reason = format!(
                "{} does not belong on {}; it travels on {}",
                input.record_name(),
                message.topic(),
                expected_topic(input.record_name()).unwrap_or("no saga topic")
            );
            dead("unexpected-record", &reason)?;
            stats.dead_letters += 1;
            continue;
        }
        let meta = W::input_metadata(&input);
        let saga = meta
            .saga_id
            .as_deref()
            .unwrap_or(&meta.aggregate_id)
            .to_owned();
        if message.key() != Some(saga.as_bytes()) {
            let key = message
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let reason = format!(
                "record key {key:?} differs from its saga id {saga:?}; saga messages are keyed by saga id"
            );
            dead("wrong-key", &reason)?;
            stats.dead_letters += 1;
            continue;
        }
        let step = debug_span!("step", saga_id = %saga, record = input.record_name(), offset);
        let _step = step.enter();
        let states = store.entry(partition).or_default();
        match w.handle(states.get(&saga), &input, now) {
            Err(invalid) => {
                dead("invalid-command", &invalid.to_string())?;
                stats.dead_letters += 1;
            }
            Ok(reaction) => {
                stats.emitted += reaction.emit.len() as u64;
                apply::<W>(
                    opts, output, codecs, states, partition, &saga, reaction, &mut dirty,
                )?;
                debug!("Handled.");
            }
        }
    }
    for (partition, saga) in due {
        let states = store.entry(*partition).or_default();
        let Some(state) = states.get(saga) else {
            continue;
        };
        let reaction = w.expire(state, now);
        if reaction.state.is_some() {
            stats.expired += 1;
            info!(saga_id = %saga, "Step deadline passed.");
        }
        stats.emitted += reaction.emit.len() as u64;
        apply::<W>(
            opts, output, codecs, states, *partition, saga, reaction, &mut dirty,
        )?;
    }
    for (partition, saga) in &dirty {
        let state = &store[partition][saga];
        codecs
            .changelog
            .encode_into(&W::to_changelog(state), &mut codecs.buf)?;
        output.send(
            W::CHANGELOG,
            Some(*partition),
            saga.as_bytes(),
            &codecs.buf,
            None,
        )?;
        cache.record(*partition, saga.as_bytes(), &codecs.buf);
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
        for e in consumer.position()?.elements() {
            // An unsettled partition's position may be past records dropped unprocessed.
            if let Offset::Offset(o) = e.offset()
                && consumer.context().settled(e.partition())
            {
                owned.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
            }
        }
        owned
    } else {
        offsets.clone()
    };
    output.commit(consumer, &fenced_by_group)?;
    Ok((stats, offsets))
}

/// Publishes a reaction's messages and keeps its new state.
#[allow(clippy::too_many_arguments)]
fn apply<W: Wiring>(
    opts: &Options,
    output: &Output,
    codecs: &mut Codecs<W>,
    states: &mut HashMap<String, W::State>,
    partition: i32,
    saga: &str,
    reaction: Reaction<W::State, W::Output>,
    dirty: &mut BTreeSet<(i32, String)>,
) -> anyhow::Result<()> {
    for out in &reaction.emit {
        let topic = expected_topic(out.record_name())
            .filter(|t| W::OUTPUTS.contains(t))
            .ok_or_else(|| {
                Fatal(format!(
                    "{} may not publish {}: it travels on {:?}, which {} does not own (it owns {:?})",
                    W::NAME,
                    out.record_name(),
                    expected_topic(out.record_name()),
                    W::service(),
                    W::OUTPUTS
                ))
            })?;
        let meta = W::output_metadata(out);
        codecs.outputs[topic].encode_into(out, &mut codecs.buf)?;
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: saga_headers::SAGA_ID,
                value: Some(saga),
            })
            .insert(Header {
                key: saga_headers::CORRELATION_ID,
                value: Some(&meta.correlation_id),
            });
        if let Some(cause) = &meta.causation_id {
            headers = headers.insert(Header {
                key: saga_headers::CAUSATION_ID,
                value: Some(cause),
            });
        }
        if let Some(reply_to) = W::reply_to(out) {
            headers = headers.insert(Header {
                key: saga_headers::REPLY_TO,
                value: Some(reply_to),
            });
        }
        let copies = if opts.duplicate_outputs { 2 } else { 1 };
        for _ in 0..copies {
            output.send(
                topic,
                None,
                meta.aggregate_id.as_bytes(),
                &codecs.buf,
                Some(headers.clone()),
            )?;
        }
    }
    if let Some(state) = reaction.state {
        debug_assert_eq!(W::state_key(&state), saga);
        states.insert(saga.to_owned(), state);
        dirty.insert((partition, saga.to_owned()));
    }
    Ok(())
}

/// Restores newly assigned partitions (local snapshot, then the changelog's tail), or resumes
/// them when no one wrote their changelog since this instance had them (see
/// [`ChangelogCache::resume`]), and suspends revoked ones.
fn sync_assignment<W: Wiring>(
    rt: &Handle,
    changes: &kafka::Changes,
    store: &mut Store<W::State>,
    suspended: &mut Suspended<HashMap<String, W::State>>,
    cache: &mut ChangelogCache,
    decoder: &mut Decoder<W::Changelog>,
) -> anyhow::Result<()> {
    for &p in &changes.revoked {
        suspended.revoke(p, store.remove(&p), cache);
    }
    for &p in &changes.assigned {
        if let Some(states) = suspended.resume(p, cache) {
            info!(
                partition = p,
                sagas = states.len(),
                "Resumed as it was revoked."
            );
            store.insert(p, states);
            continue;
        }
        let mut states = HashMap::new();
        let restored = cache.restore(p, |payload, offset| {
            let record = match decoder.decode(payload) {
                Err(schemas::DecodeError::NotCached(_)) => {
                    rt.block_on(decoder.decode_learning(payload))
                }
                other => other,
            }
            .with_context(|| match offset {
                Some(o) => format!("changelog {}/{p} offset {o} is unreadable", W::CHANGELOG),
                None => format!("the local snapshot of {}/{p} is unreadable", W::CHANGELOG),
            })?;
            let state = W::from_changelog(record);
            states.insert(W::state_key(&state).to_owned(), state);
            Ok(())
        })?;
        info!(
            partition = p,
            sagas = states.len(),
            from_snapshot = restored.from_snapshot,
            from_changelog = restored.from_topic,
            "Restored."
        );
        store.insert(p, states);
    }
    if !changes.assigned.is_empty() {
        suspended.assigned(cache);
    }
    Ok(())
}
