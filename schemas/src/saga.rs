//! What each participant of the order-fulfilment saga reads and writes.
//!
//! A participant consumes several topics; its input union lists every record it accepts from
//! any of them (the writer schema id says which record a message is, the topic does not), and
//! [`expected_topic`] says where each may come from, so a record on the wrong topic is
//! refused rather than acted on.

use crate::inventory::{
    DispatchStock, InventoryReleased, InventoryReserved, ReleaseReservation, ReservationRejected,
    ReserveStock, StockReleased, StockReservationFailed, StockReserved,
};
use crate::orders::{
    CancelOrder, OrderCancelled, OrderCancelling, OrderConfirmed, OrderPlaced, PlaceOrder,
};
use crate::payments::{PaymentCaptured, PaymentDeclined, PaymentRefunded};
use crate::record::RecordUnion;
use crate::returns::ReturnReceived;
use crate::shipping::{ShipmentCancelled, ShipmentCreated, ShipmentFailed};
use crate::{record_union, union_metadata};

/// Topics of the saga (database per service: each is written by its owner only).
pub mod topics {
    pub const ORDER_COMMANDS: &str = "orders.commands";
    pub const ORDER_EVENTS: &str = "orders.events";
    pub const INVENTORY_COMMANDS: &str = "inventory.commands";
    pub const INVENTORY_REPLIES: &str = "inventory.replies";
    /// Inventory-internal: per-line outcomes of saga reservations, keyed by saga id
    /// (the reply topic named in the `reply-to` header of the saga's `ReserveStock` commands).
    pub const INVENTORY_RESERVATIONS: &str = "inventory.reservations";
    pub const PAYMENT_REPLIES: &str = "payments.replies";
    pub const SHIPPING_REPLIES: &str = "shipping.replies";
    pub const NOTIFICATION_EVENTS: &str = "notifications.events";
    pub const BILLING_EVENTS: &str = "billing.events";
    pub const CATALOG_COMMANDS: &str = "catalog.commands";
    pub const CATALOG_EVENTS: &str = "catalog.events";
    /// Inventory's low-stock alerts, keyed by sku (read by suppliers).
    pub const INVENTORY_ALERTS: &str = "inventory.alerts";
    /// Purchase orders placed and received, keyed by sku.
    pub const SUPPLIER_EVENTS: &str = "suppliers.events";
    /// Carriers' tracking events, keyed by shipment id: external events (written by outside
    /// producers only, through `POST /events/shipping.tracking`).
    pub const SHIPPING_TRACKING: &str = "shipping.tracking";
}

/// The topic a record of the saga travels on (`None`: not a saga record).
pub fn expected_topic(record_name: &str) -> Option<&'static str> {
    use topics::*;
    let short = record_name.rsplit('.').next().unwrap_or(record_name);
    Some(match short {
        "PlaceOrder" | "CancelOrder" => ORDER_COMMANDS,
        "OrderPlaced"
        | "OrderConfirmed"
        | "OrderCancelling"
        | "OrderCancelled"
        | "OrderCancellationRejected"
        | "OrderProgressed"
        | "OrderFailed"
        | "OrderCompensationRecorded"
        | "OrderReplyIgnored" => ORDER_EVENTS,
        "ReserveStock" | "ReleaseReservation" | "DispatchStock" | "ReceiveStock" => {
            INVENTORY_COMMANDS
        }
        "StockLow" => INVENTORY_ALERTS,
        "PurchaseOrderPlaced" | "PurchaseOrderReceived" => SUPPLIER_EVENTS,
        "StockReserved" | "StockReservationFailed" | "StockReleased" => INVENTORY_REPLIES,
        "InventoryReserved"
        | "ReservationRejected"
        | "InventoryReleased"
        | "InventoryDispatched" => INVENTORY_RESERVATIONS,
        "PaymentCaptured" | "PaymentDeclined" | "PaymentRefunded" => PAYMENT_REPLIES,
        "ShipmentCreated" | "ShipmentFailed" | "ShipmentCancelled" => SHIPPING_REPLIES,
        "ParcelPickedUp" | "DeliveryAttemptFailed" | "ParcelDelivered" => SHIPPING_TRACKING,
        "NotificationSent" => NOTIFICATION_EVENTS,
        "PaymentReceived" | "InvoiceIssued" | "CreditNoteIssued" => BILLING_EVENTS,
        "CreateProduct" | "ChangePrice" | "DiscontinueProduct" => CATALOG_COMMANDS,
        "ProductCreated" | "PriceChanged" | "ProductDiscontinued" | "CatalogCommandRejected" => {
            CATALOG_EVENTS
        }
        // Services outside the order saga say where their records travel.
        other => return crate::returns::expected_topic(other),
    })
}

