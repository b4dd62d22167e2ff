//! Given an order's history, when a return is asked for or received, then…

use schemas::Metadata;
use schemas::inventory::ReceivingOut;
use schemas::orders::{OrderCancelled, OrderContext, OrderLine, OrderPlaced};
use schemas::payments::{PaymentReply, PaymentState};
use schemas::returns::*;
use schemas::saga::PaymentsIn;
use schemas::shipping::ParcelDelivered;

use super::deliveries::Deliveries;
use super::restocking::Restocking;
use super::view::ReturnsProjection;
use super::*;
use crate::{Projection, Source};

const ORDER: &str = "O-1";
const DELIVERED: i64 = 1_000 * DAY_MS;

fn meta(id: &str, at: i64) -> Metadata {
    Metadata {
        saga_id: Some(ORDER.into()),
        ..Metadata::command(id, ORDER, at)
    }
}

fn placed() -> ReturnsIn {
    let line = |sku: &str, quantity, unit_price_cents| OrderLine {
        sku: sku.into(),
        warehouse: "AMS".into(),
        quantity,
        unit_price_cents,
    };
    OrderPlaced {
        metadata: meta("placed", 0),
        order: OrderContext {
            order_id: ORDER.into(),
            customer_id: "C-1".into(),
            lines: vec![line("SKU-A", 3, 500), line("SKU-B", 1, 2_000)],
            total_cents: 3_500,
            payment_method: "card".into(),
            ship_to_country: "NL".into(),
            ship_to_postcode: "1011".into(),
        },
        deadline_at: 0,
    }
    .into()
}

fn delivered() -> ReturnsIn {
    OrderDelivered {
        metadata: meta("delivered", 2),
        order_id: ORDER.into(),
        shipment_id: "SHP-O-1".into(),
        delivered_at: DELIVERED,
    }
    .into()
}

