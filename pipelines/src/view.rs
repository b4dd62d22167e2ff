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
//!   beginning of its topics. A resumed view that is told the topics' ends
//!   ([`View::WANTS_ENDS`]) is told them before its first record, not only at its first
//!   flush.
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

use std::collections::{BTreeMap, BTreeSet};
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
use tracing::{debug, info, info_span, warn};

use crate::{Cluster, Stop, kafka, wire};

/// Positions per topic and partition: every view's checkpoint.
pub type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

/// How the loop runs: the options every view shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: Cluster,
    /// Identity of this process (the dead-letter producer's).
    pub instance: String,
    /// Where tables are written (`<views_dir>/<table>/part-0.parquet`, or
    /// `partition-<p>.parquet` per partition of a view kept per partition).
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
    /// Where undecodable records go, with the name its dead letters carry (`dlq.service`);
    /// a DLQ of the view's own service. Every view declares one (before, every view but two
    /// left such records out with a warning); `None` only for a view that records them
    /// itself (the audit trail's `<undecodable>` rows) and for tests.
    const DLQ: Option<(&'static str, &'static str)>;
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
    /// Whether the view is kept **per input partition**, so that it scales with its
    /// service: every process that runs it on one views directory joins one consumer group
    /// and materializes the partitions the group gives it, each into its own file of every
    /// table (`partition-<p>.parquet`), held under a lock per partition. The tables are the
    /// union of those files. Only for a view whose rows of partition `p` come from partition
    /// `p` of its topics alone (every topic keyed by the row's key, with one partition count),
    /// replaced whole ([`Sink::Replace`]); it does not read on at a stop
    /// ([`View::DRAIN_ON_STOP`]). `false` (the default): one process writes the whole view,
    /// the others stand by on its lock.
    const PER_PARTITION: bool = false;

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
    const DLQ: Option<(&'static str, &'static str)>;
    /// Whether the projection is told which partitions are read to their end before each
    /// write (event-time windows: an idle partition does not hold the watermark back).
    const WANTS_ENDS: bool = false;
    /// See [`View::PER_PARTITION`].
    const PER_PARTITION: bool = false;
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
    const PER_PARTITION: bool = V::PER_PARTITION;

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
/// table's checkpoint holds for all; a view kept per partition has one per partition file,
/// and the view's checkpoint is their union. Reads Parquet footers only, so polling it is
/// cheap.
pub fn checkpoint(views_dir: &Path, table: &str) -> anyhow::Result<Option<Positions>> {
    let Some(pipeline) = crate::registry::pipeline_of_view(table) else {
        return Ok(None);
    };
    let last = pipeline.views.last().copied().unwrap_or(table);
    stored_positions(views_dir, last, pipeline.reads)
}

/// The checkpoint stored with `table` (of a view of `topics`): the union of its files'
/// (the whole table's, or each partition's), if any.
fn stored_positions(
    views_dir: &Path,
    table: &str,
    topics: &[&str],
) -> anyhow::Result<Option<Positions>> {
    let mut union: Option<Positions> = None;
    for text in sinks::table::stored_checkpoints(views_dir, table)? {
        if text.is_empty() {
            continue;
        }
        let positions =
            parse_checkpoint(&text, topics).with_context(|| format!("{table} checkpoint"))?;
        merge(union.get_or_insert_with(Positions::new), &positions);
    }
    Ok(union)
}

/// Adds `from` to `into`; a partition in both keeps the further position.
fn merge(into: &mut Positions, from: &Positions) {
    for (topic, positions) in from {
        let have = into.entry(topic.clone()).or_default();
        for (p, at) in positions {
            let e = have.entry(*p).or_insert(*at);
            *e = (*e).max(*at);
        }
    }
}

