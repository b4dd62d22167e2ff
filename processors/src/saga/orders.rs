//! The orders service: the order aggregate, which initiates the fulfilment saga, follows its
//! replies, owns its deadlines and decides its outcome.

use schemas::Metadata;
use schemas::orders::*;
use schemas::saga::OrdersIn;

use super::{Participant, Reaction, caused_by, first_time, seen};
use crate::InvalidCommand;

pub const SERVICE: &str = "orders";

/// Order (and saga) status, as stored in [`OrderState::status`].
pub mod status {
    /// Waiting for inventory.
    pub const PLACED: &str = "Placed";
    /// Waiting for payment.
    pub const RESERVED: &str = "Reserved";
    /// Waiting for shipping.
    pub const PAID: &str = "Paid";
    pub const CONFIRMED: &str = "Confirmed";
    /// Waiting for compensations to finish.
    pub const COMPENSATING: &str = "Compensating";
    pub const CANCELLED: &str = "Cancelled";
}
use status::*;

/// The orders participant; `step_timeout_ms` bounds each step and each compensation round.
#[derive(Debug, Clone)]
pub struct Orders {
    pub step_timeout_ms: i64,
}

impl Default for Orders {
    fn default() -> Self {
        Orders {
            step_timeout_ms: 30_000,
        }
    }
}

/// What the saga waits for in a status (for timeouts and the saga view).
pub fn waiting_for(status: &str) -> &'static str {
    match status {
        PLACED => "inventory",
        RESERVED => "payment",
        PAID => "shipment",
        COMPENSATING => "compensation",
        _ => "nothing",
    }
}

fn invalid(command: &'static str, reason: String) -> InvalidCommand {
    InvalidCommand { command, reason }
}

fn validate(c: &PlaceOrder) -> Result<(), InvalidCommand> {
    let bad = |r: String| Err(invalid("supplychain.orders.PlaceOrder", r));
    if c.order_id.is_empty() {
        return bad("field order_id must not be empty".into());
    }
    if c.lines.is_empty() {
        return bad("field lines must not be empty".into());
    }
    for (i, l) in c.lines.iter().enumerate() {
        if l.quantity <= 0 {
            return bad(format!(
                "field lines[{i}].quantity must be positive, got {}",
                l.quantity
            ));
        }
        if l.unit_price_cents < 0 {
            return bad(format!(
                "field lines[{i}].unit_price_cents must not be negative, got {}",
                l.unit_price_cents
            ));
        }
        if l.sku.is_empty() || l.warehouse.is_empty() {
            return bad(format!(
                "fields lines[{i}].sku and warehouse must not be empty"
            ));
        }
    }
    Ok(())
}

impl Orders {
    fn compensate(
        &self,
        mut s: OrderState,
        cause: &Metadata,
        reason: String,
        now: i64,
    ) -> Reaction<OrderState, OrderEvent> {
        let step = waiting_for(&s.status).to_owned();
        s.status = COMPENSATING.into();
        s.reason = Some(reason.clone());
        s.attempts += 1;
        s.deadline_at = now + self.step_timeout_ms;
        s.version += 1;
        let event = OrderCancelling {
            metadata: caused_by(cause, SERVICE, &s.order_id, &s.order_id, s.version, now, 0),
            order_id: s.order_id.clone(),
            reason,
            step,
            attempt: s.attempts,
        };
        Reaction::new(s, vec![event.into()])
    }

    fn cancelled(s: &mut OrderState, cause: &Metadata, now: i64) -> OrderEvent {
        s.status = CANCELLED.into();
        s.deadline_at = 0;
        s.version += 1;
        OrderCancelled {
            metadata: caused_by(cause, SERVICE, &s.order_id, &s.order_id, s.version, now, 0),
            order_id: s.order_id.clone(),
            customer_id: s.order.customer_id.clone(),
            reason: s.reason.clone().unwrap_or_default(),
            compensations: s.compensations.clone(),
        }
        .into()
    }

    /// A forward reply implies every step before it (shipping only ships what payments
    /// captured, payments only charges what inventory reserved), and replies arrive on
    /// different topics in any order: move to the furthest step known, never back.
    fn forward(&self, s: &mut OrderState, implied: &str, now: i64) -> bool {
        let rank = |status: &str| match status {
            PLACED => Some(0),
            RESERVED => Some(1),
            PAID => Some(2),
            CONFIRMED => Some(3),
            _ => None,
        };
        match (rank(&s.status), rank(implied)) {
            (Some(current), Some(next)) if current < 3 => {
                if next > current {
                    s.status = implied.into();
                    s.deadline_at = now + self.step_timeout_ms;
                    s.version += 1;
                    return true;
                }
                false
            }
            _ => {
                s.late_replies += 1;
                false
            }
        }
    }

