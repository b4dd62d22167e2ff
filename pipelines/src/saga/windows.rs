//! The orders service's real-time view `orders_per_minute`: 1-minute tumbling windows of
//! event time over `orders.events`, with late events accepted up to the configured lateness
//! (`saga::Options::window_lateness`). Rebuilt from the beginning of the topic when it
//! starts, like the saga views, and flushed with its checkpoint.

use std::time::{Duration, Instant};

use anyhow::Context;
use processors::windows::{OrderFact, TumblingWindows};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::orders::OrderEvent;
use schemas::saga::topics::ORDER_EVENTS;
use sinks::SnapshotTable;
use sinks::windows::{self, WindowRow};
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use super::Options;
use super::ledger::Checkpoint;
use crate::{Stop, kafka, wire};

/// Width of the windows.
pub const WIDTH: Duration = Duration::from_secs(60);

/// The checkpoint stored with the table under `views_dir`, if any.
pub fn checkpoint(views_dir: &std::path::Path) -> anyhow::Result<Option<Checkpoint>> {
    crate::freshness::stored(views_dir, windows::ORDERS_PER_MINUTE)
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let span = info_span!("view", name = windows::ORDERS_PER_MINUTE);
    let _guard = span.enter();
    let table = SnapshotTable::open(&opts.views_dir, windows::ORDERS_PER_MINUTE)?;
    let mut decoder = Decoder::<OrderEvent>::new(Registry::new(&opts.cluster.registry));
    let consumer: BaseConsumer =
        kafka::consumer_config(&opts.cluster, "orders-windows").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka::partition_count(&consumer, ORDER_EVENTS)? as i32 {
        tpl.add_partition_offset(ORDER_EVENTS, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut windows = TumblingWindows::new(
        WIDTH.as_millis() as i64,
        opts.window_lateness.as_millis() as i64,
    );
    for e in tpl.elements() {
        windows.track(e.partition());
    }
    let mut seen = std::collections::HashSet::new();
    let mut checkpoint = Checkpoint::new();
    let mut dirty = true;
    let mut last_flush = Instant::now();
    info!(lateness = ?opts.window_lateness, "Windowed view started (rebuilding from the beginning of orders.events).");
    loop {
        let stopping = stop.is_stopped();
        for m in kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))? {
            match wire::decode(rt, &mut decoder, m.payload().unwrap_or_default(), stop) {
                Ok(e) => {
                    let fact = match &e {
                        OrderEvent::OrderPlaced(_) => Some(OrderFact::Placed),
                        OrderEvent::OrderConfirmed(c) => Some(OrderFact::Confirmed {
                            total_cents: c.total_cents,
                        }),
                        OrderEvent::OrderCancelled(_) => Some(OrderFact::Cancelled),
                        _ => None,
                    };
                    // Events published twice count once.
                    if let Some(fact) = fact
                        && seen.insert(e.metadata().event_id.clone())
                    {
                        windows.add(m.partition(), e.metadata().occurred_at, fact);
                    }
                }
                Err(e) if e.is_transient() => return Err(e).context("registry unavailable"),
                Err(e) => warn!(partition = m.partition(), offset = m.offset(), error = %e,
                    "Undecodable order event left out of the windows."),
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
        // A partition read to its end does not hold the watermark back (checked at flush
        // time: a watermark lookup per partition).
        if dirty && (stopping || last_flush.elapsed() >= opts.view_flush) {
            let ends = kafka::high_watermarks(&consumer, ORDER_EVENTS)?;
            let at = checkpoint.get(ORDER_EVENTS);
            for (p, end) in ends {
                let position = at.and_then(|c| c.get(&p)).copied().unwrap_or(0);
                windows.set_idle(p, position >= end);
            }
        }
        if dirty && (stopping || last_flush.elapsed() >= opts.view_flush) {
            let rows: Vec<WindowRow> = windows
                .rows()
                .map(|(start, end, w, is_final)| WindowRow {
                    window_start: start,
                    window_end: end,
                    orders_placed: w.placed,
                    orders_confirmed: w.confirmed,
                    orders_cancelled: w.cancelled,
                    revenue_cents: w.revenue_cents,
                    late_events: w.late_events,
                    is_final,
                })
                .collect();
            table.replace(
                &windows::to_batch(&rows)?,
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
