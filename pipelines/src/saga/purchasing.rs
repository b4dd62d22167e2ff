//! The suppliers service's `purchase_orders` view: the
//! [`PurchaseOrders`](processors::suppliers::purchase_orders) projection of `suppliers.events`,
//! resumed from its table.

use schemas::saga::topics::SUPPLIER_EVENTS;
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

/// The view's declaration.
pub(crate) struct PurchaseOrdersView;

impl TopicView for PurchaseOrdersView {
    type Event = <Self::Projection as processors::Projection>::Event;
    type Projection = processors::suppliers::purchase_orders::PurchaseOrders;
    type Table = sinks::purchasing::PurchaseOrdersTable;
    const TOPIC: &'static str = SUPPLIER_EVENTS;
    const GROUP: &'static str = "purchase-orders-view";
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view::<PurchaseOrdersView>(Default::default(), opts, rt, stop)
}
