//! The suppliers service's `purchase_orders` view: one row per purchase order, with the
//! low-stock alert that caused it, when it was placed, due and received. Sorted by sku then
//! purchase order, so a sku's orders are one range of one row group.
//!
//! `supplier_performance` is derived from it (see [`crate::derived`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::Result;
use crate::table::{Columns, batch, value_at};

pub const VIEW: &str = "purchase_orders";

/// The rows, as the projection in `processors` folds them.
pub use processors::suppliers::purchase_orders::PurchaseOrderRow;

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

crate::table!(PurchaseOrdersTable, PurchaseOrderRow, VIEW);

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

/// Reads rows back from batches of this view (to resume after a restart); an error if the
/// table was written with another layout.
pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<PurchaseOrderRow>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(VIEW, &SCHEMA, b)?;
        let s = |i| c.get::<StringArray>(i);
        let t = |i| c.get::<TimestampMillisecondArray>(i);
        let (po, sku, warehouse, supplier, alert) = (s(0)?, s(1)?, s(2)?, s(3)?, s(6)?);
        let quantity = c.get::<Int64Array>(4)?;
        let (placed, expected, received) = (t(7)?, t(8)?, t(9)?);
        for i in 0..b.num_rows() {
            rows.push(PurchaseOrderRow {
                po_id: po.value(i).to_owned(),
                sku: sku.value(i).to_owned(),
                warehouse: warehouse.value(i).to_owned(),
                supplier_id: supplier.value(i).to_owned(),
                quantity: quantity.value(i),
                low_stock_event_id: alert.value(i).to_owned(),
                placed_at: placed.value(i),
                expected_at: expected.value(i),
                received_at: value_at(received, i),
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
        let rows: Vec<PurchaseOrderRow> = (0..4)
            .map(|i| PurchaseOrderRow {
                po_id: format!("PO-{i}"),
                sku: format!("SKU-{i}"),
                warehouse: "AMS".into(),
                supplier_id: "SUP-NORDIC".into(),
                quantity: 10 * i,
                low_stock_event_id: format!("alert-{i}"),
                placed_at: 1_700_000_000_000 + i,
                expected_at: 1_700_000_100_000 + i,
                received_at: (i % 2 == 0).then_some(1_700_000_200_000 + i),
            })
            .collect();
        assert_eq!(from_batches(&[to_batch(&rows).unwrap()]).unwrap(), rows);
    }
}
