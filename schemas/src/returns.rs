//! Returns service records (customer returns, reverse logistics): commands on
//! `returns.commands`, events on `returns.events`, deliveries re-keyed to their order on
//! `returns.deliveries`, and the stores' changelog records. Everything is keyed by order id
//! but the deliveries' store (by shipment id, as carriers' scans are).

use serde::{Deserialize, Serialize};

use crate::orders::OrderLine;
use crate::{record_union, records, union_metadata};

/// Topics of the returns service.
pub mod topics {
    pub const COMMANDS: &str = "returns.commands";
    pub const EVENTS: &str = "returns.events";
    /// Returns-internal: carriers' deliveries, re-keyed from shipment id to order id.
    pub const DELIVERIES: &str = "returns.deliveries";
    pub const CHANGELOG: &str = "returns.changelog";
    pub const DELIVERIES_CHANGELOG: &str = "returns.deliveries-changelog";
    pub const DLQ: &str = "returns.dlq";
    /// The store of inventory's restocking of returns (inventory owns it: only inventory
    /// writes `inventory.commands`).
    pub const RESTOCKING_CHANGELOG: &str = "inventory.restocking-changelog";
}

/// Units of one sku asked back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLine {
    pub sku: String,
    pub quantity: i64,
}

/// Units of one sku that arrived back: sellable ones restock inventory, damaged ones are
/// written off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedLine {
    pub sku: String,
    pub sellable: i64,
    pub damaged: i64,
}

records! {
    /// Command: a customer asks to send units of a delivered order back.
    RequestReturn { order_id: String, return_id: String, lines: Vec<ReturnLine> }
    /// Command: an authorized return arrived at a warehouse, inspected line by line.
    ReceiveReturn { order_id: String, return_id: String, warehouse: String, lines: Vec<ReceivedLine> }
    /// Event: the return may be sent back.
    ReturnAuthorized { order_id: String, return_id: String, lines: Vec<ReturnLine> }
    /// Event: the return broke a rule.
    ReturnRejected { order_id: String, return_id: String, reason: String }
    /// Event: an authorized return arrived; restock the sellable units, refund `refund_cents`.
    ReturnReceived { order_id: String, return_id: String, warehouse: String, lines: Vec<ReceivedLine>, refund_cents: i64 }
    /// Internal: a carrier delivered the order's shipment (at `delivered_at`, its scan time).
    OrderDelivered { order_id: String, shipment_id: String, delivered_at: i64 }
}

/// One return of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnCase {
    pub return_id: String,
    /// Authorized, Rejected or Received.
    pub status: String,
    pub lines: Vec<ReturnLine>,
    pub refund_cents: i64,
}

/// Changelog record: what returns knows of one order, and its returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnsState {
    pub order_id: String,
    pub version: i64,
    pub lines: Vec<OrderLine>,
    pub cancelled: bool,
    pub delivered_at: Option<i64>,
    pub returns: Vec<ReturnCase>,
    /// Ids of the messages handled (dedup).
    pub steps: Vec<String>,
}

/// Changelog record: a shipment's delivery, re-keyed to its order once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub shipment_id: String,
    pub order_id: String,
    pub delivered_at: i64,
}

/// Changelog record: the returns of one order inventory has booked back into stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestockingState {
    pub order_id: String,
    pub returns: Vec<String>,
    pub units: i64,
}

record_union! {
    /// Everything `returns.commands` may carry.
    ReturnCommand {
        RequestReturn => "../avro/returns/RequestReturn.avsc",
        ReceiveReturn => "../avro/returns/ReceiveReturn.avsc",
    }
}
union_metadata!(ReturnCommand {
    RequestReturn,
    ReceiveReturn
});

record_union! {
    /// Everything `returns.events` may carry.
    ReturnEvent {
        ReturnAuthorized => "../avro/returns/ReturnAuthorized.avsc",
        ReturnRejected => "../avro/returns/ReturnRejected.avsc",
        ReturnReceived => "../avro/returns/ReturnReceived.avsc",
    }
}
union_metadata!(ReturnEvent {
    ReturnAuthorized,
    ReturnRejected,
    ReturnReceived
});

