//! The `stock_levels` view: folds `inventory.events` into per-(sku, warehouse) rows and
//! replaces its Parquet table at most every `view_flush`, with the consumer positions stored
//! in the same file (the view's authoritative checkpoint).

use std::collections::BTreeMap;
use std::path::Path;

use processors::inventory::StockLevelsProjection;
use schemas::Registry;
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

/// The view's declaration: the [`StockLevelsProjection`] of `inventory.events` (its rows are
/// its whole state: it resumes from its table).
pub(crate) struct StockLevelsView;

impl TopicView for StockLevelsView {
    type Event = schemas::inventory::InventoryEvent;
    type Projection = StockLevelsProjection;
    type Table = stock_levels::StockLevelsTable;
    const TOPIC: &'static str = EVENTS;
    const GROUP: &'static str = PIPELINE;
    /// The events topic is written by this service: a record that does not decode is a bug,
    /// kept on the dead-letter topic where it can be seen.
    const DLQ: Option<(&'static str, &'static str)> = Some((DLQ, PIPELINE));
    /// Rows are per sku, and `inventory.events` is keyed by sku: each instance of a
    /// scaled-out inventory writes the partitions it is given.
    const PER_PARTITION: bool = true;
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
        || OneTopic::<StockLevelsView>::new(StockLevelsProjection::default(), registry.clone()),
        &settings,
        rt,
        stop,
    )
}

/// Writes the projection's rows to `table` with `checkpoint` (replaces the file atomically).
pub fn flush_stock_levels(
    table: &SnapshotTable,
    projection: &StockLevelsProjection,
    checkpoint: &str,
) -> anyhow::Result<()> {
    let rows = processors::Projection::rows(projection);
    let rows: Vec<&StockLevel> = rows.iter().map(|r| r.as_ref()).collect();
    table.replace(&stock_levels::to_batch(rows)?, checkpoint)?;
    Ok(())
}
