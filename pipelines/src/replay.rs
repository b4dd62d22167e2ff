//! Replay: rebuild a view from its topic between two positions (offsets or times), and the
//! consumer-group offset tools.
//!
//! A rebuild is written beside the live table (`<views>/.replay/<view>/`) and moved over it
//! with one rename once complete, so queries see the old table or the new one, never a
//! half-built one. With `--to`, the result is the view as of that moment (written to a
//! separate directory, not over the live view): that is how `query --as-of` answers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::inventory::InventoryEvent;
use sinks::stock_levels;
use tokio::runtime::Handle;

use crate::kafka::{self, TX_TIMEOUT};
use crate::{Cluster, Stop, wire};

/// A position in a topic, for every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Earliest,
    /// The same offset in every partition.
    Offset(i64),
    /// The first record at or after this time (ms since epoch).
    Time(i64),
    /// The current end.
    Latest,
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Position::Earliest),
            "latest" => Ok(Position::Latest),
            _ => {
                if let Ok(o) = s.parse::<i64>() {
                    return Ok(Position::Offset(o));
                }
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| Position::Time(t.timestamp_millis()))
                    .map_err(|e| {
                        format!(
                            "{s:?} is not earliest, latest, an offset or an RFC 3339 time ({e})"
                        )
                    })
            }
        }
    }
}

/// The offset of `position` in every partition of `topic`.
pub fn resolve(
    probe: &kafka::Probe,
    topic: &str,
    position: Position,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let n = kafka::partition_count(probe, topic)? as i32;
    let mut out = BTreeMap::new();
    match position {
        Position::Time(ms) => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
            }
            let found = probe
                .offsets_for_times(tpl, TX_TIMEOUT)
                .with_context(|| format!("looking up {topic} offsets at {ms} ms"))?;
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    // No record at or after the time: the end.
                    _ => kafka::watermarks(probe, topic, e.partition())?.1,
                };
                out.insert(e.partition(), offset);
            }
        }
        _ => {
            for p in 0..n {
                let (low, high) = kafka::watermarks(probe, topic, p)?;
                out.insert(
                    p,
                    match position {
                        Position::Earliest => low,
                        Position::Latest => high,
                        Position::Offset(o) => o.clamp(low, high),
                        Position::Time(_) => unreachable!(),
                    },
                );
            }
        }
    }
    Ok(out)
}

/// A progress bar of `total` offsets (events, rate, ETA), hidden unless `visible`.
pub fn progress_bar(total: u64, prefix: &str, visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} offsets  {per_sec}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Offsets between the low and high watermarks of every partition of `topic`.
pub fn topic_span(cluster: &Cluster, topic: &str) -> anyhow::Result<u64> {
    let probe = kafka::Probe::new(cluster)?;
    let mut total = 0;
    for p in 0..kafka::partition_count(&probe, topic)? as i32 {
        let (low, high) = kafka::watermarks(&probe, topic, p)?;
        total += (high - low).max(0) as u64;
    }
    Ok(total)
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub events: u64,
    pub table: PathBuf,
    pub to: BTreeMap<i32, i64>,
}

/// Views that can be replayed (and queried `--as-of`).
pub const REPLAYABLE: &[&str] = &[stock_levels::VIEW];

