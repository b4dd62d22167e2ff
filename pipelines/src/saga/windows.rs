//! The orders service's real-time view `orders_per_minute`: the
//! [`OrdersPerMinute`](processors::orders::windows::OrdersPerMinute) projection of
//! `orders.events` (1-minute tumbling windows of event time, late events accepted up to the
//! configured lateness, `saga::Options::window_lateness`). Rebuilt from the beginning of the
//! topic when it starts.

use std::time::Duration;

use processors::orders::windows::OrdersPerMinute;
use schemas::saga::topics::ORDER_EVENTS;
use tokio::runtime::Handle;
use tracing::info;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

/// Width of the windows.
pub const WIDTH: Duration = Duration::from_secs(60);

/// The view's declaration.
pub(crate) struct WindowsView;

impl TopicView for WindowsView {
    type Event = <Self::Projection as processors::Projection>::Event;
    type Projection = OrdersPerMinute;
    type Table = sinks::windows::OrdersPerMinuteTable;
    const TOPIC: &'static str = ORDER_EVENTS;
    const GROUP: &'static str = "orders-windows";
    const WANTS_ENDS: bool = true;
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    info!(lateness = ?opts.window_lateness, "Windowed view: lateness.");
    let projection = OrdersPerMinute::new(
        WIDTH.as_millis() as i64,
        opts.window_lateness.as_millis() as i64,
    );
    super::run_topic_view::<WindowsView>(projection, opts, rt, stop)
}
