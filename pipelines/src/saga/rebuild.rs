//! State stores from event logs: the event log of an event-sourced participant is the
//! source of truth, its changelog a cache (a snapshot per saga). This folds the log
//! (`supplystream replay orders|payments|shipping`), compares the fold with what a restart
//! would restore (`--check`), and writes the fold into the changelog when a store was lost.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use processors::{orders::Orders, payments::Payments, shipping::Shipping};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use schemas::Registry;
use schemas::codec::{Decoder, Encoder};
use schemas::orders::{OrderEvent, OrderState};
use schemas::payments::{PaymentReply, PaymentState};
use schemas::shipping::{ShipmentReply, ShipmentState};
use tokio::runtime::Handle;

use super::participant::Wiring;
use crate::kafka::{self, Output};
use crate::runtime::Read;
use crate::{Cluster, Stop, wire};

/// A participant whose state is the fold of its own output log.
pub trait EventSourced: Wiring<State: PartialEq> {
    /// Its event log (one of its outputs).
    const EVENTS: &'static str;
    /// The state after `event` (`None`: the event concerns no existing state).
    fn evolve(state: Option<&Self::State>, event: &Self::Output) -> Option<Self::State>;
    /// The saga (and store key) an event belongs to.
    fn event_key(event: &Self::Output) -> String {
        processors::saga::saga_of(Self::output_metadata(event))
    }
}

impl EventSourced for Orders {
    const EVENTS: &'static str = schemas::saga::topics::ORDER_EVENTS;
    fn evolve(state: Option<&OrderState>, event: &OrderEvent) -> Option<OrderState> {
        processors::orders::evolve(state, event)
    }
}

impl EventSourced for Payments {
    const EVENTS: &'static str = schemas::saga::topics::PAYMENT_REPLIES;
    fn evolve(state: Option<&PaymentState>, event: &PaymentReply) -> Option<PaymentState> {
        Some(processors::payments::evolve(state, event))
    }
}

impl EventSourced for processors::billing::Billing {
    const EVENTS: &'static str = schemas::saga::topics::BILLING_EVENTS;
    fn evolve(
        state: Option<&schemas::billing::BillingState>,
        event: &schemas::billing::BillingEvent,
    ) -> Option<schemas::billing::BillingState> {
        Some(processors::billing::evolve(state, event))
    }
}

impl EventSourced for processors::suppliers::Suppliers {
    const EVENTS: &'static str = schemas::saga::topics::SUPPLIER_EVENTS;
    fn evolve(
        state: Option<&schemas::suppliers::SupplyState>,
        event: &schemas::suppliers::SupplierEvent,
    ) -> Option<schemas::suppliers::SupplyState> {
        Some(processors::suppliers::evolve(state, event))
    }
}

impl EventSourced for processors::catalog::Catalog {
    const EVENTS: &'static str = schemas::saga::topics::CATALOG_EVENTS;
    fn evolve(
        state: Option<&schemas::products::ProductState>,
        event: &schemas::products::CatalogEvent,
    ) -> Option<schemas::products::ProductState> {
        processors::catalog::evolve(state, event)
    }
}

impl EventSourced for Shipping {
    const EVENTS: &'static str = schemas::saga::topics::SHIPPING_REPLIES;
    fn evolve(state: Option<&ShipmentState>, event: &ShipmentReply) -> Option<ShipmentState> {
        Some(processors::shipping::evolve(state, event))
    }
}

/// States by partition (of the event log, which is the partition of the saga's inputs and
/// changelog: every topic of a saga is keyed by saga id) and key.
pub type Stores<S> = BTreeMap<i32, HashMap<String, S>>;

/// What a fold of the event log read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folded {
    pub events: u64,
    pub states: usize,
}

/// Folds `W`'s event log from the beginning into its states.
pub fn fold<W: EventSourced>(
    cluster: &Cluster,
    rt: &Handle,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Stores<W::State>, Folded)> {
    let probe: BaseConsumer = kafka::client_config(cluster).create()?;
    let mut decoder = Decoder::<W::Output>::new(Registry::new(&cluster.registry));
    let stop = Stop::default();
    let mut stores: Stores<W::State> = BTreeMap::new();
    let mut folded = Folded::default();
    for p in 0..kafka::partition_count(&probe, W::EVENTS)? as i32 {
        let states = stores.entry(p).or_default();
        // An event published twice (a producer retry outside a transaction, or the chaos
        // switch) is one event: folded once, recognized by its id like every consumer does.
        let mut folded_ids: HashSet<String> = HashSet::new();
        kafka::read_partition_to_end(cluster, "supplystream-replay", W::EVENTS, p, |m| {
            bar.inc(1);
            let event = wire::decode(rt, &mut decoder, m.payload().unwrap_or_default(), &stop)
                .with_context(|| format!("{}/{p}@{}", W::EVENTS, m.offset()))?;
            if !folded_ids.insert(W::output_metadata(&event).event_id.clone()) {
                return Ok(());
            }
            let key = W::event_key(&event);
            if let Some(s) = W::evolve(states.get(&key), &event) {
                states.insert(key, s);
            }
            folded.events += 1;
            Ok(())
        })?;
        folded.states += states.len();
    }
    Ok((stores, folded))
}