fn request(id: &str, at: i64, lines: &[(&str, i64)]) -> ReturnsIn {
    RequestReturn {
        metadata: meta(&format!("req-{id}"), at),
        order_id: ORDER.into(),
        return_id: id.into(),
        lines: lines
            .iter()
            .map(|(sku, quantity)| ReturnLine {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
    }
    .into()
}

fn receive(id: &str, lines: &[(&str, i64, i64)]) -> ReturnsIn {
    ReceiveReturn {
        metadata: meta(&format!("rcv-{id}"), DELIVERED + DAY_MS),
        order_id: ORDER.into(),
        return_id: id.into(),
        warehouse: "RTM".into(),
        lines: lines
            .iter()
            .map(|(sku, sellable, damaged)| ReceivedLine {
                sku: (*sku).into(),
                sellable: *sellable,
                damaged: *damaged,
            })
            .collect(),
    }
    .into()
}

/// Folds `inputs` into the order's returns state; the events, and the state after.
fn given(inputs: &[ReturnsIn]) -> (Vec<ReturnEvent>, Option<ReturnsState>) {
    let mut state = None;
    let mut events = Vec::new();
    for input in inputs {
        let r = Returns.handle(state.as_ref(), input, 5).unwrap();
        events.extend(r.emit);
        if let Some(s) = r.state {
            state = Some(s);
        }
    }
    (events, state)
}

fn delivered_order() -> Vec<ReturnsIn> {
    vec![placed(), delivered()]
}

fn rejection(events: &[ReturnEvent]) -> Option<&str> {
    match events.last() {
        Some(ReturnEvent::ReturnRejected(r)) => Some(&r.reason),
        _ => None,
    }
}

#[test]
fn a_return_within_the_window_is_authorized_and_its_receipt_refunded_at_the_order_price() {
    let mut inputs = delivered_order();
    inputs.push(request("R1", DELIVERED + 29 * DAY_MS, &[("SKU-A", 2)]));
    inputs.push(receive("R1", &[("SKU-A", 1, 1)]));
    let (events, state) = given(&inputs);
    let [
        ReturnEvent::ReturnAuthorized(a),
        ReturnEvent::ReturnReceived(r),
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!((a.lines[0].quantity, a.metadata.aggregate_version), (2, 1));
    // Damaged units are refunded too: the customer sent them back.
    assert_eq!((r.refund_cents, r.metadata.aggregate_version), (1_000, 2));
    assert_eq!(r.metadata.causation_id.as_deref(), Some("rcv-R1"));
    let s = state.unwrap();
    assert_eq!((s.returns[0].status.as_str(), s.version), (RECEIVED, 2));
}

#[test]
fn late_undelivered_cancelled_or_foreign_returns_are_rejected_with_their_reason() {
    let late = [
        delivered_order(),
        vec![request("R1", DELIVERED + 31 * DAY_MS, &[("SKU-A", 1)])],
    ]
    .concat();
    assert!(
        rejection(&given(&late).0)
            .unwrap()
            .contains("31 days after delivery")
    );

    let undelivered = vec![placed(), request("R1", DELIVERED, &[("SKU-A", 1)])];
    assert!(
        rejection(&given(&undelivered).0)
            .unwrap()
            .contains("not been delivered")
    );

    let cancelled: ReturnsIn = OrderCancelled {
        metadata: meta("cancelled", 3),
        order_id: ORDER.into(),
        customer_id: "C-1".into(),
        reason: "cancelled by customer".into(),
        compensations: Vec::new(),
    }
    .into();
    let gone = vec![placed(), cancelled, request("R1", 9, &[("SKU-A", 1)])];
    assert!(
        rejection(&given(&gone).0)
            .unwrap()
            .contains("was cancelled")
    );

    let foreign = [
        delivered_order(),
        vec![request("R1", DELIVERED, &[("SKU-Z", 1)])],
    ]
    .concat();
    assert!(
        rejection(&given(&foreign).0)
            .unwrap()
            .contains("SKU-Z was not delivered")
    );

    // Nothing known of the order at all (its events not read yet, or never placed).
    assert!(
        rejection(&given(&[request("R1", 0, &[("SKU-A", 1)])]).0)
            .unwrap()
            .contains("not been delivered")
    );
}

#[test]
fn units_asked_back_never_exceed_those_shipped_across_returns() {
    let mut inputs = delivered_order();
    inputs.push(request("R1", DELIVERED, &[("SKU-A", 2)]));
    // Two lines of one sku add up: 2 + 1 + 1 > 3.
    inputs.push(request("R2", DELIVERED, &[("SKU-A", 1), ("SKU-A", 1)]));
    inputs.push(request("R3", DELIVERED, &[("SKU-A", 1), ("SKU-B", 1)]));
    let (events, _) = given(&inputs);
    assert!(matches!(events[0], ReturnEvent::ReturnAuthorized(_)));
    let ReturnEvent::ReturnRejected(r2) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(
        r2.reason,
        "2 of SKU-A asked back; 3 delivered, 2 already returned"
    );
    // A rejected return does not count against what is left.
    assert!(matches!(events[2], ReturnEvent::ReturnAuthorized(_)));
}

#[test]
fn malformed_commands_are_invalid_and_redeliveries_change_nothing() {
    let (_, state) = given(
        &[
            delivered_order(),
            vec![request("R1", DELIVERED, &[("SKU-A", 2)])],
        ]
        .concat(),
    );
    let s = state.unwrap();
    let err = |input: ReturnsIn| Returns.handle(Some(&s), &input, 5).unwrap_err().reason;
    let mut reused = request("R1", DELIVERED, &[("SKU-A", 1)]);
    if let ReturnsIn::RequestReturn(r) = &mut reused {
        r.metadata.event_id = "req-other".into();
    }
    assert!(err(reused).contains("already used"));
    assert!(err(request("R2", DELIVERED, &[])).contains("lines is empty"));
    assert!(err(request("R2", DELIVERED, &[("SKU-A", 0)])).contains("must be positive"));
    assert!(err(receive("R9", &[("SKU-A", 1, 0)])).contains("never asked for"));
    assert_eq!(
        err(receive("R1", &[("SKU-A", 2, 1)])),
        "lines: 3 of SKU-A received, 2 authorized"
    );
    assert!(err(receive("R1", &[("SKU-B", 1, 0)])).contains("0 authorized"));
    assert!(err(receive("R1", &[("SKU-A", -1, 2)])).contains("negative"));
    // The same request delivered again: nothing.
    let again = Returns
        .handle(Some(&s), &request("R1", DELIVERED, &[("SKU-A", 2)]), 5)
        .unwrap();
    assert_eq!(again, Reaction::none());
    // Received once; a second receipt (another message) is invalid.
    let received = Returns
        .handle(Some(&s), &receive("R1", &[("SKU-A", 2, 0)]), 5)
        .unwrap()
        .state
        .unwrap();
    let mut twice = receive("R1", &[("SKU-A", 1, 0)]);
    if let ReturnsIn::ReceiveReturn(r) = &mut twice {
        r.metadata.event_id = "rcv-again".into();
    }
    assert!(
        Returns
            .handle(Some(&received), &twice, 5)
            .unwrap_err()
            .reason
            .contains("is Received")
    );
}

#[test]
fn order_events_are_folded_idempotently_and_not_remembered() {
    let (_, state) = given(&delivered_order());
    let s = state.unwrap();
    assert!(
        s.steps.is_empty(),
        "only commands are remembered: {:?}",
        s.steps
    );
    for again in [placed(), delivered()] {
        assert_eq!(
            Returns.handle(Some(&s), &again, 9).unwrap(),
            Reaction::none()
        );
    }
    // A later delivery scan does not move the delivery date.
    let mut later = delivered();
    if let ReturnsIn::OrderDelivered(d) = &mut later {
        d.metadata.event_id = "delivered-again".into();
        d.delivered_at += DAY_MS;
    }
    assert_eq!(
        Returns.handle(Some(&s), &later, 9).unwrap(),
        Reaction::none()
    );
}

#[test]
fn a_delivery_is_rekeyed_to_its_order_once() {
    let scan = |id: &str, shipment: &str| -> DeliveriesIn {
        ParcelDelivered {
            metadata: Metadata::command(id, shipment, 77),
            shipment_id: shipment.into(),
            carrier: "DHL".into(),
            location: "AMS".into(),
            received_by: None,
        }
        .into()
    };
    let first = Deliveries.handle(None, &scan("s1", "SHP-O-1"), 5).unwrap();
    let [DeliveryEvent::OrderDelivered(d)] = first.emit.as_slice() else {
        panic!("{:?}", first.emit)
    };
    assert_eq!((d.order_id.as_str(), d.delivered_at), ("O-1", 77));
    assert_eq!(d.metadata.aggregate_id, "O-1", "keyed by order");
    let state = first.state.unwrap();
    assert_eq!(
        Deliveries
            .handle(Some(&state), &scan("s2", "SHP-O-1"), 6)
            .unwrap(),
        Reaction::none()
    );
    assert!(Deliveries.handle(None, &scan("s3", "PARCEL-9"), 5).is_err());
}

#[test]
fn only_sellable_units_are_restocked_once_per_return() {
    let received = |id: &str| -> RestockingIn {
        ReturnReceived {
            metadata: meta(&format!("ev-{id}"), 9),
            order_id: ORDER.into(),
            return_id: id.into(),
            warehouse: "RTM".into(),
            lines: vec![
                ReceivedLine {
                    sku: "SKU-A".into(),
                    sellable: 2,
                    damaged: 1,
                },
                ReceivedLine {
                    sku: "SKU-B".into(),
                    sellable: 0,
                    damaged: 1,
                },
            ],
            refund_cents: 0,
        }
        .into()
    };
    let first = Restocking.handle(None, &received("R1"), 5).unwrap();
    let [ReceivingOut::ReceiveStock(cmd)] = first.emit.as_slice() else {
        panic!("{:?}", first.emit)
    };
    assert_eq!(
        (cmd.sku.as_str(), cmd.warehouse.as_str(), cmd.quantity),
        ("SKU-A", "RTM", 2)
    );
    assert_eq!(
        (
            cmd.metadata.aggregate_id.as_str(),
            cmd.metadata.saga_id.as_ref()
        ),
        ("SKU-A", None)
    );
    let state = first.state.unwrap();
    assert_eq!(
        Restocking.handle(Some(&state), &received("R1"), 6).unwrap(),
        Reaction::none()
    );
    let second = Restocking.handle(Some(&state), &received("R2"), 7).unwrap();
    assert_eq!(second.state.unwrap().units, 4);
}

#[test]
fn payments_refund_a_received_return_up_to_what_is_left_captured() {
    use crate::payments::Payments;
    let captured = |refunded| PaymentState {
        order_id: ORDER.into(),
        version: 1,
        payment_id: "PAY-O-1".into(),
        status: "Captured".into(),
        captured_cents: 3_500,
        refunded_cents: refunded,
        steps: Vec::new(),
    };
    let received = |cents| -> PaymentsIn {
        ReturnReceived {
            metadata: meta("ev-R1", 9),
            order_id: ORDER.into(),
            return_id: "R1".into(),
            warehouse: "RTM".into(),
            lines: Vec::new(),
            refund_cents: cents,
        }
        .into()
    };
    let refunded = |r: Reaction<PaymentState, PaymentReply>| match r.emit.as_slice() {
        [PaymentReply::PaymentRefunded(p)] => Some(p.amount_cents),
        [] => None,
        other => panic!("{other:?}"),
    };
    let p = Payments;
    assert_eq!(
        refunded(p.handle(Some(&captured(0)), &received(1_000), 1).unwrap()),
        Some(1_000)
    );
    assert_eq!(
        refunded(
            p.handle(Some(&captured(3_000)), &received(1_000), 1)
                .unwrap()
        ),
        Some(500)
    );
    assert_eq!(
        refunded(
            p.handle(Some(&captured(3_500)), &received(1_000), 1)
                .unwrap()
        ),
        None
    );
    assert_eq!(refunded(p.handle(None, &received(1_000), 1).unwrap()), None);
}

#[test]
fn the_returns_view_moves_each_return_forward_once_and_resumes_from_its_rows() {
    const AT: Source<'static> = Source {
        topic: "returns.events",
        partition: 0,
        offset: 0,
    };
    let mut inputs = delivered_order();
    inputs.push(request("R1", DELIVERED, &[("SKU-A", 2)]));
    inputs.push(request("R2", DELIVERED + 40 * DAY_MS, &[("SKU-B", 1)]));
    inputs.push(receive("R1", &[("SKU-A", 1, 1)]));
    let (events, _) = given(&inputs);
    let mut view = ReturnsProjection::default();
    for e in events.iter().chain(&events) {
        view.apply(AT, e);
    }
    let rows: Vec<ReturnRow> = view.rows().into_iter().map(|r| r.into_owned()).collect();
    assert_eq!(rows.len(), 2);
    let r1 = &rows[0];
    assert_eq!(
        (
            r1.status.as_str(),
            r1.units,
            r1.sellable,
            r1.damaged,
            r1.refund_cents
        ),
        (RECEIVED, 2, 1, 1, 1_000)
    );
    assert_eq!(r1.warehouse.as_deref(), Some("RTM"));
    assert_eq!(rows[1].status, REJECTED);
    // Restored, an event delivered again still changes nothing.
    let mut back = ReturnsProjection::restore(rows.clone()).unwrap();
    back.apply(AT, &events[0]);
    let again: Vec<ReturnRow> = back.rows().into_iter().map(|r| r.into_owned()).collect();
    assert_eq!(again, rows);
}

use super::view::ReturnRow;
