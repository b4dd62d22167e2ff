//! The loop every single-topic snapshot view shares (`ledger`, `products`,
//! `orders_per_minute`, …): read the topic, decode with the registered schemas, fold each
//! event, and every `view_flush` replace the Parquet table with the view's rows and the
//! consumer positions (its checkpoint, for freshness and read-your-writes). A view whose fold
//! state is its rows ([`TopicView::resume`]: ledger, products, purchase orders, shipments) starts from its table and that
//! checkpoint; the others rebuild from the beginning of the topic on every start.
//! A registry outage stops the view (it restarts, and resumes or rebuilds). An undecodable record is left
//! out of the view; on a topic this service's own code writes it is reported (a bug to see;
//! the audit trail records it too), on a topic outside producers write ([`TopicView::DLQ`]) it
//! is dead-lettered with the reason in its headers, once: records below the stored checkpoint
//! were handled by an earlier run, and the dead letters are delivered before the checkpoint
//! that covers them is written (a crash in between can repeat one, with the same source
//! coordinates in its headers).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::record::RecordUnion;
use sinks::SnapshotTable;
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use super::Options;
use crate::{Stop, kafka, wire};

/// Positions per topic and partition (the shape every view checkpoint has).
pub type Checkpoint = crate::freshness::Positions;

/// One view over one topic.
pub trait TopicView {
    /// What the topic carries.
    type Event: RecordUnion;
    const VIEW: &'static str;
    const TOPIC: &'static str;
    /// Its consumer group (for offsets tooling only: positions live in the checkpoint).
    const GROUP: &'static str;
    /// `TOPIC` and `VIEW` as lists, for the service registry.
    const TOPICS: &'static [&'static str] = &[Self::TOPIC];
    const VIEWS: &'static [&'static str] = &[Self::VIEW];

    /// The partitions it reads, once assigned.
    fn assigned(&mut self, _partitions: &[i32]) {}

    /// Folds one event read at `offset` of `partition`.
    fn fold(&mut self, partition: i32, offset: i64, event: Self::Event);

    /// Before a flush: the positions reached and the topic's ends (fetched only when
    /// [`TopicView::WANTS_ENDS`]).
    fn before_flush(&mut self, _positions: &BTreeMap<i32, i64>, _ends: &BTreeMap<i32, i64>) {}
    const WANTS_ENDS: bool = false;

    /// The table as it stands.
    fn batch(&self) -> anyhow::Result<RecordBatch>;

    /// Where undecodable records go, with the service that owns it: set for topics outside
    /// producers write (`external_events`); `None` leaves them out with a warning.
    const DLQ: Option<(&'static str, &'static str)> = None;

    /// Whether the view's rows are its whole fold state, so that it can start from its table
    /// ([`TopicView::resume`]); `false` (the default): it rebuilds from the beginning of its
    /// topic on every start, and its table is not read.
    const RESUMES: bool = false;

    /// Takes the view back to `table`, its rows as an earlier run wrote them with the
    /// checkpoint the run then resumes from. Called only if [`TopicView::RESUMES`]. On an
    /// error the view must be left as it was (it rebuilds).
    fn resume(&mut self, _table: &[RecordBatch]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where a resumable view starts: its table's checkpoint, if the view takes the table back
/// and every stored position lies within its partition. A topic recreated shorter than a
/// stored position, or truncated past it by retention, rebuilds (from what the topic still
/// holds: rows of records retention deleted are gone then); a topic recreated and grown past
/// every stored position is not detected (the same limit as local snapshots: rebuild with
/// `replay`). Partitions the checkpoint does not name start at their beginning.
fn resume_from<V: TopicView>(
    view: &mut V,
    table: &SnapshotTable,
    probe: &kafka::Probe,
    partitions: &[i32],
) -> anyhow::Result<Option<BTreeMap<i32, i64>>> {
    if !V::RESUMES {
        return Ok(None);
    }
    let Some((batches, stored)) = stored_table(table) else {
        return Ok(None);
    };
    let Some(positions) = stored.get(V::TOPIC).cloned() else {
        return Ok(None);
    };
    if !positions_hold(probe, V::TOPIC, &positions, partitions)? {
        return Ok(None);
    }
    match view.resume(&batches) {
        Ok(()) => Ok(Some(positions)),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Rebuilding: the table cannot be taken back.");
            Ok(None)
        }
    }
}

/// `table`'s rows with the checkpoint stored with them, if there is a table and both can be
/// read; otherwise `None`, saying why when it is not just absent (the view rebuilds).
pub(super) fn stored_table(table: &SnapshotTable) -> Option<(Vec<RecordBatch>, Checkpoint)> {
    let (batches, text) = match table.load() {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return None,
        Err(e) => {
            warn!(view = table.view(), error = %e, "Rebuilding: the table cannot be read.");
            return None;
        }
    };
    match serde_json::from_str::<Checkpoint>(&text) {
        Ok(stored) => Some((batches, stored)),
        Err(e) => {
            warn!(view = table.view(), error = %e, "Rebuilding: the table's checkpoint cannot be read.");
            None
        }
    }
}