/// Whether `value` may arrive on `topic`.
pub fn on_expected_topic<T: RecordUnion>(value: &T, topic: &str) -> bool {
    expected_topic(value.record_name()) == Some(topic)
}

record_union! {
    /// What the orders service (the saga's initiator) reads.
    OrdersIn {
        PlaceOrder => "../avro/orders/PlaceOrder.avsc",
        CancelOrder => "../avro/orders/CancelOrder.avsc",
        StockReserved => "../avro/inventory/StockReserved.avsc",
        StockReservationFailed => "../avro/inventory/StockReservationFailed.avsc",
        StockReleased => "../avro/inventory/StockReleased.avsc",
        PaymentCaptured => "../avro/payments/PaymentCaptured.avsc",
        PaymentDeclined => "../avro/payments/PaymentDeclined.avsc",
        PaymentRefunded => "../avro/payments/PaymentRefunded.avsc",
        ShipmentCreated => "../avro/shipping/ShipmentCreated.avsc",
        ShipmentFailed => "../avro/shipping/ShipmentFailed.avsc",
        ShipmentCancelled => "../avro/shipping/ShipmentCancelled.avsc",
    }
}
union_metadata!(OrdersIn {
    PlaceOrder,
    CancelOrder,
    StockReserved,
    StockReservationFailed,
    StockReleased,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    ShipmentCreated,
    ShipmentFailed,
    ShipmentCancelled,
});

record_union! {
    /// What inventory's saga participant reads: orders to reserve, payment outcomes that
    /// call for a release, and the per-line outcomes of its own reservation commands.
    InventorySagaIn {
        OrderPlaced => "../avro/orders/OrderPlaced.avsc",
        PaymentDeclined => "../avro/payments/PaymentDeclined.avsc",
        PaymentRefunded => "../avro/payments/PaymentRefunded.avsc",
        InventoryReserved => "../avro/inventory/InventoryReserved.avsc",
        ReservationRejected => "../avro/inventory/ReservationRejected.avsc",
        InventoryReleased => "../avro/inventory/InventoryReleased.avsc",
        OrderConfirmed => "../avro/orders/OrderConfirmed.avsc",
    }
}
union_metadata!(InventorySagaIn {
    OrderPlaced,
    PaymentDeclined,
    PaymentRefunded,
    InventoryReserved,
    ReservationRejected,
    InventoryReleased,
    OrderConfirmed,
});

record_union! {
    /// What inventory's saga participant writes: per-sku commands and saga replies.
    InventorySagaOut {
        ReserveStock => "../avro/inventory/ReserveStock.avsc",
        ReleaseReservation => "../avro/inventory/ReleaseReservation.avsc",
        StockReserved => "../avro/inventory/StockReserved.avsc",
        StockReservationFailed => "../avro/inventory/StockReservationFailed.avsc",
        StockReleased => "../avro/inventory/StockReleased.avsc",
        DispatchStock => "../avro/inventory/DispatchStock.avsc",
    }
}
union_metadata!(InventorySagaOut {
    ReserveStock,
    ReleaseReservation,
    DispatchStock,
    StockReserved,
    StockReservationFailed,
    StockReleased,
});