impl ReturnEvent {
    pub fn return_id(&self) -> &str {
        match self {
            ReturnEvent::ReturnAuthorized(e) => &e.return_id,
            ReturnEvent::ReturnRejected(e) => &e.return_id,
            ReturnEvent::ReturnReceived(e) => &e.return_id,
        }
    }
}

record_union! {
    /// Everything `returns.deliveries` may carry.
    DeliveryEvent { OrderDelivered => "../avro/returns/OrderDelivered.avsc" }
}
union_metadata!(DeliveryEvent { OrderDelivered });

record_union! {
    /// What the returns processor reads: its commands, the orders' lines and cancellations,
    /// and the deliveries.
    ReturnsIn {
        RequestReturn => "../avro/returns/RequestReturn.avsc",
        ReceiveReturn => "../avro/returns/ReceiveReturn.avsc",
        OrderPlaced => "../avro/orders/OrderPlaced.avsc",
        OrderCancelled => "../avro/orders/OrderCancelled.avsc",
        OrderDelivered => "../avro/returns/OrderDelivered.avsc",
    }
}
union_metadata!(ReturnsIn {
    RequestReturn,
    ReceiveReturn,
    OrderPlaced,
    OrderCancelled,
    OrderDelivered
});

use crate::orders::{OrderCancelled, OrderPlaced};
use crate::shipping::ParcelDelivered;

record_union! {
    /// What the deliveries re-keyer reads (the other scans on `shipping.tracking` it skips).
    DeliveriesIn { ParcelDelivered => "../avro/shipping/ParcelDelivered.avsc" }
}
union_metadata!(DeliveriesIn { ParcelDelivered });

record_union! {
    /// What inventory's restocking of returns reads.
    RestockingIn { ReturnReceived => "../avro/returns/ReturnReceived.avsc" }
}
union_metadata!(RestockingIn { ReturnReceived });

record_union! {
    /// `returns.changelog`.
    ReturnsChangelog { ReturnsState => "../avro/returns/ReturnsState.avsc" }
}

record_union! {
    /// `returns.deliveries-changelog`.
    DeliveriesChangelog { DeliveryState => "../avro/returns/DeliveryState.avsc" }
}

record_union! {
    /// `inventory.restocking-changelog`.
    RestockingChangelog { RestockingState => "../avro/returns/RestockingState.avsc" }
}

/// The topic each returns record travels on (`None`: not a returns record).
pub fn expected_topic(short_name: &str) -> Option<&'static str> {
    Some(match short_name {
        "RequestReturn" | "ReceiveReturn" => topics::COMMANDS,
        "ReturnAuthorized" | "ReturnRejected" | "ReturnReceived" => topics::EVENTS,
        "OrderDelivered" => topics::DELIVERIES,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;
    use crate::record::testing::round_trip;

    #[test]
    fn records_round_trip() {
        let m = || Metadata::command("r-1", "O-1", 0);
        round_trip(ReturnCommand::from(RequestReturn {
            metadata: m(),
            order_id: "O-1".into(),
            return_id: "R-1".into(),
            lines: vec![ReturnLine {
                sku: "SKU-1".into(),
                quantity: 2,
            }],
        }));
        round_trip(ReturnEvent::from(ReturnReceived {
            metadata: m(),
            order_id: "O-1".into(),
            return_id: "R-1".into(),
            warehouse: "AMS".into(),
            lines: vec![ReceivedLine {
                sku: "SKU-1".into(),
                sellable: 1,
                damaged: 1,
            }],
            refund_cents: 900,
        }));
        round_trip(ReturnsChangelog::from(ReturnsState {
            order_id: "O-1".into(),
            version: 3,
            lines: vec![OrderLine {
                sku: "SKU-1".into(),
                warehouse: "AMS".into(),
                quantity: 2,
                unit_price_cents: 450,
            }],
            cancelled: false,
            delivered_at: Some(7),
            returns: vec![ReturnCase {
                return_id: "R-1".into(),
                status: "Received".into(),
                lines: vec![ReturnLine {
                    sku: "SKU-1".into(),
                    quantity: 2,
                }],
                refund_cents: 900,
            }],
            steps: vec!["a".into()],
        }));
        round_trip(RestockingChangelog::from(RestockingState {
            order_id: "O-1".into(),
            returns: vec!["R-1".into()],
            units: 1,
        }));
    }
}
