//! Each saga participant wired to its topics and store (database per service: a participant
//! writes only its service's topics; `participant::apply` refuses anything else).

use processors::billing::Billing;
use processors::inventory::saga::InventorySaga;
use processors::notifications::Notifications;
use processors::orders::Orders;
use processors::payments::Payments;
use processors::shipping::Shipping;
use schemas::billing::{BillingChangelog, BillingState};
use schemas::inventory::{InventorySagaChangelog, OrderReservation};
use schemas::notifications::{NotificationChangelog, NotificationState};
use schemas::orders::{OrderChangelog, OrderEvent, OrderState};
use schemas::payments::{PaymentChangelog, PaymentReply, PaymentState};
use schemas::saga::InventorySagaOut;
use schemas::saga::topics::*;
use schemas::shipping::{ShipmentChangelog, ShipmentReply, ShipmentState};

use super::participant::Wiring;
use crate::topics::saga::*;

impl Wiring for Orders {
    const NAME: &'static str = "orders";
    const INPUTS: &'static [&'static str] = &[
        ORDER_COMMANDS,
        INVENTORY_REPLIES,
        PAYMENT_REPLIES,
        SHIPPING_REPLIES,
    ];
    const OUTPUTS: &'static [&'static str] = &[ORDER_EVENTS];
    const CHANGELOG: &'static str = ORDERS_CHANGELOG;
    const DLQ: &'static str = ORDERS_DLQ;
    type Changelog = OrderChangelog;
    fn new(opts: &super::Options) -> Self {
        Orders {
            step_timeout_ms: opts.step_timeout.as_millis() as i64,
        }
    }
    fn from_changelog(OrderChangelog::OrderState(s): OrderChangelog) -> OrderState {
        s
    }
    fn state_key(state: &OrderState) -> &str {
        &state.order_id
    }
    /// A confirmed or cancelled order: every later input is ignored or refused (a late
    /// reply, a cancellation), so forgetting it changes no decision but a late reply's
    /// count.
    fn ended(state: &OrderState) -> bool {
        use processors::orders::status::{CANCELLED, CONFIRMED};
        matches!(state.status.as_str(), CONFIRMED | CANCELLED) && state.deadline_at == 0
    }
    fn reply_to(output: &OrderEvent) -> Option<&'static str> {
        match output {
            OrderEvent::OrderPlaced(_) => Some(INVENTORY_REPLIES),
            OrderEvent::OrderCancelling(_) => Some(SHIPPING_REPLIES),
            _ => None,
        }
    }
}

impl Wiring for InventorySaga {
    const NAME: &'static str = "inventory-saga";
    const INPUTS: &'static [&'static str] =
        &[ORDER_EVENTS, PAYMENT_REPLIES, INVENTORY_RESERVATIONS];
    const OUTPUTS: &'static [&'static str] = &[INVENTORY_COMMANDS, INVENTORY_REPLIES];
    const CHANGELOG: &'static str = INVENTORY_SAGA_CHANGELOG;
    const DLQ: &'static str = crate::topics::inventory::DLQ;
    type Changelog = InventorySagaChangelog;
    fn new(_: &super::Options) -> Self {
        InventorySaga
    }
    fn from_changelog(
        InventorySagaChangelog::OrderReservation(s): InventorySagaChangelog,
    ) -> OrderReservation {
        s
    }
    fn state_key(state: &OrderReservation) -> &str {
        &state.order_id
    }
    /// Dispatched, failed, released or compensated: no line is pending, so replies and
    /// order events do nothing, and a late refund's release answers what an unknown order's
    /// would (nothing released).
    fn ended(state: &OrderReservation) -> bool {
        use processors::inventory::saga::status::{COMPENSATED, DISPATCHED, FAILED, RELEASED};
        matches!(
            state.status.as_str(),
            DISPATCHED | FAILED | RELEASED | COMPENSATED
        )
    }
    fn reply_to(output: &InventorySagaOut) -> Option<&'static str> {
        match output {
            InventorySagaOut::ReserveStock(_) | InventorySagaOut::ReleaseReservation(_) => {
                Some(INVENTORY_RESERVATIONS)
            }
            InventorySagaOut::StockReserved(_) => Some(PAYMENT_REPLIES),
            _ => None,
        }
    }
}

