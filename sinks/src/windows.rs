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

/// The rows, as the projection in `processors` folds them.
pub use processors::orders::windows::WindowRow;

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

/// The table's declaration.
pub struct OrdersPerMinuteTable;

impl crate::table::Table for OrdersPerMinuteTable {
    type Row = WindowRow;
    const NAME: &'static str = ORDERS_PER_MINUTE;
    fn to_batch(rows: &[&WindowRow]) -> Result<RecordBatch> {
        to_batch(&rows.iter().map(|r| **r).collect::<Vec<_>>())
    }
    /// The windows are rebuilt from their topic (the event ids seen are not in the rows).
    fn from_batches(_: &[RecordBatch]) -> Result<Vec<WindowRow>> {
        Err(crate::Error::Layout {
            view: ORDERS_PER_MINUTE.to_owned(),
            reason: "its rows are not its whole state: it is rebuilt from its topic".to_owned(),
        })
    }
}

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
