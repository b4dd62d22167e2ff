//! The `sagas` and `saga_steps` projections: every message of the saga topics, folded into
//! one row per saga (its status as the messages say it) and one row per step.
//!
//! A message is first reduced to what the views keep ([`Seen`], from each record type), then
//! folded ([`SagaProjection::add`]). Rules: a message whose event id was seen is a duplicate
//! delivery and adds nothing; a saga starts `Running`, turns `Compensating` when a
//! compensation is requested or a participant fails (while still running), and ends
//! `Confirmed` or `Cancelled` as the initiator says; a compensation that undid something (a
//! release of stock, a refund, a shipment cancelled) counts once; the step count is the
//! saga's rows in `saga_steps`, so the two tables can be checked against each other when a
//! view resumes from them ([`SagaProjection::from_tables`]).

use std::collections::{HashMap, HashSet};

use schemas::inventory::InventoryReply;
use schemas::notifications::NotificationEvent;
use schemas::orders::OrderEvent;
use schemas::payments::PaymentReply;
use schemas::record::RecordUnion;
use schemas::shipping::ShipmentReply;

/// One row of `sagas`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saga {
    pub saga_id: String,
    pub customer_id: Option<String>,
    /// Running, Compensating, Confirmed or Cancelled.
    pub status: String,
    /// The last message of the saga (record name).
    pub current_step: String,
    pub started_at: i64,
    pub updated_at: i64,
    /// Why it was cancelled, if it was.
    pub outcome: Option<String>,
    pub total_cents: i64,
    pub steps: i64,
    /// Compensations that undid something (a shipment, a charge, reservations).
    pub compensations: i64,
    /// Compensation requests by the initiator; above 1 the compensation was stuck and retried.
    pub compensation_attempts: i64,
}

/// One row of `saga_steps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStep {
    pub saga_id: String,
    /// Position of the step within its saga, as the view saw it.
    pub seq: i64,
    pub occurred_at: i64,
    pub service: String,
    pub step: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub causation_id: Option<String>,
    pub detail: String,
}

pub use crate::Source;

/// A decoded saga message, reduced to what the views keep.
pub struct Seen {
    pub saga_id: String,
    pub event_id: String,
    pub causation_id: Option<String>,
    pub occurred_at: i64,
    pub service: &'static str,
    pub step: &'static str,
    pub detail: String,
    pub effect: Effect,
}

pub enum Effect {
    None,
    Started {
        customer_id: String,
        total_cents: i64,
    },
    Compensating {
        attempt: i64,
    },
    Ended {
        status: &'static str,
        outcome: Option<String>,
    },
    Compensated,
}

