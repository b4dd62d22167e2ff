//! The one view loop every read model runs on: read the view's topics from the positions
//! its tables were last written at (or their beginning), decode with the registered schemas,
//! fold, and every `flush` replace its Parquet tables with the view's rows and the consumer
//! positions reached, the view's checkpoint (for freshness, read-your-writes and resuming).
//!
//! - **One checkpoint format**: [`Positions`] (topic → partition → next offset to read) as
//!   JSON in every table's metadata. A view of several tables writes them in order with the
//!   same checkpoint; the last one written says they are all complete up to it.
//! - **Resuming**: a view whose fold state is its rows ([`View::RESUMES`]) starts from its
//!   tables when they can be read, carry the same checkpoint, and every position lies within
//!   its partition; otherwise (and for the other views, on every start) it rebuilds from the
//!   beginning of its topics.
//! - **Bad input**: an undecodable record is left out of the view; on a topic this view
//!   dead-letters ([`View::DLQ`]) it goes there with the reason in its headers, once:
//!   records below the stored checkpoint were handled by an earlier run, and the dead
//!   letters are delivered before the checkpoint that covers them is written (a crash in
//!   between can repeat one, with the same source coordinates in its headers). On the
//!   others it is reported.
//! - **A registry outage** holds the loop (decoding retries) rather than leaving a record
//!   out; a stop during one ends the loop with the tables as last written.
//!
//! [`TopicView`] is the short form for a view of one topic: a projection and a table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use processors::{Projection, Source};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::{DecodeError, Decoder};
use schemas::record::RecordUnion;
use sinks::SnapshotTable;
use sinks::table::Table;
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use crate::{Cluster, Stop, kafka, wire};

/// Positions per topic and partition: every view's checkpoint.
pub type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

/// How the loop runs: the options every view shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: Cluster,
    /// Identity of this process (the dead-letter producer's).
    pub instance: String,
    /// Where tables are written (`<views_dir>/<table>/part-0.parquet`).
    pub views_dir: PathBuf,
    /// How often a changed view is flushed.
    pub flush: Duration,
}

/// A read model: what it reads, how it folds a record, what its tables hold.
pub trait View {
    /// Its pipeline name (consumer group, for offsets tooling only: positions live in the
    /// checkpoint; the dead-letter producer's).
    const PIPELINE: &'static str;
    /// The topics it folds.
    const TOPICS: &'static [&'static str];
    /// The tables it writes, in the order they are written.
    const TABLES: &'static [&'static str];
    /// Where undecodable records go, with the service that owns it; `None` leaves them out
    /// with a warning.
    const DLQ: Option<(&'static str, &'static str)> = None;
    /// Whether the tables are the view's whole fold state, so that it can start from them
    /// ([`View::resume`]); `false` (the default): it rebuilds from the beginning of its
    /// topics on every start, and its tables are not read.
    const RESUMES: bool = false;
    /// Whether [`View::before_flush`] is given the topics' ends.
    const WANTS_ENDS: bool = false;
    /// How its tables are written: replaced whole with each flush (the default), or
    /// appended to by the view itself ([`View::open_appended`], [`View::append`]).
    const SINK: Sink = Sink::Replace;
    /// Whether a clean stop first reads on to the ends its topics had when the stop came
    /// (bounded: see [`Drain`]), so that what was written before a stop is in the view.
    const DRAIN_ON_STOP: bool = false;

    /// The partitions of each topic it reads, once assigned.
    fn assigned(&mut self, _partitions: &BTreeMap<&'static str, Vec<i32>>) {}

    /// Decodes and folds one record.
    fn fold(
        &mut self,
        rt: &Handle,
        stop: &Stop,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), DecodeError>;

    /// Before a flush: the positions reached and the topics' ends (empty unless
    /// [`View::WANTS_ENDS`]).
    fn before_flush(&mut self, _positions: &Positions, _ends: &Positions) {}

    /// The tables as they stand, one batch per table of [`View::TABLES`], in its order.
    fn batches(&self) -> anyhow::Result<Vec<RecordBatch>>;

    /// Takes the view back to `tables` (one entry per table of [`View::TABLES`]), its rows
    /// as an earlier run wrote them with the checkpoint the run then resumes from. Called
    /// only if [`View::RESUMES`]. On an error the view must be left as it was (it rebuilds).
    fn resume(&mut self, _tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
        Ok(())
    }

    /// [`Sink::Append`]: opens the view's own store under `views_dir` and takes back the
    /// state its last write carries; the positions it reflects (`None`: nothing written).
    fn open_appended(&mut self, _views_dir: &Path) -> anyhow::Result<Option<Positions>> {
        anyhow::bail!("{} does not append", Self::PIPELINE)
    }

    /// [`Sink::Append`]: writes what was folded since the last write, with `checkpoint`
    /// (nothing new: nothing to write).
    fn append(&mut self, _checkpoint: &Positions) -> anyhow::Result<()> {
        anyhow::bail!("{} does not append", Self::PIPELINE)
    }
}

