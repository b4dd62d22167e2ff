//! The payments service: charges reserved orders once, refunds on compensation and for
//! received returns (never more than was captured).

use schemas::payments::*;
use schemas::saga::PaymentsIn;

use crate::InvalidCommand;
use crate::limits::MAX_ORDER_TOTAL_CENTS;
use crate::saga::{Participant, Reaction, caused_by, saga_of, seen};

pub const SERVICE: &str = "payments";

pub mod status {
    pub const CAPTURED: &str = "Captured";
    pub const DECLINED: &str = "Declined";
    pub const REFUNDED: &str = "Refunded";
    /// Compensated before anything was charged: a late charge request is ignored.
    pub const COMPENSATED: &str = "Compensated";
}
use status::*;

/// The deterministic decline rule (tests and simulations force declines with it): card
/// tokens starting with `declined` are refused, as is a zero or negative total, and one past
/// [`MAX_ORDER_TOTAL_CENTS`] (the orders rule never sends one; a record written to the saga
/// topic by someone else might).
pub fn decline_reason(payment_method: &str, total_cents: i64) -> Option<String> {
    if payment_method.starts_with("declined") {
        Some(format!("card {payment_method} declined by issuer"))
    } else if total_cents <= 0 {
        Some(format!("nothing to charge: total {total_cents}"))
    } else if total_cents > MAX_ORDER_TOTAL_CENTS {
        Some(format!(
            "total {total_cents} cents is past the limit of {MAX_ORDER_TOTAL_CENTS}"
        ))
    } else {
        None
    }
}

#[derive(Debug, Clone, Default)]
pub struct Payments;

fn payment_id(order_id: &str) -> String {
    format!("PAY-{order_id}")
}

impl Participant for Payments {
    type Input = PaymentsIn;
    type Output = PaymentReply;
    type State = PaymentState;

    fn handle(
        &self,
        state: Option<&PaymentState>,
        input: &PaymentsIn,
        now: i64,
    ) -> Result<Reaction<PaymentState, PaymentReply>, InvalidCommand> {
        let cause = input.metadata();
        let order_id = saga_of(cause);
        if state.is_some_and(|s| seen(&s.steps, &cause.event_id)) {
            return Ok(Reaction::none());
        }
        let status = state.map(|s| s.status.as_str()).unwrap_or_default();
        let version = state.map_or(0, |s| s.version) + 1;
        let meta = caused_by(cause, SERVICE, &order_id, &order_id, version, now, 0);
        let reply: PaymentReply = match input {
            PaymentsIn::StockReserved(r) => {
                if !status.is_empty() {
                    // Charged, declined or compensated already: the charge step acts once.
                    // Nothing changes, so a redelivery decides the same again.
                    return Ok(Reaction::none());
                }
                match decline_reason(&r.order.payment_method, r.order.total_cents) {
                    Some(reason) => PaymentDeclined {
                        metadata: meta,
                        order_id: order_id.clone(),
                        payment_id: payment_id(&order_id),
                        reason,
                    }
                    .into(),
                    None => PaymentCaptured {
                        metadata: meta,
                        order: r.order.clone(),
                        payment_id: payment_id(&order_id),
                        amount_cents: r.order.total_cents,
                    }
                    .into(),
                }
            }
            // A received return: refund what it says, never more than is left captured.
            // Nothing left (or nothing ever captured): nothing to answer, no one waits.
            PaymentsIn::ReturnReceived(r) => {
                let left = state
                    .filter(|s| s.status == CAPTURED || s.status == REFUNDED)
                    .map_or(0, |s| s.captured_cents.saturating_sub(s.refunded_cents));
                let amount = r.refund_cents.clamp(0, left.max(0));
                if amount == 0 {
                    return Ok(Reaction::none());
                }
                PaymentRefunded {
                    metadata: meta,
                    order_id: order_id.clone(),
                    payment_id: payment_id(&order_id),
                    amount_cents: amount,
                }
                .into()
            }
            // Compensation: refund what was captured; always answer, so a retried
            // compensation still reaches inventory.
            PaymentsIn::ShipmentFailed(_) | PaymentsIn::ShipmentCancelled(_) => PaymentRefunded {
                metadata: meta,
                order_id: order_id.clone(),
                payment_id: payment_id(&order_id),
                amount_cents: match state {
                    Some(s) if s.status == CAPTURED => s.captured_cents,
                    _ => 0,
                },
            }
            .into(),
        };
        Ok(Reaction::new(evolve(state, &reply), vec![reply]))
    }
}

/// An order's payment after `reply`: the fold that rebuilds every payment from
/// `payments.replies` alone.
pub fn evolve(state: Option<&PaymentState>, reply: &PaymentReply) -> PaymentState {
    let meta = reply.metadata();
    let order_id = saga_of(meta);
    let mut s = state.cloned().unwrap_or_else(|| PaymentState {
        payment_id: payment_id(&order_id),
        order_id,
        version: 0,
        status: String::new(),
        captured_cents: 0,
        refunded_cents: 0,
        steps: Vec::new(),
    });
    match reply {
        PaymentReply::PaymentCaptured(r) => {
            s.status = CAPTURED.into();
            s.captured_cents = r.amount_cents;
        }
        PaymentReply::PaymentDeclined(_) => s.status = DECLINED.into(),
        PaymentReply::PaymentRefunded(r) => {
            if r.amount_cents > 0 {
                s.status = REFUNDED.into();
                s.refunded_cents = s.refunded_cents.saturating_add(r.amount_cents);
            } else if s.status.is_empty() {
                s.status = COMPENSATED.into();
            }
        }
    }
    s.version = s.version.max(meta.aggregate_version);
    if let Some(cause) = &meta.causation_id
        && !seen(&s.steps, cause)
    {
        s.steps.push(cause.clone());
    }
    s
}