/// Rebuilds `view` from its topic between `from` and `to` (`Latest`: the end when the replay
/// starts). With `out`, writes `<out>/<view>/` and leaves the live view alone; otherwise
/// builds beside the live table under `views_dir` and swaps it in atomically.
#[allow(clippy::too_many_arguments)]
pub fn replay_view(
    cluster: &Cluster,
    rt: &Handle,
    views_dir: &Path,
    view: &str,
    from: Position,
    to: Position,
    out: Option<&Path>,
    progress: bool,
) -> anyhow::Result<Replayed> {
    if view != stock_levels::VIEW {
        bail!(
            "view {view:?} cannot be replayed (replayable: {REPLAYABLE:?}); any other view rebuilds from its topics when it starts without its table: stop its service, delete <views>/{view}/ (for sagas, both sagas/ and saga_steps/), start it"
        );
    }
    let topic = crate::topics::inventory::EVENTS;
    let probe = kafka::Probe::new(cluster)?;
    let start = resolve(&probe, topic, from)?;
    let end = resolve(&probe, topic, to)?;
    let total: i64 = end
        .iter()
        .map(|(p, e)| (e - start.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    let bar = progress_bar(total.max(0) as u64, &format!("replaying {view}"), progress);
    let bounds = crate::view::Bounds {
        start: BTreeMap::from([(topic.to_owned(), start.clone())]),
        end: BTreeMap::from([(topic.to_owned(), end.clone())]),
    };
    // The same loop the live view runs on, bounded; into a scratch directory unless `out`.
    let scratch = views_dir.join(".replay");
    let settings = crate::view::Settings {
        cluster: cluster.clone(),
        instance: "replay".to_owned(),
        views_dir: out.map_or_else(|| scratch.clone(), Path::to_path_buf),
        flush: Duration::MAX,
    };
    let registry = Registry::new(&cluster.registry);
    let stock_levels = || {
        crate::view::OneTopic::<crate::inventory::views::StockLevelsView>::new(
            Default::default(),
            registry.clone(),
        )
    };
    let events = crate::view::replay(stock_levels, &settings, rt, &bounds, &mut |at| {
        let reached: i64 = start
            .iter()
            .map(|(p, s)| {
                let at = at
                    .get(topic)
                    .and_then(|ps| ps.get(p))
                    .copied()
                    .unwrap_or(*s);
                (at.min(end[p]) - s).max(0)
            })
            .sum();
        bar.set_position(reached as u64);
    })?;
    bar.finish_and_clear();
    // `stock_levels` is kept per partition: one file per partition of its topic.
    let table = match out {
        Some(out) => out.join(view),
        None => {
            let rebuilt = scratch.join(view);
            let live = views_dir.join(view);
            std::fs::create_dir_all(&live)
                .with_context(|| format!("creating {}", live.display()))?;
            let mut files = BTreeSet::new();
            for p in end.keys() {
                let name = sinks::table::partition_file(*p);
                std::fs::rename(rebuilt.join(&name), live.join(&name))
                    .with_context(|| format!("swapping the rebuilt {view} ({name}) in"))?;
                files.insert(name);
            }
            // What the rebuilt files replace as a whole: a file kept whole, or one of a
            // partition the topic no longer has.
            sinks::table::remove_files(views_dir, view, |name| files.contains(name))?;
            let _cleared = std::fs::remove_dir_all(&scratch);
            live
        }
    };
    Ok(Replayed {
        events,
        table,
        to: end,
    })
}

/// A group's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    /// `None`: nothing committed yet.
    pub committed: Option<i64>,
    /// The high watermark.
    pub end: i64,
}

/// Committed offsets of `group` on `topics`, with the ends (lag = end − committed).
pub fn show_offsets(
    cluster: &Cluster,
    group: &str,
    topics: &[&str],
) -> anyhow::Result<Vec<GroupOffset>> {
    let consumer: BaseConsumer = kafka::consumer_config(cluster, group).create()?;
    let probe = kafka::Probe::new(cluster)?;
    let mut rows = Vec::new();
    for topic in topics {
        let ends = kafka::high_watermarks(&probe, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, TX_TIMEOUT)?;
        for (p, end) in ends {
            let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            rows.push(GroupOffset {
                topic: topic.to_string(),
                partition: p,
                committed: at,
                end,
            });
        }
    }
    Ok(rows)
}

/// Moves `group`'s committed offsets on `topic` to `to`. The group must have no active
/// member (Kafka refuses commits from outside a live group).
pub fn reset_offsets(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    to: Position,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = kafka::consumer_config(cluster, group).create()?;
    let offsets = resolve(&kafka::Probe::new(cluster)?, topic, to)?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .with_context(|| {
            format!(
                "resetting {group} on {topic}: is the group still running? stop its members first"
            )
        })?;
    Ok(offsets)
}

/// Every sku's aggregate folded from `inventory.events` alone: the event log is the source of
/// truth, the changelog a cache. Returns the aggregates and the number of events folded.
pub fn inventory_from_events(
    cluster: &Cluster,
    rt: &Handle,
) -> anyhow::Result<(
    std::collections::HashMap<String, processors::inventory::SkuInventory>,
    u64,
)> {
    let (partitions, events) = fold_inventory(cluster, rt, &indicatif::ProgressBar::hidden())?;
    Ok((partitions.into_values().flatten().collect(), events))
}

/// Inventory aggregates by partition (of `inventory.events`, which is the sku's partition of
/// the commands and the changelog too: all keyed by sku), folded from the event log.
pub type InventoryStores =
    BTreeMap<i32, std::collections::HashMap<String, processors::inventory::SkuInventory>>;

/// [`inventory_from_events`], keeping each sku's partition.
pub fn fold_inventory(
    cluster: &Cluster,
    rt: &Handle,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(InventoryStores, u64)> {
    use processors::Aggregate;
    let topic = crate::topics::inventory::EVENTS;
    let probe: BaseConsumer = kafka::client_config(cluster).create()?;
    let mut decoder = Decoder::<InventoryEvent>::new(Registry::new(&cluster.registry));
    let mut stores = InventoryStores::new();
    let mut events = 0u64;
    let stop = Stop::default();
    for p in 0..kafka::partition_count(&probe, topic)? as i32 {
        let aggregates = stores.entry(p).or_default();
        let mut folded_ids = std::collections::HashSet::new();
        kafka::read_partition_to_end(cluster, "supplystream-replay", topic, p, |m| {
            bar.inc(1);
            let event = wire::decode(rt, &mut decoder, m.payload().unwrap_or_default(), &stop)
                .with_context(|| format!("{topic}/{p}@{}", m.offset()))?;
            // Event ids are deterministic: an event written twice (at-least-once) is one.
            if !folded_ids.insert(event.metadata().event_id.clone()) {
                return Ok(());
            }
            let sku = event.sku().to_owned();
            aggregates
                .entry(sku.clone())
                .or_insert_with(|| processors::inventory::SkuInventory::new(&sku))
                .apply(&event);
            events += 1;
            Ok(())
        })?;
    }
    Ok((stores, events))
}

/// Writes inventory aggregates folded from the event log into `inventory.changelog` (a
/// snapshot and the reservation records per sku, on the sku's partition), in one
/// transaction on a real broker. Each snapshot covers the commands up to the group's
/// committed offset: the event log holds their effects (they committed together). The
/// inventory service must be stopped.
pub fn write_inventory_store(
    cluster: &Cluster,
    rt: &Handle,
    stores: &InventoryStores,
) -> anyhow::Result<usize> {
    use crate::topics::inventory::{CHANGELOG, COMMANDS, GROUP};
    use schemas::inventory::InventoryChangelog;
    kafka::ensure_group_stopped(cluster, GROUP)?;
    let partitions = stores.keys().max().map_or(1, |p| p + 1);
    rt.block_on(kafka::ensure_topics(
        cluster,
        &crate::inventory::topics(partitions),
    ))?;
    let committed: BTreeMap<i32, i64> = show_offsets(cluster, GROUP, &[COMMANDS])?
        .into_iter()
        .map(|o| (o.partition, o.committed.unwrap_or(0)))
        .collect();
    let registry = Registry::new(&cluster.registry);
    let encoder = rt.block_on(schemas::codec::Encoder::<InventoryChangelog>::register(
        &registry, CHANGELOG,
    ))?;
    let output = kafka::Output::new(cluster, GROUP, "rebuild")?;
    output.begin()?;
    let mut buf = Vec::new();
    let mut written = 0;
    for (p, aggregates) in stores {
        let source_offset = committed.get(p).copied().unwrap_or(0) - 1;
        for (sku, aggregate) in aggregates {
            for r in aggregate.reservation_records() {
                let key = r.changelog_key();
                encoder.encode_into(&r.into(), &mut buf)?;
                output.send(CHANGELOG, Some(*p), key.as_bytes(), &buf, None)?;
            }
            encoder.encode_into(&aggregate.snapshot(*p, source_offset).into(), &mut buf)?;
            output.send(CHANGELOG, Some(*p), sku.as_bytes(), &buf, None)?;
            written += 1;
        }
    }
    output.end()?;
    Ok(written)
}

/// Services whose state store can be rebuilt (or checked) from their own event log: the
/// registry's pipelines with a [`crate::registry::Rebuild`].
pub fn rebuildable() -> Vec<&'static str> {
    crate::registry::pipelines()
        .filter(|(_, p)| p.rebuild.is_some())
        .map(|(_, p)| p.name)
        .collect()
}

/// What a store replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReplay {
    pub service: String,
    pub events_topic: &'static str,
    pub events: u64,
    pub states: usize,
    /// `--check`: keys whose changelog state differs from the fold (empty: identical).
    pub differing: Option<Vec<String>>,
    /// Snapshots written into the changelog (a rebuild).
    pub written: usize,
    /// `--check` with a state directory: records the restore took from local snapshots.
    pub from_snapshot: usize,
    /// `--check`: ended sagas of the fold the store no longer holds, forgotten after their
    /// retention (not a difference).
    pub forgotten: usize,
}