/// How a view's tables are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Each flush replaces every table with the view's rows (`sinks::SnapshotTable`); the
    /// checkpoint is in each table's metadata.
    Replace,
    /// The view appends parts of its own (the audit trail), each with its checkpoint.
    Append,
}

/// A view of one topic: a [`Projection`] from `processors` written to a [`Table`] declared in
/// `sinks`. The loop decodes, the projection folds, the table converts.
pub trait TopicView {
    /// What the topic carries.
    type Event: RecordUnion;
    type Projection: Projection<Event = Self::Event>;
    type Table: Table<Row = <Self::Projection as Projection>::Row>;
    const TOPIC: &'static str;
    /// Its consumer group (see [`View::PIPELINE`]).
    const GROUP: &'static str;
    /// See [`View::DLQ`].
    const DLQ: Option<(&'static str, &'static str)> = None;
    /// Whether the projection is told which partitions are read to their end before each
    /// write (event-time windows: an idle partition does not hold the watermark back).
    const WANTS_ENDS: bool = false;
    /// `TOPIC` and the table as lists, for the service registry.
    const TOPICS: &'static [&'static str] = &[Self::TOPIC];
    const VIEWS: &'static [&'static str] = &[<Self::Table as Table>::NAME];
}

/// A [`TopicView`]'s projection with its decoder: a [`View`].
pub struct OneTopic<V: TopicView> {
    pub projection: V::Projection,
    decoder: Decoder<V::Event>,
}

impl<V: TopicView> OneTopic<V> {
    pub fn new(projection: V::Projection, registry: Registry) -> Self {
        OneTopic {
            projection,
            decoder: Decoder::new(registry),
        }
    }
}

impl<V: TopicView> View for OneTopic<V> {
    const PIPELINE: &'static str = V::GROUP;
    const TOPICS: &'static [&'static str] = V::TOPICS;
    const TABLES: &'static [&'static str] = V::VIEWS;
    const DLQ: Option<(&'static str, &'static str)> = V::DLQ;
    const RESUMES: bool = <V::Projection as Projection>::RESUMES;
    const WANTS_ENDS: bool = V::WANTS_ENDS;

    fn assigned(&mut self, partitions: &BTreeMap<&'static str, Vec<i32>>) {
        self.projection
            .assigned(partitions.get(V::TOPIC).map_or(&[][..], Vec::as_slice));
    }

    fn fold(
        &mut self,
        rt: &Handle,
        stop: &Stop,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), DecodeError> {
        let event = wire::decode(rt, &mut self.decoder, m.payload().unwrap_or_default(), stop)?;
        let at = Source {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
        };
        self.projection.apply(at, &event);
        Ok(())
    }

    fn before_flush(&mut self, positions: &Positions, ends: &Positions) {
        for (p, end) in ends.get(V::TOPIC).into_iter().flatten() {
            let reached = at(positions, V::TOPIC, *p).unwrap_or(0);
            self.projection.idle(*p, reached >= *end);
        }
    }

    fn batches(&self) -> anyhow::Result<Vec<RecordBatch>> {
        let rows = self.projection.rows();
        let rows: Vec<&_> = rows.iter().map(|r| r.as_ref()).collect();
        Ok(vec![V::Table::to_batch(&rows)?])
    }

    fn resume(&mut self, tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
        let rows = V::Table::from_batches(&tables[0])?;
        self.projection = V::Projection::restore(rows)
            .ok_or_else(|| anyhow::anyhow!("{} is rebuilt from its topic", V::Table::NAME))?;
        Ok(())
    }
}

