//! The `orders_per_minute` view: orders placed, confirmed and cancelled and revenue per
//! 1-minute tumbling window of event time, kept current while events flow. `final` says the
//! watermark has passed the window (its figures will not change); `late_events` counts the
//! events that came after that and were left out.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, BooleanArray, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::{Result, table::batch};

pub const ORDERS_PER_MINUTE: &str = "orders_per_minute";

/// One window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRow {
    pub window_start: i64,
    pub window_end: i64,
    pub orders_placed: i64,
    pub orders_confirmed: i64,
    pub orders_cancelled: i64,
    pub revenue_cents: i64,
    pub late_events: i64,
    pub is_final: bool,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        Field::new("orders_placed", DataType::Int64, false),
        Field::new("orders_confirmed", DataType::Int64, false),
        Field::new("orders_cancelled", DataType::Int64, false),
        Field::new("revenue_cents", DataType::Int64, false),
        Field::new("late_events", DataType::Int64, false),
        Field::new("final", DataType::Boolean, false),
    ]))
});

/// The batch, in window order.
pub fn to_batch(rows: &[WindowRow]) -> Result<RecordBatch> {
    let ts = |f: fn(&WindowRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let n = |f: fn(&WindowRow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
    };
    batch(
        SCHEMA.clone(),
        vec![
            ts(|r| r.window_start),
            ts(|r| r.window_end),
            n(|r| r.orders_placed),
            n(|r| r.orders_confirmed),
            n(|r| r.orders_cancelled),
            n(|r| r.revenue_cents),
            n(|r| r.late_events),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.is_final))
                    .collect::<BooleanArray>(),
            ),
        ],
    )
}
