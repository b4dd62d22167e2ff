//! The inventory command processor loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, bail};
use processors::Aggregate;
use processors::inventory::{LowStock, SkuInventory, for_each_effect, reservation_changes};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::{DecodeError, Decoder, Encoder};
use schemas::inventory::{
    InventoryAlert, InventoryChangelog, InventoryCommand, InventoryEvent, InventorySnapshot,
    ReservationState,
};
use tokio::runtime::Handle;
use tracing::{debug, info, info_span, warn};

use super::Options;
use crate::Stop;
use crate::kafka::{self, Output};
use crate::state::{ChangelogCache, Restored, Suspended};
use crate::topics::inventory::*;

/// Counters of one run, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub commands: u64,
    pub events: u64,
    pub dead_letters: u64,
    /// Low-stock alerts raised.
    pub alerts: u64,
    /// Redeliveries skipped because the aggregate had already applied them.
    pub skipped: u64,
    pub transactions: u64,
    /// Time spent waiting in poll, processing records (decode, fold, encode, enqueue) and
    /// committing (flush, offsets, end of transaction).
    pub poll_time: Duration,
    pub process_time: Duration,
    pub commit_time: Duration,
}

/// The wire side of the service: decoder of commands, encoders of its outputs, a buffer;
/// and the rule its low-stock alerts follow.
struct Codecs {
    commands: Decoder<InventoryCommand>,
    events: Encoder<InventoryEvent>,
    changelog: Encoder<InventoryChangelog>,
    /// Per-line answers to saga commands, on the reply topic they name (keyed by saga id).
    replies: Encoder<InventoryEvent>,
    alerts: Encoder<InventoryAlert>,
    low_stock: LowStock,
    buf: Vec<u8>,
}

struct Entry {
    aggregate: SkuInventory,
    /// Offset of the last command applied to this sku (-1: none).
    last_offset: i64,
}

/// State of the partitions this instance owns: sku → aggregate, per input partition.
#[derive(Default)]
struct Store {
    partitions: HashMap<i32, HashMap<String, Entry>>,
}