impl Wiring for Payments {
    const NAME: &'static str = "payments";
    const INPUTS: &'static [&'static str] = &[
        INVENTORY_REPLIES,
        SHIPPING_REPLIES,
        schemas::returns::topics::EVENTS,
    ];
    const OUTPUTS: &'static [&'static str] = &[PAYMENT_REPLIES];
    const CHANGELOG: &'static str = PAYMENTS_CHANGELOG;
    const DLQ: &'static str = PAYMENTS_DLQ;
    type Changelog = PaymentChangelog;
    fn new(_: &super::Options) -> Self {
        Payments
    }
    fn from_changelog(PaymentChangelog::PaymentState(s): PaymentChangelog) -> PaymentState {
        s
    }
    fn state_key(state: &PaymentState) -> &str {
        &state.order_id
    }
    /// Declined, or refunded in full: nothing is left to charge or refund. A captured payment
    /// never ends (a return may be refunded any time), nor a compensated one (a charge
    /// request still on its way must meet it, not an unknown order).
    fn ended(state: &PaymentState) -> bool {
        use processors::payments::status::{DECLINED, REFUNDED};
        state.status == DECLINED
            || (state.status == REFUNDED && state.refunded_cents >= state.captured_cents)
    }
    fn reply_to(output: &PaymentReply) -> Option<&'static str> {
        match output {
            PaymentReply::PaymentCaptured(_) => Some(SHIPPING_REPLIES),
            _ => Some(INVENTORY_REPLIES),
        }
    }
}

impl Wiring for Shipping {
    const NAME: &'static str = "shipping";
    const INPUTS: &'static [&'static str] = &[PAYMENT_REPLIES, ORDER_EVENTS];
    const OUTPUTS: &'static [&'static str] = &[SHIPPING_REPLIES];
    const CHANGELOG: &'static str = SHIPPING_CHANGELOG;
    const DLQ: &'static str = SHIPPING_DLQ;
    type Changelog = ShipmentChangelog;
    fn new(_: &super::Options) -> Self {
        Shipping
    }
    fn from_changelog(ShipmentChangelog::ShipmentState(s): ShipmentChangelog) -> ShipmentState {
        s
    }
    fn state_key(state: &ShipmentState) -> &str {
        &state.order_id
    }
    /// Cancelled or failed. A created shipment does not end (a cancellation may still come
    /// for it), nor a compensated one (a capture on its way must not ship it).
    fn ended(state: &ShipmentState) -> bool {
        use processors::shipping::status::{CANCELLED, FAILED};
        matches!(state.status.as_str(), CANCELLED | FAILED)
    }
    fn reply_to(output: &ShipmentReply) -> Option<&'static str> {
        match output {
            ShipmentReply::ShipmentCreated(_) => None,
            _ => Some(PAYMENT_REPLIES),
        }
    }
}

impl Wiring for Notifications {
    const NAME: &'static str = "notifications";
    const INPUTS: &'static [&'static str] = &[ORDER_EVENTS];
    const OUTPUTS: &'static [&'static str] = &[NOTIFICATION_EVENTS];
    const CHANGELOG: &'static str = NOTIFICATIONS_CHANGELOG;
    const DLQ: &'static str = NOTIFICATIONS_DLQ;
    type Changelog = NotificationChangelog;
    fn new(_: &super::Options) -> Self {
        Notifications
    }
    fn from_changelog(
        NotificationChangelog::NotificationState(s): NotificationChangelog,
    ) -> NotificationState {
        s
    }
    fn state_key(state: &NotificationState) -> &str {
        &state.order_id
    }
    /// Sent: an order has one outcome, notified once.
    fn ended(state: &NotificationState) -> bool {
        !state.sent.is_empty()
    }
}

