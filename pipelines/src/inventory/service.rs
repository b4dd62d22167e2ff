//! The inventory command processor: per-sku aggregates on the one [`runtime`] loop.
//!
//! Consumes `inventory.commands` (keyed by sku), folds each sku's aggregate, publishes
//! `inventory.events`, the low-stock alerts and the per-line answers to saga commands, and
//! keeps the aggregates in `inventory.changelog` (one snapshot per changed sku per batch and
//! one record per reservation that changed). Redeliveries are recognised by the offset of
//! the last command each sku applied, kept in its snapshot; a client's retry (the same
//! command produced again, at a new offset) by its idempotency key, when it came with one
//! (header [`IDEMPOTENCY_KEY`](crate::topics::IDEMPOTENCY_KEY)): each sku remembers its last
//! [`REMEMBERED_KEYS`] keys in the changelog, one record per slot.

use std::collections::{HashMap, VecDeque};

use processors::Aggregate;
use processors::inventory::{LowStock, SkuInventory, for_each_effect, reservation_changes};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use schemas::Registry;
use schemas::codec::{Decoder, Encoder};
use schemas::inventory::{
    InventoryAlert, InventoryChangelog, InventoryCommand, InventoryEvent, InventorySnapshot,
    REMEMBERED_KEYS, RememberedKey, ReservationState,
};
use schemas::record::RecordUnion;
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::error::BadInput;
use crate::kafka;
use crate::runtime::{self, Batch, Handled, ReadChangelog, Rebuilt, Spec, Stats};
use crate::state::{ChangelogCache, Restored};
use crate::topics::inventory::*;

/// The inventory processor: the encoders of what it writes and the rule its low-stock
/// alerts follow.
pub struct Inventory {
    spec: Spec,
    events: Encoder<InventoryEvent>,
    changelog: Encoder<InventoryChangelog>,
    /// Per-line answers to saga commands, on the reply topic they name (keyed by saga id).
    replies: Encoder<InventoryEvent>,
    alerts: Encoder<InventoryAlert>,
    low_stock: LowStock,
}

/// One sku's state.
pub struct Entry {
    aggregate: SkuInventory,
    /// Offset of the last command applied to this sku (-1: none).
    last_offset: i64,
    /// Idempotency keys of the last keyed commands applied, oldest first, with their seq.
    keys: VecDeque<(i64, String)>,
}

impl Entry {
    fn new(sku: &str) -> Self {
        Entry {
            aggregate: SkuInventory::new(sku),
            last_offset: -1,
            keys: VecDeque::new(),
        }
    }

    /// Whether a command with idempotency key `key` was applied already.
    fn remembers(&self, key: &str) -> bool {
        self.keys.iter().any(|(_, k)| k == key)
    }

    /// Remembers `key`, forgetting the oldest past [`REMEMBERED_KEYS`]: its record.
    fn remember(&mut self, key: &str) -> RememberedKey {
        let seq = self.keys.back().map_or(0, |(seq, _)| seq + 1);
        self.keys.push_back((seq, key.to_owned()));
        if self.keys.len() > REMEMBERED_KEYS as usize {
            self.keys.pop_front();
        }
        RememberedKey {
            sku: self.aggregate.sku().to_owned(),
            key: key.to_owned(),
            seq,
            version: self.aggregate.version(),
        }
    }
}

/// How far ahead of the service's clock a command's time may be (clock skew between hosts).
pub const MAX_CLOCK_AHEAD_MS: i64 = 60 * 60 * 1000;

/// Runs the command processor until `stop`. Blocking: call from a dedicated thread.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<Stats> {
    let registry = Registry::new(&opts.cluster.registry);
    let mut inventory = Inventory {
        spec: spec(&opts.group),
        events: rt.block_on(Encoder::register(&registry, EVENTS))?,
        changelog: rt.block_on(Encoder::register(&registry, CHANGELOG))?,
        replies: rt.block_on(Encoder::register_where(&registry, RESERVATIONS, |name| {
            schemas::saga::expected_topic(name) == Some(RESERVATIONS)
        }))?,
        alerts: rt.block_on(Encoder::register(&registry, ALERTS))?,
        low_stock: LowStock {
            threshold: opts.low_stock_threshold,
        },
    };
    runtime::run(&mut inventory, &settings(opts), registry, rt, stop)
}

/// The processor's names and topics, from its entry in the service registry.
fn spec(group: &str) -> Spec {
    let declared = crate::registry::pipeline(GROUP).expect("inventory is in the registry");
    Spec {
        name: declared.name,
        group: group.to_owned(),
        service: crate::registry::service_of(declared.name),
        inputs: declared.reads,
        changelog: declared.changelog.expect("inventory keeps a changelog"),
        dlq: declared.dlq.expect("inventory has a dead-letter topic"),
        key_name: "the command's sku",
        key_rule: "commands must be keyed by sku",
    }
}

