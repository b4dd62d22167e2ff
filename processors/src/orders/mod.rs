//! The orders service: the order aggregate, which initiates the fulfilment saga, follows its
//! replies, owns its deadlines and decides its outcome.

pub mod sagas;
pub mod windows;

use schemas::Metadata;
use schemas::orders::*;
use schemas::record::RecordUnion;
use schemas::saga::OrdersIn;

use crate::InvalidCommand;
use crate::limits::{Check, MAX_ORDER_LINES, MAX_ORDER_TOTAL_CENTS, MAX_UNIT_PRICE_CENTS};
use crate::saga::{Participant, Reaction, caused_by, seen};

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

fn validate(c: &PlaceOrder) -> Result<(), InvalidCommand> {
    let check = Check::new("supplychain.orders.PlaceOrder");
    check.metadata(&c.metadata)?;
    check.id("order_id", &c.order_id)?;
    check.optional_id("customer_id", &c.customer_id)?;
    check.text("payment_method", &c.payment_method)?;
    check.text("ship_to_country", &c.ship_to_country)?;
    check.text("ship_to_postcode", &c.ship_to_postcode)?;
    check.require(!c.lines.is_empty(), || {
        "field lines must not be empty".into()
    })?;
    check.require(c.lines.len() <= MAX_ORDER_LINES, || {
        format!(
            "field lines has {} lines, more than the limit of {MAX_ORDER_LINES}",
            c.lines.len()
        )
    })?;
    for (i, l) in c.lines.iter().enumerate() {
        check.sku(format_args!("lines[{i}].sku"), &l.sku)?;
        check.id(format_args!("lines[{i}].warehouse"), &l.warehouse)?;
        check.quantity(format_args!("lines[{i}].quantity"), l.quantity)?;
        check.in_range(
            format_args!("lines[{i}].unit_price_cents"),
            l.unit_price_cents,
            MAX_UNIT_PRICE_CENTS,
        )?;
    }
    total_cents(&c.lines).map(|_| ()).ok_or_else(|| {
        check.invalid(format!(
            "the order's total is more than the limit of {MAX_ORDER_TOTAL_CENTS} cents"
        ))
    })
}

fn validate_cancel(c: &CancelOrder) -> Result<(), InvalidCommand> {
    let check = Check::new("supplychain.orders.CancelOrder");
    check.metadata(&c.metadata)?;
    check.id("order_id", &c.order_id)?;
    check.text("reason", &c.reason)
}

impl crate::Validate for OrderCommand {
    fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            OrderCommand::PlaceOrder(c) => validate(c),
            OrderCommand::CancelOrder(c) => validate_cancel(c),
        }
    }
}

/// The total of `lines` in cents; `None` past [`MAX_ORDER_TOTAL_CENTS`] (or an overflow).
pub fn total_cents(lines: &[OrderLine]) -> Option<i64> {
    lines
        .iter()
        .try_fold(0i64, |sum, l| {
            sum.checked_add(l.quantity.checked_mul(l.unit_price_cents)?)
        })
        .filter(|total| (0..=MAX_ORDER_TOTAL_CENTS).contains(total))
}

/// Events decided for one message, each folded into the working state as soon as it is
/// decided: later decisions see it, and the state that results is by construction the fold
/// of the events (what a rebuild from `orders.events` yields).
struct Decision<'c> {
    state: OrderState,
    cause: &'c Metadata,
    now: i64,
    events: Vec<OrderEvent>,
}

impl<'c> Decision<'c> {
    fn new(state: OrderState, cause: &'c Metadata, now: i64) -> Self {
        Decision {
            state,
            cause,
            now,
            events: Vec::new(),
        }
    }

    /// Metadata of the next event (version = the aggregate's next version).
    fn meta(&self) -> Metadata {
        let id = &self.state.order_id;
        caused_by(
            self.cause,
            SERVICE,
            id,
            id,
            self.state.version + 1,
            self.now,
            self.events.len(),
        )
    }

    fn emit(&mut self, event: OrderEvent) {
        self.state = evolve(Some(&self.state), &event).expect("an order event on an order");
        self.events.push(event);
    }

