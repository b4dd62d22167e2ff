//! A saga participant on the one [`runtime`](crate::runtime) loop: consume its input topics,
//! fold each saga's state with the pure participant, publish what it emits (with the saga's
//! headers, on the topics its service owns), keep one changelog record per saga, and fire the
//! initiator's deadlines.

use std::collections::HashMap;

use processors::saga::{Participant as Decide, Reaction};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use schemas::Metadata;
use schemas::Registry;
use schemas::codec::Encoder;
use schemas::common::HasMetadata;
use schemas::record::RecordUnion;
use schemas::saga::expected_topic;
use tokio::runtime::Handle;
use tracing::{debug, debug_span, info};

use super::Options;
use crate::Stop;
use crate::error::{BadInput, Internal};
use crate::runtime::{self, Batch, Handled, Read, ReadChangelog, Rebuilt, Spec, Stats};
use crate::topics::saga_headers;

/// How a participant is wired to Kafka: its name, its topics, its store.
pub trait Wiring:
    Decide<
        Input: RecordUnion + HasMetadata,
        Output: RecordUnion + HasMetadata,
        State: Clone + Send + 'static,
    > + Send
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

    /// The changelog's record union (its one record is the state).
    type Changelog: RecordUnion + From<Self::State>;
    /// The participant, as `opts` configure it.
    fn new(opts: &Options) -> Self;
    fn from_changelog(record: Self::Changelog) -> Self::State;
    fn state_key(state: &Self::State) -> &str;
    /// Where the answer to `output` is expected (its `reply-to` header); none by default.
    fn reply_to(_output: &Self::Output) -> Option<&'static str> {
        None
    }
    fn to_changelog(state: &Self::State) -> Self::Changelog {
        state.clone().into()
    }
    fn input_metadata(input: &Self::Input) -> &Metadata {
        input.metadata()
    }
    fn output_metadata(output: &Self::Output) -> &Metadata {
        output.metadata()
    }
    /// Whether a saga in `state` has ended for good: no input may change it any more, so
    /// after the retention it may be forgotten ([`Sagas`]). `false` by default (kept
    /// forever): a participant says when its sagas end.
    fn ended(_state: &Self::State) -> bool {
        false
    }
}

/// The sagas of one partition a participant keeps in memory, and what it forgot.
///
/// **Eviction of ended sagas.** A saga that [`Wiring::ended`] and that nothing touched for
/// the retention (`--saga-retention-ms`, 24 h by default) is dropped from memory and from
/// the changelog (a tombstone); its event log and the views keep it. So memory holds the
/// sagas in flight and those that ended within the retention, not the whole history.
///
/// **The horizon.** A duplicate of an old input for a forgotten saga (e.g. a client
/// resending a `PlaceOrder`, or input offsets reset for a replay) must not start it again.
/// `forgotten_until` is the latest time a forgotten saga was touched; an input for a saga
/// this partition does not hold, stamped (`occurred_at`) at or before it, is refused as an
/// invalid command that may be a duplicate, and dead-lettered: a saga's inputs are older
/// than its last touch. A new saga's inputs are stamped now, a retention past the horizon.
/// The horizon is kept in the changelog as a meta record ([`FORGOTTEN_UNTIL`]) and read
/// back on restore; when a lost store is rebuilt from the event log, every saga is back
/// (none forgotten) and the horizon starts again from zero.
///
/// When each saga was last touched survives restores too: it is its changelog record's
/// timestamp, which the changelog cache and its snapshots keep with the record.
#[derive(Debug)]
pub struct Sagas<S> {
    states: HashMap<String, Kept<S>>,
    forgotten_until: i64,
}

impl<S> Default for Sagas<S> {
    fn default() -> Self {
        Sagas {
            states: HashMap::new(),
            forgotten_until: 0,
        }
    }
}

#[derive(Debug)]
struct Kept<S> {
    state: S,
    /// When it last changed (ms since the epoch).
    touched: i64,
}

impl<S> Sagas<S> {
    fn get(&self, saga: &str) -> Option<&S> {
        self.states.get(saga).map(|k| &k.state)
    }
}

/// The meta record ([`runtime::Read::Meta`]) of a partition's horizon of forgotten sagas:
/// its payload is the horizon, an i64 (ms since the epoch), little-endian.
pub const FORGOTTEN_UNTIL: &str = "forgotten-until";

/// Ended sagas one deadline scan (every 200 ms) forgets at most per partition: a first start
/// on a long history (or after an outage past the retention) finds every ended saga due at
/// once, and forgetting millions in one transaction would outlast its timeout.
const MAX_EVICTIONS_PER_SCAN: usize = 1_000;

/// A participant `W` as a [`runtime::Processor`]: its encoders and how it publishes.
struct Participant<W: Wiring> {
    w: W,
    spec: Spec,
    outputs: HashMap<&'static str, Encoder<W::Output>>,
    changelog: Encoder<W::Changelog>,
    /// Fault injection for tests: publish every output twice.
    duplicate_outputs: bool,
    /// How long an ended saga is kept after its last change (ms); `None`: forever.
    retention_ms: Option<i64>,
}

