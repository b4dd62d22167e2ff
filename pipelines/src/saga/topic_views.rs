//! The one-topic views the saga host runs, each a declaration on the one view loop: a
//! projection from `processors`, a table declared in `sinks`, its topic and group.
//!
//! - `ledger` (billing): every posting of `billing.events`; resumes from its table.
//! - `products` (catalog): each product's current state from `catalog.events`; resumes.
//! - `purchase_orders` (suppliers): each purchase order from `suppliers.events`; resumes.
//! - `shipments` (shipping): the carriers' scans on `shipping.tracking` (external events:
//!   outside producers write the topic, through `POST /events/…`); resumes; an undecodable
//!   record there is dead-lettered to `shipping.dlq`.
//! - `orders_per_minute` (orders): 1-minute tumbling windows of event time over
//!   `orders.events`, late events accepted up to `saga::Options::window_lateness`; rebuilt
//!   from the beginning of the topic when it starts.

use std::time::Duration;

use processors::orders::windows::OrdersPerMinute;
use schemas::saga::topics::{
    BILLING_EVENTS, CATALOG_EVENTS, ORDER_EVENTS, SHIPPING_TRACKING, SUPPLIER_EVENTS,
};
use tokio::runtime::Handle;
use tracing::info;

use super::Options;
use crate::Stop;
use crate::topics::saga::{BILLING_DLQ, CATALOG_DLQ, ORDERS_DLQ, SHIPPING_DLQ, SUPPLIERS_DLQ};
use crate::view::TopicView;

/// `ledger`.
pub struct LedgerView;

impl TopicView for LedgerView {
    type Event = schemas::billing::BillingEvent;
    type Projection = processors::billing::ledger::Ledger;
    type Table = sinks::ledger::LedgerTable;
    const TOPIC: &'static str = BILLING_EVENTS;
    const GROUP: &'static str = "ledger-view";
    const DLQ: Option<(&'static str, &'static str)> = Some((BILLING_DLQ, Self::GROUP));
}

/// `products`.
pub struct ProductsView;

impl TopicView for ProductsView {
    type Event = schemas::products::CatalogEvent;
    type Projection = processors::catalog::products::Products;
    type Table = sinks::products::ProductsTable;
    const TOPIC: &'static str = CATALOG_EVENTS;
    const GROUP: &'static str = "products-view";
    const DLQ: Option<(&'static str, &'static str)> = Some((CATALOG_DLQ, Self::GROUP));
}

/// `purchase_orders`.
pub struct PurchaseOrdersView;

impl TopicView for PurchaseOrdersView {
    type Event = schemas::suppliers::SupplierEvent;
    type Projection = processors::suppliers::purchase_orders::PurchaseOrders;
    type Table = sinks::purchasing::PurchaseOrdersTable;
    const TOPIC: &'static str = SUPPLIER_EVENTS;
    const GROUP: &'static str = "purchase-orders-view";
    const DLQ: Option<(&'static str, &'static str)> = Some((SUPPLIERS_DLQ, Self::GROUP));
}

/// `shipments`.
pub struct ShipmentsView;

impl TopicView for ShipmentsView {
    type Event = schemas::shipping::TrackingEvent;
    type Projection = processors::shipping::shipments::Shipments;
    type Table = sinks::shipments::ShipmentsTable;
    const TOPIC: &'static str = SHIPPING_TRACKING;
    const GROUP: &'static str = "shipments-view";
    const DLQ: Option<(&'static str, &'static str)> = Some((SHIPPING_DLQ, "shipping"));
}

/// `orders_per_minute`.
pub struct WindowsView;

impl TopicView for WindowsView {
    type Event = schemas::orders::OrderEvent;
    type Projection = OrdersPerMinute;
    type Table = sinks::windows::OrdersPerMinuteTable;
    const TOPIC: &'static str = ORDER_EVENTS;
    const GROUP: &'static str = "orders-windows";
    const DLQ: Option<(&'static str, &'static str)> = Some((ORDERS_DLQ, Self::GROUP));
    const WANTS_ENDS: bool = true;
}

/// Width of the `orders_per_minute` windows.
pub const WIDTH: Duration = Duration::from_secs(60);

/// Runs view `V` (from an empty projection) until `stop`, flushing once more on the way
/// out. Blocking.
pub fn run<V: TopicView<Projection: Default>>(
    opts: &Options,
    rt: &Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    super::run_topic_view::<V>(Default::default, opts, rt, stop)
}

/// Runs `orders_per_minute` with the configured lateness until `stop`. Blocking.
pub fn run_windows(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    info!(lateness = ?opts.window_lateness, "Windowed view: lateness.");
    let projection = || {
        OrdersPerMinute::new(
            WIDTH.as_millis() as i64,
            opts.window_lateness.as_millis() as i64,
        )
    };
    super::run_topic_view::<WindowsView>(projection, opts, rt, stop)
}