    fn reaction(self) -> Reaction<OrderState, OrderEvent> {
        if self.events.is_empty() {
            Reaction::none()
        } else {
            Reaction::new(self.state, self.events)
        }
    }

    fn compensate(&mut self, reason: String, deadline: i64) {
        let s = &self.state;
        let event = OrderCancelling {
            metadata: self.meta(),
            order_id: s.order_id.clone(),
            reason,
            step: waiting_for(&s.status).to_owned(),
            attempt: s.attempts + 1,
            deadline_at: deadline,
        };
        self.emit(event.into());
    }

    fn cancelled(&mut self, reason: String) {
        let s = &self.state;
        let event = OrderCancelled {
            metadata: self.meta(),
            order_id: s.order_id.clone(),
            customer_id: s.order.customer_id.clone(),
            reason,
            compensations: s.compensations.clone(),
        };
        self.emit(event.into());
    }

    fn ignored(&mut self, reply: &str) {
        let s = &self.state;
        let event = OrderReplyIgnored {
            metadata: self.meta(),
            order_id: s.order_id.clone(),
            reply: reply.rsplit('.').next().unwrap_or(reply).to_owned(),
            status: s.status.clone(),
        };
        self.emit(event.into());
    }

    fn recorded(&mut self, compensation: Option<String>, released: bool) {
        let event = OrderCompensationRecorded {
            metadata: self.meta(),
            order_id: self.state.order_id.clone(),
            compensation,
            released,
        };
        self.emit(event.into());
    }
}

impl Orders {
    /// A forward reply implies every step before it (shipping only ships what payments
    /// captured, payments only charges what inventory reserved), and replies arrive on
    /// different topics in any order: move to the furthest step known, never back.
    fn forward(&self, d: &mut Decision<'_>, input: &OrdersIn) {
        let rank = |status: &str| match status {
            PLACED => Some(0),
            RESERVED => Some(1),
            PAID => Some(2),
            CONFIRMED => Some(3),
            _ => None,
        };
        let implied = match input {
            OrdersIn::StockReserved(_) => RESERVED,
            OrdersIn::PaymentCaptured(_) => PAID,
            _ => CONFIRMED,
        };
        match (rank(&d.state.status), rank(implied)) {
            (Some(current), Some(next)) if current < 3 => {
                if next <= current {
                    return; // implied by a reply that overtook it
                }
                let event = match input {
                    OrdersIn::ShipmentCreated(r) => OrderConfirmed {
                        metadata: d.meta(),
                        order_id: d.state.order_id.clone(),
                        customer_id: d.state.order.customer_id.clone(),
                        total_cents: d.state.order.total_cents,
                        shipment_id: r.shipment_id.clone(),
                        carrier: r.carrier.clone(),
                    }
                    .into(),
                    _ => OrderProgressed {
                        metadata: d.meta(),
                        order_id: d.state.order_id.clone(),
                        status: implied.into(),
                        deadline_at: d.now.saturating_add(self.step_timeout_ms),
                    }
                    .into(),
                };
                d.emit(event);
            }
            _ => d.ignored(input.record_name()),
        }
    }

    /// A participant failed after reserving: compensations run without us (payments or
    /// inventory heard the failure); unless inventory already said it released everything.
    fn failed(&self, d: &mut Decision<'_>, reply: &str, reason: String) {
        let status = d.state.status.clone();
        if !is_in_flight(&status) {
            if status != COMPENSATING {
                d.ignored(reply);
            }
            return;
        }
        if d.state.released {
            d.cancelled(reason);
            return;
        }
        let event = OrderFailed {
            metadata: d.meta(),
            order_id: d.state.order_id.clone(),
            reason,
            step: waiting_for(&status).to_owned(),
            deadline_at: d.now.saturating_add(self.step_timeout_ms),
        };
        d.emit(event.into());
    }
}