    /// A participant failed after reserving: compensations run without us (payments or
    /// inventory heard the failure); unless inventory already said it released everything.
    fn failed(
        &self,
        s: &mut OrderState,
        cause: &Metadata,
        reason: String,
        now: i64,
    ) -> Vec<OrderEvent> {
        if !is_in_flight(&s.status) {
            if s.status != COMPENSATING {
                s.late_replies += 1;
            }
            return Vec::new();
        }
        s.reason = Some(reason);
        if s.released {
            return vec![Self::cancelled(s, cause, now)];
        }
        s.status = COMPENSATING.into();
        s.deadline_at = now + self.step_timeout_ms;
        s.version += 1;
        Vec::new()
    }
}

fn is_in_flight(status: &str) -> bool {
    matches!(status, PLACED | RESERVED | PAID)
}

fn is_final(status: &str) -> bool {
    matches!(status, CONFIRMED | CANCELLED)
}

impl Participant for Orders {
    type Input = OrdersIn;
    type Output = OrderEvent;
    type State = OrderState;

    fn handle(
        &self,
        state: Option<&OrderState>,
        input: &OrdersIn,
        now: i64,
    ) -> Result<Reaction<OrderState, OrderEvent>, InvalidCommand> {
        let cause = input.metadata();
        if let OrdersIn::PlaceOrder(c) = input {
            validate(c)?;
            if state.is_some() {
                return Ok(Reaction::none()); // the order exists: a duplicate command
            }
            let order = OrderContext {
                order_id: c.order_id.clone(),
                customer_id: c.customer_id.clone(),
                total_cents: c
                    .lines
                    .iter()
                    .map(|l| l.quantity * l.unit_price_cents)
                    .sum(),
                lines: c.lines.clone(),
                payment_method: c.payment_method.clone(),
                ship_to_country: c.ship_to_country.clone(),
                ship_to_postcode: c.ship_to_postcode.clone(),
            };
            let s = OrderState {
                order_id: c.order_id.clone(),
                version: 1,
                status: PLACED.into(),
                order: order.clone(),
                deadline_at: now + self.step_timeout_ms,
                attempts: 0,
                reason: None,
                compensations: Vec::new(),
                steps: vec![cause.event_id.clone()],
                late_replies: 0,
                released: false,
                shipment_id: None,
                carrier: None,
            };
            let event = OrderPlaced {
                metadata: caused_by(cause, SERVICE, &c.order_id, &c.order_id, 1, now, 0),
                order,
                deadline_at: s.deadline_at,
            };
            return Ok(Reaction::new(s, vec![event.into()]));
        }
        let Some(current) = state else {
            return Ok(match input {
                OrdersIn::CancelOrder(c) => {
                    let event = OrderCancellationRejected {
                        metadata: caused_by(cause, SERVICE, &c.order_id, &c.order_id, 0, now, 0),
                        order_id: c.order_id.clone(),
                        reason: format!("unknown order {:?}", c.order_id),
                    };
                    Reaction {
                        state: None,
                        emit: vec![event.into()],
                    }
                }
                // A reply for a saga this service never started: nothing to act on.
                _ => Reaction::none(),
            });
        };
        if seen(&current.steps, &cause.event_id) {
            return Ok(Reaction::none());
        }
        let mut s = current.clone();
        first_time(&mut s.steps, &cause.event_id);
        let mut emit = Vec::new();
        match input {
            OrdersIn::PlaceOrder(_) => unreachable!("handled above"),
            OrdersIn::CancelOrder(c) => match s.status.as_str() {
                PLACED | RESERVED | PAID => {
                    return Ok(self.compensate(
                        s,
                        cause,
                        format!("cancelled by customer: {}", c.reason),
                        now,
                    ));
                }
                CONFIRMED => emit.push(
                    OrderCancellationRejected {
                        metadata: caused_by(
                            cause,
                            SERVICE,
                            &s.order_id,
                            &s.order_id,
                            s.version,
                            now,
                            0,
                        ),
                        order_id: s.order_id.clone(),
                        reason: "the order is confirmed and handed to the carrier".into(),
                    }
                    .into(),
                ),
                _ => {} // already compensating or cancelled
            },
            OrdersIn::StockReserved(_) => {
                self.forward(&mut s, RESERVED, now);
            }
            OrdersIn::PaymentCaptured(_) => {
                self.forward(&mut s, PAID, now);
            }
            OrdersIn::ShipmentCreated(r) => {
                if self.forward(&mut s, CONFIRMED, now) {
                    s.deadline_at = 0;
                    s.shipment_id = Some(r.shipment_id.clone());
                    s.carrier = Some(r.carrier.clone());
                    emit.push(
                        OrderConfirmed {
                            metadata: caused_by(
                                cause,
                                SERVICE,
                                &s.order_id,
                                &s.order_id,
                                s.version,
                                now,
                                0,
                            ),
                            order_id: s.order_id.clone(),
                            customer_id: s.order.customer_id.clone(),
                            total_cents: s.order.total_cents,
                            shipment_id: r.shipment_id.clone(),
                            carrier: r.carrier.clone(),
                        }
                        .into(),
                    );
                }
            }
            OrdersIn::StockReservationFailed(r) => {
                if is_in_flight(&s.status) {
                    // Nothing was reserved, charged or shipped: no compensation to run.
                    s.reason = Some(format!("out of stock: {}", r.reason));
                    emit.push(Self::cancelled(&mut s, cause, now));
                } else if s.status != COMPENSATING {
                    s.late_replies += 1;
                }
            }
            // Inventory hears a decline and releases; payments hears a failed shipment and
            // refunds, then inventory releases: we wait for the StockReleased that ends both.
            OrdersIn::PaymentDeclined(r) => {
                emit = self.failed(
                    &mut s,
                    cause,
                    format!("payment declined: {}", r.reason),
                    now,
                );
            }
            OrdersIn::ShipmentFailed(r) => {
                emit = self.failed(&mut s, cause, format!("shipment failed: {}", r.reason), now);
            }
            // Compensation replies may overtake the failure that caused them: record them in
            // any state but a final one.
            OrdersIn::ShipmentCancelled(r) => {
                if is_final(&s.status) {
                    s.late_replies += 1;
                } else if let Some(id) = &r.shipment_id {
                    s.compensations.push(format!("shipment {id} cancelled"));
                    s.version += 1;
                }
            }
            OrdersIn::PaymentRefunded(r) => {
                if is_final(&s.status) {
                    s.late_replies += 1;
                } else if r.amount_cents > 0 {
                    s.compensations
                        .push(format!("refunded {} cents", r.amount_cents));
                    s.version += 1;
                }
            }
            OrdersIn::StockReleased(r) => {
                if is_final(&s.status) {
                    s.late_replies += 1;
                } else {
                    // Inventory is the last compensation of every chain: nothing is held,
                    // charged or shipped any more.
                    if r.lines_released > 0 {
                        s.compensations
                            .push(format!("released {} lines", r.lines_released));
                    }
                    s.released = true;
                    s.version += 1;
                    if s.status == COMPENSATING {
                        emit.push(Self::cancelled(&mut s, cause, now));
                    }
                }
            }
        }
        Ok(Reaction::new(s, emit))
    }

    fn deadline(&self, state: &OrderState) -> Option<i64> {
        (state.deadline_at > 0).then_some(state.deadline_at)
    }

    fn expire(&self, state: &OrderState, now: i64) -> Reaction<OrderState, OrderEvent> {
        if state.deadline_at == 0 || now < state.deadline_at {
            return Reaction::none();
        }
        // The cause of a timeout is the saga's own last state: ids stay deterministic.
        let cause = Metadata {
            event_id: format!("{}/deadline/{}", state.order_id, state.version),
            ..Metadata::command(&state.order_id, &state.order_id, now)
        };
        match state.status.as_str() {
            PLACED | RESERVED | PAID => {
                let reason = format!("timed out waiting for {}", waiting_for(&state.status));
                self.compensate(state.clone(), &cause, reason, now)
            }
            COMPENSATING => {
                // A compensation did not finish in time: ask again (every participant answers
                // a repeated request), and keep counting: attempts > 1 shows it stuck.
                let reason = state.reason.clone().unwrap_or_default();
                let mut r = self.compensate(state.clone(), &cause, reason, now);
                if let Some(s) = r.state.as_mut() {
                    s.status = COMPENSATING.into();
                }
                r
            }
            _ => Reaction::none(),
        }
    }
}
