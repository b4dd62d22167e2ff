//! The notifications service: tells the customer each order's outcome, exactly once.

use schemas::notifications::*;
use schemas::saga::NotificationsIn;

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by};

pub const SERVICE: &str = "notifications";

#[derive(Debug, Clone, Default)]
pub struct Notifications;

impl Participant for Notifications {
    type Input = NotificationsIn;
    type Output = NotificationEvent;
    type State = NotificationState;

    fn handle(
        &self,
        state: Option<&NotificationState>,
        input: &NotificationsIn,
        now: i64,
    ) -> Result<Reaction<NotificationState, NotificationEvent>, InvalidCommand> {
        let cause = input.metadata();
        let (order_id, customer_id, kind, text) = match input {
            NotificationsIn::OrderConfirmed(e) => (
                &e.order_id,
                &e.customer_id,
                "confirmation",
                format!(
                    "Your order {} is confirmed: {} cents, shipped with {} ({}).",
                    e.order_id, e.total_cents, e.carrier, e.shipment_id
                ),
            ),
            NotificationsIn::OrderCancelled(e) => (
                &e.order_id,
                &e.customer_id,
                "cancellation",
                format!("Your order {} was cancelled: {}.", e.order_id, e.reason),
            ),
        };
        // One notification per outcome: the kind is the dedup key.
        if state.is_some_and(|s| s.sent.iter().any(|k| k == kind)) {
            return Ok(Reaction::none());
        }
        let mut s = state.cloned().unwrap_or_else(|| NotificationState {
            order_id: order_id.clone(),
            sent: Vec::new(),
        });
        s.sent.push(kind.into());
        let sent = NotificationSent {
            metadata: caused_by(
                cause,
                SERVICE,
                order_id,
                order_id,
                s.sent.len() as i64,
                now,
                0,
            ),
            order_id: order_id.clone(),
            customer_id: customer_id.clone(),
            kind: kind.into(),
            text,
        };
        Ok(Reaction::new(s, vec![sent.into()]))
    }
}
