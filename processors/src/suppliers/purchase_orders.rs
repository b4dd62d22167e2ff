//! The suppliers service's `purchase_orders` projection over `suppliers.events`: one row per
//! purchase order, completed by its receipt. Its rows are its whole state, so the view
//! resumes from its table.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemas::suppliers::SupplierEvent;

use crate::{Projection, Source};

/// One purchase order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseOrderRow {
    pub po_id: String,
    pub sku: String,
    pub warehouse: String,
    pub supplier_id: String,
    pub quantity: i64,
    /// Event id of the `StockLow` alert (on `inventory.alerts`) that caused it.
    pub low_stock_event_id: String,
    pub placed_at: i64,
    pub expected_at: i64,
    pub received_at: Option<i64>,
}

/// Every purchase order, by id.
#[derive(Debug, Default)]
pub struct PurchaseOrders {
    rows: BTreeMap<String, PurchaseOrderRow>,
}

impl Projection for PurchaseOrders {
    type Event = SupplierEvent;
    type Row = PurchaseOrderRow;
    const RESUMES: bool = true;

    fn apply(&mut self, _at: Source<'_>, e: &SupplierEvent) {
        // Events of one sku share a partition and arrive in order; published twice
        // (at-least-once), they set the same values twice.
        match e {
            SupplierEvent::PurchaseOrderPlaced(p) => {
                self.rows
                    .entry(p.po_id.clone())
                    .or_insert_with(|| PurchaseOrderRow {
                        po_id: p.po_id.clone(),
                        sku: p.sku.clone(),
                        warehouse: p.warehouse.clone(),
                        supplier_id: p.supplier_id.clone(),
                        quantity: p.quantity,
                        low_stock_event_id: p.low_stock_event_id.clone(),
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

    fn rows(&self) -> Vec<Cow<'_, PurchaseOrderRow>> {
        self.rows.values().map(Cow::Borrowed).collect()
    }

    fn restore(rows: Vec<PurchaseOrderRow>) -> Option<Self> {
        Some(PurchaseOrders {
            rows: rows.into_iter().map(|r| (r.po_id.clone(), r)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use schemas::Metadata;
    use schemas::suppliers::{PurchaseOrderPlaced, PurchaseOrderReceived};

    use super::*;

    const AT: Source<'static> = Source {
        topic: "suppliers.events",
        partition: 0,
        offset: 0,
    };

    fn placed(at: i64) -> SupplierEvent {
        PurchaseOrderPlaced {
            metadata: Metadata::command("e1", "SKU-1", at),
            po_id: "PO-1".into(),
            supplier_id: "SUP-1".into(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 50,
            low_stock_event_id: "alert".into(),
            low_stock_version: 7,
            expected_at: at + 5_000,
        }
        .into()
    }

    fn received(at: i64) -> SupplierEvent {
        PurchaseOrderReceived {
            metadata: Metadata::command("e2", "SKU-1", at),
            po_id: "PO-1".into(),
            supplier_id: "SUP-1".into(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 50,
            placed_at: 10,
        }
        .into()
    }

    #[test]
    fn a_purchase_order_is_placed_then_received_and_a_redelivery_changes_nothing() {
        let mut pos = PurchaseOrders::default();
        pos.apply(AT, &placed(10));
        pos.apply(AT, &received(900));
        // The placement delivered again does not reopen it.
        pos.apply(AT, &placed(10));
        let rows = pos.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].placed_at, rows[0].expected_at), (10, 5_010));
        assert_eq!(rows[0].received_at, Some(900));
        assert_eq!(rows[0].low_stock_event_id, "alert");
    }

    #[test]
    fn a_receipt_of_an_unknown_order_adds_no_row() {
        let mut pos = PurchaseOrders::default();
        pos.apply(AT, &received(900));
        assert!(pos.rows().is_empty());
    }
}