fn settings(opts: &Options) -> runtime::Settings {
    runtime::Settings {
        cluster: opts.cluster.clone(),
        instance: opts.instance.clone(),
        batch_size: opts.batch_size,
        state_dir: opts.state_dir.clone(),
        snapshot_every: opts.snapshot_every,
        hold_transactions: opts.hold_transactions,
    }
}

impl runtime::Processor for Inventory {
    type Input = InventoryCommand;
    type Changelog = InventoryChangelog;
    type Partition = HashMap<String, Entry>;

    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn route<'i>(&self, _topic: &str, command: &'i InventoryCommand) -> Result<&'i str, BadInput> {
        Ok(command.sku())
    }

    fn handle(
        &mut self,
        out: &mut Batch<'_>,
        skus: &mut Self::Partition,
        sku: &str,
        command: &InventoryCommand,
        message: &BorrowedMessage<'_>,
        now: i64,
    ) -> anyhow::Result<Handled> {
        let entry = skus
            .entry(sku.to_owned())
            .or_insert_with(|| Entry::new(sku));
        let offset = message.offset();
        if offset <= entry.last_offset {
            return Ok(Handled::Redelivery);
        }
        let key = match crate::topics::idempotency_key(message) {
            Ok(key) => key,
            Err(why) => return Ok(Handled::Invalid(why)),
        };
        if key.is_some_and(|key| entry.remembers(key)) {
            // A retry of a command applied already: its client did not hear back.
            return Ok(Handled::Redelivery);
        }
        // A time far ahead of this service's clock would move a sku's horizon (and so refuse
        // reservations) until the clock caught up: not a time a producer can mean.
        let at = command.metadata().occurred_at;
        if at > now.saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Ok(Handled::Invalid(format!(
                "{}: metadata.occurred_at {at} is more than {} s ahead of this service's clock ({now})",
                command.record_name(),
                MAX_CLOCK_AHEAD_MS / 1000
            )));
        }
        let produced = match entry.aggregate.handle(command) {
            Err(invalid) => return Ok(Handled::Invalid(invalid.to_string())),
            Ok(produced) => produced,
        };
        let mut forgotten = Vec::new();
        for event in &produced {
            // Available stock before and after, per position the event touches (at most
            // two: a transfer's); no allocation on this path.
            let mut touched: [Option<(&str, i64)>; 2] = [None, None];
            if self.low_stock.threshold > 0 {
                for_each_effect(event, |w, _| {
                    if touched.iter().flatten().any(|(t, _)| *t == w) {
                        return;
                    }
                    let before = entry.aggregate.position(w).available();
                    let slot = if touched[0].is_none() { 0 } else { 1 };
                    touched[slot] = Some((w, before));
                });
            }
            forgotten.extend(entry.aggregate.apply_forgetting(event));
            out.encode(&self.events, event)?;
            out.send(EVENTS, sku.as_bytes(), None)?;
            for (warehouse, before) in touched.into_iter().flatten() {
                let after = entry.aggregate.position(warehouse).available();
                if let Some(alert) = self.low_stock.check(event, warehouse, before, after) {
                    out.encode(&self.alerts, &alert.into())?;
                    out.send(ALERTS, sku.as_bytes(), None)?;
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
                    out.encode(&self.replies, event)?;
                    out.send(RESERVATIONS, saga.as_bytes(), None)?;
                }
            }
        }
        // Reservations go to the changelog as they change (keyed sku/id), so the per-sku
        // snapshot stays small however many a sku has seen.
        for change in reservation_changes(&produced) {
            let key = change.changelog_key();
            out.encode(&self.changelog, &change.into())?;
            out.changelog(key.as_bytes())?;
        }
        // Ids past the sku's horizon leave the changelog too (after this batch's records of
        // them, which a tombstone must follow to delete).
        for id in forgotten {
            out.forget(ReservationState::key_of(sku, &id).as_bytes())?;
        }
        if let Some(key) = key {
            let remembered = entry.remember(key);
            let changelog_key = remembered.changelog_key();
            out.encode(&self.changelog, &remembered.into())?;
            out.changelog(changelog_key.as_bytes())?;
        }
        entry.last_offset = offset;
        out.changed(sku);
        Ok(Handled::Applied {
            emitted: produced.len(),
        })
    }

    fn write_changelog(
        &mut self,
        out: &mut Batch<'_>,
        skus: &Self::Partition,
        sku: &str,
    ) -> anyhow::Result<()> {
        let entry = &skus[sku];
        let snapshot = entry.aggregate.snapshot(out.partition(), entry.last_offset);
        out.encode(&self.changelog, &snapshot.into())?;
        out.changelog(sku.as_bytes())
    }

    fn rebuild(
        &self,
        _p: i32,
        read: ReadChangelog<'_, InventoryChangelog>,
    ) -> anyhow::Result<Rebuilt<Self::Partition>> {
        rebuild_partition(read)
    }
}