/// Parses a stored checkpoint. Tables of a view of one topic written before every view
/// shared this format carry `{partition: position}`: read as that topic's positions.
pub fn parse_checkpoint(text: &str, topics: &[&str]) -> anyhow::Result<Positions> {
    match serde_json::from_str::<Positions>(text) {
        Ok(positions) => Ok(positions),
        Err(e) => match (topics, serde_json::from_str::<BTreeMap<i32, i64>>(text)) {
            ([topic], Ok(legacy)) => Ok(BTreeMap::from([((*topic).to_owned(), legacy)])),
            _ => Err(e).context("a checkpoint is topic → partition → position"),
        },
    }
}

/// The checkpoint of the view that writes table `table` (`None`: not written yet, or not a
/// table of a registered view). A view of several tables writes its last one last, so that
/// table's checkpoint holds for all. Reads the Parquet footer only, so polling it is cheap.
pub fn checkpoint(views_dir: &Path, table: &str) -> anyhow::Result<Option<Positions>> {
    let Some(pipeline) = crate::registry::pipeline_of_view(table) else {
        return Ok(None);
    };
    let last = pipeline.views.last().copied().unwrap_or(table);
    stored_positions(views_dir, last, pipeline.reads)
}

/// The checkpoint stored with `table` (of a view of `topics`), if any.
fn stored_positions(
    views_dir: &Path,
    table: &str,
    topics: &[&str],
) -> anyhow::Result<Option<Positions>> {
    Ok(match sinks::table::stored_checkpoint(views_dir, table)? {
        Some(text) if !text.is_empty() => {
            Some(parse_checkpoint(&text, topics).with_context(|| format!("{table} checkpoint"))?)
        }
        _ => None,
    })
}

/// Replaces every table of `view` with its rows and `checkpoint`, in order.
fn write_tables<V: View>(
    view: &V,
    tables: &[SnapshotTable],
    checkpoint: &Positions,
) -> anyhow::Result<()> {
    let text = serde_json::to_string(checkpoint)?;
    for (table, batch) in tables.iter().zip(view.batches()?) {
        table.replace(&batch, &text)?;
    }
    Ok(())
}

/// Writes `view` as its [`Sink`] says.
fn write<V: View>(
    view: &mut V,
    tables: &[SnapshotTable],
    checkpoint: &Positions,
) -> anyhow::Result<()> {
    match V::SINK {
        Sink::Replace => write_tables(view, tables, checkpoint),
        Sink::Append => view.append(checkpoint),
    }
}

/// A clean stop of a [`View::DRAIN_ON_STOP`] view: it reads on until every partition is read
/// to the end it had when the stop came (positions step over transaction markers, so they
/// reach it), or reading made no progress for [`QUIET`] (a partition held back by another
/// producer's open transaction: `read_committed` stops at its last stable offset, and a stop
/// does not wait for someone else's commit), or [`STOP_DRAIN`] passed. Stopping at the first
/// empty poll could leave the view a fetch behind the logs until the next start.
struct Drain {
    ends: Positions,
    deadline: Instant,
    last_progress: Instant,
    behind: i64,
}

/// Longest a clean stop goes on reading.
const STOP_DRAIN: Duration = Duration::from_secs(10);
/// No progress for this long during a stop: the rest is held back, not on its way.
const QUIET: Duration = Duration::from_secs(3);

