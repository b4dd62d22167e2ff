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
//!   `orders.events`, late events accepted up to `saga::Options::window_lateness`; with
//!   `orders_per_minute_sources` (each partition's progress and the watermark) it resumes
//!   ([`Windows`]).

use std::time::Duration;

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use processors::orders::windows::OrdersPerMinute;
use rdkafka::message::BorrowedMessage;
use schemas::codec::DecodeError;
use schemas::saga::topics::{
    BILLING_EVENTS, CATALOG_EVENTS, ORDER_EVENTS, SHIPPING_TRACKING, SUPPLIER_EVENTS,
};
use tokio::runtime::Handle;
use tracing::info;

use super::Options;
use crate::Stop;
use crate::topics::saga::{BILLING_DLQ, CATALOG_DLQ, ORDERS_DLQ, SHIPPING_DLQ, SUPPLIERS_DLQ};
use crate::view::{OneTopic, Positions, TopicView, View};
use sinks::windows::ORDERS_PER_MINUTE;
use sinks::windows::sources::ORDERS_PER_MINUTE_SOURCES;

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

/// `orders_per_minute`'s topic and projection, on the loop's one-topic fold; [`Windows`]
/// adds the second table and the resume.
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

/// The `orders_per_minute` view: its windows, then `orders_per_minute_sources` (written
/// first, so the windows' checkpoint says both are complete). The windows' rows carry the
/// open windows' event ids, the sources each partition's progress and the watermark: the
/// two are the fold's whole state, so the view resumes from them (before, it read
/// `orders.events` from its beginning on every start).
pub(crate) struct Windows {
    inner: OneTopic<WindowsView>,
}

impl View for Windows {
    const PIPELINE: &'static str = WindowsView::GROUP;
    const TOPICS: &'static [&'static str] = WindowsView::TOPICS;
    const TABLES: &'static [&'static str] = &[ORDERS_PER_MINUTE_SOURCES, ORDERS_PER_MINUTE];
    const DLQ: Option<(&'static str, &'static str)> = WindowsView::DLQ;
    const RESUMES: bool = true;
    const WANTS_ENDS: bool = WindowsView::WANTS_ENDS;

    fn assigned(&mut self, partitions: &BTreeMap<&'static str, Vec<i32>>) {
        self.inner.assigned(partitions);
    }

    fn fold(
        &mut self,
        rt: &Handle,
        stop: &Stop,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), DecodeError> {
        self.inner.fold(rt, stop, m)
    }

    fn before_flush(&mut self, positions: &Positions, ends: &Positions) {
        self.inner.before_flush(positions, ends);
    }

    fn batches(&self) -> anyhow::Result<Vec<RecordBatch>> {
        let sources = self.inner.projection.sources();
        let mut batches = vec![sinks::windows::sources::to_batch(&sources)?];
        batches.extend(self.inner.batches()?);
        Ok(batches)
    }

    fn resume(&mut self, tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
        let sources = sinks::windows::sources::from_batches(&tables[0])?;
        let rows = sinks::windows::from_batches(&tables[1])?;
        // Under the settings it runs with now (a lateness changed since is allowed).
        let (width_ms, lateness_ms) = self.inner.projection.settings();
        self.inner.projection = OrdersPerMinute::restore(width_ms, lateness_ms, rows, sources)
            .map_err(|e| anyhow::anyhow!("{ORDERS_PER_MINUTE}: {e}"))?;
        Ok(())
    }
}

/// Runs `orders_per_minute` with the configured lateness until `stop`. Blocking.
pub fn run_windows(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    info!(lateness = ?opts.window_lateness, "Windowed view: lateness.");
    let (width_ms, lateness_ms) = (
        WIDTH.as_millis() as i64,
        opts.window_lateness.as_millis() as i64,
    );
    let registry = schemas::Registry::new(&opts.cluster.registry);
    let view = || Windows {
        inner: OneTopic::new(
            OrdersPerMinute::new(width_ms, lateness_ms),
            registry.clone(),
        ),
    };
    crate::view::run(view, &opts.view_settings(), rt, stop)
}