record_union! {
    /// What payments reads: reserved orders to charge, shipping outcomes that call for a
    /// refund, and received returns to refund.
    PaymentsIn {
        StockReserved => "../avro/inventory/StockReserved.avsc",
        ShipmentFailed => "../avro/shipping/ShipmentFailed.avsc",
        ShipmentCancelled => "../avro/shipping/ShipmentCancelled.avsc",
        ReturnReceived => "../avro/returns/ReturnReceived.avsc",
    }
}
union_metadata!(PaymentsIn {
    StockReserved,
    ShipmentFailed,
    ShipmentCancelled,
    ReturnReceived
});

record_union! {
    /// What shipping reads: paid orders to ship, cancellations to compensate.
    ShippingIn {
        PaymentCaptured => "../avro/payments/PaymentCaptured.avsc",
        OrderCancelling => "../avro/orders/OrderCancelling.avsc",
    }
}
union_metadata!(ShippingIn {
    PaymentCaptured,
    OrderCancelling
});

record_union! {
    /// What billing reads: captured payments and refunds, confirmed orders.
    BillingIn {
        PaymentCaptured => "../avro/payments/PaymentCaptured.avsc",
        PaymentRefunded => "../avro/payments/PaymentRefunded.avsc",
        OrderConfirmed => "../avro/orders/OrderConfirmed.avsc",
    }
}
union_metadata!(BillingIn {
    PaymentCaptured,
    PaymentRefunded,
    OrderConfirmed
});

record_union! {
    /// What notifications reads: saga outcomes.
    NotificationsIn {
        OrderConfirmed => "../avro/orders/OrderConfirmed.avsc",
        OrderCancelled => "../avro/orders/OrderCancelled.avsc",
    }
}
union_metadata!(NotificationsIn {
    OrderConfirmed,
    OrderCancelled
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{InventoryReply, InventorySagaChangelog};
    use crate::notifications::{NotificationChangelog, NotificationEvent};
    use crate::orders::{OrderChangelog, OrderCommand, OrderEvent};
    use crate::payments::{PaymentChangelog, PaymentReply};
    use crate::shipping::{ShipmentChangelog, ShipmentReply};

    fn names<T: RecordUnion>() -> Vec<&'static str> {
        T::names().iter().map(String::as_str).collect()
    }

    #[test]
    fn every_saga_schema_parses_and_every_message_has_a_topic() {
        // schemas() parses (and panics on an invalid bundled schema).
        let messages = [
            names::<OrderCommand>(),
            names::<OrderEvent>(),
            names::<InventoryReply>(),
            names::<InventorySagaOut>(),
            names::<InventorySagaIn>(),
            names::<PaymentReply>(),
            names::<ShipmentReply>(),
            names::<NotificationEvent>(),
            names::<OrdersIn>(),
            names::<PaymentsIn>(),
            names::<ShippingIn>(),
            names::<NotificationsIn>(),
            names::<BillingIn>(),
            names::<crate::products::CatalogCommand>(),
            names::<crate::products::CatalogEvent>(),
            names::<crate::billing::BillingEvent>(),
            names::<crate::suppliers::SupplierEvent>(),
            names::<crate::suppliers::SuppliersIn>(),
            names::<crate::suppliers::ReceivingIn>(),
            names::<crate::shipping::TrackingEvent>(),
        ];
        for name in messages.iter().flatten() {
            assert!(expected_topic(name).is_some(), "{name} has no topic");
        }
        for state in [
            names::<OrderChangelog>(),
            names::<InventorySagaChangelog>(),
            names::<PaymentChangelog>(),
            names::<ShipmentChangelog>(),
            names::<NotificationChangelog>(),
            names::<crate::billing::BillingChangelog>(),
        ] {
            assert_eq!(state.len(), 1);
        }
        assert_eq!(
            expected_topic("supplychain.orders.PlaceOrder"),
            Some(topics::ORDER_COMMANDS)
        );
    }
}