impl Wiring for Billing {
    const NAME: &'static str = "billing";
    const INPUTS: &'static [&'static str] = &[PAYMENT_REPLIES, ORDER_EVENTS];
    const OUTPUTS: &'static [&'static str] = &[BILLING_EVENTS];
    const CHANGELOG: &'static str = BILLING_CHANGELOG;
    const DLQ: &'static str = BILLING_DLQ;
    type Changelog = BillingChangelog;
    fn new(_: &super::Options) -> Self {
        Billing
    }
    fn from_changelog(BillingChangelog::BillingState(s): BillingChangelog) -> BillingState {
        s
    }
    fn state_key(state: &BillingState) -> &str {
        &state.order_id
    }
    /// Everything received credited back: no refund can follow. A paid order keeps its
    /// state (a return may be credited any time).
    fn ended(state: &BillingState) -> bool {
        state.received_cents > 0 && state.credited_cents >= state.received_cents
    }
}

impl Wiring for processors::catalog::Catalog {
    const NAME: &'static str = "catalog";
    const INPUTS: &'static [&'static str] = &[CATALOG_COMMANDS];
    const OUTPUTS: &'static [&'static str] = &[CATALOG_EVENTS];
    const CHANGELOG: &'static str = CATALOG_CHANGELOG;
    const DLQ: &'static str = CATALOG_DLQ;
    type Changelog = schemas::products::CatalogChangelog;
    fn new(_: &super::Options) -> Self {
        processors::catalog::Catalog
    }
    fn from_changelog(
        schemas::products::CatalogChangelog::ProductState(s): Self::Changelog,
    ) -> schemas::products::ProductState {
        s
    }
    fn state_key(state: &schemas::products::ProductState) -> &str {
        &state.sku
    }
}

impl Wiring for processors::suppliers::Suppliers {
    const NAME: &'static str = "suppliers";
    const INPUTS: &'static [&'static str] = &[INVENTORY_ALERTS];
    const OUTPUTS: &'static [&'static str] = &[SUPPLIER_EVENTS];
    const CHANGELOG: &'static str = SUPPLIERS_CHANGELOG;
    const DLQ: &'static str = SUPPLIERS_DLQ;
    type Changelog = schemas::suppliers::SuppliersChangelog;
    fn new(opts: &super::Options) -> Self {
        processors::suppliers::Suppliers {
            lead_time_ms: opts.lead_time.as_millis() as i64,
            reorder_quantity: opts.reorder_quantity,
        }
    }
    fn from_changelog(
        schemas::suppliers::SuppliersChangelog::SupplyState(s): Self::Changelog,
    ) -> schemas::suppliers::SupplyState {
        s
    }
    fn state_key(state: &schemas::suppliers::SupplyState) -> &str {
        &state.sku
    }
}

impl Wiring for processors::inventory::receiving::Receiving {
    const NAME: &'static str = "inventory-receiving";
    const INPUTS: &'static [&'static str] = &[SUPPLIER_EVENTS];
    const OUTPUTS: &'static [&'static str] = &[INVENTORY_COMMANDS];
    const CHANGELOG: &'static str = crate::topics::inventory::RECEIVING_CHANGELOG;
    const DLQ: &'static str = crate::topics::inventory::DLQ;
    type Changelog = schemas::inventory::InventoryReceivingChangelog;
    fn new(_: &super::Options) -> Self {
        processors::inventory::receiving::Receiving
    }
    fn from_changelog(
        schemas::inventory::InventoryReceivingChangelog::ReceivingState(s): Self::Changelog,
    ) -> schemas::inventory::ReceivingState {
        s
    }
    fn state_key(state: &schemas::inventory::ReceivingState) -> &str {
        &state.sku
    }
}
