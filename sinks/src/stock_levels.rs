//! The `stock_levels` view: one row per (sku, warehouse) with on-hand, reserved and
//! available stock, the aggregate version it reflects and when it last changed.
//!
//! Rows are sorted by (sku, warehouse) so point lookups by sku prune row groups.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::Result;
use crate::table::{Columns, batch};

/// Name of the view (and its table).
pub const VIEW: &str = "stock_levels";

/// The rows, as the projection in `processors` folds them.
pub use processors::inventory::StockLevel;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("warehouse", DataType::Utf8, false),
        Field::new("on_hand", DataType::Int64, false),
        Field::new("reserved", DataType::Int64, false),
        Field::new("available", DataType::Int64, false),
        Field::new("version", DataType::Int64, false),
        Field::new(
            "updated_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
});

/// Arrow schema of the view.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

crate::table!(StockLevelsTable, StockLevel, VIEW);

/// Builds the view's batch from rows, sorted by (sku, warehouse).
pub fn to_batch<'a>(rows: impl IntoIterator<Item = &'a StockLevel>) -> Result<RecordBatch> {
    let mut rows: Vec<&StockLevel> = rows.into_iter().collect();
    rows.sort_by(|a, b| (&a.sku, &a.warehouse).cmp(&(&b.sku, &b.warehouse)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.sku))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.warehouse),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.on_hand))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.reserved),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.on_hand - r.reserved),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.version))),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.updated_at))
                .with_timezone("UTC"),
        ),
    ];
    batch(schema(), columns)
}

/// Reads rows back from batches of this view (used to resume after a restart).
pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<StockLevel>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(VIEW, &schema(), b)?;
        let s = |i| c.get::<StringArray>(i);
        let n = |i| c.get::<Int64Array>(i);
        let (sku, warehouse, on_hand, reserved, version) = (s(0)?, s(1)?, n(2)?, n(3)?, n(5)?);
        let updated = c.get::<TimestampMillisecondArray>(6)?;
        for i in 0..b.num_rows() {
            rows.push(StockLevel {
                sku: sku.value(i).to_owned(),
                warehouse: warehouse.value(i).to_owned(),
                on_hand: on_hand.value(i),
                reserved: reserved.value(i),
                version: version.value(i),
                updated_at: updated.value(i),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::SnapshotTable;

    fn row(sku: &str, warehouse: &str, on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel {
            sku: sku.into(),
            warehouse: warehouse.into(),
            on_hand,
            reserved,
            version: 3,
            updated_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_replaced_table_reads_back_sorted_with_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let table = SnapshotTable::open(dir.path(), VIEW).unwrap();
        assert!(table.load().unwrap().is_none());
        let rows = [
            row("B", "AMS", 5, 1),
            row("A", "BER", 2, 0),
            row("A", "AMS", 7, 7),
        ];
        table
            .replace(&to_batch(&rows).unwrap(), "{\"0\":12}")
            .unwrap();
        let (batches, checkpoint) = table.load().unwrap().unwrap();
        assert_eq!(checkpoint, "{\"0\":12}");
        let back = from_batches(&batches).unwrap();
        assert_eq!(
            back,
            vec![rows[2].clone(), rows[1].clone(), rows[0].clone()]
        );
        assert!(!dir.path().join(VIEW).join("part-0.parquet.tmp").exists());
    }
}
