//! The `stock_levels` view: folds `inventory.events` into per-(sku, warehouse) rows and
//! replaces its Parquet table at most every `view_flush`, with the consumer positions stored
//! in the same file (the view's authoritative checkpoint).

use std::collections::BTreeMap;
use std::path::Path;

use arrow::record_batch::RecordBatch;
use processors::inventory::{Position, ProjectedPosition, StockLevelsProjection};
use schemas::Registry;
use schemas::inventory::InventoryEvent;
use sinks::SnapshotTable;
use sinks::stock_levels::{self, StockLevel};
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::topics::inventory::*;
use crate::view::{OneTopic, TopicView};

/// Positions (next offset to read) per partition of `inventory.events`.
pub type Checkpoint = BTreeMap<i32, i64>;

/// The pipeline (its name in the service registry and its consumer group; the DLQ header).
pub const PIPELINE: &str = "inventory-views";

/// The positions on `inventory.events` stored with the `stock_levels` table under
/// `views_dir`, if any.
pub fn stock_levels_checkpoint(views_dir: &Path) -> anyhow::Result<Option<Checkpoint>> {
    Ok(crate::view::checkpoint(views_dir, stock_levels::VIEW)?
        .map(|mut c| c.remove(EVENTS).unwrap_or_default()))
}

/// The view: its rows are its fold state, so it resumes from its table.
#[derive(Default)]
pub(crate) struct StockLevels(StockLevelsProjection);

impl TopicView for StockLevels {
    type Event = InventoryEvent;
    const VIEW: &'static str = stock_levels::VIEW;
    const TOPIC: &'static str = EVENTS;
    const GROUP: &'static str = PIPELINE;
    /// The events topic is written by this service: a record that does not decode is a bug,
    /// kept on the dead-letter topic where it can be seen.
    const DLQ: Option<(&'static str, &'static str)> = Some((DLQ, PIPELINE));
    const RESUMES: bool = true;

    fn fold(&mut self, _partition: i32, _offset: i64, event: InventoryEvent) {
        self.0.apply(&event);
    }

    fn batch(&self) -> anyhow::Result<RecordBatch> {
        rows_batch(&self.0)
    }

    fn resume(&mut self, table: &[RecordBatch]) -> anyhow::Result<()> {
        let mut projection = StockLevelsProjection::default();
        for row in stock_levels::from_batches(table)? {
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
        self.0 = projection;
        Ok(())
    }
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run_stock_levels(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let settings = crate::view::Settings {
        cluster: opts.cluster.clone(),
        instance: opts.instance.clone(),
        views_dir: opts.views_dir.clone(),
        flush: opts.view_flush,
    };
    let registry = Registry::new(&opts.cluster.registry);
    crate::view::run(
        OneTopic::new(StockLevels::default(), registry),
        &settings,
        rt,
        stop,
    )
}

fn rows_batch(projection: &StockLevelsProjection) -> anyhow::Result<RecordBatch> {
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
    Ok(stock_levels::to_batch(&rows)?)
}

/// Writes the projection's rows to `table` with `checkpoint` (replaces the file atomically).
pub fn flush_stock_levels(
    table: &SnapshotTable,
    projection: &StockLevelsProjection,
    checkpoint: &str,
) -> anyhow::Result<()> {
    table.replace(&rows_batch(projection)?, checkpoint)?;
    Ok(())
}
