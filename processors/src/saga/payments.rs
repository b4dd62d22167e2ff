//! The payments service: charges reserved orders once, refunds on compensation.

use schemas::payments::*;
use schemas::saga::PaymentsIn;

use super::{Participant, Reaction, caused_by, evolve, saga_of};
use crate::InvalidCommand;

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
/// tokens starting with `declined` are refused, as is a zero or negative total.
pub fn decline_reason(payment_method: &str, total_cents: i64) -> Option<String> {
    if payment_method.starts_with("declined") {
        Some(format!("card {payment_method} declined by issuer"))
    } else if total_cents <= 0 {
        Some(format!("nothing to charge: total {total_cents}"))
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
        let Some(mut s) = evolve(
            state,
            &cause.event_id,
            |s| &mut s.steps,
            || PaymentState {
                order_id: order_id.clone(),
                version: 0,
                payment_id: payment_id(&order_id),
                status: String::new(),
                captured_cents: 0,
                refunded_cents: 0,
                steps: Vec::new(),
            },
        ) else {
            return Ok(Reaction::none());
        };
        let meta = |version| caused_by(cause, SERVICE, &order_id, &order_id, version, now, 0);
        let reply: PaymentReply = match input {
            PaymentsIn::StockReserved(r) => {
                if !s.status.is_empty() {
                    // Charged, declined or compensated already: the charge step acts once.
                    return Ok(Reaction::new(s, Vec::new()));
                }
                s.version += 1;
                match decline_reason(&r.order.payment_method, r.order.total_cents) {
                    Some(reason) => {
                        s.status = DECLINED.into();
                        PaymentDeclined {
                            metadata: meta(s.version),
                            order_id: order_id.clone(),
                            payment_id: s.payment_id.clone(),
                            reason,
                        }
                        .into()
                    }
                    None => {
                        s.status = CAPTURED.into();
                        s.captured_cents = r.order.total_cents;
                        PaymentCaptured {
                            metadata: meta(s.version),
                            order: r.order.clone(),
                            payment_id: s.payment_id.clone(),
                            amount_cents: r.order.total_cents,
                        }
                        .into()
                    }
                }
            }
            PaymentsIn::ShipmentFailed(_) | PaymentsIn::ShipmentCancelled(_) => {
                // Compensation: refund what was captured; always answer, so a retried
                // compensation still reaches inventory.
                let amount = if s.status == CAPTURED {
                    s.status = REFUNDED.into();
                    s.refunded_cents = s.captured_cents;
                    s.captured_cents
                } else {
                    if s.status.is_empty() {
                        s.status = COMPENSATED.into();
                    }
                    0
                };
                s.version += 1;
                PaymentRefunded {
                    metadata: meta(s.version),
                    order_id: order_id.clone(),
                    payment_id: s.payment_id.clone(),
                    amount_cents: amount,
                }
                .into()
            }
        };
        Ok(Reaction::new(s, vec![reply]))
    }
}
