//! Orders service records: commands on `orders.commands`, events on `orders.events`, the order
//! aggregate (which is also the fulfilment saga's state) on `orders.changelog`, and the
//! [`OrderContext`] that travels with the saga's forward messages.

use serde::{Deserialize, Serialize};

use crate::{record_union, records, union_metadata};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub warehouse: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// What the saga participants need of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderContext {
    pub order_id: String,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    /// Card token; the payments rule declines tokens starting with `declined`.
    pub payment_method: String,
    pub ship_to_country: String,
    pub ship_to_postcode: String,
}

records! {
    /// Command: a customer places an order; starts the fulfilment saga (saga id = order id).
    PlaceOrder {
        order_id: String, customer_id: String, lines: Vec<OrderLine>, payment_method: String,
        ship_to_country: String, ship_to_postcode: String,
    }
    /// Command: the customer cancels an order that is not yet confirmed.
    CancelOrder { order_id: String, reason: String }

    /// Event: an order was accepted; inventory reserves its lines next.
    OrderPlaced {
        order: OrderContext,
        /// When the current step times out (epoch ms).
        deadline_at: i64,
    }
    /// Event: every step succeeded; the saga ended Confirmed.
    OrderConfirmed {
        order_id: String, customer_id: String, total_cents: i64, shipment_id: String, carrier: String,
    }
    /// Event: the saga is compensating: shipping cancels, payments refunds, inventory releases.
    OrderCancelling {
        order_id: String, reason: String,
        /// Step the saga was at.
        step: String,
        /// 1 for the first request; higher for retries of a stuck compensation.
        attempt: i32,
        /// When this round times out and is asked again (epoch ms; v2, 0 in v1 records).
        deadline_at: i64,
    }
    /// Event: a forward reply moved the saga on (`Reserved`, `Paid`).
    OrderProgressed {
        order_id: String, status: String,
        /// When the next step times out (epoch ms).
        deadline_at: i64,
    }
    /// Event: a participant failed a step; the participants before it compensate on their
    /// own and the order waits for inventory's `StockReleased`.
    OrderFailed { order_id: String, reason: String, step: String, deadline_at: i64 }
    /// Event: a compensating reply reached the order.
    OrderCompensationRecorded {
        order_id: String,
        /// What was undone; `None` when the reply undid nothing.
        compensation: Option<String>,
        /// Inventory answered `StockReleased`: the last compensation of every chain is done.
        released: bool,
    }
    /// Event: a reply came after the saga had moved past it and was ignored.
    OrderReplyIgnored {
        order_id: String,
        /// Record name of the reply.
        reply: String,
        /// Status of the saga when it came.
        status: String,
    }
    /// Event: compensations finished; the saga ended Cancelled.
    OrderCancelled {
        order_id: String, customer_id: String, reason: String,
        /// Compensating replies received, in order.
        compensations: Vec<String>,
    }
    /// Event: a cancellation came too late (the order is confirmed) and was refused.
    OrderCancellationRejected { order_id: String, reason: String }
}

/// Changelog record: the order aggregate, which is also the saga's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: String,
    pub version: i64,
    /// Placed, Reserved, Paid, Confirmed, Compensating, Cancelled.
    pub status: String,
    pub order: OrderContext,
    /// Deadline of the current step (epoch ms); 0 when none.
    pub deadline_at: i64,
    /// Compensation requests sent so far.
    pub attempts: i32,
    pub reason: Option<String>,
    pub compensations: Vec<String>,
    /// Saga steps already handled (dedup).
    pub steps: Vec<String>,
    pub late_replies: i32,
    /// Inventory answered `StockReleased`: the last compensation of every chain is done.
    pub released: bool,
    pub shipment_id: Option<String>,
    pub carrier: Option<String>,
}

record_union! {
    /// Everything `orders.commands` may carry.
    OrderCommand {
        PlaceOrder => "../avro/orders/PlaceOrder.avsc",
        CancelOrder => "../avro/orders/CancelOrder.avsc",
    }
}
union_metadata!(OrderCommand {
    PlaceOrder,
    CancelOrder
});

impl OrderCommand {
    /// The order (and saga) id; also the Kafka key.
    pub fn order_id(&self) -> &str {
        match self {
            OrderCommand::PlaceOrder(c) => &c.order_id,
            OrderCommand::CancelOrder(c) => &c.order_id,
        }
    }
}

record_union! {
    /// Everything `orders.events` may carry.
    OrderEvent {
        OrderPlaced => "../avro/orders/OrderPlaced.avsc",
        OrderConfirmed => "../avro/orders/OrderConfirmed.avsc",
        OrderCancelling => "../avro/orders/OrderCancelling.avsc",
        OrderCancelled => "../avro/orders/OrderCancelled.avsc",
        OrderCancellationRejected => "../avro/orders/OrderCancellationRejected.avsc",
        OrderProgressed => "../avro/orders/OrderProgressed.avsc",
        OrderFailed => "../avro/orders/OrderFailed.avsc",
        OrderCompensationRecorded => "../avro/orders/OrderCompensationRecorded.avsc",
        OrderReplyIgnored => "../avro/orders/OrderReplyIgnored.avsc",
    }
}
union_metadata!(OrderEvent {
    OrderPlaced,
    OrderConfirmed,
    OrderCancelling,
    OrderCancelled,
    OrderCancellationRejected,
    OrderProgressed,
    OrderFailed,
    OrderCompensationRecorded,
    OrderReplyIgnored,
});

record_union! {
    /// Everything `orders.changelog` may carry.
    OrderChangelog { OrderState => "../avro/orders/OrderState.avsc" }
}