impl Drain {
    /// The ends of `topics` to reach; none (stop at once) if they cannot be read (the broker
    /// is down: what is not read now is on the next start).
    fn new(probe: &kafka::Probe, topics: &[&str]) -> Self {
        let now = Instant::now();
        let mut ends = Positions::new();
        for topic in topics {
            match kafka::high_watermarks(probe, topic) {
                Ok(e) => {
                    ends.insert(topic.to_string(), e);
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "Stopping without reading on: the ends of the topics cannot be read.");
                    ends.clear();
                    break;
                }
            }
        }
        Drain {
            ends,
            deadline: now + STOP_DRAIN,
            last_progress: now,
            behind: i64::MAX,
        }
    }

    /// Whether to stop now, at `reached`, with or without records in the last poll (`got`).
    fn done(&mut self, reached: &Positions, got: bool) -> bool {
        let now = Instant::now();
        let behind: i64 = self
            .ends
            .iter()
            .flat_map(|(t, ends)| ends.iter().map(move |(p, end)| (t, *p, *end)))
            .map(|(t, p, end)| (end - at(reached, t, p).unwrap_or(0)).max(0))
            .sum();
        if got || behind < self.behind {
            self.last_progress = now;
        }
        self.behind = behind;
        let done = behind == 0 || now - self.last_progress >= QUIET || now >= self.deadline;
        if done && behind > 0 && now >= self.deadline {
            warn!(
                behind,
                "Stopped before reading everything written before the stop; the next start goes on from there."
            );
        }
        done
    }
}

/// Where a resumable view starts: its tables' checkpoint, if the view takes them back, they
/// carry the same checkpoint (a stop between two writes leaves them apart), it names only
/// topics the view reads, and every stored position lies within its partition. A topic
/// recreated shorter than a stored position, or truncated past it by retention, rebuilds
/// (from what the topic still holds: rows of records retention deleted are gone then); a
/// topic recreated and grown past every stored position is not detected (the same limit as
/// local snapshots: rebuild with `replay`). Partitions the checkpoint does not name start at
/// their beginning.
fn resume_from<V: View>(
    view: &mut V,
    tables: &[SnapshotTable],
    probe: &kafka::Probe,
    partitions: &BTreeMap<&'static str, Vec<i32>>,
) -> anyhow::Result<Option<Positions>> {
    if !V::RESUMES {
        return Ok(None);
    }
    let mut stored: Vec<Vec<RecordBatch>> = Vec::new();
    let mut checkpoint: Option<Positions> = None;
    for table in tables {
        let Some((batches, at)) = stored_table(table, V::TOPICS) else {
            return Ok(None);
        };
        if checkpoint.as_ref().is_some_and(|c| *c != at) {
            info!(
                view = table.view(),
                "Rebuilding: the view's tables were written at different positions."
            );
            return Ok(None);
        }
        checkpoint = Some(at);
        stored.push(batches);
    }
    let Some(checkpoint) = checkpoint else {
        return Ok(None);
    };
    // A one-topic view's rows came from its topic: a checkpoint without it cannot say where.
    if let [topic] = V::TOPICS
        && !checkpoint.contains_key(*topic)
    {
        info!(
            topic,
            "Rebuilding: the stored checkpoint has no position for the view's topic."
        );
        return Ok(None);
    }
    for (topic, positions) in &checkpoint {
        let Some(have) = partitions.get(topic.as_str()) else {
            info!(
                topic,
                "Rebuilding: the checkpoint names a topic the view does not read."
            );
            return Ok(None);
        };
        if !positions_hold(probe, topic, positions, have)? {
            return Ok(None);
        }
    }
    match view.resume(&stored) {
        Ok(()) => Ok(Some(checkpoint)),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Rebuilding: the tables cannot be taken back.");
            Ok(None)
        }
    }
}

/// `table`'s rows with the checkpoint stored with them, if there is a table and both can be
/// read; otherwise `None`, saying why when it is not just absent (the view rebuilds).
fn stored_table(table: &SnapshotTable, topics: &[&str]) -> Option<(Vec<RecordBatch>, Positions)> {
    let (batches, text) = match table.load() {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return None,
        Err(e) => {
            warn!(view = table.view(), error = %e, "Rebuilding: the table cannot be read.");
            return None;
        }
    };
    match parse_checkpoint(&text, topics) {
        Ok(stored) => Some((batches, stored)),
        Err(e) => {
            warn!(view = table.view(), error = %format!("{e:#}"), "Rebuilding: the table's checkpoint cannot be read.");
            None
        }
    }
}

