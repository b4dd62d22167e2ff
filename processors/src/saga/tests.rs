//! The whole choreography without a broker: a tiny in-memory bus routes every published
//! message to the participants that listen on its topic, including the per-sku inventory
//! aggregates, so each rule and each compensation is checked end to end in microseconds.

use std::collections::{BTreeMap, HashMap, VecDeque};

use schemas::Metadata;
use schemas::inventory::*;
use schemas::notifications::*;
use schemas::orders::*;
use schemas::payments::*;
use schemas::saga::*;
use schemas::shipping::*;

use super::{Participant, Reaction};
use crate::Aggregate;
use crate::inventory::SkuInventory;
use crate::inventory::saga::InventorySaga;
use crate::notifications::Notifications;
use crate::orders::{Orders, status};
use crate::payments::Payments;
use crate::shipping::Shipping;

#[derive(Debug, Clone)]
enum Msg {
    OrderCmd(OrderCommand),
    OrderEvt(OrderEvent),
    InvCmd(InventoryCommand),
    InvLine(InventoryEvent),
    InvReply(InventoryReply),
    Pay(PaymentReply),
    Ship(ShipmentReply),
}

#[derive(Default)]
struct Bus {
    now: i64,
    /// Messages, each for every listener (`None`) or one.
    queue: VecDeque<(Option<&'static str>, Msg)>,
    /// Deliver every message twice.
    duplicate: bool,
    /// Interleave topics at random (seeded), keeping each topic's order, as consumers of
    /// several topics see them.
    shuffle: Option<u64>,
    /// Participants that are down: their messages wait in `held`.
    down: Vec<&'static str>,
    held: Vec<(&'static str, Msg)>,
    orders: HashMap<String, OrderState>,
    reservations: HashMap<String, OrderReservation>,
    payments: HashMap<String, PaymentState>,
    shipments: HashMap<String, ShipmentState>,
    notified: HashMap<String, NotificationState>,
    skus: BTreeMap<String, SkuInventory>,
    notifications: Vec<NotificationSent>,
    payment_replies: Vec<PaymentReply>,
    shipment_replies: Vec<ShipmentReply>,
    order_events: Vec<OrderEvent>,
}

fn run<P: Participant>(
    p: &P,
    states: &mut HashMap<String, P::State>,
    key: &str,
    input: &P::Input,
    now: i64,
) -> Vec<P::Output>
where
    P::State: Clone,
{
    let Reaction { state, emit } = p.handle(states.get(key), input, now).expect("valid");
    if let Some(s) = state {
        states.insert(key.to_owned(), s);
    }
    emit
}

fn saga_of(m: &Metadata) -> String {
    m.saga_id.clone().unwrap_or_else(|| m.aggregate_id.clone())
}

impl Bus {
    fn new() -> Self {
        let mut bus = Bus {
            now: 1_000_000,
            ..Bus::default()
        };
        for sku in ["SKU-1", "SKU-2"] {
            let receive = InventoryCommand::ReceiveStock(ReceiveStock {
                metadata: Metadata::command(&format!("rcv-{sku}"), sku, 0),
                sku: sku.into(),
                warehouse: "AMS".into(),
                quantity: 10,
            });
            bus.publish(Msg::InvCmd(receive));
        }
        bus.drain();
        bus
    }

    fn publish(&mut self, m: Msg) {
        self.queue.push_back((None, m));
    }

    /// The participants that listen to a message's topic.
    fn listeners(m: &Msg) -> &'static [&'static str] {
        match m {
            Msg::OrderCmd(_) => &["orders"],
            Msg::OrderEvt(OrderEvent::OrderPlaced(_)) => &["inventory"],
            Msg::OrderEvt(OrderEvent::OrderCancelling(_)) => &["shipping"],
            Msg::OrderEvt(OrderEvent::OrderConfirmed(_)) => &["notifications", "inventory"],
            Msg::OrderEvt(_) => &["notifications"],
            Msg::InvCmd(_) | Msg::InvLine(_) => &["inventory"],
            Msg::InvReply(_) => &["orders", "payments"],
            Msg::Pay(_) => &["orders", "shipping", "inventory"],
            Msg::Ship(_) => &["orders", "payments"],
        }
    }

    /// The topic a message travels on (order is kept per topic, not across).
    fn lane(m: &Msg) -> u8 {
        match m {
            Msg::OrderCmd(_) => 0,
            Msg::OrderEvt(_) => 1,
            Msg::InvCmd(_) => 2,
            Msg::InvLine(_) => 3,
            Msg::InvReply(_) => 4,
            Msg::Pay(_) => 5,
            Msg::Ship(_) => 6,
        }
    }

    fn next(&mut self) -> Option<(Option<&'static str>, Msg)> {
        let Some(seed) = self.shuffle.as_mut() else {
            return self.queue.pop_front();
        };
        let mut lanes: Vec<u8> = self.queue.iter().map(|(_, m)| Self::lane(m)).collect();
        lanes.sort_unstable();
        lanes.dedup();
        if lanes.is_empty() {
            return None;
        }
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let lane = lanes[(*seed % lanes.len() as u64) as usize];
        let at = self.queue.iter().position(|(_, m)| Self::lane(m) == lane)?;
        self.queue.remove(at)
    }

    fn drain(&mut self) {
        while let Some((only, m)) = self.next() {
            if let (Msg::Pay(r), None) = (&m, only) {
                self.payment_replies.push(r.clone());
            }
            for &to in Self::listeners(&m) {
                if only.is_some_and(|o| o != to) {
                    continue;
                }
                if self.down.contains(&to) {
                    self.held.push((to, m.clone()));
                    continue;
                }
                let times = if self.duplicate { 2 } else { 1 };
                for _ in 0..times {
                    self.deliver(to, m.clone());
                }
            }
        }
        self.assert_event_sourced();
    }

    /// Every order, payment and shipment equals the fold of its service's own events: what
    /// a rebuild from `orders.events`, `payments.replies` and `shipping.replies` yields.
    fn assert_event_sourced(&self) {
        let mut orders: HashMap<String, OrderState> = HashMap::new();
        for e in &self.order_events {
            let key = saga_of(e.metadata());
            if let Some(s) = crate::orders::evolve(orders.get(&key), e) {
                orders.insert(key, s);
            }
        }
        assert_eq!(
            orders, self.orders,
            "orders differ from the fold of orders.events"
        );
        let mut payments: HashMap<String, PaymentState> = HashMap::new();
        for r in &self.payment_replies {
            let key = saga_of(r.metadata());
            let s = crate::payments::evolve(payments.get(&key), r);
            payments.insert(key, s);
        }
        assert_eq!(
            payments, self.payments,
            "payments differ from the fold of payments.replies"
        );
        let mut shipments: HashMap<String, ShipmentState> = HashMap::new();
        for r in &self.shipment_replies {
            let key = saga_of(r.metadata());
            let s = crate::shipping::evolve(shipments.get(&key), r);
            shipments.insert(key, s);
        }
        assert_eq!(
            shipments, self.shipments,
            "shipments differ from the fold of shipping.replies"
        );
    }

    fn restart(&mut self, service: &str) {
        self.down.retain(|d| *d != service);
        let held = std::mem::take(&mut self.held);
        self.queue
            .extend(held.into_iter().map(|(to, m)| (Some(to), m)));
        self.drain();
    }

    fn tick(&mut self, ms: i64) {
        self.now += ms;
        let orders = Orders::default();
        let states: Vec<OrderState> = self.orders.values().cloned().collect();
        for s in states {
            if orders.deadline(&s).is_some_and(|d| d <= self.now) {
                let Reaction { state, emit } = orders.expire(&s, self.now);
                if let Some(n) = state {
                    self.orders.insert(n.order_id.clone(), n);
                }
                for e in emit {
                    self.order_events.push(e.clone());
                    self.publish(Msg::OrderEvt(e));
                }
            }
        }
        self.drain();
    }

    /// Hands `m` to participant `to`.
    fn deliver(&mut self, to: &str, m: Msg) {
        let mut out = Vec::new();
        match (to, m) {
            ("orders", Msg::OrderCmd(c)) => {
                let input: OrdersIn = match c {
                    OrderCommand::PlaceOrder(x) => x.into(),
                    OrderCommand::CancelOrder(x) => x.into(),
                };
                self.orders_in(input, &mut out);
            }
            ("inventory", Msg::OrderEvt(OrderEvent::OrderPlaced(x))) => {
                self.inventory_saga(x.into(), &mut out)
            }
            ("shipping", Msg::OrderEvt(OrderEvent::OrderCancelling(x))) => {
                self.shipping_in(x.into(), &mut out)
            }
            ("notifications", Msg::OrderEvt(OrderEvent::OrderConfirmed(x))) => {
                self.notify(x.into())
            }
            ("inventory", Msg::OrderEvt(OrderEvent::OrderConfirmed(x))) => {
                self.inventory_saga(x.into(), &mut out)
            }
            ("notifications", Msg::OrderEvt(OrderEvent::OrderCancelled(x))) => {
                self.notify(x.into())
            }
            ("inventory", Msg::InvCmd(c)) => {
                let sku = c.sku().to_owned();
                let agg = self
                    .skus
                    .entry(sku.clone())
                    .or_insert_with(|| SkuInventory::new(&sku));
                let events = agg.handle(&c).expect("valid command");
                for e in &events {
                    agg.apply(e);
                }
                // The per-sku answers to saga commands go to the reply topic (keyed by saga).
                if c.metadata().saga_id.is_some() {
                    out.extend(events.into_iter().map(Msg::InvLine));
                }
            }
            ("inventory", Msg::InvLine(e)) => {
                let input: Option<InventorySagaIn> = match e {
                    InventoryEvent::InventoryReserved(x) => Some(x.into()),
                    InventoryEvent::ReservationRejected(x) => Some(x.into()),
                    InventoryEvent::InventoryReleased(x) => Some(x.into()),
                    _ => None,
                };
                if let Some(input) = input {
                    self.inventory_saga(input, &mut out);
                }
            }
            ("orders", Msg::InvReply(r)) => {
                let input: OrdersIn = match r {
                    InventoryReply::StockReserved(x) => x.into(),
                    InventoryReply::StockReservationFailed(x) => x.into(),
                    InventoryReply::StockReleased(x) => x.into(),
                };
                self.orders_in(input, &mut out);
            }
            ("payments", Msg::InvReply(InventoryReply::StockReserved(x))) => {
                self.payments_in(x.into(), &mut out)
            }
            ("orders", Msg::Pay(r)) => {
                let input: OrdersIn = match r {
                    PaymentReply::PaymentCaptured(x) => x.into(),
                    PaymentReply::PaymentDeclined(x) => x.into(),
                    PaymentReply::PaymentRefunded(x) => x.into(),
                };
                self.orders_in(input, &mut out);
            }
            ("shipping", Msg::Pay(PaymentReply::PaymentCaptured(x))) => {
                self.shipping_in(x.into(), &mut out)
            }
            ("inventory", Msg::Pay(PaymentReply::PaymentDeclined(x))) => {
                self.inventory_saga(x.into(), &mut out)
            }
            ("inventory", Msg::Pay(PaymentReply::PaymentRefunded(x))) => {
                self.inventory_saga(x.into(), &mut out)
            }
            ("orders", Msg::Ship(r)) => {
                let input: OrdersIn = match r {
                    ShipmentReply::ShipmentCreated(x) => x.into(),
                    ShipmentReply::ShipmentFailed(x) => x.into(),
                    ShipmentReply::ShipmentCancelled(x) => x.into(),
                };
                self.orders_in(input, &mut out);
            }
            ("payments", Msg::Ship(ShipmentReply::ShipmentFailed(x))) => {
                self.payments_in(x.into(), &mut out)
            }
            ("payments", Msg::Ship(ShipmentReply::ShipmentCancelled(x))) => {
                self.payments_in(x.into(), &mut out)
            }
            _ => {} // a record this participant does not act on
        }
        self.queue.extend(out.into_iter().map(|m| (None, m)));
    }

    fn shipping_in(&mut self, input: ShippingIn, out: &mut Vec<Msg>) {
        let key = saga_of(input.metadata());
        for r in run(&Shipping, &mut self.shipments, &key, &input, self.now) {
            self.shipment_replies.push(r.clone());
            out.push(Msg::Ship(r));
        }
    }

    fn orders_in(&mut self, input: OrdersIn, out: &mut Vec<Msg>) {
        let key = saga_of(input.metadata());
        for e in run(&Orders::default(), &mut self.orders, &key, &input, self.now) {
            self.order_events.push(e.clone());
            out.push(Msg::OrderEvt(e));
        }
    }

    fn payments_in(&mut self, input: PaymentsIn, out: &mut Vec<Msg>) {
        let key = saga_of(input.metadata());
        for r in run(&Payments, &mut self.payments, &key, &input, self.now) {
            out.push(Msg::Pay(r));
        }
    }

    fn inventory_saga(&mut self, input: InventorySagaIn, out: &mut Vec<Msg>) {
        let key = saga_of(input.metadata());
        for o in run(
            &InventorySaga,
            &mut self.reservations,
            &key,
            &input,
            self.now,
        ) {
            out.push(match o {
                InventorySagaOut::ReserveStock(c) => Msg::InvCmd(c.into()),
                InventorySagaOut::ReleaseReservation(c) => Msg::InvCmd(c.into()),
                InventorySagaOut::StockReserved(r) => Msg::InvReply(r.into()),
                InventorySagaOut::StockReservationFailed(r) => Msg::InvReply(r.into()),
                InventorySagaOut::StockReleased(r) => Msg::InvReply(r.into()),
                InventorySagaOut::DispatchStock(c) => Msg::InvCmd(c.into()),
            });
        }
    }

    fn notify(&mut self, input: NotificationsIn) {
        let key = saga_of(input.metadata());
        for NotificationEvent::NotificationSent(n) in
            run(&Notifications, &mut self.notified, &key, &input, self.now)
        {
            self.notifications.push(n);
        }
    }

    fn place(&mut self, id: &str, qty: [i64; 2], card: &str, country: &str) {
        let lines = ["SKU-1", "SKU-2"]
            .iter()
            .zip(qty)
            .filter(|(_, q)| *q > 0)
            .map(|(sku, q)| OrderLine {
                sku: (*sku).into(),
                warehouse: "AMS".into(),
                quantity: q,
                unit_price_cents: 250,
            })
            .collect();
        self.publish(Msg::OrderCmd(
            PlaceOrder {
                metadata: Metadata::command(&format!("place-{id}"), id, self.now),
                order_id: id.into(),
                customer_id: "C-1".into(),
                lines,
                payment_method: card.into(),
                ship_to_country: country.into(),
                ship_to_postcode: "1011".into(),
            }
            .into(),
        ));
    }

    fn cancel(&mut self, id: &str) {
        self.publish(Msg::OrderCmd(
            CancelOrder {
                metadata: Metadata::command(&format!("cancel-{id}"), id, self.now),
                order_id: id.into(),
                reason: "changed my mind".into(),
            }
            .into(),
        ));
    }

    fn status(&self, id: &str) -> &str {
        &self.orders[id].status
    }

    fn available(&self, sku: &str) -> i64 {
        self.skus[sku].position("AMS").available()
    }

    fn on_hand(&self, sku: &str) -> i64 {
        self.skus[sku].position("AMS").on_hand
    }

    fn reserved(&self) -> i64 {
        self.skus.values().map(|s| s.position("AMS").reserved).sum()
    }

    /// captured − refunded, from the replies.
    fn net_charged(&self) -> i64 {
        self.payment_replies
            .iter()
            .map(|r| match r {
                PaymentReply::PaymentCaptured(c) => c.amount_cents,
                PaymentReply::PaymentRefunded(r) => -r.amount_cents,
                PaymentReply::PaymentDeclined(_) => 0,
            })
            .sum()
    }

    fn notification_kinds(&self, id: &str) -> Vec<&str> {
        self.notifications
            .iter()
            .filter(|n| n.order_id == id)
            .map(|n| n.kind.as_str())
            .collect()
    }
}

#[test]
fn a_good_order_is_reserved_charged_shipped_confirmed_and_notified_once() {
    let mut bus = Bus::new();
    bus.place("O-1", [2, 1], "visa-1", "NL");
    bus.drain();
    assert_eq!(bus.status("O-1"), status::CONFIRMED);
    assert_eq!(bus.orders["O-1"].carrier.as_deref(), Some("PostNL"));
    assert_eq!((bus.available("SKU-1"), bus.available("SKU-2")), (8, 9));
    // Confirmed and handed to the carrier: the lines left the warehouse, nothing stays held.
    assert_eq!(bus.reserved(), 0);
    assert_eq!((bus.on_hand("SKU-1"), bus.on_hand("SKU-2")), (8, 9));
    assert_eq!(bus.net_charged(), 750);
    assert_eq!(bus.notification_kinds("O-1"), ["confirmation"]);
    assert_eq!(
        bus.orders["O-1"].deadline_at, 0,
        "a finished saga has no deadline"
    );
}

#[test]
fn a_stock_out_cancels_without_holding_anything() {
    let mut bus = Bus::new();
    bus.place("O-1", [2, 11], "visa-1", "NL"); // SKU-2 has only 10
    bus.drain();
    assert_eq!(bus.status("O-1"), status::CANCELLED);
    let reason = bus.orders["O-1"].reason.clone().unwrap();
    assert!(
        reason.contains("out of stock") && reason.contains("SKU-2"),
        "{reason}"
    );
    assert_eq!(bus.reserved(), 0, "the reserved line of SKU-1 was released");
    assert_eq!(bus.available("SKU-1"), 10);
    assert_eq!(bus.net_charged(), 0);
    assert!(bus.payments.is_empty(), "payments never heard of it");
    assert_eq!(bus.notification_kinds("O-1"), ["cancellation"]);
}

#[test]
fn a_declined_payment_releases_the_stock() {
    let mut bus = Bus::new();
    bus.place("O-1", [2, 1], "declined-card", "NL");
    bus.drain();
    assert_eq!(bus.status("O-1"), status::CANCELLED);
    assert!(
        bus.orders["O-1"]
            .reason
            .as_ref()
            .unwrap()
            .contains("declined")
    );
    assert_eq!(bus.orders["O-1"].compensations, ["released 2 lines"]);
    assert_eq!(bus.reserved(), 0);
    assert_eq!(bus.net_charged(), 0);
    assert!(bus.shipments.is_empty(), "shipping never heard of it");
    assert_eq!(bus.notification_kinds("O-1"), ["cancellation"]);
}

#[test]
fn a_failed_shipment_refunds_then_releases() {
    let mut bus = Bus::new();
    bus.place("O-1", [1, 1], "visa-1", "XX");
    bus.drain();
    assert_eq!(bus.status("O-1"), status::CANCELLED);
    assert_eq!(
        bus.orders["O-1"].compensations,
        ["refunded 500 cents", "released 2 lines"]
    );
    assert_eq!(bus.reserved(), 0);
    assert_eq!(bus.net_charged(), 0);
    assert_eq!(
        bus.payments["O-1"].status,
        crate::payments::status::REFUNDED
    );
}

#[test]
fn a_customer_cancellation_at_any_step_runs_the_compensations_in_reverse() {
    // Stop the saga at each participant by keeping the next one down, cancel, then let
    // everything run.
    for (down, expected) in [
        // Inventory hears the order, then the refund: it reserves, then releases.
        ("inventory", vec!["released 1 lines"]),
        // Payments hears the charge request, then the cancellation: charges, then refunds.
        ("payments", vec!["refunded 250 cents", "released 1 lines"]),
        // Shipping creates the shipment, then cancels it: the full chain, in reverse.
        (
            "shipping",
            vec![
                "shipment SHP-O-1 cancelled",
                "refunded 250 cents",
                "released 1 lines",
            ],
        ),
    ] {
        let mut bus = Bus::new();
        bus.down.push(down);
        bus.place("O-1", [1, 0], "visa-1", "DE");
        bus.drain();
        bus.cancel("O-1");
        bus.drain();
        assert_eq!(bus.status("O-1"), status::COMPENSATING, "{down}");
        bus.restart(down);
        assert_eq!(bus.status("O-1"), status::CANCELLED, "{down}");
        assert_eq!(bus.orders["O-1"].compensations, expected, "{down}");
        assert_eq!(bus.reserved(), 0, "{down}");
        assert_eq!(bus.net_charged(), 0, "{down}");
        assert_eq!(bus.notification_kinds("O-1"), ["cancellation"], "{down}");
        assert!(bus.orders["O-1"].late_replies <= 1, "{down}");
    }
}

#[test]
fn a_cancellation_after_confirmation_is_refused() {
    let mut bus = Bus::new();
    bus.place("O-1", [1, 0], "visa-1", "FR");
    bus.drain();
    bus.cancel("O-1");
    bus.drain();
    assert_eq!(bus.status("O-1"), status::CONFIRMED);
    assert!(matches!(
        bus.order_events.last(),
        Some(OrderEvent::OrderCancellationRejected(_))
    ));
    assert_eq!(bus.notification_kinds("O-1"), ["confirmation"]);
}

#[test]
fn a_step_past_its_deadline_compensates_and_late_replies_do_not_resurrect_the_saga() {
    let mut bus = Bus::new();
    bus.down.push("payments");
    bus.place("O-1", [1, 1], "visa-1", "DE");
    bus.drain();
    assert_eq!(bus.status("O-1"), status::RESERVED);
    bus.tick(29_999);
    assert_eq!(
        bus.status("O-1"),
        status::RESERVED,
        "not before the deadline"
    );
    bus.tick(1);
    // Timed out: shipping cancelled (nothing), payments is still down: stuck compensating.
    assert_eq!(bus.status("O-1"), status::COMPENSATING);
    bus.tick(30_000);
    assert_eq!(
        bus.orders["O-1"].attempts, 2,
        "the compensation is retried, not forgotten"
    );
    // Payments comes back: it sees the old charge request and the cancellations.
    bus.restart("payments");
    assert_eq!(bus.status("O-1"), status::CANCELLED);
    assert_eq!(bus.reserved(), 0);
    assert_eq!(
        bus.net_charged(),
        0,
        "a late charge is refunded or never made"
    );
    assert_eq!(bus.notification_kinds("O-1"), ["cancellation"]);
    assert!(bus.orders["O-1"].late_replies >= 1 || bus.payments["O-1"].captured_cents == 0);
}

#[test]
fn every_message_delivered_twice_ends_in_the_same_state() {
    let scenario = |duplicate: bool| {
        let mut bus = Bus::new();
        bus.duplicate = duplicate;
        bus.place("O-1", [1, 1], "visa-1", "NL");
        bus.place("O-2", [1, 20], "visa-1", "NL");
        bus.place("O-3", [1, 1], "declined", "NL");
        bus.place("O-4", [1, 1], "visa-1", "XX");
        bus.drain();
        let statuses: Vec<String> = ["O-1", "O-2", "O-3", "O-4"]
            .iter()
            .map(|o| format!("{o}:{}:{:?}", bus.status(o), bus.orders[*o].compensations))
            .collect();
        let notified: Vec<usize> = ["O-1", "O-2", "O-3", "O-4"]
            .iter()
            .map(|o| bus.notification_kinds(o).len())
            .collect();
        (
            statuses,
            notified,
            bus.reserved(),
            bus.available("SKU-1"),
            bus.payments["O-1"].captured_cents,
        )
    };
    let once = scenario(false);
    assert_eq!(once.1, [1, 1, 1, 1]);
    assert_eq!(scenario(true), once);
}

#[test]
fn an_invalid_order_names_the_field() {
    let orders = Orders::default();
    let bad = OrdersIn::from(PlaceOrder {
        metadata: Metadata::command("c", "O-1", 0),
        order_id: "O-1".into(),
        customer_id: "C".into(),
        lines: vec![OrderLine {
            sku: "S".into(),
            warehouse: "W".into(),
            quantity: 0,
            unit_price_cents: 1,
        }],
        payment_method: "visa".into(),
        ship_to_country: "NL".into(),
        ship_to_postcode: "1".into(),
    });
    let e = orders.handle(None, &bad, 0).unwrap_err();
    assert!(e.reason.contains("lines[0].quantity"), "{e}");
}

#[test]
fn a_repeated_charge_request_charges_once() {
    let p = Payments;
    let order = OrderContext {
        order_id: "O-1".into(),
        customer_id: "C".into(),
        lines: vec![],
        total_cents: 100,
        payment_method: "visa".into(),
        ship_to_country: "NL".into(),
        ship_to_postcode: "1".into(),
    };
    let request = |id: &str| {
        PaymentsIn::from(StockReserved {
            metadata: Metadata {
                saga_id: Some("O-1".into()),
                ..Metadata::command(id, "O-1", 0)
            },
            order: order.clone(),
        })
    };
    let first = p.handle(None, &request("a"), 0).unwrap();
    let state = first.state.unwrap();
    assert_eq!(first.emit.len(), 1);
    // The same message again, and a different message for the same step.
    assert_eq!(
        p.handle(Some(&state), &request("a"), 0).unwrap(),
        Reaction::none()
    );
    // Charges nothing and changes nothing: the payment stays the fold of its one reply.
    assert_eq!(
        p.handle(Some(&state), &request("b"), 0).unwrap(),
        Reaction::none()
    );
    assert_eq!(state.captured_cents, 100);
}

#[test]
fn replies_arriving_in_any_order_across_topics_end_the_same() {
    let scenario = |shuffle: Option<u64>| {
        let mut bus = Bus::new();
        bus.shuffle = shuffle;
        let cards = ["visa", "declined", "visa", "visa", "visa"];
        let countries = ["NL", "NL", "XX", "DE", "FR"];
        for (i, (card, country)) in cards.iter().zip(countries).enumerate() {
            let qty = if i == 3 { [1, 20] } else { [1, 1] };
            bus.place(&format!("O-{i}"), qty, card, country);
        }
        bus.cancel("O-4");
        bus.drain();
        let endings: Vec<(String, Option<String>)> = (0..5)
            .map(|i| {
                let s = &bus.orders[&format!("O-{i}")];
                (
                    s.status.clone(),
                    s.reason.clone().map(|r| r[..10].to_owned()),
                )
            })
            .collect();
        let notified: Vec<usize> = (0..5)
            .map(|i| bus.notification_kinds(&format!("O-{i}")).len())
            .collect();
        (endings, notified, bus.reserved(), bus.net_charged())
    };
    let ordered = scenario(None);
    assert_eq!(ordered.1, [1; 5]);
    for seed in 1..200 {
        assert_eq!(scenario(Some(seed)), ordered, "interleaving {seed}");
    }
}

#[test]
fn a_cancellation_for_an_older_version_is_rejected_not_applied() {
    let orders = Orders::default();
    let place: OrdersIn = PlaceOrder {
        metadata: Metadata::command("place-O-9", "O-9", 0),
        order_id: "O-9".into(),
        customer_id: "C-1".into(),
        lines: vec![OrderLine {
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 1,
            unit_price_cents: 100,
        }],
        payment_method: "visa".into(),
        ship_to_country: "NL".into(),
        ship_to_postcode: "1".into(),
    }
    .into();
    let placed = orders.handle(None, &place, 0).unwrap().state.unwrap();
    assert_eq!(placed.version, 1);
    let cancel = |id: &str, expected: i64| -> OrdersIn {
        CancelOrder {
            metadata: Metadata {
                aggregate_version: expected,
                ..Metadata::command(id, "O-9", 0)
            },
            order_id: "O-9".into(),
            reason: "changed my mind".into(),
        }
        .into()
    };
    let stale = orders.handle(Some(&placed), &cancel("c-1", 0), 1).unwrap();
    match &stale.emit[..] {
        [OrderEvent::OrderCancellationRejected(r)] => {
            assert_eq!(r.reason, "expected version 0, order is at 1")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(stale.state.as_ref().unwrap().status, status::PLACED);
    let current = orders.handle(Some(&placed), &cancel("c-2", 1), 1).unwrap();
    assert!(matches!(
        &current.emit[..],
        [OrderEvent::OrderCancelling(_)]
    ));
}

#[test]
fn a_confirmed_order_answers_every_cancellation_without_growing() {
    // Each refused cancellation used to add its id to the order's steps: 30,000 calls on one
    // confirmed order grew its state (and every changelog record of it) without bound.
    let mut bus = Bus::new();
    bus.place("O-1", [1, 0], "visa-1", "FR");
    bus.drain();
    let before = bus.orders["O-1"].clone();
    let orders = Orders::default();
    let mut state = before.clone();
    for i in 0..30_000 {
        let cancel: OrdersIn = CancelOrder {
            metadata: Metadata::command(&format!("cancel-{i}"), "O-1", bus.now),
            order_id: "O-1".into(),
            reason: "changed my mind".into(),
        }
        .into();
        let r = orders.handle(Some(&state), &cancel, bus.now).unwrap();
        assert!(matches!(
            &r.emit[..],
            [OrderEvent::OrderCancellationRejected(_)]
        ));
        state = r.state.unwrap();
    }
    assert_eq!(state.status, status::CONFIRMED);
    assert_eq!(state.steps, before.steps, "nothing remembered per refusal");
    assert_eq!(state.version, before.version + 30_000);
}

fn order_of(lines: Vec<OrderLine>, occurred_at: i64) -> OrdersIn {
    PlaceOrder {
        metadata: Metadata::command("c", "O-1", occurred_at),
        order_id: "O-1".into(),
        customer_id: "C".into(),
        lines,
        payment_method: "visa".into(),
        ship_to_country: "NL".into(),
        ship_to_postcode: "1".into(),
    }
    .into()
}

fn line(quantity: i64, unit_price_cents: i64) -> OrderLine {
    OrderLine {
        sku: "S".into(),
        warehouse: "W".into(),
        quantity,
        unit_price_cents,
    }
}

#[test]
fn an_order_past_the_limits_is_invalid_not_an_overflow() {
    use crate::limits::*;
    let orders = Orders::default();
    let reason = |o: OrdersIn| orders.handle(None, &o, 0).unwrap_err().reason;
    // quantity * unit_price overflowed i64 (a panic in debug, a wrapped total in release).
    let r = reason(order_of(vec![line(i64::MAX, 2)], 0));
    assert!(
        r.contains("lines[0].quantity") && r.contains("limit"),
        "{r}"
    );
    let r = reason(order_of(vec![line(1, i64::MAX)], 0));
    assert!(r.contains("lines[0].unit_price_cents"), "{r}");
    let r = reason(order_of(vec![line(MAX_QUANTITY, MAX_UNIT_PRICE_CENTS)], 0));
    assert!(r.contains("the order's total"), "{r}");
    let r = reason(order_of(vec![line(1, 1); MAX_ORDER_LINES + 1], 0));
    assert!(r.contains("1001 lines"), "{r}");
    let r = reason(order_of(vec![line(1, 1)], i64::MAX));
    assert!(r.contains("metadata.occurred_at"), "{r}");
    let placed = orders
        .handle(None, &order_of(vec![line(MAX_QUANTITY, 1_000_000)], 0), 0)
        .unwrap();
    assert_eq!(
        placed.state.unwrap().order.total_cents,
        MAX_QUANTITY * 1_000_000
    );
}

#[test]
fn billing_refuses_amounts_no_order_can_total_and_payments_declines_them() {
    use crate::billing::Billing;
    use schemas::saga::BillingIn;
    let captured = |amount_cents| -> BillingIn {
        PaymentCaptured {
            metadata: Metadata::command(&format!("cap-{amount_cents}"), "O-1", 0),
            order: OrderContext {
                order_id: "O-1".into(),
                customer_id: "C".into(),
                total_cents: amount_cents,
                lines: vec![line(1, 1)],
                payment_method: "visa".into(),
                ship_to_country: "NL".into(),
                ship_to_postcode: "1".into(),
            },
            payment_id: "P-1".into(),
            amount_cents,
        }
        .into()
    };
    let e = Billing.handle(None, &captured(i64::MAX), 0).unwrap_err();
    assert!(e.reason.contains("amount_cents"), "{e}");
    assert!(Billing.handle(None, &captured(-5), 0).is_err());
    assert!(Billing.handle(None, &captured(500), 0).is_ok());
    let reason = crate::payments::decline_reason("visa", i64::MAX).unwrap();
    assert!(reason.contains("past the limit"), "{reason}");
}

mod properties {
    //! Orders with any numbers and any number of lines: placed with a total that is the
    //! exact sum of its lines, or invalid; never a panic.
    use proptest::prelude::*;

    use super::*;
    use crate::limits::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn an_order_is_placed_with_its_exact_total_or_is_invalid(
            lines in prop::collection::vec((hostile_numbers(), hostile_numbers()), 0..8),
            repeat in prop_oneof![Just(1usize), Just(200), Just(1_001)],
            at in hostile_numbers(),
            now in hostile_numbers(),
        ) {
            let lines: Vec<OrderLine> = lines
                .iter()
                .map(|&(q, p)| line(q, p))
                .cycle()
                .take(lines.len() * repeat)
                .collect();
            let exact: i128 = lines
                .iter()
                .map(|l| i128::from(l.quantity) * i128::from(l.unit_price_cents))
                .fold(0, i128::saturating_add);
            match Orders::default().handle(None, &order_of(lines.clone(), at), now) {
                Ok(r) => {
                    let s = r.state.unwrap();
                    prop_assert_eq!(i128::from(s.order.total_cents), exact);
                    prop_assert!(s.order.total_cents <= MAX_ORDER_TOTAL_CENTS);
                    prop_assert!(lines.len() <= MAX_ORDER_LINES);
                    prop_assert!(s.deadline_at >= now.min(i64::MAX - 30_000));
                }
                Err(e) => prop_assert!(!e.reason.is_empty()),
            }
        }
    }
}