/// Runs participant `w` until `stop`. Blocking: call from a dedicated thread.
pub fn run<W: Wiring>(w: W, opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<Stats> {
    let registry = Registry::new(&opts.cluster.registry);
    let mut outputs = HashMap::new();
    for &topic in W::OUTPUTS {
        let encoder = rt.block_on(Encoder::register_where(&registry, topic, |name| {
            expected_topic(name) == Some(topic)
        }))?;
        outputs.insert(topic, encoder);
    }
    let mut participant = Participant {
        w,
        spec: Spec {
            name: W::NAME,
            group: W::NAME.to_owned(),
            service: W::service(),
            inputs: W::INPUTS,
            changelog: W::CHANGELOG,
            dlq: W::DLQ,
            key_name: "its saga id",
            key_rule: "saga messages are keyed by saga id",
        },
        outputs,
        changelog: rt.block_on(Encoder::register(&registry, W::CHANGELOG))?,
        duplicate_outputs: opts.duplicate_outputs,
        retention_ms: opts
            .saga_retention
            .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX)),
    };
    let settings = runtime::Settings {
        cluster: opts.cluster.clone(),
        instance: opts.instance.clone(),
        batch_size: opts.batch_size,
        state_dir: opts.state_dir.clone(),
        snapshot_every: opts.snapshot_every,
        hold_transactions: opts.hold_transactions,
    };
    runtime::run(&mut participant, &settings, registry, rt, stop)
}

impl<W: Wiring> runtime::Processor for Participant<W> {
    type Input = W::Input;
    type Changelog = W::Changelog;
    type Partition = Sagas<W::State>;

    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn ignores(&self, topic: &str, record: &str) -> bool {
        expected_topic(record) == Some(topic)
    }

