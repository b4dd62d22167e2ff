//! The catalog service's `products` view: each product's current state, folded from
//! `catalog.events` with the same `evolve` as the aggregate. It resumes from its table on
//! start (see [`TopicView::resume`]).

use std::collections::BTreeMap;

use schemas::products::{CatalogEvent, ProductState};
use schemas::saga::topics::CATALOG_EVENTS;
use sinks::products::{self, ProductRow};
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

/// Each product and when it last changed.
#[derive(Default)]
pub(crate) struct Products(BTreeMap<String, (ProductState, i64)>);

impl TopicView for Products {
    type Event = CatalogEvent;
    const VIEW: &'static str = products::VIEW;
    const TOPIC: &'static str = CATALOG_EVENTS;
    const GROUP: &'static str = "products-view";

    fn fold(&mut self, _partition: i32, _offset: i64, e: CatalogEvent) {
        let meta = e.metadata();
        let current = self.0.get(&meta.aggregate_id).map(|(s, _)| s);
        // Versions only grow: a redelivered event (same version) changes nothing.
        if current.is_some_and(|s| s.version >= meta.aggregate_version) {
            return;
        }
        if let Some(next) = processors::catalog::evolve(current, &e) {
            self.0
                .insert(meta.aggregate_id.clone(), (next, meta.occurred_at));
        }
    }

    fn batch(&self) -> anyhow::Result<arrow::record_batch::RecordBatch> {
        let rows: Vec<ProductRow> = self
            .0
            .values()
            .map(|(s, at)| ProductRow {
                sku: s.sku.clone(),
                name: s.name.clone(),
                price_cents: s.price_cents,
                discontinued: s.discontinued,
                version: s.version,
                updated_at: *at,
            })
            .collect();
        Ok(products::to_batch(&rows)?)
    }

    const RESUMES: bool = true;

    /// A product's row is its state for this view: versions only grow, so the fold needs no
    /// more than the version to ignore a redelivered event (the causation ids the aggregate
    /// keeps for its own dedup start empty and are not shown).
    fn resume(&mut self, table: &[arrow::record_batch::RecordBatch]) -> anyhow::Result<()> {
        self.0 = products::from_batches(table)?
            .into_iter()
            .map(|r| {
                let state = ProductState {
                    sku: r.sku.clone(),
                    version: r.version,
                    name: r.name,
                    price_cents: r.price_cents,
                    discontinued: r.discontinued,
                    steps: Vec::new(),
                };
                (r.sku, (state, r.updated_at))
            })
            .collect();
        Ok(())
    }
}

/// Runs the products view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view(Products::default(), opts, rt, stop)
}