/// Whether every stored position of `topic` (which has `partitions`) lies within its
/// partition, so that a view can resume from them; if not (a partition the topic lacks, a
/// position below its low or above its high watermark) it says why and the view rebuilds.
fn positions_hold(
    probe: &kafka::Probe,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
    partitions: &[i32],
) -> anyhow::Result<bool> {
    for (p, at) in positions {
        if !partitions.contains(p) {
            info!(
                topic,
                partition = p,
                "Rebuilding: the stored checkpoint names a partition the topic does not have."
            );
            return Ok(false);
        }
        let (low, high) = kafka::watermarks(probe, topic, *p)?;
        if *at < low || *at > high {
            info!(
                topic,
                partition = p,
                position = at,
                low,
                high,
                "Rebuilding: the stored position is outside the partition."
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs `view` until `stop`, flushing once more on the way out. Blocking.
pub fn run<V: View>(view: V, settings: &Settings, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    drive(view, settings, rt, stop, Mode::Live).map(|_| ())
}

/// A bounded run of a view: from `start` (partitions it does not name: their beginning) up
/// to, not including, `end`. Partitions `end` does not name are not read.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    pub start: Positions,
    pub end: Positions,
}

/// Rebuilds `view` from the records within `bounds` on the same loop a live view runs on,
/// and writes its tables under `settings.views_dir` once, with `bounds.end` as their
/// checkpoint (a live view resumes from there). Nothing is dead-lettered: the live view
/// did that, and a record that does not decode fails the replay, naming it. `progress` is
/// told the positions reached after every poll. Returns the records folded.
pub fn replay<V: View>(
    view: V,
    settings: &Settings,
    rt: &Handle,
    bounds: &Bounds,
    progress: &mut dyn FnMut(&Positions),
) -> anyhow::Result<u64> {
    drive(
        view,
        settings,
        rt,
        &Stop::default(),
        Mode::Bounded { bounds, progress },
    )
}

/// Longest a bounded run may take to reach its end (a bound past the topic's end never
/// does).
const REPLAY_LIMIT: Duration = Duration::from_secs(3600);

/// The position of `topic`/`p` in `positions`.
fn at(positions: &Positions, topic: &str, p: i32) -> Option<i64> {
    positions.get(topic).and_then(|ps| ps.get(&p)).copied()
}

enum Mode<'a> {
    /// Resume or rebuild, then follow the topics until stopped.
    Live,
    Bounded {
        bounds: &'a Bounds,
        progress: &'a mut dyn FnMut(&Positions),
    },
}

/// The loop of [`run`] and [`replay`].
fn drive<V: View>(
    mut view: V,
    settings: &Settings,
    rt: &Handle,
    stop: &Stop,
    mode: Mode<'_>,
) -> anyhow::Result<u64> {
    let (bounds, mut progress) = match mode {
        Mode::Live => (None, None),
        Mode::Bounded { bounds, progress } => (Some(bounds), Some(progress)),
    };
    // A bounded run's end of `topic`/`p` (0 where it names none: nothing to read).
    let end = |topic: &str, p: i32| bounds.map(|b| at(&b.end, topic, p).unwrap_or(0));
    let span = info_span!("view", name = V::PIPELINE);
    let _guard = span.enter();
    let tables = match V::SINK {
        Sink::Replace => V::TABLES
            .iter()
            .map(|t| SnapshotTable::open(&settings.views_dir, t))
            .collect::<Result<Vec<_>, _>>()?,
        Sink::Append => Vec::new(),
    };
    let consumer: BaseConsumer = kafka::consumer_config(&settings.cluster, V::PIPELINE).create()?;
    let probe = kafka::Probe::new(&settings.cluster)?;
    let mut partitions = BTreeMap::new();
    for &topic in V::TOPICS {
        let n = kafka::partition_count(&consumer, topic)? as i32;
        partitions.insert(topic, (0..n).collect::<Vec<i32>>());
    }
    let from = match (bounds, V::SINK) {
        (None, Sink::Replace) => resume_from(&mut view, &tables, &probe, &partitions)?,
        (None, Sink::Append) => view.open_appended(&settings.views_dir)?,
        (Some(b), _) => Some(b.start.clone()),
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, ps) in &partitions {
        for &p in ps {
            let start = from.as_ref().and_then(|f| at(f, topic, p));
            // A bounded run reads only partitions with records left below their end.
            if end(topic, p).is_some_and(|e| start.unwrap_or(0) >= e) {
                continue;
            }
            tpl.add_partition_offset(topic, p, start.map_or(Offset::Beginning, Offset::Offset))?;
        }
    }
    consumer.assign(&tpl)?;
    view.assigned(&partitions);
    // Where undecodable records go, and what an earlier run has already dead-lettered
    // (everything below its checkpoint). Dead letters are rare and need no transaction.
    let dead_letters = match (V::DLQ, bounds) {
        (Some((dlq, service)), None) => {
            let output = kafka::Output::new(
                &Cluster {
                    guarantee: crate::Guarantee::AtLeastOnce,
                    ..settings.cluster.clone()
                },
                V::PIPELINE,
                &settings.instance,
            )?;
            let last = V::TABLES.last().expect("a view writes a table");
            let handled =
                stored_positions(&settings.views_dir, last, V::TOPICS)?.unwrap_or_default();
            Some((output, dlq, service, handled))
        }
        _ => None,
    };
    let mut checkpoint = Positions::new();
    match (bounds, from) {
        (Some(b), _) => {
            info!(topics = ?V::TOPICS, end = ?b.end, "View replay started.")
        }
        (None, Some(positions)) => {
            info!(topics = ?V::TOPICS, ?positions, "View started (resuming from its tables).");
            checkpoint = positions;
        }
        (None, None) => info!(
            topics = ?V::TOPICS,
            "View started (rebuilding from the beginning of its topics)."
        ),
    }
    let started = Instant::now();
    let mut folded = 0u64;
    let mut dirty = true;
    let mut last_flush = Instant::now();
    let mut drain: Option<Drain> = None;
    loop {
        if V::DRAIN_ON_STOP && drain.is_none() && stop.is_stopped() {
            drain = Some(Drain::new(&probe, V::TOPICS));
        }
        let mut stopping = stop.is_stopped() && !V::DRAIN_ON_STOP;
        let batch = kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))?;
        let got = !batch.is_empty();
        for m in batch {
            if end(m.topic(), m.partition()).is_some_and(|e| m.offset() >= e) {
                continue;
            }
            match view.fold(rt, stop, &m) {
                Ok(()) => folded += 1,
                // Decoding waits out an outage unless stopped: the record is not folded,
                // so nothing folded since the last flush may be written.
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "Stopped while the registry is unavailable; the tables stay as last written.");
                    return Ok(folded);
                }
                Err(e) => match &dead_letters {
                    Some((out, dlq, service, handled)) => {
                        if m.offset() >= at(handled, m.topic(), m.partition()).unwrap_or(0) {
                            out.dead_letter(dlq, service, &m, e.kind(), &e.to_string())?;
                        }
                    }
                    None if bounds.is_some() => {
                        return Err(e).with_context(|| {
                            format!("{}/{}@{}", m.topic(), m.partition(), m.offset())
                        });
                    }
                    None => {
                        warn!(view = V::PIPELINE, topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e,
                            "Undecodable record left out of the view.")
                    }
                },
            }
            dirty = true;
        }
        dirty |= kafka::note_positions(&consumer, &mut checkpoint)?;
        if let Some(d) = &mut drain {
            stopping = d.done(&checkpoint, got);
        }
        if let (Some(bounds), Some(progress)) = (bounds, progress.as_mut()) {
            // Positions step over transaction markers: compare them, not last offsets.
            progress(&checkpoint);
            let reached = bounds.end.iter().all(|(topic, ends)| {
                ends.iter().all(|(p, e)| {
                    let from = at(&bounds.start, topic, *p).unwrap_or(0);
                    from >= *e || at(&checkpoint, topic, *p).unwrap_or(0) >= *e
                })
            });
            if !reached {
                anyhow::ensure!(
                    started.elapsed() < REPLAY_LIMIT,
                    "the replay did not reach {:?} within {REPLAY_LIMIT:?}",
                    bounds.end
                );
                continue;
            }
            checkpoint = bounds.end.clone();
            if V::WANTS_ENDS {
                view.before_flush(&checkpoint, &bounds.end);
            }
            write(&mut view, &tables, &checkpoint)?;
            return Ok(folded);
        }
        if dirty && (stopping || last_flush.elapsed() >= settings.flush) {
            if V::WANTS_ENDS {
                let mut ends = Positions::new();
                for &topic in V::TOPICS {
                    ends.insert(topic.to_owned(), kafka::high_watermarks(&probe, topic)?);
                }
                view.before_flush(&checkpoint, &ends);
            }
            if let Some((out, ..)) = &dead_letters {
                out.flush().context("dead letters not delivered")?;
            }
            write(&mut view, &tables, &checkpoint)?;
            dirty = false;
            last_flush = Instant::now();
        }
        if stopping {
            return Ok(folded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// A view of counts per key whose rows are its state.
    #[derive(Default)]
    struct Counts(BTreeMap<String, i64>);

    impl View for Counts {
        const PIPELINE: &'static str = "counts-view";
        const TOPICS: &'static [&'static str] = &["t"];
        const TABLES: &'static [&'static str] = &["counts"];
        const RESUMES: bool = true;

        fn fold(
            &mut self,
            _: &Handle,
            _: &Stop,
            _: &BorrowedMessage<'_>,
        ) -> Result<(), DecodeError> {
            Ok(())
        }

        fn batches(&self) -> anyhow::Result<Vec<RecordBatch>> {
            Ok(vec![self.batch()?])
        }

        fn resume(&mut self, tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
            let mut rows = BTreeMap::new();
            for b in &tables[0] {
                anyhow::ensure!(b.schema() == schema(), "another layout");
                let keys = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..b.num_rows() {
                    rows.insert(keys.value(i).to_owned(), n.value(i));
                }
            }
            self.0 = rows;
            Ok(())
        }
    }

    impl Counts {
        fn batch(&self) -> anyhow::Result<RecordBatch> {
            Ok(RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(self.0.keys())),
                    Arc::new(Int64Array::from_iter_values(self.0.values().copied())),
                ],
            )?)
        }
    }

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn parts() -> BTreeMap<&'static str, Vec<i32>> {
        BTreeMap::from([("t", vec![0])])
    }

    /// Needs no broker: every case here is decided before a watermark is asked for.
    fn consumer() -> kafka::Probe {
        kafka::Probe::new(&Cluster {
            brokers: "127.0.0.1:9".to_owned(),
            registry: String::new(),
            guarantee: crate::Guarantee::ExactlyOnce,
            kafka: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn a_bad_table_or_checkpoint_rebuilds_and_leaves_the_view_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let table = SnapshotTable::open(dir.path(), Counts::TABLES[0]).unwrap();
        let consumer = consumer();
        let start = || Counts(BTreeMap::from([("untouched".to_owned(), 1)]));

        // No table yet.
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            None
        );

        // A table that is not Parquet.
        std::fs::write(table.path(), b"not parquet").unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            None
        );
        assert_eq!(view.0, start().0);

        // A checkpoint that is not JSON.
        let good = Counts(BTreeMap::from([("a".to_owned(), 3)]));
        table.replace(&good.batch().unwrap(), "{not json").unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            None
        );
        assert_eq!(view.0, start().0);

        // A table of another layout: the view refuses it and stays as it was.
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        table.replace(&other, r#"{"t":{}}"#).unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            None
        );
        assert_eq!(view.0, start().0);

        // The good table with a checkpoint naming a partition the topic does not have.
        table
            .replace(&good.batch().unwrap(), r#"{"t":{"7":5}}"#)
            .unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            None
        );

        // A checkpoint without the view's topic cannot say where its rows came from.
        table.replace(&good.batch().unwrap(), "{}").unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            None
        );
        assert_eq!(view.0, start().0);

        // And with no position for its topic yet (none stored): taken back, nothing to seek.
        table
            .replace(&good.batch().unwrap(), r#"{"t":{}}"#)
            .unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, std::slice::from_ref(&table), &consumer, &parts()).unwrap(),
            Some(BTreeMap::from([("t".to_owned(), BTreeMap::new())]))
        );
        assert_eq!(view.0, good.0);
    }

    #[test]
    fn checkpoints_of_one_topic_views_written_before_the_shared_format_still_read() {
        let legacy = parse_checkpoint(r#"{"0":12,"2":5}"#, &["inventory.events"]).unwrap();
        assert_eq!(
            legacy,
            BTreeMap::from([(
                "inventory.events".to_owned(),
                BTreeMap::from([(0, 12), (2, 5)])
            )])
        );
        let shared = parse_checkpoint(r#"{"t":{"1":3}}"#, &["t"]).unwrap();
        assert_eq!(
            shared,
            BTreeMap::from([("t".to_owned(), BTreeMap::from([(1, 3)]))])
        );
        // Only a one-topic view can have written the legacy form.
        let err = parse_checkpoint(r#"{"0":12}"#, &["a", "b"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("topic → partition → position"),
            "{err:#}"
        );
    }

    /// Two tables whose count of rows is the view's state.
    #[derive(Default)]
    struct Pair(usize, usize);

    impl View for Pair {
        const PIPELINE: &'static str = "pair-view";
        const TOPICS: &'static [&'static str] = &["t"];
        const TABLES: &'static [&'static str] = &["first", "second"];
        const RESUMES: bool = true;

        fn fold(
            &mut self,
            _: &Handle,
            _: &Stop,
            _: &BorrowedMessage<'_>,
        ) -> Result<(), DecodeError> {
            Ok(())
        }

        fn batches(&self) -> anyhow::Result<Vec<RecordBatch>> {
            Ok(vec![rows(self.0), rows(self.1)])
        }

        fn resume(&mut self, tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
            let count = |t: &Vec<RecordBatch>| t.iter().map(|b| b.num_rows()).sum();
            *self = Pair(count(&tables[0]), count(&tables[1]));
            Ok(())
        }
    }

    fn rows(n: usize) -> RecordBatch {
        let keys: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(keys)),
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i as i64))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_view_of_several_tables_resumes_only_if_all_were_written_at_one_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let tables: Vec<SnapshotTable> = Pair::TABLES
            .iter()
            .map(|t| SnapshotTable::open(dir.path(), t).unwrap())
            .collect();
        let consumer = consumer();

        // Only the first written (a stop between the two writes).
        tables[0].replace(&rows(2), r#"{"t":{}}"#).unwrap();
        let mut view = Pair::default();
        assert_eq!(
            resume_from(&mut view, &tables, &consumer, &parts()).unwrap(),
            None
        );

        // Both, at different checkpoints.
        tables[1].replace(&rows(3), r#"{"u":{}}"#).unwrap();
        assert_eq!(
            resume_from(&mut view, &tables, &consumer, &parts()).unwrap(),
            None
        );
        assert_eq!((view.0, view.1), (0, 0));

        // Both at one checkpoint naming a topic the view does not read.
        tables[0].replace(&rows(2), r#"{"u":{}}"#).unwrap();
        assert_eq!(
            resume_from(&mut view, &tables, &consumer, &parts()).unwrap(),
            None
        );

        // Both at one checkpoint of its topic: taken back.
        tables[0].replace(&rows(2), r#"{"t":{}}"#).unwrap();
        tables[1].replace(&rows(3), r#"{"t":{}}"#).unwrap();
        assert!(
            resume_from(&mut view, &tables, &consumer, &parts())
                .unwrap()
                .is_some()
        );
        assert_eq!((view.0, view.1), (2, 3));
    }
}