/// The order aggregate after `event`: the fold that rebuilds every order from
/// `orders.events` alone. `None` for an event that concerns no existing order (a refused
/// cancellation of an unknown one).
pub fn evolve(state: Option<&OrderState>, event: &OrderEvent) -> Option<OrderState> {
    let mut s = match (state, event) {
        (None, OrderEvent::OrderPlaced(e)) => OrderState {
            order_id: e.order.order_id.clone(),
            version: 0,
            status: PLACED.into(),
            order: e.order.clone(),
            deadline_at: e.deadline_at,
            attempts: 0,
            reason: None,
            compensations: Vec::new(),
            steps: Vec::new(),
            late_replies: 0,
            released: false,
            shipment_id: None,
            carrier: None,
        },
        (None, _) => return None,
        // A second OrderPlaced for an existing order is never emitted (the order exists).
        (Some(s), OrderEvent::OrderPlaced(_)) => return Some(s.clone()),
        (Some(s), _) => s.clone(),
    };
    let meta = event.metadata();
    match event {
        OrderEvent::OrderPlaced(_) | OrderEvent::OrderCancellationRejected(_) => {}
        OrderEvent::OrderProgressed(e) => {
            s.status = e.status.clone();
            s.deadline_at = e.deadline_at;
        }
        OrderEvent::OrderConfirmed(e) => {
            s.status = CONFIRMED.into();
            s.deadline_at = 0;
            s.shipment_id = Some(e.shipment_id.clone());
            s.carrier = Some(e.carrier.clone());
        }
        OrderEvent::OrderCancelling(e) => {
            s.status = COMPENSATING.into();
            s.reason = Some(e.reason.clone());
            s.attempts = e.attempt;
            s.deadline_at = e.deadline_at;
        }
        OrderEvent::OrderFailed(e) => {
            s.status = COMPENSATING.into();
            s.reason = Some(e.reason.clone());
            s.deadline_at = e.deadline_at;
        }
        OrderEvent::OrderCompensationRecorded(e) => {
            s.compensations.extend(e.compensation.iter().cloned());
            s.released |= e.released;
        }
        OrderEvent::OrderReplyIgnored(_) => s.late_replies += 1,
        OrderEvent::OrderCancelled(e) => {
            s.status = CANCELLED.into();
            s.deadline_at = 0;
            s.reason = Some(e.reason.clone());
        }
    }
    s.version = s.version.max(meta.aggregate_version);
    // A final order does not remember the cancellations it refuses: a refusal changes
    // nothing but the version, so refusing a duplicate again is harmless, while remembering
    // every one let a caller grow the state without bound (30,000 cancellations of one
    // confirmed order). Late replies are still remembered: each counts in `late_replies`,
    // and only participants send them.
    let refused_when_final = state.is_some_and(|s| is_final(&s.status))
        && matches!(event, OrderEvent::OrderCancellationRejected(_));
    if let Some(cause) = &meta.causation_id
        && !refused_when_final
        && !seen(&s.steps, cause)
    {
        s.steps.push(cause.clone());
    }
    Some(s)
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
        if let OrdersIn::CancelOrder(c) = input {
            validate_cancel(c)?;
        }
        if let OrdersIn::PlaceOrder(c) = input {
            validate(c)?;
            if state.is_some() {
                return Ok(Reaction::none()); // the order exists: a duplicate command
            }
            let order = OrderContext {
                order_id: c.order_id.clone(),
                customer_id: c.customer_id.clone(),
                total_cents: total_cents(&c.lines).expect("validated"),
                lines: c.lines.clone(),
                payment_method: c.payment_method.clone(),
                ship_to_country: c.ship_to_country.clone(),
                ship_to_postcode: c.ship_to_postcode.clone(),
            };
            let event: OrderEvent = OrderPlaced {
                metadata: caused_by(cause, SERVICE, &c.order_id, &c.order_id, 1, now, 0),
                order,
                deadline_at: now.saturating_add(self.step_timeout_ms),
            }
            .into();
            let s = evolve(None, &event).expect("OrderPlaced starts an order");
            return Ok(Reaction::new(s, vec![event]));
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
        // A message that decides no event changes nothing, so handling it again (a
        // duplicate) decides nothing again: only messages with effects need remembering,
        // and those are remembered as the causation ids of their events.
        let mut d = Decision::new(current.clone(), cause, now);
        let status = current.status.clone();
        match input {
            OrdersIn::PlaceOrder(_) => unreachable!("handled above"),
            // Optimistic concurrency: a cancellation decided on an older view of the order
            // is refused, not applied to a state its sender did not see.
            OrdersIn::CancelOrder(c)
                if cause.aggregate_version >= 0 && cause.aggregate_version != current.version =>
            {
                let event = OrderCancellationRejected {
                    metadata: d.meta(),
                    order_id: c.order_id.clone(),
                    reason: format!(
                        "expected version {}, order is at {}",
                        cause.aggregate_version, current.version
                    ),
                };
                d.emit(event.into());
            }
            OrdersIn::CancelOrder(c) => match status.as_str() {
                PLACED | RESERVED | PAID => d.compensate(
                    format!("cancelled by customer: {}", c.reason),
                    now.saturating_add(self.step_timeout_ms),
                ),
                CONFIRMED => {
                    let event = OrderCancellationRejected {
                        metadata: d.meta(),
                        order_id: current.order_id.clone(),
                        reason: "the order is confirmed and handed to the carrier".into(),
                    };
                    d.emit(event.into());
                }
                _ => {} // already compensating or cancelled
            },
            OrdersIn::StockReserved(_)
            | OrdersIn::PaymentCaptured(_)
            | OrdersIn::ShipmentCreated(_) => self.forward(&mut d, input),
            OrdersIn::StockReservationFailed(r) => {
                if is_in_flight(&status) {
                    // Nothing was reserved, charged or shipped: no compensation to run.
                    d.cancelled(format!("out of stock: {}", r.reason));
                } else if status != COMPENSATING {
                    d.ignored(input.record_name());
                }
            }
            // Inventory hears a decline and releases; payments hears a failed shipment and
            // refunds, then inventory releases: we wait for the StockReleased that ends both.
            OrdersIn::PaymentDeclined(r) => self.failed(
                &mut d,
                input.record_name(),
                format!("payment declined: {}", r.reason),
            ),
            OrdersIn::ShipmentFailed(r) => self.failed(
                &mut d,
                input.record_name(),
                format!("shipment failed: {}", r.reason),
            ),
            // Compensation replies may overtake the failure that caused them: record them in
            // any state but a final one.
            OrdersIn::ShipmentCancelled(r) => {
                if is_final(&status) {
                    d.ignored(input.record_name());
                } else if let Some(id) = &r.shipment_id {
                    d.recorded(Some(format!("shipment {id} cancelled")), false);
                }
            }
            OrdersIn::PaymentRefunded(r) => {
                if is_final(&status) {
                    d.ignored(input.record_name());
                } else if r.amount_cents > 0 {
                    d.recorded(Some(format!("refunded {} cents", r.amount_cents)), false);
                }
            }
            OrdersIn::StockReleased(r) => {
                if is_final(&status) {
                    d.ignored(input.record_name());
                } else {
                    // Inventory is the last compensation of every chain: nothing is held,
                    // charged or shipped any more.
                    let released = (r.lines_released > 0)
                        .then(|| format!("released {} lines", r.lines_released));
                    d.recorded(released, true);
                    if status == COMPENSATING {
                        let reason = d.state.reason.clone().unwrap_or_default();
                        d.cancelled(reason);
                    }
                }
            }
        }
        Ok(d.reaction())
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
        let mut d = Decision::new(state.clone(), &cause, now);
        let deadline = now.saturating_add(self.step_timeout_ms);
        match state.status.as_str() {
            PLACED | RESERVED | PAID => d.compensate(
                format!("timed out waiting for {}", waiting_for(&state.status)),
                deadline,
            ),
            // A compensation did not finish in time: ask again (every participant answers a
            // repeated request), and keep counting: attempts > 1 shows it stuck.
            COMPENSATING => d.compensate(state.reason.clone().unwrap_or_default(), deadline),
            _ => {}
        }
        d.reaction()
    }
}
