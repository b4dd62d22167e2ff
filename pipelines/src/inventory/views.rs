//! The `stock_levels` view: folds `inventory.events` into per-(sku, warehouse) rows and
//! replaces its Parquet table at most every `view_flush`, with the consumer positions stored
//! in the same file (the view's authoritative checkpoint).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use processors::inventory::{Position, ProjectedPosition, StockLevelsProjection};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::{DecodeError, Decoder};
use schemas::inventory::InventoryEvent;
use sinks::SnapshotTable;
use sinks::stock_levels::{self, StockLevel};
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use super::Options;
use crate::kafka::{self, Output};
use crate::topics::inventory::*;
use crate::{Guarantee, Stop};

/// Positions (next offset to read) per partition of `inventory.events`.
pub type Checkpoint = BTreeMap<i32, i64>;

/// The pipeline (its name in the service registry, the DLQ header and the transactional
/// id's stem; its consumer group is `<group>.views`).
pub const PIPELINE: &str = "inventory-views";

/// The checkpoint stored in the `stock_levels` table under `views_dir`, if any.
pub fn stock_levels_checkpoint(views_dir: &Path) -> anyhow::Result<Option<Checkpoint>> {
    crate::freshness::stored(views_dir, stock_levels::VIEW)
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run_stock_levels(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let span = info_span!("view", name = stock_levels::VIEW);
    let _guard = span.enter();
    let table = SnapshotTable::open(&opts.views_dir, stock_levels::VIEW)?;
    let mut projection = StockLevelsProjection::default();
    let mut checkpoint: Checkpoint = BTreeMap::new();
    if let Some((batches, text)) = table.load()? {
        for row in stock_levels::from_batches(&batches)? {
            let position = Position {
                on_hand: row.on_hand,
                reserved: row.reserved,
            };
            projection.restore(
                row.sku,
                row.warehouse,
                ProjectedPosition {
                    position,
                    version: row.version,
                    updated_at: row.updated_at,
                },
            );
        }
        if !text.is_empty() {
            checkpoint = serde_json::from_str(&text).context("stock_levels checkpoint")?;
        }
    }
    let consumer: BaseConsumer =
        kafka::consumer_config(&opts.cluster, &format!("{}.views", opts.group)).create()?;
    let partitions = kafka::partition_count(&consumer, EVENTS)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let offset = checkpoint
            .get(&p)
            .map_or(Offset::Beginning, |o| Offset::Offset(*o));
        tpl.add_partition_offset(EVENTS, p, offset)?;
    }
    consumer.assign(&tpl)?;
    // Dead letters of the view are rare (the events topic is written by this service) and
    // need no transaction.
    let dlq = Output::new(
        &crate::Cluster {
            guarantee: Guarantee::AtLeastOnce,
            ..opts.cluster.clone()
        },
        PIPELINE,
        &opts.instance,
    )?;
    let mut decoder = Decoder::<InventoryEvent>::new(Registry::new(&opts.cluster.registry));
    info!(resume = ?checkpoint, "View started.");

    let mut dirty = false;
    let mut last_flush = Instant::now();
    loop {
        let stopping = stop.is_stopped();
        let batch = kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))?;
        for message in &batch {
            let payload = message.payload().unwrap_or_default();
            let decoded = match decoder.decode(payload) {
                Err(DecodeError::NotCached(_)) => rt.block_on(decoder.decode_learning(payload)),
                other => other,
            };
            match decoded {
                Ok(event) => projection.apply(&event),
                Err(e) if e.is_transient() => {
                    // Registry down: re-read this record later rather than dead-letter it.
                    warn!(error = %e, "Registry unavailable; rewinding view.");
                    consumer.seek(
                        message.topic(),
                        message.partition(),
                        Offset::Offset(message.offset()),
                        kafka::TX_TIMEOUT,
                    )?;
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
                Err(e) => {
                    dlq.dead_letter(DLQ, PIPELINE, message, e.kind(), &e.to_string())?;
                    dlq.commit(&consumer, &TopicPartitionList::new())?;
                }
            }
            dirty = true;
        }
        // Positions, not last offsets + 1: they also step over transaction markers, so a
        // caught-up view's checkpoint equals the topic's high watermarks.
        let mut moved = false;
        for e in consumer.position()?.elements() {
            if let Offset::Offset(o) = e.offset()
                && checkpoint.insert(e.partition(), o) != Some(o)
            {
                moved = true;
            }
        }
        dirty |= moved;
        if dirty && (stopping || last_flush.elapsed() >= opts.view_flush) {
            flush(&table, &projection, &checkpoint)?;
            dirty = false;
            last_flush = Instant::now();
        }
        if stopping {
            return Ok(());
        }
    }
}

fn flush(
    table: &SnapshotTable,
    projection: &StockLevelsProjection,
    checkpoint: &Checkpoint,
) -> anyhow::Result<()> {
    flush_stock_levels(table, projection, &serde_json::to_string(checkpoint)?)
}

/// Writes the projection's rows to `table` with `checkpoint` (replaces the file atomically).
pub fn flush_stock_levels(
    table: &SnapshotTable,
    projection: &StockLevelsProjection,
    checkpoint: &str,
) -> anyhow::Result<()> {
    let rows: Vec<StockLevel> = projection
        .rows()
        .map(|(sku, warehouse, r)| StockLevel {
            sku: sku.to_owned(),
            warehouse: warehouse.to_owned(),
            on_hand: r.position.on_hand,
            reserved: r.position.reserved,
            version: r.version,
            updated_at: r.updated_at,
        })
        .collect();
    table.replace(&stock_levels::to_batch(&rows)?, checkpoint)?;
    Ok(())
}