/// Runs the command processor until `stop`. Blocking: call from a dedicated thread.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<Stats> {
    let span = info_span!("inventory", instance = %opts.instance);
    let _guard = span.enter();
    let registry = Registry::new(&opts.cluster.registry);
    let mut codecs = Codecs {
        commands: Decoder::new(registry.clone()),
        events: rt.block_on(Encoder::register(&registry, EVENTS))?,
        changelog: rt.block_on(Encoder::register(&registry, CHANGELOG))?,
        replies: rt.block_on(Encoder::register_where(&registry, RESERVATIONS, |name| {
            schemas::saga::expected_topic(name) == Some(RESERVATIONS)
        }))?,
        alerts: rt.block_on(Encoder::register(&registry, ALERTS))?,
        low_stock: LowStock {
            threshold: opts.low_stock_threshold,
        },
        buf: Vec::with_capacity(256),
    };
    let mut snapshot_decoder = Decoder::<InventoryChangelog>::new(registry);

    // Initializing transactions first fences a previous incarnation and aborts its open
    // transaction, so the changelog read below is not blocked by it.
    let output = Output::new(&opts.cluster, "inventory", &opts.instance)?;
    output.track_deliveries(&[CHANGELOG]);
    let mut cache = changelog_cache(opts)?;
    let mut config = kafka::consumer_config(&opts.cluster, &opts.group);
    // Static membership: a restarted instance takes its partitions back at once instead of
    // waiting for the old member's session to time out. The mock broker does not replace
    // static members (a restart would wait out the whole session), so only on real brokers.
    if opts.cluster.guarantee == crate::Guarantee::ExactlyOnce {
        config.set(
            "group.instance.id",
            format!("{}-{}", opts.group, opts.instance),
        );
    }
    let consumer: kafka::GroupConsumer = config.create_with_context(kafka::Membership::default())?;
    consumer.subscribe(&[COMMANDS])?;

    let mut store = Store::default();
    // State of revoked partitions, resumed if the next assignment gives them back untouched.
    let mut suspended = Suspended::default();
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    let mut stats = Stats::default();
    let mut committed = kafka::Committed::default();
    info!(group = %opts.group, guarantee = ?opts.cluster.guarantee, "Inventory service started.");

    while !stop.is_stopped() {
        let polled = std::time::Instant::now();
        let (batch, changes) = kafka::poll_member_batch(
            &consumer,
            &mut owned,
            opts.batch_size,
            Duration::from_millis(100),
        )?;
        stats.poll_time += polled.elapsed();
        if !changes.is_empty() {
            committed.forget();
            sync_assignment(
                rt,
                &changes,
                &mut store,
                &mut suspended,
                &mut cache,
                &mut snapshot_decoder,
            )?;
        }
        if batch.is_empty() {
            // inventory.commands is also written transactionally (by the saga participant).
            if let Err(e) = committed.step_over_markers(&consumer, &output) {
                warn!(error = %format!("{e:#}"), "Could not commit past transaction markers; will retry.");
                committed.forget();
            }
            continue;
        }
        let result = process_batch(
            rt,
            &consumer,
            &output,
            &batch,
            &mut store,
            &mut codecs,
            &mut cache,
            stop,
        );
        match result {
            Ok(batch_stats) => {
                committed.forget(); // reloaded from the group when next idle
                cache.committed(&output.delivered(CHANGELOG), false)?;
                stats.commands += batch_stats.commands;
                stats.events += batch_stats.events;
                stats.dead_letters += batch_stats.dead_letters;
                stats.alerts += batch_stats.alerts;
                stats.skipped += batch_stats.skipped;
                stats.transactions += 1;
                stats.process_time += batch_stats.process_time;
                stats.commit_time += batch_stats.commit_time;
            }
            Err(e) if kafka::is_fenced(&e) => {
                bail!("fenced by a newer instance of the inventory service: {e:#}");
            }
            Err(e) => {
                // Nothing of the batch is committed: abort, forget in-memory state, and resume
                // from the committed offsets and the changelog.
                warn!(error = %format!("{e:#}"), "Batch failed; rewinding to committed state.");
                output.abort();
                drop(batch);
                kafka::rewind(&consumer)?;
                committed.forget();
                store = Store::default();
                suspended.clear();
                cache.clear();
                owned.clear();
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    // What is in the cache was committed with the last batch (a failed one clears it).
    cache.committed(&output.delivered(CHANGELOG), true)?;
    // Leave the group now rather than when the session times out, so a successor (or the
    // same instance restarted) gets the partitions at once.
    kafka::leave(&consumer);
    info!(?stats, "Inventory service stopped.");
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
fn process_batch(
    rt: &Handle,
    consumer: &kafka::GroupConsumer,
    output: &Output,
    batch: &[BorrowedMessage<'_>],
    store: &mut Store,
    codecs: &mut Codecs,
    cache: &mut ChangelogCache,
    stop: &Stop,
) -> anyhow::Result<Stats> {
    let Codecs {
        commands: decoder,
        events,
        changelog: snapshots,
        replies,
        alerts,
        low_stock,
        buf,
    } = codecs;
    let started = std::time::Instant::now();
    let mut stats = Stats::default();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    let mut dirty: BTreeSet<(i32, String)> = BTreeSet::new();
    output.begin()?;
    for message in batch {
        let (partition, offset) = (message.partition(), message.offset());
        first.entry(partition).or_insert(offset);
        next.insert(partition, offset + 1);
        stats.commands += 1;
        let payload = message.payload().unwrap_or_default();
        let command = match crate::wire::decode(rt, decoder, payload, stop) {
            Ok(c) => c,
            // Never dead-letter a good record because the registry is down: abandon the batch.
            Err(e) if e.is_transient() => bail!("stopping while the registry is unavailable: {e}"),
            Err(e) => {
                output.dead_letter(DLQ, "inventory", message, e.kind(), &e.to_string())?;
                stats.dead_letters += 1;
                continue;
            }
        };
        let sku = command.sku();
        if message.key() != Some(sku.as_bytes()) {
            let key = message
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let reason = format!(
                "record key {key:?} differs from the command's sku {sku:?}; commands must be keyed by sku"
            );
            output.dead_letter(DLQ, "inventory", message, "wrong-key", &reason)?;
            stats.dead_letters += 1;
            continue;
        }
        let entry = store
            .partitions
            .entry(partition)
            .or_default()
            .entry(sku.to_owned())
            .or_insert_with(|| Entry {
                aggregate: SkuInventory::new(sku),
                last_offset: -1,
            });
        if offset <= entry.last_offset {
            stats.skipped += 1;
            continue;
        }
        match entry.aggregate.handle(&command) {
            Err(invalid) => {
                output.dead_letter(
                    DLQ,
                    "inventory",
                    message,
                    "invalid-command",
                    &invalid.to_string(),
                )?;
                stats.dead_letters += 1;
            }
            Ok(produced) => {
                for event in &produced {
                    // Available stock before and after, per position the event touches (at
                    // most two: a transfer's); no allocation on this path.
                    let mut touched: [Option<(&str, i64)>; 2] = [None, None];
                    if low_stock.threshold > 0 {
                        for_each_effect(event, |w, _| {
                            if touched.iter().flatten().any(|(t, _)| *t == w) {
                                return;
                            }
                            let before = entry.aggregate.position(w).available();
                            let slot = if touched[0].is_none() { 0 } else { 1 };
                            touched[slot] = Some((w, before));
                        });
                    }
                    entry.aggregate.apply(event);
                    events.encode_into(event, buf)?;
                    output.send(EVENTS, None, sku.as_bytes(), buf, None)?;
                    for (warehouse, before) in touched.into_iter().flatten() {
                        let after = entry.aggregate.position(warehouse).available();
                        if let Some(alert) = low_stock.check(event, warehouse, before, after) {
                            alerts.encode_into(&alert.into(), buf)?;
                            output.send(ALERTS, None, sku.as_bytes(), buf, None)?;
                            stats.alerts += 1;
                        }
                    }
                }
                // A saga's command names its reply topic: answer there too, keyed by saga.
                if let (Some(RESERVATIONS), Some(saga)) = (
                    crate::topics::header(message, crate::topics::saga_headers::REPLY_TO),
                    command.metadata().saga_id.as_deref(),
                ) {
                    for event in &produced {
                        if schemas::saga::on_expected_topic(event, RESERVATIONS) {
                            replies.encode_into(event, buf)?;
                            output.send(RESERVATIONS, None, saga.as_bytes(), buf, None)?;
                        }
                    }
                }
                // Reservations go to the changelog as they change (keyed sku/id), so the
                // per-sku snapshot below stays small however many a sku has seen.
                for change in reservation_changes(&produced) {
                    let key = change.changelog_key();
                    snapshots.encode_into(&change.into(), buf)?;
                    output.send(CHANGELOG, Some(partition), key.as_bytes(), buf, None)?;
                    cache.record(partition, key.as_bytes(), buf);
                }
                stats.events += produced.len() as u64;
                entry.last_offset = offset;
                dirty.insert((partition, sku.to_owned()));
            }
        }
    }
    for (partition, sku) in &dirty {
        let entry = &store.partitions[partition][sku];
        let snapshot = entry.aggregate.snapshot(*partition, entry.last_offset);
        snapshots.encode_into(&snapshot.into(), buf)?;
        output.send(CHANGELOG, Some(*partition), sku.as_bytes(), buf, None)?;
        cache.record(*partition, sku.as_bytes(), buf);
    }
    let mut offsets = TopicPartitionList::new();
    for (p, o) in &next {
        offsets.add_partition_offset(COMMANDS, *p, Offset::Offset(*o))?;
    }
    let committing = std::time::Instant::now();
    stats.process_time = committing - started;
    output.commit(consumer, &offsets)?;
    stats.commit_time = committing.elapsed();
    debug!(
        commands = stats.commands,
        events = stats.events,
        ?first,
        ?next,
        "Batch committed."
    );
    Ok(stats)
}

/// Suspends revoked partitions and restores newly assigned ones from the changelog, or
/// resumes them when no one wrote their changelog since this instance had them (see
/// [`ChangelogCache::resume`]): eager rebalancing revokes every partition of every member,
/// and most come straight back.
fn sync_assignment(
    rt: &Handle,
    changes: &kafka::Changes,
    store: &mut Store,
    suspended: &mut Suspended<HashMap<String, Entry>>,
    cache: &mut ChangelogCache,
    decoder: &mut Decoder<InventoryChangelog>,
) -> anyhow::Result<()> {
    for &p in &changes.revoked {
        suspended.revoke(p, store.partitions.remove(&p), cache);
    }
    for &p in &changes.assigned {
        if let Some(state) = suspended.resume(p, cache) {
            info!(
                partition = p,
                skus = state.len(),
                "Resumed as it was revoked."
            );
            store.partitions.insert(p, state);
            continue;
        }
        let mut read = Restored::default();
        let mut orphans = 0;
        let restored = restore_partition(rt, p, decoder, &mut orphans, |f| {
            read = cache.restore(p, f)?;
            Ok(())
        })?;
        if orphans > 0 {
            cache.hold(p);
            warn!(
                partition = p,
                orphans,
                "Reservation records of an unfinished batch: no local snapshot of this partition until its next restore."
            );
        }
        info!(
            partition = p,
            skus = restored.len(),
            from_snapshot = read.from_snapshot,
            from_changelog = read.from_topic,
            "Restored."
        );
        store.partitions.insert(p, restored);
    }
    if !changes.assigned.is_empty() {
        suspended.assigned(cache);
    }
    Ok(())
}

/// The skus of changelog partition `p` from the records `read` hands over (the changelog
/// read to its end, read_committed, or a local snapshot and the changelog's tail): the last
/// snapshot per sku wins.
fn restore_partition(
    rt: &Handle,
    p: i32,
    decoder: &mut Decoder<InventoryChangelog>,
    orphans: &mut usize,
    read: impl FnOnce(&mut dyn FnMut(&[u8], Option<i64>) -> anyhow::Result<()>) -> anyhow::Result<()>,
) -> anyhow::Result<HashMap<String, Entry>> {
    let mut state = HashMap::new();
    // Records of a sku may come in any order (compaction keeps the latest per key).
    let mut latest: HashMap<String, InventorySnapshot> = HashMap::new();
    let mut reservations: HashMap<String, Vec<ReservationState>> = HashMap::new();
    read(&mut |payload, offset| {
        match decode_snapshot(rt, decoder, payload).with_context(|| match offset {
            Some(o) => format!("changelog {CHANGELOG}/{p} offset {o} is unreadable"),
            None => format!("the local snapshot of {CHANGELOG}/{p} is unreadable"),
        })? {
            InventoryChangelog::InventorySnapshot(s) => {
                latest.insert(s.sku.clone(), s);
            }
            InventoryChangelog::ReservationState(r) => {
                reservations.entry(r.sku.clone()).or_default().push(r)
            }
        }
        Ok(())
    })?;
    // Reservation records without a snapshot, or newer than their sku's, belong to a batch
    // whose snapshot never landed (at-least-once only): its commands are redelivered. A
    // local snapshot of the partition would keep only their latest version and lose the one
    // the restore needs, so the partition is not snapshotted until it is restored again.
    *orphans = reservations
        .iter()
        .map(|(sku, rs)| match latest.get(sku) {
            None => rs.len(),
            Some(s) => rs.iter().filter(|r| r.version > s.version).count(),
        })
        .sum();
    for (sku, snapshot) in latest {
        let aggregate =
            SkuInventory::restore(&snapshot, reservations.get(&sku).into_iter().flatten());
        state.insert(
            sku,
            Entry {
                aggregate,
                last_offset: snapshot.source_offset,
            },
        );
    }
    Ok(state)
}

/// The service's changelog, as its local state directory keeps it (see [`crate::state`]).
fn changelog_cache(opts: &Options) -> anyhow::Result<ChangelogCache> {
    ChangelogCache::open(
        opts.state_dir.as_deref(),
        "inventory",
        "inventory",
        CHANGELOG,
        &opts.cluster,
        opts.snapshot_every,
    )
}

fn decode_snapshot(
    rt: &Handle,
    decoder: &mut Decoder<InventoryChangelog>,
    payload: &[u8],
) -> Result<InventoryChangelog, DecodeError> {
    match decoder.decode(payload) {
        Err(DecodeError::NotCached(_)) => rt.block_on(decoder.decode_learning(payload)),
        other => other,
    }
}

/// Every sku's aggregate as a restarted instance restores it from the changelog (all
/// partitions). For comparing with a fold of the event log and for the restore benchmark.
pub fn restore_store(
    opts: &Options,
    rt: &Handle,
) -> anyhow::Result<(HashMap<String, SkuInventory>, Restored)> {
    let registry = Registry::new(&opts.cluster.registry);
    let mut decoder = Decoder::<InventoryChangelog>::new(registry);
    let probe: BaseConsumer = kafka::client_config(&opts.cluster).create()?;
    // As a restart would: from the local snapshots and the changelog's tail if there is a
    // state directory (and no instance running on it), else the whole changelog.
    let mut cache = changelog_cache(opts)?;
    let mut store = HashMap::new();
    let mut total = Restored::default();
    for p in 0..kafka::partition_count(&probe, CHANGELOG)? as i32 {
        let restored = restore_partition(rt, p, &mut decoder, &mut 0, |f| {
            let read = cache.restore(p, f)?;
            total.from_snapshot += read.from_snapshot;
            total.from_topic += read.from_topic;
            Ok(())
        })?;
        for (sku, entry) in restored {
            store.insert(sku, entry.aggregate);
        }
    }
    Ok((store, total))
}
