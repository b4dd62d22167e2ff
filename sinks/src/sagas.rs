//! The saga views: `sagas` (one row per saga: status, current step, timing, outcome,
//! compensations) and `saga_steps` (every message of every saga, in the order seen).
//!
//! Both are sorted by saga id, so `WHERE saga_id = …` prunes row groups.
//!
//! Together they are the views' whole fold state (the steps' event ids are the duplicates
//! already seen), so the views resume from them ([`sagas_from_batches`],
//! [`steps_from_batches`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::Result;
use crate::table::{Columns, batch, text_at};

pub const SAGAS: &str = "sagas";
pub const SAGA_STEPS: &str = "saga_steps";

/// The rows, as the projection in `processors` folds them.
pub use processors::orders::sagas::{Saga, SagaStep};

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

/// The rows of a `sagas` table as [`sagas_batch`] wrote them.
pub fn sagas_from_batches(batches: &[RecordBatch]) -> Result<Vec<Saga>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(SAGAS, &SAGAS_SCHEMA, b)?;
        let text = |i| c.get::<StringArray>(i);
        let time = |i| c.get::<TimestampMillisecondArray>(i);
        let long = |i| c.get::<Int64Array>(i);
        let (id, customer, status, current) = (text(0)?, text(1)?, text(2)?, text(3)?);
        let (started, updated, outcome) = (time(4)?, time(5)?, text(6)?);
        let (total, steps, compensations, attempts) = (long(7)?, long(8)?, long(9)?, long(10)?);
        for i in 0..b.num_rows() {
            rows.push(Saga {
                saga_id: id.value(i).to_owned(),
                customer_id: text_at(customer, i),
                status: status.value(i).to_owned(),
                current_step: current.value(i).to_owned(),
                started_at: started.value(i),
                updated_at: updated.value(i),
                outcome: text_at(outcome, i),
                total_cents: total.value(i),
                steps: steps.value(i),
                compensations: compensations.value(i),
                compensation_attempts: attempts.value(i),
            });
        }
    }
    Ok(rows)
}

/// The rows of a `saga_steps` table as [`steps_batch`] wrote them.
pub fn steps_from_batches(batches: &[RecordBatch]) -> Result<Vec<SagaStep>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(SAGA_STEPS, &STEPS_SCHEMA, b)?;
        let text = |i| c.get::<StringArray>(i);
        let (id, service, step, topic) = (text(0)?, text(3)?, text(4)?, text(5)?);
        let (event, cause, detail) = (text(8)?, text(9)?, text(10)?);
        let (seq, offset) = (c.get::<Int64Array>(1)?, c.get::<Int64Array>(7)?);
        let at = c.get::<TimestampMillisecondArray>(2)?;
        let partition = c.get::<Int32Array>(6)?;
        for i in 0..b.num_rows() {
            rows.push(SagaStep {
                saga_id: id.value(i).to_owned(),
                seq: seq.value(i),
                occurred_at: at.value(i),
                service: service.value(i).to_owned(),
                step: step.value(i).to_owned(),
                topic: topic.value(i).to_owned(),
                partition: partition.value(i),
                offset: offset.value(i),
                event_id: event.value(i).to_owned(),
                causation_id: text_at(cause, i),
                detail: detail.value(i).to_owned(),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let sagas = vec![
            Saga {
                saga_id: "O-1".into(),
                customer_id: Some("C-1".into()),
                status: "Cancelled".into(),
                current_step: "OrderCancelled".into(),
                started_at: 10,
                updated_at: 30,
                outcome: Some("payment declined".into()),
                total_cents: 1200,
                steps: 5,
                compensations: 1,
                compensation_attempts: 1,
            },
            Saga {
                saga_id: "O-2".into(),
                status: "Running".into(),
                current_step: "OrderPlaced".into(),
                steps: 1,
                ..Saga::default()
            },
        ];
        let steps = vec![
            SagaStep {
                saga_id: "O-1".into(),
                seq: 1,
                occurred_at: 10,
                service: "orders".into(),
                step: "OrderPlaced".into(),
                topic: "orders.events".into(),
                partition: 2,
                offset: 41,
                event_id: "e-1".into(),
                causation_id: None,
                detail: "1 lines, 1200 cents".into(),
            },
            SagaStep {
                saga_id: "O-1".into(),
                seq: 2,
                occurred_at: 12,
                service: "payments".into(),
                step: "PaymentDeclined".into(),
                topic: "payments.replies".into(),
                partition: 0,
                offset: 7,
                event_id: "e-2".into(),
                causation_id: Some("e-1".into()),
                detail: "declined".into(),
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let (s, t) = (
            crate::SnapshotTable::open(dir.path(), SAGAS).unwrap(),
            crate::SnapshotTable::open(dir.path(), SAGA_STEPS).unwrap(),
        );
        s.replace(&sagas_batch(&sagas).unwrap(), "{}").unwrap();
        t.replace(&steps_batch(&steps).unwrap(), "{}").unwrap();
        let (batches, _) = s.load().unwrap().unwrap();
        assert_eq!(sagas_from_batches(&batches).unwrap(), sagas);
        let (batches, _) = t.load().unwrap().unwrap();
        assert_eq!(steps_from_batches(&batches).unwrap(), steps);
        // One table's batches are not the other's rows.
        assert!(sagas_from_batches(&batches).is_err());
    }
}
