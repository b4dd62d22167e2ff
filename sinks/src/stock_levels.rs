//! The `stock_levels` view: one row per (sku, warehouse) with on-hand, reserved and
//! available stock, the aggregate version it reflects and when it last changed.
//!
//! Rows are sorted by (sku, warehouse) so point lookups by sku prune row groups.

/// Name of the view (and its table).
pub const VIEW: &str = "stock_levels";

/// The rows, as the projection in `processors` folds them.
pub use processors::inventory::StockLevel;

crate::columns! {
    StockLevelsTable, StockLevel, VIEW, order: |r| (&r.sku, &r.warehouse),
    sku: Text,
    warehouse: Text,
    on_hand: Int,
    reserved: Int,
    available: Int = |r| r.on_hand - r.reserved,
    version: Int,
    updated_at: Time,
}

/// Arrow schema of the view.
pub fn schema() -> arrow::datatypes::SchemaRef {
    SCHEMA.clone()
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
