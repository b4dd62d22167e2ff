//! The catalog service's `products` view: each product's current state, folded from
//! `catalog.events` with the same `evolve` as the aggregate. Rebuilt from the beginning of
//! the topic when it starts and flushed with its checkpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::products::{CatalogEvent, ProductState};
use schemas::saga::topics::CATALOG_EVENTS;
use sinks::SnapshotTable;
use sinks::products::{self, ProductRow};
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use super::Options;
use super::ledger::Checkpoint;
use crate::{Stop, kafka, wire};

/// The checkpoint stored with the table under `views_dir`, if any.
pub fn checkpoint(views_dir: &std::path::Path) -> anyhow::Result<Option<Checkpoint>> {
    crate::freshness::stored(views_dir, products::VIEW)
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let span = info_span!("view", name = products::VIEW);
    let _guard = span.enter();
    let table = SnapshotTable::open(&opts.views_dir, products::VIEW)?;
    let mut decoder = Decoder::<CatalogEvent>::new(Registry::new(&opts.cluster.registry));
    let consumer: BaseConsumer = kafka::consumer_config(&opts.cluster, "products-view").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka::partition_count(&consumer, CATALOG_EVENTS)? as i32 {
        tpl.add_partition_offset(CATALOG_EVENTS, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut state: BTreeMap<String, (ProductState, i64)> = BTreeMap::new();
    let mut checkpoint = Checkpoint::new();
    let mut dirty = true;
    let mut last_flush = Instant::now();
    info!("Products view started (rebuilding from the beginning of catalog.events).");
    loop {
        let stopping = stop.is_stopped();
        for m in kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))? {
            match wire::decode(rt, &mut decoder, m.payload().unwrap_or_default(), stop) {
                Ok(e) => {
                    let sku = e.metadata().aggregate_id.clone();
                    let current = state.get(&sku).map(|(s, _)| s);
                    // Versions only grow: a redelivered event (same version) changes nothing.
                    let stale =
                        current.is_some_and(|s| s.version >= e.metadata().aggregate_version);
                    if !stale && let Some(next) = processors::catalog::evolve(current, &e) {
                        state.insert(sku, (next, e.metadata().occurred_at));
                    }
                }
                Err(e) if e.is_transient() => return Err(e).context("registry unavailable"),
                Err(e) => warn!(partition = m.partition(), offset = m.offset(), error = %e,
                    "Undecodable catalog event left out of the products view."),
            }
            dirty = true;
        }
        for e in consumer.position()?.elements() {
            if let Offset::Offset(o) = e.offset() {
                let at = checkpoint.entry(e.topic().to_owned()).or_default();
                if at.insert(e.partition(), o) != Some(o) {
                    dirty = true;
                }
            }
        }
        if dirty && (stopping || last_flush.elapsed() >= opts.view_flush) {
            let rows: Vec<ProductRow> = state
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
            table.replace(
                &products::to_batch(&rows)?,
                &serde_json::to_string(&checkpoint)?,
            )?;
            dirty = false;
            last_flush = Instant::now();
        }
        if stopping {
            return Ok(());
        }
    }
}
