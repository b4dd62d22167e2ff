//! The `sagas` and `saga_steps` views: every message of the saga topics, folded into one row
//! per saga and one row per step.
//!
//! Both tables are replaced together at most every `view_flush`, each carrying the topic
//! positions it reflects (`sagas` first, `saga_steps` last). The two tables are the views'
//! whole fold state (the steps' event ids are the duplicates already seen), so on start the
//! views resume from them when both carry the same checkpoint and every position lies within
//! its partition; otherwise (no tables, a stop between the two writes, a table that cannot be
//! read, a topic recreated or truncated) they rebuild from the beginning of the topics.

use arrow::record_batch::RecordBatch;
use processors::orders::sagas::{SagaProjection, Seen, Source};
use rdkafka::message::{BorrowedMessage, Message};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::inventory::InventoryReply;
use schemas::notifications::NotificationEvent;
use schemas::orders::OrderEvent;
use schemas::payments::PaymentReply;
use schemas::saga::topics::*;
use schemas::shipping::ShipmentReply;
use sinks::sagas::{
    SAGA_STEPS, SAGAS, sagas_batch, sagas_from_batches, steps_batch, steps_from_batches,
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

/// Decodes a message of one of the saga topics and reduces it to what the views keep.
fn decode(
    d: &mut Decoders,
    rt: &Handle,
    stop: &Stop,
    m: &BorrowedMessage<'_>,
) -> Result<Seen, schemas::DecodeError> {
    let payload = m.payload().unwrap_or_default();
    Ok(match m.topic() {
        ORDER_EVENTS => Seen::from(&wire::decode(rt, &mut d.orders, payload, stop)?),
        INVENTORY_REPLIES => Seen::from(&wire::decode(rt, &mut d.inventory, payload, stop)?),
        PAYMENT_REPLIES => Seen::from(&wire::decode(rt, &mut d.payments, payload, stop)?),
        SHIPPING_REPLIES => Seen::from(&wire::decode(rt, &mut d.shipping, payload, stop)?),
        _ => Seen::from(&wire::decode(rt, &mut d.notifications, payload, stop)?),
    })
}

/// The two views on the view loop: their fold and the decoders of the five topics.
pub(crate) struct SagaViews {
    projection: SagaProjection,
    decoders: Decoders,
}

impl crate::view::View for SagaViews {
    const PIPELINE: &'static str = PIPELINE;
    const DLQ: Option<(&'static str, &'static str)> =
        Some((crate::topics::saga::ORDERS_DLQ, PIPELINE));
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
        let at = Source {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
        };
        self.projection.add(at, seen);
        Ok(())
    }

    fn batches(&self) -> anyhow::Result<Vec<RecordBatch>> {
        Ok(vec![
            sagas_batch(self.projection.sagas())?,
            steps_batch(self.projection.steps())?,
        ])
    }

    /// Takes both tables back if they agree (see [`SagaProjection::from_tables`]).
    fn resume(&mut self, tables: &[Vec<RecordBatch>]) -> anyhow::Result<()> {
        let sagas = sagas_from_batches(&tables[0])?;
        let steps = steps_from_batches(&tables[1])?;
        self.projection = SagaProjection::from_tables(sagas, steps).map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// Runs the saga views until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let registry = Registry::new(&opts.cluster.registry);
    let views = || SagaViews {
        projection: SagaProjection::default(),
        decoders: Decoders {
            orders: Decoder::new(registry.clone()),
            inventory: Decoder::new(registry.clone()),
            payments: Decoder::new(registry.clone()),
            shipping: Decoder::new(registry.clone()),
            notifications: Decoder::new(registry.clone()),
        },
    };
    crate::view::run(views, &opts.view_settings(), rt, stop)
}