fn short(name: &'static str) -> &'static str {
    name.rsplit('.').next().unwrap_or(name)
}

macro_rules! seen {
    ($record:expr, $service:expr, $detail:expr, $effect:expr) => {{
        let r = $record;
        let meta = r.metadata();
        Seen {
            saga_id: meta
                .saga_id
                .clone()
                .unwrap_or_else(|| meta.aggregate_id.clone()),
            event_id: meta.event_id.clone(),
            causation_id: meta.causation_id.clone(),
            occurred_at: meta.occurred_at,
            service: $service,
            step: short(r.record_name()),
            detail: $detail(r),
            effect: $effect(r),
        }
    }};
}

impl From<&OrderEvent> for Seen {
    fn from(e: &OrderEvent) -> Seen {
        seen!(
            e,
            "orders",
            |e: &OrderEvent| match e {
                OrderEvent::OrderPlaced(p) => format!(
                    "{} lines, {} cents",
                    p.order.lines.len(),
                    p.order.total_cents
                ),
                OrderEvent::OrderConfirmed(c) => format!("{} via {}", c.shipment_id, c.carrier),
                OrderEvent::OrderCancelling(c) =>
                    format!("attempt {} at {}: {}", c.attempt, c.step, c.reason),
                OrderEvent::OrderCancelled(c) => c.reason.clone(),
                OrderEvent::OrderCancellationRejected(c) => c.reason.clone(),
                OrderEvent::OrderProgressed(p) => p.status.clone(),
                OrderEvent::OrderFailed(f) => format!("at {}: {}", f.step, f.reason),
                OrderEvent::OrderCompensationRecorded(c) => c
                    .compensation
                    .clone()
                    .unwrap_or_else(|| "nothing to undo".into()),
                OrderEvent::OrderReplyIgnored(r) =>
                    format!("late {} ignored (saga {})", r.reply, r.status),
            },
            |e: &OrderEvent| match e {
                OrderEvent::OrderPlaced(p) => Effect::Started {
                    customer_id: p.order.customer_id.clone(),
                    total_cents: p.order.total_cents
                },
                OrderEvent::OrderConfirmed(_) => Effect::Ended {
                    status: "Confirmed",
                    outcome: None
                },
                OrderEvent::OrderCancelling(c) => Effect::Compensating {
                    attempt: c.attempt.into()
                },
                OrderEvent::OrderCancelled(c) => Effect::Ended {
                    status: "Cancelled",
                    outcome: Some(c.reason.clone())
                },
                // A participant's failure: compensations run without a request.
                OrderEvent::OrderFailed(_) => Effect::Compensating { attempt: 0 },
                OrderEvent::OrderCancellationRejected(_)
                | OrderEvent::OrderProgressed(_)
                | OrderEvent::OrderCompensationRecorded(_)
                | OrderEvent::OrderReplyIgnored(_) => Effect::None,
            }
        )
    }
}

impl From<&InventoryReply> for Seen {
    fn from(r: &InventoryReply) -> Seen {
        seen!(
            r,
            "inventory",
            |r: &InventoryReply| match r {
                InventoryReply::StockReserved(s) => format!("{} lines", s.order.lines.len()),
                InventoryReply::StockReservationFailed(f) => f.reason.clone(),
                InventoryReply::StockReleased(s) => format!("{} lines released", s.lines_released),
            },
            |r: &InventoryReply| match r {
                InventoryReply::StockReleased(s) if s.lines_released > 0 => Effect::Compensated,
                _ => Effect::None,
            }
        )
    }
}

impl From<&PaymentReply> for Seen {
    fn from(r: &PaymentReply) -> Seen {
        seen!(
            r,
            "payments",
            |r: &PaymentReply| match r {
                PaymentReply::PaymentCaptured(c) => format!("{} cents captured", c.amount_cents),
                PaymentReply::PaymentDeclined(c) => c.reason.clone(),
                PaymentReply::PaymentRefunded(c) => format!("{} cents refunded", c.amount_cents),
            },
            |r: &PaymentReply| match r {
                PaymentReply::PaymentRefunded(c) if c.amount_cents > 0 => Effect::Compensated,
                _ => Effect::None,
            }
        )
    }
}

impl From<&ShipmentReply> for Seen {
    fn from(r: &ShipmentReply) -> Seen {
        seen!(
            r,
            "shipping",
            |r: &ShipmentReply| match r {
                ShipmentReply::ShipmentCreated(c) => format!("{} via {}", c.shipment_id, c.carrier),
                ShipmentReply::ShipmentFailed(f) => f.reason.clone(),
                ShipmentReply::ShipmentCancelled(c) => c
                    .shipment_id
                    .clone()
                    .map_or("nothing to cancel".into(), |s| format!("{s} cancelled")),
            },
            |r: &ShipmentReply| match r {
                ShipmentReply::ShipmentCancelled(c) if c.shipment_id.is_some() =>
                    Effect::Compensated,
                _ => Effect::None,
            }
        )
    }
}

impl From<&NotificationEvent> for Seen {
    fn from(n: &NotificationEvent) -> Seen {
        seen!(
            n,
            "notifications",
            |n: &NotificationEvent| match n {
                NotificationEvent::NotificationSent(s) => format!("{}: {}", s.kind, s.text),
            },
            |_: &NotificationEvent| Effect::None
        )
    }
}

#[derive(Default)]
pub struct SagaProjection {
    sagas: HashMap<String, Saga>,
    steps: Vec<SagaStep>,
    seen: HashSet<String>,
}

impl SagaProjection {
    /// The fold as the two tables of one flush hold it; refused (naming a saga) when they
    /// disagree: every saga's step count is its rows in `saga_steps`.
    pub fn from_tables(sagas: Vec<Saga>, steps: Vec<SagaStep>) -> Result<Self, String> {
        let mut counted: HashMap<&str, i64> = HashMap::new();
        for s in &steps {
            *counted.entry(s.saga_id.as_str()).or_default() += 1;
        }
        let disagree = sagas
            .iter()
            .find(|s| counted.remove(s.saga_id.as_str()).unwrap_or(0) != s.steps)
            .map(|s| s.saga_id.clone())
            .or_else(|| counted.keys().next().map(|id| id.to_string()));
        if let Some(saga_id) = disagree {
            return Err(format!(
                "the saga tables disagree on saga {saga_id}'s steps"
            ));
        }
        Ok(SagaProjection {
            sagas: sagas.into_iter().map(|s| (s.saga_id.clone(), s)).collect(),
            seen: steps.iter().map(|s| s.event_id.clone()).collect(),
            steps,
        })
    }

    /// One row per saga, in no particular order.
    pub fn sagas(&self) -> impl Iterator<Item = &Saga> {
        self.sagas.values()
    }

    /// One row per step, in the order they were folded.
    pub fn steps(&self) -> &[SagaStep] {
        &self.steps
    }

    /// Folds message `s`, read at `at`.
    pub fn add(&mut self, at: Source<'_>, s: Seen) {
        // Duplicate deliveries carry the same event id: one step each.
        if !self.seen.insert(s.event_id.clone()) {
            return;
        }
        let saga = self.sagas.entry(s.saga_id.clone()).or_insert_with(|| Saga {
            saga_id: s.saga_id.clone(),
            status: "Running".into(),
            started_at: s.occurred_at,
            ..Saga::default()
        });
        saga.steps += 1;
        saga.current_step = s.step.to_owned();
        saga.updated_at = saga.updated_at.max(s.occurred_at);
        saga.started_at = saga.started_at.min(s.occurred_at);
        match s.effect {
            Effect::None => {}
            Effect::Started {
                customer_id,
                total_cents,
            } => {
                saga.customer_id = Some(customer_id);
                saga.total_cents = total_cents;
            }
            Effect::Compensating { attempt } => {
                if saga.status == "Running" {
                    saga.status = "Compensating".into();
                }
                saga.compensation_attempts = saga.compensation_attempts.max(attempt);
            }
            Effect::Ended { status, outcome } => {
                saga.status = status.into();
                saga.outcome = outcome;
            }
            Effect::Compensated => saga.compensations += 1,
        }
        self.steps.push(SagaStep {
            saga_id: s.saga_id,
            seq: saga.steps,
            occurred_at: s.occurred_at,
            service: s.service.to_owned(),
            step: s.step.to_owned(),
            topic: at.topic.to_owned(),
            partition: at.partition,
            offset: at.offset,
            event_id: s.event_id,
            causation_id: s.causation_id,
            detail: s.detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Metadata;
    use schemas::orders::*;
    use schemas::payments::*;

    fn meta(saga: &str, event_id: &str, at: i64) -> Metadata {
        Metadata {
            event_id: event_id.to_owned(),
            aggregate_id: saga.to_owned(),
            aggregate_version: 1,
            occurred_at: at,
            correlation_id: saga.to_owned(),
            causation_id: None,
            saga_id: Some(saga.to_owned()),
            tenant_id: "default".to_owned(),
            region: "default".to_owned(),
        }
    }

    fn placed(saga: &str, id: &str, at: i64) -> OrderEvent {
        OrderPlaced {
            metadata: meta(saga, id, at),
            order: OrderContext {
                order_id: saga.to_owned(),
                customer_id: "C-1".to_owned(),
                lines: Vec::new(),
                total_cents: 1_200,
                payment_method: "card".to_owned(),
                ship_to_country: "NL".to_owned(),
                ship_to_postcode: "1011".to_owned(),
            },
            deadline_at: at + 30_000,
        }
        .into()
    }

    fn cancelling(saga: &str, id: &str, at: i64, attempt: i32) -> OrderEvent {
        OrderCancelling {
            metadata: meta(saga, id, at),
            order_id: saga.to_owned(),
            reason: "customer asked".to_owned(),
            step: "Paid".to_owned(),
            attempt,
            deadline_at: at + 30_000,
        }
        .into()
    }

    fn refunded(saga: &str, id: &str, at: i64, cents: i64) -> PaymentReply {
        PaymentRefunded {
            metadata: meta(saga, id, at),
            order_id: saga.to_owned(),
            payment_id: "P-1".to_owned(),
            amount_cents: cents,
        }
        .into()
    }

    fn cancelled(saga: &str, id: &str, at: i64) -> OrderEvent {
        OrderCancelled {
            metadata: meta(saga, id, at),
            order_id: saga.to_owned(),
            customer_id: "C-1".to_owned(),
            reason: "customer asked".to_owned(),
            compensations: Vec::new(),
        }
        .into()
    }

    fn at(offset: i64) -> Source<'static> {
        Source {
            topic: "orders.events",
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_cancelled_saga_runs_compensates_and_ends_with_its_reason() {
        // Given a placed order
        let mut p = SagaProjection::default();
        p.add(at(0), Seen::from(&placed("O-1", "e1", 10)));
        // When it is cancelled, refunded twice over (a retry) and ended
        p.add(at(1), Seen::from(&cancelling("O-1", "e2", 20, 1)));
        p.add(at(2), Seen::from(&refunded("O-1", "e3", 30, 1_200)));
        p.add(at(3), Seen::from(&cancelling("O-1", "e4", 40, 2)));
        p.add(at(4), Seen::from(&refunded("O-1", "e5", 50, 0)));
        p.add(at(5), Seen::from(&cancelled("O-1", "e6", 60)));
        // Then the saga says so: one compensation that undid something, two attempts
        let saga = p.sagas().next().unwrap();
        assert_eq!(saga.status, "Cancelled");
        assert_eq!(saga.outcome.as_deref(), Some("customer asked"));
        assert_eq!(saga.customer_id.as_deref(), Some("C-1"));
        assert_eq!(saga.total_cents, 1_200);
        assert_eq!((saga.compensations, saga.compensation_attempts), (1, 2));
        assert_eq!((saga.started_at, saga.updated_at, saga.steps), (10, 60, 6));
        assert_eq!(saga.current_step, "OrderCancelled");
        let steps: Vec<(i64, &str, &str)> = p
            .steps()
            .iter()
            .map(|s| (s.seq, s.service.as_str(), s.detail.as_str()))
            .collect();
        assert_eq!(steps[0], (1, "orders", "0 lines, 1200 cents"));
        assert_eq!(steps[2], (3, "payments", "1200 cents refunded"));
        assert_eq!(steps[3], (4, "orders", "attempt 2 at Paid: customer asked"));
    }

    #[test]
    fn a_message_delivered_twice_is_one_step() {
        let mut p = SagaProjection::default();
        p.add(at(0), Seen::from(&placed("O-1", "e1", 10)));
        p.add(at(1), Seen::from(&placed("O-1", "e1", 10)));
        assert_eq!(p.steps().len(), 1);
        assert_eq!(p.sagas().next().unwrap().steps, 1);
    }

    #[test]
    fn a_compensation_request_after_the_end_does_not_reopen_the_saga() {
        let mut p = SagaProjection::default();
        p.add(at(0), Seen::from(&placed("O-1", "e1", 10)));
        p.add(at(1), Seen::from(&cancelled("O-1", "e2", 20)));
        p.add(at(2), Seen::from(&cancelling("O-1", "e3", 30, 3)));
        let saga = p.sagas().next().unwrap();
        assert_eq!(saga.status, "Cancelled");
        assert_eq!(saga.compensation_attempts, 3);
    }

    #[test]
    fn tables_that_disagree_on_a_sagas_steps_are_refused() {
        let mut p = SagaProjection::default();
        p.add(at(0), Seen::from(&placed("O-1", "e1", 10)));
        p.add(at(1), Seen::from(&cancelling("O-1", "e2", 20, 1)));
        let sagas: Vec<Saga> = p.sagas().cloned().collect();
        let steps = p.steps().to_vec();
        // The two tables of one flush: taken back, the seen ids with them.
        let mut back = SagaProjection::from_tables(sagas.clone(), steps.clone()).unwrap();
        back.add(at(1), Seen::from(&cancelling("O-1", "e2", 20, 1)));
        assert_eq!(back.steps().len(), 2);
        // A steps table of an earlier flush: refused, naming the saga.
        let err = SagaProjection::from_tables(sagas, steps[..1].to_vec())
            .err()
            .unwrap();
        assert!(err.contains("O-1"), "{err}");
    }
}
