//! The order-fulfilment saga, as choreography: each participant is a pure function of its
//! per-saga state and one incoming message, and answers on its own reply topic; the next
//! participant listens there. No orchestrator: the initiator (`orders`) only tracks the
//! outcome and owns the deadlines.
//!
//! ```text
//! PlaceOrder → OrderPlaced → inventory: StockReserved | StockReservationFailed
//!            → payments: PaymentCaptured | PaymentDeclined
//!            → shipping: ShipmentCreated | ShipmentFailed → orders: OrderConfirmed → notifications
//! compensations, in reverse:
//!   ShipmentFailed → payments refunds → inventory releases → orders: OrderCancelled
//!   PaymentDeclined → inventory releases → orders: OrderCancelled
//!   CancelOrder | step deadline → OrderCancelling → shipping cancels → payments refunds
//!                                → inventory releases → orders: OrderCancelled
//! ```
//!
//! Every participant is idempotent twice over: a message whose event id is already in the
//! saga's `steps` is a duplicate delivery and changes nothing; and each state machine acts at
//! most once per step (a charge happens only from "no payment yet"). A compensation request
//! is always answered, even when there was nothing to undo, so a retried compensation runs
//! the whole chain again and still ends. A forward request that arrives after the saga was
//! compensated is ignored: late replies never resurrect a saga.

#[cfg(test)]
mod tests;

use schemas::Metadata;
use uuid::Uuid;

use crate::InvalidCommand;

/// A saga participant: per-saga state in, one message in, new state and messages out.
pub trait Participant {
    /// Everything it reads (from any of its input topics).
    type Input;
    /// Everything it writes.
    type Output;
    /// Its state per saga (kept in its own store, backed by its changelog).
    type State;

    /// Reacts to `input` for the saga whose state is `state` (`None`: never seen).
    fn handle(
        &self,
        state: Option<&Self::State>,
        input: &Self::Input,
        now: i64,
    ) -> Result<Reaction<Self::State, Self::Output>, InvalidCommand>;

    /// When the saga's current step times out (the initiator's deadlines), if ever.
    fn deadline(&self, _state: &Self::State) -> Option<i64> {
        None
    }

    /// Reacts to the passing of the saga's deadline (called when `now >= deadline`).
    fn expire(&self, _state: &Self::State, _now: i64) -> Reaction<Self::State, Self::Output> {
        Reaction::none()
    }
}

/// What a participant does with one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaction<S, O> {
    /// The saga's new state; `None` leaves it as it was.
    pub state: Option<S>,
    /// Messages to publish, in order.
    pub emit: Vec<O>,
}

impl<S, O> Reaction<S, O> {
    /// Nothing happens (a duplicate, or a late reply).
    pub fn none() -> Self {
        Reaction {
            state: None,
            emit: Vec::new(),
        }
    }

    /// A new state and messages.
    pub fn new(state: S, emit: Vec<O>) -> Self {
        Reaction {
            state: Some(state),
            emit,
        }
    }
}

const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8a9f_1c2e_53b4_4d6a_a7e1_90c3_5d2b_7f44);

/// Metadata of a message `service` publishes for `saga` because of `cause`.
///
/// The event id is derived from the service, the cause's id and `nth` (the message's index
/// among those the cause yields), so a redelivered cause yields the same ids and consumers
/// recognize the duplicates.
pub fn caused_by(
    cause: &Metadata,
    service: &str,
    saga: &str,
    aggregate_id: &str,
    version: i64,
    now: i64,
    nth: usize,
) -> Metadata {
    Metadata {
        event_id: Uuid::new_v5(
            &MESSAGE_ID_NAMESPACE,
            format!("{service}/{}/{nth}", cause.event_id).as_bytes(),
        )
        .to_string(),
        aggregate_id: aggregate_id.to_owned(),
        aggregate_version: version,
        occurred_at: now,
        correlation_id: cause.correlation_id.clone(),
        causation_id: Some(cause.event_id.clone()),
        saga_id: Some(saga.to_owned()),
        tenant_id: cause.tenant_id.clone(),
        region: cause.region.clone(),
    }
}

/// The state a message evolves: the current one (or `new()` for a saga never seen) with the
/// message's id recorded in its steps; `None` when the message was handled already (a
/// duplicate delivery: nothing to do).
pub fn remember<S: Clone>(
    state: Option<&S>,
    cause_id: &str,
    steps: impl Fn(&mut S) -> &mut Vec<String>,
    new: impl FnOnce() -> S,
) -> Option<S> {
    let mut s = state.cloned().unwrap_or_else(new);
    first_time(steps(&mut s), cause_id).then_some(s)
}

/// The saga a message belongs to: its saga id, else its aggregate id.
pub fn saga_of(cause: &Metadata) -> String {
    cause
        .saga_id
        .clone()
        .unwrap_or_else(|| cause.aggregate_id.clone())
}

/// Records `id` in `steps`; false if it was there already (a duplicate delivery).
pub fn first_time(steps: &mut Vec<String>, id: &str) -> bool {
    if steps.iter().any(|s| s == id) {
        false
    } else {
        steps.push(id.to_owned());
        true
    }
}

/// Whether `id` was handled already.
pub fn seen(steps: &[String], id: &str) -> bool {
    steps.iter().any(|s| s == id)
}