/// Folds `service`'s event log from the beginning into its state store. With `check`,
/// compares the fold with what a restart would restore from the changelog (or, given
/// `state_dir`, from the service's local snapshots and the changelog's tail); otherwise
/// writes the fold into the changelog (the service must be stopped).
pub fn replay_store(
    cluster: &Cluster,
    rt: &Handle,
    service: &str,
    check: bool,
    progress: bool,
    state_dir: Option<&Path>,
) -> anyhow::Result<StoreReplay> {
    let Some(rebuild) = crate::registry::pipeline(service).and_then(|p| p.rebuild) else {
        bail!(
            "{service:?} has no rebuildable store (rebuildable: {:?})",
            rebuildable()
        );
    };
    let bar = progress_bar(
        topic_span(cluster, rebuild.events)?,
        &format!("folding {}", rebuild.events),
        progress,
    );
    (rebuild.run)(&Store {
        cluster,
        rt,
        service,
        check,
        bar: &bar,
        state_dir,
    })
}

/// What a store rebuild works on (see [`replay_store`]).
pub struct Store<'a> {
    pub cluster: &'a Cluster,
    pub rt: &'a Handle,
    pub service: &'a str,
    pub check: bool,
    pub bar: &'a indicatif::ProgressBar,
    pub state_dir: Option<&'a Path>,
}