/// Whether every stored position of `topic` (which has `partitions`) lies within its
/// partition, so that a view can resume from them; if not (a partition the topic lacks, a
/// position below its low or above its high watermark) it says why and the view rebuilds.
pub(super) fn positions_hold(
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
pub fn run<V: TopicView>(
    mut view: V,
    opts: &Options,
    rt: &Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    let span = info_span!("view", name = V::VIEW);
    let _guard = span.enter();
    let table = SnapshotTable::open(&opts.views_dir, V::VIEW)?;
    let mut decoder = Decoder::<V::Event>::new(Registry::new(&opts.cluster.registry));
    let consumer: BaseConsumer = kafka::consumer_config(&opts.cluster, V::GROUP).create()?;
    let probe = kafka::Probe::new(&opts.cluster)?;
    let partitions: Vec<i32> = (0..kafka::partition_count(&consumer, V::TOPIC)? as i32).collect();
    let resumed = resume_from(&mut view, &table, &probe, &partitions)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let at = resumed.as_ref().and_then(|r| r.get(p));
        tpl.add_partition_offset(
            V::TOPIC,
            *p,
            at.map_or(Offset::Beginning, |o| Offset::Offset(*o)),
        )?;
    }
    consumer.assign(&tpl)?;
    view.assigned(&partitions);
    // For a topic outsiders write: where undecodable records go, and what an earlier run
    // has already dead-lettered (everything below its checkpoint).
    let dead_letters = match V::DLQ {
        None => None,
        Some((dlq, service)) => {
            let output = kafka::Output::new(
                &crate::Cluster {
                    guarantee: crate::Guarantee::AtLeastOnce,
                    ..opts.cluster.clone()
                },
                V::GROUP,
                &opts.instance,
            )?;
            let handled: BTreeMap<i32, i64> =
                crate::freshness::stored::<Checkpoint>(&opts.views_dir, V::VIEW)?
                    .and_then(|mut c| c.remove(V::TOPIC))
                    .unwrap_or_default();
            Some((output, dlq, service, handled))
        }
    };
    let mut checkpoint = Checkpoint::new();
    let mut dirty = true;
    let mut last_flush = Instant::now();
    match resumed {
        Some(positions) => {
            info!(
                topic = V::TOPIC,
                ?positions,
                "View started (resuming from its table)."
            );
            checkpoint.insert(V::TOPIC.to_owned(), positions);
        }
        None => info!(
            topic = V::TOPIC,
            "View started (rebuilding from the beginning of its topic)."
        ),
    }
    loop {
        let stopping = stop.is_stopped();
        for m in kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))? {
            match wire::decode(rt, &mut decoder, m.payload().unwrap_or_default(), stop) {
                Ok(event) => view.fold(m.partition(), m.offset(), event),
                Err(e) if e.is_transient() => return Err(e).context("registry unavailable"),
                Err(e) => match &dead_letters {
                    Some((out, dlq, service, handled)) => {
                        if m.offset() >= handled.get(&m.partition()).copied().unwrap_or(0) {
                            out.dead_letter(dlq, service, &m, e.kind(), &e.to_string())?;
                        }
                    }
                    None => {
                        warn!(view = V::VIEW, partition = m.partition(), offset = m.offset(), error = %e,
                    "Undecodable event left out of the view.")
                    }
                },
            }
            dirty = true;
        }
        dirty |= kafka::note_positions(&consumer, &mut checkpoint)?;
        if dirty && (stopping || last_flush.elapsed() >= opts.view_flush) {
            if V::WANTS_ENDS {
                let ends = kafka::high_watermarks(&probe, V::TOPIC)?;
                let positions = checkpoint.get(V::TOPIC).cloned().unwrap_or_default();
                view.before_flush(&positions, &ends);
            }
            if let Some((out, ..)) = &dead_letters {
                out.flush().context("dead letters not delivered")?;
            }
            table.replace(&view.batch()?, &serde_json::to_string(&checkpoint)?)?;
            dirty = false;
            last_flush = Instant::now();
        }
        if stopping {
            return Ok(());
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

    impl TopicView for Counts {
        type Event = schemas::billing::BillingEvent;
        const VIEW: &'static str = "counts";
        const TOPIC: &'static str = "t";
        const GROUP: &'static str = "counts-view";
        const RESUMES: bool = true;

        fn fold(&mut self, _: i32, _: i64, _: Self::Event) {}

        fn batch(&self) -> anyhow::Result<RecordBatch> {
            Ok(RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(self.0.keys())),
                    Arc::new(Int64Array::from_iter_values(self.0.values().copied())),
                ],
            )?)
        }

        fn resume(&mut self, table: &[RecordBatch]) -> anyhow::Result<()> {
            let mut rows = BTreeMap::new();
            for b in table {
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

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    /// Needs no broker: every case here is decided before a watermark is asked for.
    fn consumer() -> kafka::Probe {
        kafka::Probe::new(&crate::Cluster {
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
        let table = SnapshotTable::open(dir.path(), Counts::VIEW).unwrap();
        let consumer = consumer();
        let start = || Counts(BTreeMap::from([("untouched".to_owned(), 1)]));

        // No table yet.
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, &table, &consumer, &[0]).unwrap(),
            None
        );

        // A table that is not Parquet.
        std::fs::write(table.path(), b"not parquet").unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, &table, &consumer, &[0]).unwrap(),
            None
        );
        assert_eq!(view.0, start().0);

        // A checkpoint that is not JSON.
        let good = Counts(BTreeMap::from([("a".to_owned(), 3)]));
        table.replace(&good.batch().unwrap(), "{not json").unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, &table, &consumer, &[0]).unwrap(),
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
            resume_from(&mut view, &table, &consumer, &[0]).unwrap(),
            None
        );
        assert_eq!(view.0, start().0);

        // The good table with a checkpoint naming a partition the topic does not have.
        table
            .replace(&good.batch().unwrap(), r#"{"t":{"7":5}}"#)
            .unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, &table, &consumer, &[0]).unwrap(),
            None
        );

        // And with no position for its topic yet (none stored): taken back, nothing to seek.
        table
            .replace(&good.batch().unwrap(), r#"{"t":{}}"#)
            .unwrap();
        let mut view = start();
        assert_eq!(
            resume_from(&mut view, &table, &consumer, &[0]).unwrap(),
            Some(BTreeMap::new())
        );
        assert_eq!(view.0, good.0);
    }
}
