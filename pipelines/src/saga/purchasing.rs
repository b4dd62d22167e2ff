//! The suppliers service's `purchase_orders` view over `suppliers.events`, kept current by
//! the single-topic view loop. Its rows are its whole fold state, so a restart resumes from
//! the table (see [`TopicView::resume`]).

use std::collections::BTreeMap;

use schemas::saga::topics::SUPPLIER_EVENTS;
use schemas::suppliers::SupplierEvent;
use sinks::purchasing::{self, PurchaseOrderRow};
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

#[derive(Default)]
pub(crate) struct PurchaseOrders {
    /// By purchase order id; a receipt completes its order's row.
    rows: BTreeMap<String, PurchaseOrderRow>,
}

impl TopicView for PurchaseOrders {
    type Event = SupplierEvent;
    const VIEW: &'static str = purchasing::VIEW;
    const TOPIC: &'static str = SUPPLIER_EVENTS;
    const GROUP: &'static str = "purchase-orders-view";

    fn fold(&mut self, _partition: i32, _offset: i64, e: SupplierEvent) {
        // Events of one sku share a partition and arrive in order; published twice
        // (at-least-once), they set the same values twice.
        match e {
            SupplierEvent::PurchaseOrderPlaced(p) => {
                self.rows
                    .entry(p.po_id.clone())
                    .or_insert_with(|| PurchaseOrderRow {
                        po_id: p.po_id,
                        sku: p.sku,
                        warehouse: p.warehouse,
                        supplier_id: p.supplier_id,
                        quantity: p.quantity,
                        low_stock_event_id: p.low_stock_event_id,
                        placed_at: p.metadata.occurred_at,
                        expected_at: p.expected_at,
                        received_at: None,
                    });
            }
            SupplierEvent::PurchaseOrderReceived(r) => {
                if let Some(row) = self.rows.get_mut(&r.po_id) {
                    row.received_at = Some(r.metadata.occurred_at);
                }
            }
        }
    }

    fn batch(&self) -> anyhow::Result<arrow::record_batch::RecordBatch> {
        Ok(purchasing::to_batch(self.rows.values())?)
    }

    const RESUMES: bool = true;

    fn resume(&mut self, table: &[arrow::record_batch::RecordBatch]) -> anyhow::Result<()> {
        self.rows = purchasing::from_batches(table)?
            .into_iter()
            .map(|r| (r.po_id.clone(), r))
            .collect();
        Ok(())
    }
}

/// Runs the purchase_orders view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view(PurchaseOrders::default(), opts, rt, stop)
}