/// The positions of partition `p` in `positions`.
fn only(positions: &Positions, p: i32) -> Positions {
    positions
        .iter()
        .filter_map(|(t, ps)| ps.get(&p).map(|at| (t.clone(), BTreeMap::from([(p, *at)]))))
        .collect()
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

/// Runs the view `make` makes until `stop`, flushing once more on the way out. Blocking.
///
/// A view kept whole is written by one process per views directory: another that runs it
/// on the same directory stands by on the view's lock and takes over when the writer
/// stops or dies. A view kept per partition ([`View::PER_PARTITION`]) shares its
/// partitions among them instead ([`drive_partitions`]). `make` makes an empty view: once
/// for a view kept whole, once per partition taken otherwise.
pub fn run<V: View>(
    mut make: impl FnMut() -> V,
    settings: &Settings,
    rt: &Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    if V::PER_PARTITION {
        return supervised(V::PIPELINE, stop, || {
            drive_partitions(&mut make, settings, rt, stop)
        });
    }
    let path = lock_path(&settings.views_dir, V::TABLES, WHOLE_LOCK)?;
    let Some(_lock) = stand_by(&path, V::PIPELINE, stop)? else {
        return Ok(());
    };
    supervised(V::PIPELINE, stop, || {
        let tables = whole_tables::<V>(&settings.views_dir)?;
        drive(make(), tables, None, settings, rt, stop, Mode::Live).map(|_| ())
    })
}

/// Runs one life of a live view again, after a backoff, when it ends with an external
/// error (a metadata request timed out across a broker bounce, a consumer broken by a
/// broker pause), as a restart of the process would: the view starts again from its tables.
/// Before, such an error ended the view's thread and the whole process exited, so one
/// timed-out request during a bounce took a service down (seen in the fault soak). Bad
/// input and internal errors still end it.
fn supervised(
    view: &str,
    stop: &Stop,
    mut life: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        let failed = match life() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if matches!(
            crate::error::domain(&failed),
            crate::error::Domain::Internal | crate::error::Domain::BadInput
        ) {
            return Err(failed);
        }
        failures += 1;
        let backoff = crate::error::backoff(failures);
        warn!(view, error = %format!("{failed:#}"), ?backoff, failures, "The view failed: starting again from its tables.");
        stop.sleep(backoff);
        if stop.is_stopped() {
            return Ok(());
        }
    }
}

/// A bounded run of a view: from `start` (partitions it does not name: their beginning) up
/// to, not including, `end`. Partitions `end` does not name are not read.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    pub start: Positions,
    pub end: Positions,
}

/// Rebuilds the view `make` makes from the records within `bounds` on the same loop a live
/// view runs on, and writes its tables under `settings.views_dir` once, with `bounds.end`
/// as their checkpoint (a live view resumes from there); a view kept per partition, one
/// partition after another, each file with its partition's part of `bounds.end`. Nothing
/// is dead-lettered: the live view did that, and a record that does not decode fails the
/// replay, naming it. `progress` is told the positions reached after every poll. Returns
/// the records folded.
pub fn replay<V: View>(
    mut make: impl FnMut() -> V,
    settings: &Settings,
    rt: &Handle,
    bounds: &Bounds,
    progress: &mut dyn FnMut(&Positions),
) -> anyhow::Result<u64> {
    let stop = Stop::default();
    if !V::PER_PARTITION {
        let tables = whole_tables::<V>(&settings.views_dir)?;
        let mode = Mode::Bounded { bounds, progress };
        return drive(make(), tables, None, settings, rt, &stop, mode);
    }
    let partitions: BTreeSet<i32> = bounds
        .end
        .values()
        .flat_map(|e| e.keys().copied())
        .collect();
    let mut done = Positions::new();
    let mut folded = 0;
    for p in partitions {
        let part = Bounds {
            start: only(&bounds.start, p),
            end: only(&bounds.end, p),
        };
        let tables = partition_tables::<V>(&settings.views_dir, p)?;
        let mut progress_of_part = |at: &Positions| {
            let mut all = done.clone();
            merge(&mut all, at);
            progress(&all);
        };
        let mode = Mode::Bounded {
            bounds: &part,
            progress: &mut progress_of_part,
        };
        folded += drive(make(), tables, Some(p), settings, rt, &stop, mode)?;
        merge(&mut done, &part.end);
    }
    Ok(folded)
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

/// The lock file of a view kept whole, in its first table's directory.
const WHOLE_LOCK: &str = ".writer.lock";

/// `<views_dir>/<first table>/<name>` (the directory made if missing).
fn lock_path(views_dir: &Path, tables: &[&str], name: &str) -> anyhow::Result<PathBuf> {
    let first = tables.first().context("a view writes a table")?;
    let dir = views_dir.join(first);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(name))
}