/// The skus of a changelog partition from its records (the changelog read to its end,
/// read_committed, or a local snapshot and the changelog's tail): the last snapshot per sku
/// wins, with the reservation records it does not supersede.
fn rebuild_partition(
    read: ReadChangelog<'_, InventoryChangelog>,
) -> anyhow::Result<Rebuilt<HashMap<String, Entry>>> {
    let mut state = HashMap::new();
    // Records of a sku may come in any order (compaction keeps the latest per key).
    let mut latest: HashMap<String, InventorySnapshot> = HashMap::new();
    let mut reservations: HashMap<String, Vec<ReservationState>> = HashMap::new();
    // The latest record per slot (log order), as compaction keeps it.
    let mut keys: HashMap<String, HashMap<i64, RememberedKey>> = HashMap::new();
    read(&mut |read| {
        // Inventory keeps no meta records.
        let runtime::Read::Record { record, .. } = read else {
            return Ok(());
        };
        match record {
            InventoryChangelog::InventorySnapshot(s) => {
                latest.insert(s.sku.clone(), s);
            }
            InventoryChangelog::ReservationState(r) => {
                reservations.entry(r.sku.clone()).or_default().push(r)
            }
            InventoryChangelog::RememberedKey(k) => {
                let slot = k.seq.rem_euclid(REMEMBERED_KEYS);
                keys.entry(k.sku.clone()).or_default().insert(slot, k);
            }
        }
        Ok(())
    })?;
    // Reservation records without a snapshot, or newer than their sku's, belong to a batch
    // whose snapshot never landed (at-least-once only): its commands are redelivered.
    let orphans = reservations
        .iter()
        .map(|(sku, rs)| match latest.get(sku) {
            None => rs.len(),
            Some(s) => rs.iter().filter(|r| r.version > s.version).count(),
        })
        .sum();
    for (sku, snapshot) in latest {
        let aggregate =
            SkuInventory::restore(&snapshot, reservations.get(&sku).into_iter().flatten());
        // Keys of commands past the snapshot were not applied (at-least-once only): their
        // commands are redelivered and remembered again.
        let mut remembered: Vec<(i64, String)> = keys
            .remove(&sku)
            .into_iter()
            .flat_map(HashMap::into_values)
            .filter(|k| k.version <= snapshot.version)
            .map(|k| (k.seq, k.key))
            .collect();
        remembered.sort_unstable();
        state.insert(
            sku,
            Entry {
                aggregate,
                last_offset: snapshot.source_offset,
                keys: remembered.into(),
            },
        );
    }
    Ok(Rebuilt {
        keys: state.len(),
        state,
        orphans,
    })
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
        let restored = rebuild_partition(&mut |f| {
            let read = runtime::read_changelog(
                &mut cache,
                p,
                CHANGELOG,
                |payload| runtime::decode_changelog(rt, &mut decoder, payload),
                f,
            )?;
            read.complete(CHANGELOG, p)?;
            let read = read.restored;
            total.from_snapshot += read.from_snapshot;
            total.from_topic += read.from_topic;
            Ok(())
        })?;
        for (sku, entry) in restored.state {
            store.insert(sku, entry.aggregate);
        }
    }
    Ok((store, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sku_remembers_its_last_keys_and_so_does_its_restore() {
        let mut entry = Entry::new("S");
        let mut log: Vec<InventoryChangelog> = Vec::new();
        let total = REMEMBERED_KEYS + 6;
        for i in 0..total {
            log.push(entry.remember(&format!("k{i}")).into());
        }
        assert!(!entry.remembers("k5"), "the oldest keys are forgotten");
        assert!(entry.remembers("k6") && entry.remembers(&format!("k{}", total - 1)));
        assert_eq!(entry.keys.len(), REMEMBERED_KEYS as usize);
        // Slots wrap: the log (before compaction) holds every record, compaction one per slot.
        let keys: std::collections::BTreeSet<String> = log
            .iter()
            .map(|r| match r {
                InventoryChangelog::RememberedKey(k) => k.changelog_key(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(keys.len(), REMEMBERED_KEYS as usize);
        log.push(entry.aggregate.snapshot(0, 41).into());
        // A key past the snapshot (its batch's snapshot never landed: at-least-once only) is
        // not remembered, and the key whose slot it took is lost with it.
        let mut orphan = entry.clone_key("late");
        orphan.version = entry.aggregate.version() + 1;
        log.push(orphan.into());
        let rebuilt = rebuild_partition(&mut |f| {
            for record in log.clone() {
                f(runtime::Read::Record { record, at: 0 })?;
            }
            Ok(())
        })
        .unwrap();
        let restored = &rebuilt.state["S"];
        let mut kept = entry.keys.clone();
        kept.pop_front();
        assert_eq!(restored.keys, kept);
        assert!(!restored.remembers("late"));
        assert_eq!(restored.last_offset, 41);
    }

    impl Entry {
        fn clone_key(&self, key: &str) -> RememberedKey {
            RememberedKey {
                sku: self.aggregate.sku().to_owned(),
                key: key.to_owned(),
                seq: self.keys.back().map_or(0, |(s, _)| s + 1),
                version: self.aggregate.version(),
            }
        }
    }
}
