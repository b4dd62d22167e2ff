//! Suppliers service records (purchasing): events on `suppliers.events` (keyed by sku) and
//! the per-sku purchasing state on `suppliers.changelog`.
//!
//! The loop it closes: inventory alerts on `inventory.alerts` ([`StockLow`]) → suppliers
//! places a [`PurchaseOrderPlaced`] → after the supplier's lead time the goods arrive
//! ([`PurchaseOrderReceived`]) → inventory's `inventory-receiving` books them with a
//! `ReceiveStock` on `inventory.commands` (only inventory writes its topics).

use serde::{Deserialize, Serialize};

pub use crate::inventory::StockLow;
use crate::{record_union, records, union_metadata};

records! {
    /// Event: a purchase order was sent to a supplier because of a low-stock alert.
    PurchaseOrderPlaced {
        po_id: String, supplier_id: String, sku: String, warehouse: String, quantity: i64,
        /// Event id of the `StockLow` alert that caused it.
        low_stock_event_id: String,
        /// The sku's inventory version in that alert.
        low_stock_version: i64,
        /// When the goods are due (epoch ms).
        expected_at: i64,
    }
    /// Event: a purchase order's goods arrived at its warehouse.
    PurchaseOrderReceived {
        po_id: String, supplier_id: String, sku: String, warehouse: String, quantity: i64,
        /// When the order was placed (epoch ms).
        placed_at: i64,
    }
}

/// A purchase order placed and not yet received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPurchaseOrder {
    pub po_id: String,
    pub supplier_id: String,
    pub warehouse: String,
    pub quantity: i64,
    pub placed_at: i64,
    pub expected_at: i64,
}

/// Changelog record: the purchasing of one sku (the fold of its `suppliers.events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplyState {
    pub sku: String,
    pub version: i64,
    /// Inventory version of the last alert that placed an order (older alerts are spent).
    pub last_alert_version: i64,
    pub placed: i64,
    pub received: i64,
    pub open: Vec<OpenPurchaseOrder>,
}

record_union! {
    /// Everything `suppliers.events` may carry.
    SupplierEvent {
        PurchaseOrderPlaced => "../avro/suppliers/PurchaseOrderPlaced.avsc",
        PurchaseOrderReceived => "../avro/suppliers/PurchaseOrderReceived.avsc",
    }
}
union_metadata!(SupplierEvent {
    PurchaseOrderPlaced,
    PurchaseOrderReceived
});

record_union! {
    /// Everything `suppliers.changelog` may carry.
    SuppliersChangelog { SupplyState => "../avro/suppliers/SupplyState.avsc" }
}

record_union! {
    /// What the suppliers service reads: inventory's low-stock alerts.
    SuppliersIn { StockLow => "../avro/inventory/StockLow.avsc" }
}
union_metadata!(SuppliersIn { StockLow });

record_union! {
    /// What inventory-receiving reads: purchase orders whose goods arrived.
    ReceivingIn { PurchaseOrderReceived => "../avro/suppliers/PurchaseOrderReceived.avsc" }
}
union_metadata!(ReceivingIn {
    PurchaseOrderReceived
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Metadata;
    use crate::inventory::{InventoryAlert, InventoryReceivingChangelog, ReceivingState};
    use crate::record::testing::round_trip;

    #[test]
    fn every_purchasing_record_round_trips_through_its_schema() {
        let m = Metadata::command("id", "SKU-1", 1);
        round_trip(InventoryAlert::from(StockLow {
            metadata: m.clone(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            available: 3,
            threshold: 10,
        }));
        round_trip(SupplierEvent::from(PurchaseOrderPlaced {
            metadata: m.clone(),
            po_id: "PO-1".into(),
            supplier_id: "SUP-1".into(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 50,
            low_stock_event_id: "alert".into(),
            low_stock_version: 7,
            expected_at: 9,
        }));
        round_trip(SupplierEvent::from(PurchaseOrderReceived {
            metadata: m,
            po_id: "PO-1".into(),
            supplier_id: "SUP-1".into(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 50,
            placed_at: 2,
        }));
        round_trip(SuppliersChangelog::from(SupplyState {
            sku: "SKU-1".into(),
            version: 2,
            last_alert_version: 7,
            placed: 1,
            received: 0,
            open: vec![OpenPurchaseOrder {
                po_id: "PO-1".into(),
                supplier_id: "SUP-1".into(),
                warehouse: "AMS".into(),
                quantity: 50,
                placed_at: 2,
                expected_at: 9,
            }],
        }));
        round_trip(InventoryReceivingChangelog::from(ReceivingState {
            sku: "SKU-1".into(),
            last_version: 3,
            receipts: 1,
            received_quantity: 50,
        }));
    }
}