/// Rebuilds (or checks) the store of an event-sourced participant.
pub fn saga_store<W: crate::saga::rebuild::EventSourced>(
    s: &Store<'_>,
) -> anyhow::Result<StoreReplay> {
    use crate::saga::rebuild;
    let (mut folded, stats) = rebuild::fold::<W>(s.cluster, s.rt, s.bar)?;
    s.bar.finish_and_clear();
    let mut out = StoreReplay {
        service: s.service.to_owned(),
        events_topic: W::EVENTS,
        events: stats.events,
        states: stats.states,
        differing: None,
        written: 0,
        from_snapshot: 0,
        forgotten: 0,
    };
    if s.check {
        let (restored, read) = rebuild::restore::<W>(s.cluster, s.rt, s.state_dir)?;
        out.from_snapshot = read.from_snapshot;
        out.forgotten = rebuild::drop_forgotten::<W>(&mut folded, &restored);
        out.differing = Some(
            rebuild::differences(&folded, &restored)
                .into_iter()
                .map(|(p, k)| format!("{k} (partition {p})"))
                .collect(),
        );
    } else {
        out.written = rebuild::write::<W>(s.cluster, s.rt, &folded)?;
    }
    Ok(out)
}

/// Rebuilds (or checks) the inventory service's per-sku store.
pub fn inventory_store(s: &Store<'_>) -> anyhow::Result<StoreReplay> {
    let (cluster, rt) = (s.cluster, s.rt);
    let (stores, events) = fold_inventory(cluster, rt, s.bar)?;
    s.bar.finish_and_clear();
    let mut out = StoreReplay {
        service: s.service.to_owned(),
        events_topic: crate::topics::inventory::EVENTS,
        events,
        states: stores.values().map(|s| s.len()).sum(),
        differing: None,
        written: 0,
        from_snapshot: 0,
        forgotten: 0,
    };
    if !s.check {
        out.written = write_inventory_store(cluster, rt, &stores)?;
        return Ok(out);
    }
    let folded: std::collections::HashMap<_, _> = stores.into_values().flatten().collect();
    let opts = crate::inventory::Options {
        state_dir: s.state_dir.map(Path::to_path_buf),
        ..crate::inventory::Options::new(cluster.clone(), PathBuf::from("."))
    };
    let (restored, read) = crate::inventory::service::restore_store(&opts, rt)?;
    out.from_snapshot = read.from_snapshot;
    let mut differing: Vec<String> = folded
        .keys()
        .chain(restored.keys())
        .filter(|k| folded.get(*k) != restored.get(*k))
        .cloned()
        .collect();
    differing.sort();
    differing.dedup();
    out.differing = Some(differing);
    Ok(out)
}
