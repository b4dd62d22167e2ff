//! The suppliers service's `purchase_orders` view: one row per purchase order, with the
//! low-stock alert that caused it, when it was placed, due and received. Sorted by sku then
//! purchase order, so a sku's orders are one range of one row group.
//!
//! `supplier_performance` is derived from it (see [`crate::derived`]).

pub const VIEW: &str = "purchase_orders";

/// The rows, as the projection in `processors` folds them.
pub use processors::suppliers::purchase_orders::PurchaseOrderRow;

crate::columns! {
    PurchaseOrdersTable, PurchaseOrderRow, VIEW, order: |r| (&r.sku, &r.po_id),
    po_id: Text,
    sku: Text,
    warehouse: Text,
    supplier_id: Text,
    quantity: Int,
    status: Text = |r| (if r.received_at.is_some() { "received" } else { "open" }).to_owned(),
    low_stock_event_id: Text,
    placed_at: Time,
    expected_at: Time,
    received_at: OptTime,
    lead_time_ms: OptInt = |r| r.received_at.map(|at| at - r.placed_at),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let rows: Vec<PurchaseOrderRow> = (0..4)
            .map(|i| PurchaseOrderRow {
                po_id: format!("PO-{i}"),
                sku: format!("SKU-{i}"),
                warehouse: "AMS".into(),
                supplier_id: "SUP-NORDIC".into(),
                quantity: 10 * i,
                low_stock_event_id: format!("alert-{i}"),
                placed_at: 1_700_000_000_000 + i,
                expected_at: 1_700_000_100_000 + i,
                received_at: (i % 2 == 0).then_some(1_700_000_200_000 + i),
            })
            .collect();
        crate::table::round_trip::<PurchaseOrdersTable>(rows);
    }
}
