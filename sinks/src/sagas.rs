//! The saga views: `sagas` (one row per saga: status, current step, timing, outcome,
//! compensations) and `saga_steps` (every message of every saga, in the order seen).
//!
//! Both are sorted by saga id, so `WHERE saga_id = …` prunes row groups.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::{Result, table::batch};

pub const SAGAS: &str = "sagas";
pub const SAGA_STEPS: &str = "saga_steps";

/// One row of `sagas`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static SAGAS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("saga_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("current_step", DataType::Utf8, false),
        Field::new("started_at", ts(), false),
        Field::new("updated_at", ts(), false),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("total_cents", DataType::Int64, false),
        Field::new("steps", DataType::Int64, false),
        Field::new("compensations", DataType::Int64, false),
        Field::new("compensation_attempts", DataType::Int64, false),
    ]))
});

static STEPS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("saga_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("occurred_at", ts(), false),
        Field::new("service", DataType::Utf8, false),
        Field::new("step", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("causation_id", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
    ]))
});

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn optional<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn times(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn longs(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

/// The `sagas` batch, sorted by saga id.
pub fn sagas_batch<'a>(rows: impl IntoIterator<Item = &'a Saga>) -> Result<RecordBatch> {
    let mut r: Vec<&Saga> = rows.into_iter().collect();
    r.sort_by(|a, b| a.saga_id.cmp(&b.saga_id));
    batch(
        SAGAS_SCHEMA.clone(),
        vec![
            strings(r.iter().map(|s| s.saga_id.as_str())),
            optional(r.iter().map(|s| s.customer_id.as_deref())),
            strings(r.iter().map(|s| s.status.as_str())),
            strings(r.iter().map(|s| s.current_step.as_str())),
            times(r.iter().map(|s| s.started_at)),
            times(r.iter().map(|s| s.updated_at)),
            optional(r.iter().map(|s| s.outcome.as_deref())),
            longs(r.iter().map(|s| s.total_cents)),
            longs(r.iter().map(|s| s.steps)),
            longs(r.iter().map(|s| s.compensations)),
            longs(r.iter().map(|s| s.compensation_attempts)),
        ],
    )
}

/// The `saga_steps` batch, sorted by (saga id, seq).
pub fn steps_batch<'a>(rows: impl IntoIterator<Item = &'a SagaStep>) -> Result<RecordBatch> {
    let mut r: Vec<&SagaStep> = rows.into_iter().collect();
    r.sort_by(|a, b| (&a.saga_id, a.seq).cmp(&(&b.saga_id, b.seq)));
    batch(
        STEPS_SCHEMA.clone(),
        vec![
            strings(r.iter().map(|s| s.saga_id.as_str())),
            longs(r.iter().map(|s| s.seq)),
            times(r.iter().map(|s| s.occurred_at)),
            strings(r.iter().map(|s| s.service.as_str())),
            strings(r.iter().map(|s| s.step.as_str())),
            strings(r.iter().map(|s| s.topic.as_str())),
            Arc::new(Int32Array::from_iter_values(r.iter().map(|s| s.partition))),
            longs(r.iter().map(|s| s.offset)),
            strings(r.iter().map(|s| s.event_id.as_str())),
            optional(r.iter().map(|s| s.causation_id.as_deref())),
            strings(r.iter().map(|s| s.detail.as_str())),
        ],
    )
}
