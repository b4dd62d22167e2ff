//! The shipping service's `shipments` view: the [`Shipments`](processors::shipping::shipments)
//! projection of `shipping.tracking`, the carriers' events (external events: outside producers
//! write the topic, through `POST /events/…`), resumed from its table. An undecodable record
//! there is dead-lettered to `shipping.dlq`.

use schemas::saga::topics::SHIPPING_TRACKING;
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::topics::saga::SHIPPING_DLQ;
use crate::view::TopicView;

/// The view's declaration.
pub(crate) struct ShipmentsView;

impl TopicView for ShipmentsView {
    type Event = <Self::Projection as processors::Projection>::Event;
    type Projection = processors::shipping::shipments::Shipments;
    type Table = sinks::shipments::ShipmentsTable;
    const TOPIC: &'static str = SHIPPING_TRACKING;
    const GROUP: &'static str = "shipments-view";
    const DLQ: Option<(&'static str, &'static str)> = Some((SHIPPING_DLQ, "shipping"));
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view::<ShipmentsView>(Default::default(), opts, rt, stop)
}