/// What a restart of `W` would restore: from its changelog, or (given `W`'s state
/// directory root, with no instance running on it) from its local snapshots and the
/// changelog's tail. Also says how many records came from each.
pub fn restore<W: EventSourced>(
    cluster: &Cluster,
    rt: &Handle,
    state_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Stores<W::State>, crate::state::Restored)> {
    let probe: BaseConsumer = kafka::client_config(cluster).create()?;
    let mut decoder = Decoder::<W::Changelog>::new(Registry::new(&cluster.registry));
    let stop = Stop::default();
    let mut cache = crate::state::ChangelogCache::open(
        state_dir,
        W::service(),
        W::NAME,
        W::CHANGELOG,
        cluster,
        std::time::Duration::MAX,
    )?;
    let mut total = crate::state::Restored::default();
    let mut stores: Stores<W::State> = BTreeMap::new();
    for p in 0..kafka::partition_count(&probe, W::CHANGELOG)? as i32 {
        let states = stores.entry(p).or_default();
        let read = crate::runtime::read_changelog(
            &mut cache,
            p,
            W::CHANGELOG,
            |payload| wire::decode(rt, &mut decoder, payload, &stop),
            &mut |read| {
                match read {
                    Read::Record { record, .. } => {
                        let state = W::from_changelog(record);
                        states.insert(W::state_key(&state).to_owned(), state);
                    }
                    // A saga forgotten after its retention (see `Sagas`).
                    Read::Deleted { key } => {
                        states.remove(&*String::from_utf8_lossy(key));
                    }
                    Read::Meta { .. } => {}
                }
                Ok(())
            },
        )?;
        read.complete(W::CHANGELOG, p)?;
        let restored = read.restored;
        total.from_snapshot += restored.from_snapshot;
        total.from_topic += restored.from_topic;
    }
    Ok((stores, total))
}

/// Removes from `folded` the sagas `restored` lacks because the participant forgot them: they
/// ended ([`Wiring::ended`]), and a participant forgets ended sagas after its retention
/// (see [`super::participant::Sagas`]). Returns how many. A saga the store lacks that had
/// not ended stays, and [`differences`] reports it.
pub fn drop_forgotten<W: EventSourced>(
    folded: &mut Stores<W::State>,
    restored: &Stores<W::State>,
) -> usize {
    let empty = HashMap::new();
    let mut dropped = 0;
    for (p, states) in folded.iter_mut() {
        let kept = restored.get(p).unwrap_or(&empty);
        states.retain(|k, s| {
            let forgotten = !kept.contains_key(k) && W::ended(s);
            dropped += usize::from(forgotten);
            !forgotten
        });
    }
    dropped
}

/// Keys whose state differs between two stores (missing on either side included), sorted.
pub fn differences<S: PartialEq>(a: &Stores<S>, b: &Stores<S>) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let empty = HashMap::new();
    let partitions: std::collections::BTreeSet<i32> = a.keys().chain(b.keys()).copied().collect();
    for p in partitions {
        let (x, y) = (a.get(&p).unwrap_or(&empty), b.get(&p).unwrap_or(&empty));
        for k in x.keys().chain(y.keys()) {
            if x.get(k) != y.get(k) && !out.contains(&(p, k.clone())) {
                out.push((p, k.clone()));
            }
        }
    }
    out.sort();
    out
}

/// Writes `stores` into `W`'s changelog (one snapshot per saga, on its partition), in one
/// transaction on a real broker, after checking that no instance of `W` runs. The
/// changelog is compacted: the rebuilt snapshots supersede whatever was there.
pub fn write<W: EventSourced>(
    cluster: &Cluster,
    rt: &Handle,
    stores: &Stores<W::State>,
) -> anyhow::Result<usize> {
    kafka::ensure_group_stopped(cluster, W::NAME)?;
    let partitions = stores.keys().max().map_or(1, |p| p + 1);
    rt.block_on(kafka::ensure_topics(cluster, &super::topics(partitions)))?;
    let registry = Registry::new(&cluster.registry);
    let encoder = rt.block_on(Encoder::<W::Changelog>::register(&registry, W::CHANGELOG))?;
    let output = Output::new(cluster, W::NAME, "rebuild")?;
    output.begin()?;
    let mut buf = Vec::new();
    let mut written = 0;
    for (p, states) in stores {
        for (key, state) in states {
            encoder.encode_into(&W::to_changelog(state), &mut buf)?;
            output.send(W::CHANGELOG, Some(*p), key.as_bytes(), &buf, None)?;
            written += 1;
        }
    }
    output.end()?;
    Ok(written)
}
