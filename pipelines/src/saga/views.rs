//! The `sagas` and `saga_steps` views: every message of the saga topics, folded into one row
//! per saga and one row per step.
//!
//! Both tables are replaced together at most every `view_flush`, each carrying the topic
//! positions it reflects (`sagas` first, `saga_steps` last). The two tables are the views'
//! whole fold state (the steps' event ids are the duplicates already seen), so on start the
//! views resume from them when both carry the same checkpoint and every position lies within
//! its partition; otherwise (no tables, a stop between the two writes, a table that cannot be
//! read, a topic recreated or truncated) they rebuild from the beginning of the topics.

use std::collections::{HashMap, HashSet};

use arrow::record_batch::RecordBatch;
use rdkafka::message::{BorrowedMessage, Message};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::inventory::InventoryReply;
use schemas::notifications::NotificationEvent;
use schemas::orders::OrderEvent;
use schemas::payments::PaymentReply;
use schemas::record::RecordUnion;
use schemas::saga::topics::*;
use schemas::shipping::ShipmentReply;
use sinks::sagas::{
    SAGA_STEPS, SAGAS, Saga, SagaStep, sagas_batch, sagas_from_batches, steps_batch,
    steps_from_batches,
};
use tokio::runtime::Handle;

use super::Options;
use crate::{Stop, wire};

/// The pipeline (its consumer group).
pub const PIPELINE: &str = "saga-views";

/// Topics the saga views read.
pub const TOPICS: &[&str] = &[
    ORDER_EVENTS,
    INVENTORY_REPLIES,
    PAYMENT_REPLIES,
    SHIPPING_REPLIES,
    NOTIFICATION_EVENTS,
];

struct Decoders {
    orders: Decoder<OrderEvent>,
    inventory: Decoder<InventoryReply>,
    payments: Decoder<PaymentReply>,
    shipping: Decoder<ShipmentReply>,
    notifications: Decoder<NotificationEvent>,
}

/// A decoded saga message, reduced to what the views keep.
struct Seen {
    saga_id: String,
    event_id: String,
    causation_id: Option<String>,
    occurred_at: i64,
    service: &'static str,
    step: &'static str,
    detail: String,
    effect: Effect,
}

enum Effect {
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

fn decode(
    d: &mut Decoders,
    rt: &Handle,
    stop: &Stop,
    m: &BorrowedMessage<'_>,
) -> Result<Seen, schemas::DecodeError> {
    let payload = m.payload().unwrap_or_default();
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
                detail: $detail(&r),
                effect: $effect(&r),
            }
        }};
    }
    Ok(match m.topic() {
        ORDER_EVENTS => {
            let e = wire::decode(rt, &mut d.orders, payload, stop)?;
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
        INVENTORY_REPLIES => {
            let r = wire::decode(rt, &mut d.inventory, payload, stop)?;
            seen!(
                r,
                "inventory",
                |r: &InventoryReply| match r {
                    InventoryReply::StockReserved(s) => format!("{} lines", s.order.lines.len()),
                    InventoryReply::StockReservationFailed(f) => f.reason.clone(),
                    InventoryReply::StockReleased(s) =>
                        format!("{} lines released", s.lines_released),
                },
                |r: &InventoryReply| match r {
                    InventoryReply::StockReleased(s) if s.lines_released > 0 => Effect::Compensated,
                    _ => Effect::None,
                }
            )
        }
        PAYMENT_REPLIES => {
            let r = wire::decode(rt, &mut d.payments, payload, stop)?;
            seen!(
                r,
                "payments",
                |r: &PaymentReply| match r {
                    PaymentReply::PaymentCaptured(c) =>
                        format!("{} cents captured", c.amount_cents),
                    PaymentReply::PaymentDeclined(c) => c.reason.clone(),
                    PaymentReply::PaymentRefunded(c) =>
                        format!("{} cents refunded", c.amount_cents),
                },
                |r: &PaymentReply| match r {
                    PaymentReply::PaymentRefunded(c) if c.amount_cents > 0 => Effect::Compensated,
                    _ => Effect::None,
                }
            )
        }
        SHIPPING_REPLIES => {
            let r = wire::decode(rt, &mut d.shipping, payload, stop)?;
            seen!(
                r,
                "shipping",
                |r: &ShipmentReply| match r {
                    ShipmentReply::ShipmentCreated(c) =>
                        format!("{} via {}", c.shipment_id, c.carrier),
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
        _ => {
            let n = wire::decode(rt, &mut d.notifications, payload, stop)?;
            seen!(
                n,
                "notifications",
                |n: &NotificationEvent| match n {
                    NotificationEvent::NotificationSent(s) => format!("{}: {}", s.kind, s.text),
                },
                |_: &NotificationEvent| Effect::None
            )
        }
    })
}

#[derive(Default)]
struct Fold {
    sagas: HashMap<String, Saga>,
    steps: Vec<SagaStep>,
    seen: HashSet<String>,
}

impl Fold {
    /// The fold as the two tables hold it.
    fn from_tables(sagas: Vec<Saga>, steps: Vec<SagaStep>) -> Self {
        Fold {
            sagas: sagas.into_iter().map(|s| (s.saga_id.clone(), s)).collect(),
            seen: steps.iter().map(|s| s.event_id.clone()).collect(),
            steps,
        }
    }

    fn add(&mut self, m: &BorrowedMessage<'_>, s: Seen) {
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
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            event_id: s.event_id,
            causation_id: s.causation_id,
            detail: s.detail,
        });
    }
}

/// The two views on the view loop: their fold and the decoders of the five topics.
pub(crate) struct SagaViews {
    fold: Fold,
    decoders: Decoders,
}

impl crate::view::View for SagaViews {
    const PIPELINE: &'static str = PIPELINE;
    const TOPICS: &'static [&'static str] = TOPICS;
    /// `saga_steps` is written last: its checkpoint says both tables are complete up to it.
    const TABLES: &'static [&'static str] = &[SAGAS, SAGA_STEPS];
    const RESUMES: bool = true;

    fn fold(
        &mut self,
        rt: &Handle,
        stop: &Stop,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), schemas::DecodeError> {
        let seen = decode(&mut self.decoders, rt, stop, m)?;
        self.fold.add(m, seen);
        Ok(())
    }

    fn batches(&self) -> anyhow::Result<Vec<RecordBatch>> {
        Ok(vec![
            sagas_batch(self.fold.sagas.values())?,
            steps_batch(&self.fold.steps)?,
        ])
    }

    /// Takes both tables back if they agree: every saga's step count is its rows in
    /// `saga_steps`.
    fn resume(&mut self, tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
        let sagas = sagas_from_batches(&tables[0])?;
        let steps = steps_from_batches(&tables[1])?;
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
            anyhow::bail!("the saga tables disagree on saga {saga_id}'s steps");
        }
        self.fold = Fold::from_tables(sagas, steps);
        Ok(())
    }
}

/// Runs the saga views until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let registry = Registry::new(&opts.cluster.registry);
    let views = SagaViews {
        fold: Fold::default(),
        decoders: Decoders {
            orders: Decoder::new(registry.clone()),
            inventory: Decoder::new(registry.clone()),
            payments: Decoder::new(registry.clone()),
            shipping: Decoder::new(registry.clone()),
            notifications: Decoder::new(registry),
        },
    };
    crate::view::run(views, &opts.view_settings(), rt, stop)
}
