//! The orders service's real-time view `orders_per_minute`: 1-minute tumbling windows of
//! event time over `orders.events`, with late events accepted up to the configured lateness
//! (`saga::Options::window_lateness`). Rebuilt from the beginning of the topic when it
//! starts, like the saga views.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use processors::windows::{OrderFact, TumblingWindows};
use schemas::orders::OrderEvent;
use schemas::saga::topics::ORDER_EVENTS;
use sinks::windows::{self, WindowRow};
use tokio::runtime::Handle;
use tracing::info;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

/// Width of the windows.
pub const WIDTH: Duration = Duration::from_secs(60);

pub(crate) struct Windows {
    windows: TumblingWindows,
    /// Events published twice count once.
    seen: HashSet<String>,
}

impl TopicView for Windows {
    type Event = OrderEvent;
    const VIEW: &'static str = windows::ORDERS_PER_MINUTE;
    const TOPIC: &'static str = ORDER_EVENTS;
    const GROUP: &'static str = "orders-windows";
    const WANTS_ENDS: bool = true;

    fn assigned(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.windows.track(*p);
        }
    }

    fn fold(&mut self, partition: i32, _offset: i64, e: OrderEvent) {
        let fact = match &e {
            OrderEvent::OrderPlaced(_) => OrderFact::Placed,
            OrderEvent::OrderConfirmed(c) => OrderFact::Confirmed {
                total_cents: c.total_cents,
            },
            OrderEvent::OrderCancelled(_) => OrderFact::Cancelled,
            _ => return,
        };
        if self.seen.insert(e.metadata().event_id.clone()) {
            self.windows.add(partition, e.metadata().occurred_at, fact);
        }
    }

    /// A partition read to its end does not hold the watermark back.
    fn before_flush(&mut self, positions: &BTreeMap<i32, i64>, ends: &BTreeMap<i32, i64>) {
        for (p, end) in ends {
            let at = positions.get(p).copied().unwrap_or(0);
            self.windows.set_idle(*p, at >= *end);
        }
    }

    fn batch(&self) -> anyhow::Result<arrow::record_batch::RecordBatch> {
        let rows: Vec<WindowRow> = self
            .windows
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
        Ok(windows::to_batch(&rows)?)
    }
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    info!(lateness = ?opts.window_lateness, "Windowed view: lateness.");
    let view = Windows {
        windows: TumblingWindows::new(
            WIDTH.as_millis() as i64,
            opts.window_lateness.as_millis() as i64,
        ),
        seen: HashSet::new(),
    };
    super::run_topic_view(view, opts, rt, stop)
}
