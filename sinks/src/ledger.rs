//! The `ledger` view: one row per posting of every billing event (double entry: an entry's
//! debits equal its credits), sorted by (order id, partition, offset), so
//! `SUM(debit_cents) = SUM(credit_cents)` over any set of whole entries, and `revenue` is
//! `SUM(credit_cents - debit_cents)` of account `revenue`.

pub const VIEW: &str = "ledger";

/// The rows, as the projection in `processors` folds them.
pub use processors::billing::ledger::LedgerRow;

crate::columns! {
    LedgerTable, LedgerRow, VIEW, order: |r| (&r.order_id, r.partition, r.offset),
    order_id: Text,
    entry: Text,
    document: Text,
    account: Text,
    debit_cents: Int,
    credit_cents: Int,
    occurred_at: Time,
    event_id: Text,
    partition: Int32,
    offset: Int,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let rows: Vec<LedgerRow> = (0..5)
            .map(|i| LedgerRow {
                order_id: format!("O-{i}"),
                entry: "InvoiceIssued".into(),
                document: format!("INV-{i}"),
                account: if i % 2 == 0 { "revenue" } else { "cash" }.into(),
                debit_cents: i * 10,
                credit_cents: i * 7,
                occurred_at: 1_700_000_000_000 + i,
                event_id: format!("e{i}"),
                partition: (i % 3) as i32,
                offset: i * 100,
            })
            .collect();
        crate::table::round_trip::<LedgerTable>(rows);
        let other = RecordBatch::new_empty(Arc::new(Schema::new(vec![Field::new(
            "order_id",
            DataType::Utf8,
            false,
        )])));
        assert!(from_batches(&[other]).is_err());
    }
}