/// The lock at `path`, if no other writer holds it (held while the file stays open; the
/// kernel releases it when the process dies, however it dies).
fn try_lock(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// How often a view standing by tries its lock again.
const STAND_BY_RETRY: Duration = Duration::from_millis(500);

/// Takes the lock at `path`, standing by while another process holds it; `None` if
/// stopped first.
fn stand_by(path: &Path, view: &str, stop: &Stop) -> anyhow::Result<Option<std::fs::File>> {
    let mut told = false;
    loop {
        if let Some(lock) = try_lock(path)? {
            if told {
                info!(view, "Taking over the view: its writer is gone.");
            }
            return Ok(Some(lock));
        }
        if !told {
            info!(view, lock = %path.display(), "Standing by: another process writes this view into the same directory.");
            told = true;
        }
        stop.sleep(STAND_BY_RETRY);
        if stop.is_stopped() {
            return Ok(None);
        }
    }
}

/// The tables of a view kept whole.
fn whole_tables<V: View>(views_dir: &Path) -> anyhow::Result<Vec<SnapshotTable>> {
    Ok(match V::SINK {
        Sink::Replace => V::TABLES
            .iter()
            .map(|t| SnapshotTable::open(views_dir, t))
            .collect::<Result<Vec<_>, _>>()?,
        Sink::Append => Vec::new(),
    })
}

/// Partition `p`'s files of the tables of a view kept per partition.
fn partition_tables<V: View>(views_dir: &Path, p: i32) -> anyhow::Result<Vec<SnapshotTable>> {
    Ok(V::TABLES
        .iter()
        .map(|t| SnapshotTable::open_partition(views_dir, t, p))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The checkpoint stored with the last of `tables` (empty if none).
fn handled_below(tables: &[SnapshotTable], topics: &[&str]) -> anyhow::Result<Positions> {
    match tables
        .last()
        .map(SnapshotTable::checkpoint)
        .transpose()?
        .flatten()
    {
        Some(text) if !text.is_empty() => parse_checkpoint(&text, topics),
        _ => Ok(Positions::new()),
    }
}

/// Where a view's undecodable records go (rare: no transaction).
struct DeadLetters {
    output: kafka::Output,
    dlq: &'static str,
    service: &'static str,
}

impl DeadLetters {
    fn of<V: View>(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some((dlq, service)) = V::DLQ else {
            return Ok(None);
        };
        let cluster = Cluster {
            guarantee: crate::Guarantee::AtLeastOnce,
            ..settings.cluster.clone()
        };
        Ok(Some(DeadLetters {
            output: kafka::Output::new(&cluster, V::PIPELINE, &settings.instance)?,
            dlq,
            service,
        }))
    }
}

/// What folding one record came to.
enum Folded {
    /// Folded, dead-lettered or left out: the view moved on.
    On,
    /// Stopped during a registry outage: the record is not folded, so nothing folded since
    /// the last write may be written.
    Stopped,
}

/// Folds `m` into `view`. A record that does not decode goes to `dead_letters` unless an
/// earlier run sent it (below `handled`), fails a bounded run (naming it), or is reported.
fn fold_one<V: View>(
    view: &mut V,
    rt: &Handle,
    stop: &Stop,
    m: &BorrowedMessage<'_>,
    dead_letters: Option<&DeadLetters>,
    handled: &Positions,
    bounded: bool,
) -> anyhow::Result<Folded> {
    match view.fold(rt, stop, m) {
        Ok(()) => {}
        // Decoding waits out an outage unless stopped.
        Err(e) if e.is_transient() => {
            warn!(error = %e, "Stopped while the registry is unavailable; the tables stay as last written.");
            return Ok(Folded::Stopped);
        }
        Err(e) => match dead_letters {
            Some(d) if !bounded => {
                if m.offset() >= at(handled, m.topic(), m.partition()).unwrap_or(0) {
                    d.output
                        .dead_letter(d.dlq, d.service, m, e.kind(), &e.to_string())?;
                }
            }
            _ if bounded => {
                return Err(e)
                    .with_context(|| format!("{}/{}@{}", m.topic(), m.partition(), m.offset()));
            }
            _ => {
                warn!(view = V::PIPELINE, topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e,
                    "Undecodable record left out of the view.")
            }
        },
    }
    Ok(Folded::On)
}

/// The ends of `topics` (for [`View::before_flush`]), of partition `only` if given.
fn ends_of(probe: &kafka::Probe, topics: &[&str], only: Option<i32>) -> anyhow::Result<Positions> {
    let mut ends = Positions::new();
    for &topic in topics {
        let mut e = kafka::high_watermarks(probe, topic)?;
        if let Some(p) = only {
            e.retain(|q, _| *q == p);
        }
        ends.insert(topic.to_owned(), e);
    }
    Ok(ends)
}

/// The loop of [`run`] and [`replay`] for a view kept whole, or for partition `scope` of
/// one kept per partition (a bounded run), into `tables`.
fn drive<V: View>(
    mut view: V,
    tables: Vec<SnapshotTable>,
    scope: Option<i32>,
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
    let consumer: BaseConsumer = kafka::consumer_config(&settings.cluster, V::PIPELINE).create()?;
    let probe = kafka::Probe::new(&settings.cluster)?;
    let mut partitions = BTreeMap::new();
    for &topic in V::TOPICS {
        let n = kafka::partition_count(&consumer, topic)? as i32;
        let ps = match scope {
            Some(p) => vec![p],
            None => (0..n).collect::<Vec<i32>>(),
        };
        partitions.insert(topic, ps);
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
    // A view resumed from its tables is told the topics' ends before its first record: what
    // they stored of them (e.g. a partition read to its end, which then did not hold an
    // event-time watermark back) is from their write, not now. Before, a partition idle at
    // the write and with a backlog since let another partition's backlog, read first, carry
    // the watermark past its own events, which then counted as late.
    if V::WANTS_ENDS
        && bounds.is_none()
        && let Some(resumed) = &from
    {
        view.before_flush(resumed, &ends_of(&probe, V::TOPICS, scope)?);
    }
    // What an earlier run has already dead-lettered: everything below its checkpoint.
    let (dead_letters, handled) = match bounds {
        None => {
            let handled = match V::SINK {
                Sink::Replace => handled_below(&tables, V::TOPICS)?,
                Sink::Append => {
                    let last = V::TABLES.last().expect("a view writes a table");
                    stored_positions(&settings.views_dir, last, V::TOPICS)?.unwrap_or_default()
                }
            };
            (DeadLetters::of::<V>(settings)?, handled)
        }
        Some(_) => (None, Positions::new()),
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
            let dl = dead_letters.as_ref();
            match fold_one(&mut view, rt, stop, &m, dl, &handled, bounds.is_some())? {
                Folded::On => folded += 1,
                Folded::Stopped => return Ok(folded),
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
                view.before_flush(&checkpoint, &ends_of(&probe, V::TOPICS, scope)?);
            }
            if let Some(d) = &dead_letters {
                d.output.flush().context("dead letters not delivered")?;
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

/// One input partition's part of a view kept per partition, held by this process.
struct Part<V> {
    view: V,
    tables: Vec<SnapshotTable>,
    /// Positions of this partition of every topic the view has folded up to.
    checkpoint: Positions,
    /// Dead letters below these positions were sent by an earlier writer.
    handled: Positions,
    dirty: bool,
    /// The partition's lock: no other process writes its files while this is open.
    _lock: std::fs::File,
}

/// The lock file of partition `p` of a view kept per partition.
fn partition_lock(p: i32) -> String {
    format!(".partition-{p}.lock")
}

/// The id of the copy of the views under `views_dir`, made by its first writer and kept in
/// `<views_dir>/.views-id`: processes writing one directory share a view's partitions
/// (one group), while another directory (another copy of the views) is another group.
fn views_id(views_dir: &Path) -> anyhow::Result<String> {
    let path = views_dir.join(".views-id");
    let read = |path: &Path| -> anyhow::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    if let Some(id) = read(&path)? {
        return Ok(id);
    }
    std::fs::create_dir_all(views_dir)
        .with_context(|| format!("creating {}", views_dir.display()))?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = views_dir.join(format!(".views-id.{id}"));
    std::fs::write(&tmp, &id).with_context(|| format!("writing {}", tmp.display()))?;
    // A link is made whole or not at all, and never over another writer's.
    let linked = std::fs::hard_link(&tmp, &path);
    let _removed = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.with_context(|| format!("{} is empty", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("linking {}", path.display())),
    }
}

/// The consumer group of view `pipeline` kept per partition under `views_dir`.
pub fn partition_group(pipeline: &str, views_dir: &Path) -> anyhow::Result<String> {
    Ok(format!("{pipeline}.{}", views_id(views_dir)?))
}

/// Takes partition `p` of the view if no other process holds it: locks it, and resumes it
/// from its files (or rebuilds it from the beginning of its partitions); `None` if another
/// writer holds it still (it has not seen the rebalance yet, or is stopping).
fn take_part<V: View>(
    make: &mut dyn FnMut() -> V,
    settings: &Settings,
    probe: &kafka::Probe,
    p: i32,
) -> anyhow::Result<Option<Part<V>>> {
    let path = lock_path(&settings.views_dir, V::TABLES, &partition_lock(p))?;
    let Some(lock) = try_lock(&path)? else {
        return Ok(None);
    };
    let tables = partition_tables::<V>(&settings.views_dir, p)?;
    let mut view = make();
    let partitions: BTreeMap<&'static str, Vec<i32>> =
        V::TOPICS.iter().map(|t| (*t, vec![p])).collect();
    let from = resume_from(&mut view, &tables, probe, &partitions)?;
    view.assigned(&partitions);
    let handled = handled_below(&tables, V::TOPICS)?;
    info!(partition = p, resumed = ?from, "Partition taken.");
    Ok(Some(Part {
        view,
        tables,
        checkpoint: from.unwrap_or_default(),
        handled,
        dirty: true,
        _lock: lock,
    }))
}

/// Commits where partition `p` of the view stands (`checkpoint`; its beginning where that
/// names none): where a rewind takes it, and what lag tooling shows.
fn commit_part(
    consumer: &kafka::GroupConsumer,
    probe: &kafka::Probe,
    topics: &[&str],
    p: i32,
    checkpoint: &Positions,
    mode: rdkafka::consumer::CommitMode,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let offset = match at(checkpoint, topic, p) {
            Some(o) => o,
            None => kafka::watermarks(probe, topic, p)?.0,
        };
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))?;
    }
    consumer.commit(&tpl, mode)?;
    Ok(())
}

/// Writes `part` if it changed (dead letters first: they are delivered before the
/// checkpoint that covers them).
fn write_part<V: View>(
    part: &mut Part<V>,
    p: i32,
    probe: &kafka::Probe,
    dead_letters: Option<&DeadLetters>,
) -> anyhow::Result<()> {
    if !part.dirty {
        return Ok(());
    }
    if V::WANTS_ENDS {
        part.view
            .before_flush(&part.checkpoint, &ends_of(probe, V::TOPICS, Some(p))?);
    }
    if let Some(d) = dead_letters {
        d.output.flush().context("dead letters not delivered")?;
    }
    write(&mut part.view, &part.tables, &part.checkpoint)?;
    part.dirty = false;
    Ok(())
}

/// How long a partition may wait for its previous writer's lock before it is reported.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// The live loop of a view kept per partition ([`View::PER_PARTITION`]): a member of the
/// views directory's group ([`partition_group`], range assignment: partition `p` of every
/// topic on one member) that holds state and files per partition.
///
/// - **Assigned**: the partition is taken once its lock is free (the previous writer
///   writes its files and lets go when it sees the rebalance; a killed one's lock goes
///   with it), resumed from its files, its checkpoint committed and the consumer rewound
///   there; its records are dropped until then.
/// - **Revoked**: its files are written with what was folded, and the lock let go.
/// - Every `flush`, each changed partition's files are replaced, and its positions
///   committed (for lag tooling: the files' checkpoints are what counts).
fn drive_partitions<V: View>(
    make: &mut dyn FnMut() -> V,
    settings: &Settings,
    rt: &Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        V::SINK == Sink::Replace && !V::DRAIN_ON_STOP,
        "{}: a view kept per partition replaces its tables and does not read on at a stop",
        V::PIPELINE
    );
    let span = info_span!("view", name = V::PIPELINE);
    let _guard = span.enter();
    let group = partition_group(V::PIPELINE, &settings.views_dir)?;
    let mut config = kafka::consumer_config(&settings.cluster, &group);
    config.set("partition.assignment.strategy", "range");
    let consumer: kafka::GroupConsumer = config.create_with_context(kafka::Membership::default())?;
    let probe = kafka::Probe::new(&settings.cluster)?;
    // A table kept whole before would count every row twice beside the partitions' files.
    for table in V::TABLES {
        let gone = sinks::table::remove_files(&settings.views_dir, table, |name| {
            name.starts_with("partition-")
        })?;
        if gone > 0 {
            info!(
                table,
                "Removed the whole table's file: the view is kept per partition now."
            );
        }
    }
    consumer.subscribe(V::TOPICS)?;
    let dead_letters = DeadLetters::of::<V>(settings)?;
    info!(topics = ?V::TOPICS, group = %group, "View started (per partition: those its group assigns here).");
    let mut owned = BTreeSet::new();
    let mut parts: BTreeMap<i32, Part<V>> = BTreeMap::new();
    let mut waiting: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut last_flush = Instant::now();
    let mut follow = || -> anyhow::Result<()> {
        loop {
            let stopping = stop.is_stopped();
            let (batch, changes) = kafka::poll_member_batch(
                &consumer,
                &mut owned,
                10_000,
                Duration::from_millis(100),
            )?;
            for p in &changes.revoked {
                waiting.remove(p);
                if let Some(mut part) = parts.remove(p) {
                    write_part(&mut part, *p, &probe, dead_letters.as_ref())?;
                    info!(partition = p, "Partition handed over.");
                }
            }
            let mut outage = false;
            for m in batch {
                let Some(part) = parts.get_mut(&m.partition()) else {
                    continue; // not taken yet: read again after the rewind
                };
                let dl = dead_letters.as_ref();
                match fold_one(&mut part.view, rt, stop, &m, dl, &part.handled, false)? {
                    Folded::On => part.dirty = true,
                    Folded::Stopped => {
                        outage = true;
                        break;
                    }
                }
            }
            if outage {
                return Ok(());
            }
            for e in consumer.position()?.elements() {
                let p = e.partition();
                let (Some(part), Offset::Offset(o)) = (parts.get_mut(&p), e.offset()) else {
                    continue;
                };
                if consumer.context().settled(p) {
                    let have = part.checkpoint.entry(e.topic().to_owned()).or_default();
                    part.dirty |= have.insert(p, o) != Some(o);
                }
            }
            let now = Instant::now();
            for &p in &changes.assigned {
                waiting.entry(p).or_insert(now);
            }
            for (p, since) in waiting.clone() {
                let Some(part) = take_part(make, settings, &probe, p)? else {
                    if since.elapsed() >= LOCK_PATIENCE {
                        warn!(
                            partition = p,
                            "Another process still holds this partition's lock; waiting for it."
                        );
                        waiting.insert(p, Instant::now());
                    }
                    continue;
                };
                let sync = rdkafka::consumer::CommitMode::Sync;
                match commit_part(&consumer, &probe, V::TOPICS, p, &part.checkpoint, sync) {
                    Ok(()) => {
                        consumer.context().rewind(p);
                        parts.insert(p, part);
                        waiting.remove(&p);
                    }
                    // A rebalance under way: it says next what becomes of the partition.
                    Err(e) => {
                        warn!(partition = p, error = %format!("{e:#}"), "Could not commit the partition's start; trying again.")
                    }
                }
            }
            if stopping || last_flush.elapsed() >= settings.flush {
                for (p, part) in &mut parts {
                    if !part.dirty {
                        continue;
                    }
                    write_part(part, *p, &probe, dead_letters.as_ref())?;
                    let lazy = rdkafka::consumer::CommitMode::Async;
                    if let Err(e) =
                        commit_part(&consumer, &probe, V::TOPICS, *p, &part.checkpoint, lazy)
                    {
                        debug!(partition = p, error = %format!("{e:#}"), "Positions not committed.");
                    }
                }
                last_flush = Instant::now();
            }
            if stopping {
                return Ok(());
            }
        }
    };
    let result = follow();
    // Served here, not in the consumer's drop (see `kafka::leave`); the locks go after.
    kafka::leave(&consumer);
    drop(parts);
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_view_that_fails_on_the_broker_starts_again_and_one_that_fails_inside_stops() {
        let stop = Stop::default();
        let mut lives = 0;
        let ended = supervised("v", &stop, || {
            lives += 1;
            match lives {
                1 => Err(anyhow::anyhow!("Meta data fetch error: OperationTimedOut")),
                _ => Ok(()),
            }
        });
        assert!(ended.is_ok());
        assert_eq!(lives, 2, "started again after the external error");
        let internal = supervised("v", &stop, || {
            Err(crate::error::Internal("a bug".into()).into())
        });
        assert!(internal.is_err(), "an internal error is not retried");
    }

    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// A view of counts per key whose rows are its state.
    #[derive(Default)]
    struct Counts(BTreeMap<String, i64>);

    impl View for Counts {
        const PIPELINE: &'static str = "counts-view";
        const DLQ: Option<(&'static str, &'static str)> = None;
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
        const DLQ: Option<(&'static str, &'static str)> = None;
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

    #[test]
    fn one_writer_holds_a_view_or_a_partition_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let one = lock_path(dir.path(), Counts::TABLES, &partition_lock(1)).unwrap();
        let two = lock_path(dir.path(), Counts::TABLES, &partition_lock(2)).unwrap();
        let held = try_lock(&one).unwrap().expect("nobody holds partition 1");
        assert!(
            try_lock(&one).unwrap().is_none(),
            "a second writer took partition 1"
        );
        assert!(try_lock(&two).unwrap().is_some(), "partition 2 is free");
        drop(held);
        assert!(
            try_lock(&one).unwrap().is_some(),
            "partition 1 is free again once its writer let go"
        );

        // A view kept whole: a second process stands by until stopped.
        let whole = lock_path(dir.path(), Counts::TABLES, WHOLE_LOCK).unwrap();
        let _writer = try_lock(&whole).unwrap().expect("free");
        let stop = Stop::default();
        let waiting = {
            let (whole, stop) = (whole.clone(), stop.clone());
            std::thread::spawn(move || stand_by(&whole, "counts", &stop).map(|l| l.is_some()))
        };
        std::thread::sleep(Duration::from_millis(700));
        assert!(!waiting.is_finished(), "took a lock another writer holds");
        stop.stop();
        assert!(!waiting.join().unwrap().unwrap(), "stopped, not locked");
    }

    #[test]
    fn processes_share_a_view_s_partitions_per_views_directory() {
        let dir = tempfile::tempdir().unwrap();
        let group = partition_group("counts-view", dir.path()).unwrap();
        assert_eq!(group, partition_group("counts-view", dir.path()).unwrap());
        let other = tempfile::tempdir().unwrap();
        assert_ne!(group, partition_group("counts-view", other.path()).unwrap());
    }

    #[test]
    fn the_checkpoint_of_a_view_kept_per_partition_is_the_union_of_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let rows = Counts::default().batch().unwrap();
        for (p, text) in [(0, r#"{"t":{"0":5}}"#), (2, r#"{"t":{"2":9}}"#)] {
            SnapshotTable::open_partition(dir.path(), "counts", p)
                .unwrap()
                .replace(&rows, text)
                .unwrap();
        }
        // Not a file of the table (a COPY's output, say): not read.
        SnapshotTable::open(dir.path(), "counts")
            .unwrap()
            .replace(&rows, "")
            .unwrap();
        std::fs::rename(
            dir.path().join("counts/part-0.parquet"),
            dir.path().join("counts/copied.parquet"),
        )
        .unwrap();
        assert_eq!(
            stored_positions(dir.path(), "counts", &["t"]).unwrap(),
            Some(BTreeMap::from([(
                "t".to_owned(),
                BTreeMap::from([(0, 5), (2, 9)])
            )]))
        );
        assert_eq!(stored_positions(dir.path(), "none", &["t"]).unwrap(), None);
    }
}