    fn route<'i>(&self, topic: &str, input: &'i W::Input) -> Result<&'i str, BadInput> {
        if expected_topic(input.record_name()) != Some(topic) {
            return Err(BadInput {
                kind: "unexpected-record",
                reason: format!(
                    "{} does not belong on {topic}; it travels on {}",
                    input.record_name(),
                    expected_topic(input.record_name()).unwrap_or("no saga topic")
                ),
            });
        }
        let meta = W::input_metadata(input);
        let saga = meta.saga_id.as_deref().unwrap_or(&meta.aggregate_id);
        if saga.starts_with('\0') {
            return Err(BadInput {
                kind: "invalid-key",
                reason: format!(
                    "saga id {saga:?} starts with NUL, which changelog meta records use"
                ),
            });
        }
        Ok(saga)
    }

    fn handle(
        &mut self,
        out: &mut Batch<'_>,
        states: &mut Self::Partition,
        saga: &str,
        input: &W::Input,
        message: &BorrowedMessage<'_>,
        now: i64,
    ) -> anyhow::Result<Handled> {
        use rdkafka::Message;
        let step = debug_span!("step", saga_id = %saga, record = input.record_name(), offset = message.offset());
        let _step = step.enter();
        let occurred_at = W::input_metadata(input).occurred_at;
        if states.forgotten_until > 0
            && occurred_at <= states.forgotten_until
            && states.get(saga).is_none()
        {
            return Ok(Handled::Invalid(format!(
                "{} for saga {saga:?} occurred at {occurred_at}, at or before the horizon of \
                 the sagas this partition forgot ({}, their retention past): it may be a \
                 duplicate of an input of a saga that ended and was forgotten, so it is not \
                 acted on",
                input.record_name(),
                states.forgotten_until
            )));
        }
        match self.w.handle(states.get(saga), input, now) {
            Err(invalid) => Ok(Handled::Invalid(invalid.to_string())),
            Ok(reaction) => {
                let emitted = reaction.emit.len();
                self.apply(out, states, saga, reaction, now)?;
                debug!("Handled.");
                Ok(Handled::Applied { emitted })
            }
        }
    }

    fn has_deadlines(&self) -> bool {
        true
    }

    fn due(&self, states: &Self::Partition, now: i64, due: &mut Vec<String>) {
        let mut evictions = 0;
        for (key, kept) in &states.states {
            if self.w.deadline(&kept.state).is_some_and(|d| d <= now) {
                due.push(key.clone());
            } else if evictions < MAX_EVICTIONS_PER_SCAN && self.evictable(kept, now) {
                evictions += 1;
                due.push(key.clone());
            }
        }
    }

    fn expire(
        &mut self,
        out: &mut Batch<'_>,
        states: &mut Self::Partition,
        saga: &str,
        now: i64,
    ) -> anyhow::Result<Option<usize>> {
        let Some(kept) = states.states.get(saga) else {
            return Ok(None);
        };
        if self.evictable(kept, now) {
            let touched = kept.touched;
            // The horizon before the tombstone, in the same unit of work: under at-least-once
            // what was sent stays sent when a unit fails, and a tombstone without its horizon
            // would let a duplicate start the saga again; a horizon without its tombstone
            // only refuses what the saga held anyway.
            if touched > states.forgotten_until {
                out.meta(FORGOTTEN_UNTIL, &touched.to_le_bytes())?;
                states.forgotten_until = touched;
            }
            states.states.remove(saga);
            out.forget(saga.as_bytes())?;
            debug!(saga_id = %saga, touched, "Forgot an ended saga past its retention.");
            return Ok(None);
        }
        let reaction = self.w.expire(&kept.state, now);
        let expired = reaction.state.is_some();
        if expired {
            info!(saga_id = %saga, "Step deadline passed.");
        }
        let emitted = reaction.emit.len();
        self.apply(out, states, saga, reaction, now)?;
        Ok(expired.then_some(emitted))
    }

    fn write_changelog(
        &mut self,
        out: &mut Batch<'_>,
        states: &Self::Partition,
        saga: &str,
    ) -> anyhow::Result<()> {
        // Changed, then forgotten in the same batch: its tombstone is written already.
        let Some(kept) = states.states.get(saga) else {
            return Ok(());
        };
        out.encode(&self.changelog, &W::to_changelog(&kept.state))?;
        out.changelog(saga.as_bytes())
    }

    fn rebuild(
        &self,
        _p: i32,
        read: ReadChangelog<'_, W::Changelog>,
    ) -> anyhow::Result<Rebuilt<Self::Partition>> {
        let mut sagas = Sagas::default();
        // The horizon's latest record could not be read (set below: conservative).
        let mut unreadable_horizon = false;
        read(&mut |read| {
            match read {
                Read::Record { record, at } => {
                    let state = W::from_changelog(record);
                    let key = W::state_key(&state).to_owned();
                    sagas.states.insert(key, Kept { state, touched: at });
                }
                Read::Deleted { key } => {
                    sagas.states.remove(&*String::from_utf8_lossy(key));
                }
                Read::Meta { key, payload } if key == FORGOTTEN_UNTIL.as_bytes() => {
                    match <[u8; 8]>::try_from(payload) {
                        Ok(b) => {
                            sagas.forgotten_until = i64::from_le_bytes(b);
                            unreadable_horizon = false;
                        }
                        // Kept conservative: the latest time anything was touched stands in
                        // (set below), so no forgotten saga's duplicate gets through.
                        Err(_) => {
                            tracing::warn!(
                                changelog = W::CHANGELOG,
                                len = payload.len(),
                                "Unreadable horizon of forgotten sagas; taking the latest change instead."
                            );
                            unreadable_horizon = true;
                        }
                    }
                }
                Read::Meta { .. } => {}
            }
            Ok(())
        })?;
        if unreadable_horizon {
            sagas.forgotten_until = sagas.states.values().map(|k| k.touched).max().unwrap_or(0);
        }
        Ok(Rebuilt {
            keys: sagas.states.len(),
            state: sagas,
            orphans: 0,
        })
    }
}

impl<W: Wiring> Participant<W> {
    /// Whether `kept` is an ended saga past its retention at `now`.
    fn evictable(&self, kept: &Kept<W::State>, now: i64) -> bool {
        self.retention_ms
            .is_some_and(|r| kept.touched.saturating_add(r) <= now && W::ended(&kept.state))
    }

    /// Publishes a reaction's messages and keeps its new state, touched at `now`.
    fn apply(
        &self,
        out: &mut Batch<'_>,
        states: &mut Sagas<W::State>,
        saga: &str,
        reaction: Reaction<W::State, W::Output>,
        now: i64,
    ) -> anyhow::Result<()> {
        for output in &reaction.emit {
            let topic = expected_topic(output.record_name())
                .filter(|t| W::OUTPUTS.contains(t))
                .ok_or_else(|| {
                    Internal(format!(
                        "{} may not publish {}: it travels on {:?}, which {} does not own (it owns {:?})",
                        W::NAME,
                        output.record_name(),
                        expected_topic(output.record_name()),
                        W::service(),
                        W::OUTPUTS
                    ))
                })?;
            let meta = W::output_metadata(output);
            out.encode(&self.outputs[topic], output)?;
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
            if let Some(reply_to) = W::reply_to(output) {
                headers = headers.insert(Header {
                    key: saga_headers::REPLY_TO,
                    value: Some(reply_to),
                });
            }
            let copies = if self.duplicate_outputs { 2 } else { 1 };
            for _ in 0..copies {
                out.send(topic, meta.aggregate_id.as_bytes(), Some(headers.clone()))?;
            }
        }
        if let Some(state) = reaction.state {
            debug_assert_eq!(W::state_key(&state), saga);
            states.states.insert(
                saga.to_owned(),
                Kept {
                    state,
                    touched: now,
                },
            );
            out.changed(saga);
        }
        Ok(())
    }
}
