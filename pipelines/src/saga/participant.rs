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
use crate::runtime::{self, Batch, Handled, ReadChangelog, Rebuilt, Spec, Stats};
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
}

/// A participant `W` as a [`runtime::Processor`]: its encoders and how it publishes.
struct Participant<W: Wiring> {
    w: W,
    spec: Spec,
    outputs: HashMap<&'static str, Encoder<W::Output>>,
    changelog: Encoder<W::Changelog>,
    /// Fault injection for tests: publish every output twice.
    duplicate_outputs: bool,
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
    type Partition = HashMap<String, W::State>;

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
        Ok(meta.saga_id.as_deref().unwrap_or(&meta.aggregate_id))
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
        match self.w.handle(states.get(saga), input, now) {
            Err(invalid) => Ok(Handled::Invalid(invalid.to_string())),
            Ok(reaction) => {
                let emitted = reaction.emit.len();
                self.apply(out, states, saga, reaction)?;
                debug!("Handled.");
                Ok(Handled::Applied { emitted })
            }
        }
    }

    fn has_deadlines(&self) -> bool {
        true
    }

    fn due(&self, states: &Self::Partition, now: i64, due: &mut Vec<String>) {
        for (key, s) in states {
            if self.w.deadline(s).is_some_and(|d| d <= now) {
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
        let Some(state) = states.get(saga) else {
            return Ok(None);
        };
        let reaction = self.w.expire(state, now);
        let expired = reaction.state.is_some();
        if expired {
            info!(saga_id = %saga, "Step deadline passed.");
        }
        let emitted = reaction.emit.len();
        self.apply(out, states, saga, reaction)?;
        Ok(expired.then_some(emitted))
    }

    fn write_changelog(
        &mut self,
        out: &mut Batch<'_>,
        states: &Self::Partition,
        saga: &str,
    ) -> anyhow::Result<()> {
        out.encode(&self.changelog, &W::to_changelog(&states[saga]))?;
        out.changelog(saga.as_bytes())
    }

    fn rebuild(
        &self,
        _p: i32,
        read: ReadChangelog<'_, W::Changelog>,
    ) -> anyhow::Result<Rebuilt<Self::Partition>> {
        let mut states = HashMap::new();
        read(&mut |record| {
            let state = W::from_changelog(record);
            states.insert(W::state_key(&state).to_owned(), state);
            Ok(())
        })?;
        Ok(Rebuilt {
            keys: states.len(),
            state: states,
            orphans: 0,
        })
    }
}

impl<W: Wiring> Participant<W> {
    /// Publishes a reaction's messages and keeps its new state.
    fn apply(
        &self,
        out: &mut Batch<'_>,
        states: &mut HashMap<String, W::State>,
        saga: &str,
        reaction: Reaction<W::State, W::Output>,
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
            states.insert(saga.to_owned(), state);
            out.changed(saga);
        }
        Ok(())
    }
}
