//! The suppliers service's `purchase_orders` view: one row per purchase order, with the
//! low-stock alert that caused it, when it was placed, due and received. Sorted by sku then
//! purchase order, so a sku's orders are one range of one row group.
//!
//! `supplier_performance` is derived from it (see [`crate::derived`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::{Result, table::batch};

pub const VIEW: &str = "purchase_orders";

/// One purchase order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseOrderRow {
    pub po_id: String,
    pub sku: String,
    pub warehouse: String,
    pub supplier_id: String,
    pub quantity: i64,
    /// Event id of the `StockLow` alert (on `inventory.alerts`) that caused it.
    pub low_stock_event_id: String,
    pub placed_at: i64,
    pub expected_at: i64,
    pub received_at: Option<i64>,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("po_id", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("warehouse", DataType::Utf8, false),
        Field::new("supplier_id", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("low_stock_event_id", DataType::Utf8, false),
        Field::new("placed_at", ts(), false),
        Field::new("expected_at", ts(), false),
        Field::new("received_at", ts(), true),
        Field::new("lead_time_ms", DataType::Int64, true),
    ]))
});

/// The `purchase_orders` batch, sorted by (sku, po id).
pub fn to_batch<'a>(rows: impl IntoIterator<Item = &'a PurchaseOrderRow>) -> Result<RecordBatch> {
    let mut r: Vec<&PurchaseOrderRow> = rows.into_iter().collect();
    r.sort_by(|a, b| (&a.sku, &a.po_id).cmp(&(&b.sku, &b.po_id)));
    let s = |f: fn(&PurchaseOrderRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(r.iter().map(|x| f(x))))
    };
    let t = |values: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
    };
    batch(
        SCHEMA.clone(),
        vec![
            s(|x| &x.po_id),
            s(|x| &x.sku),
            s(|x| &x.warehouse),
            s(|x| &x.supplier_id),
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.quantity))),
            s(|x| {
                if x.received_at.is_some() {
                    "received"
                } else {
                    "open"
                }
            }),
            s(|x| &x.low_stock_event_id),
            t(r.iter().map(|x| Some(x.placed_at)).collect()),
            t(r.iter().map(|x| Some(x.expected_at)).collect()),
            t(r.iter().map(|x| x.received_at).collect()),
            Arc::new(Int64Array::from(
                r.iter()
                    .map(|x| x.received_at.map(|at| at - x.placed_at))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
}
