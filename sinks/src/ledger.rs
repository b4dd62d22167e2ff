//! The `ledger` view: one row per posting of every billing event (double entry: an entry's
//! debits equal its credits), sorted by order id, so `SUM(debit_cents) = SUM(credit_cents)`
//! over any set of whole entries, and `revenue` is `SUM(credit_cents - debit_cents)` of
//! account `revenue`.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::Result;
use crate::table::{Columns, batch};

pub const VIEW: &str = "ledger";

/// The rows, as the projection in `processors` folds them.
pub use processors::billing::ledger::LedgerRow;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("entry", DataType::Utf8, false),
        Field::new("document", DataType::Utf8, false),
        Field::new("account", DataType::Utf8, false),
        Field::new("debit_cents", DataType::Int64, false),
        Field::new("credit_cents", DataType::Int64, false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
    ]))
});

crate::table!(LedgerTable, LedgerRow, VIEW);

/// The `ledger` batch, sorted by (order id, partition, offset).
pub fn to_batch<'a>(rows: impl IntoIterator<Item = &'a LedgerRow>) -> Result<RecordBatch> {
    let mut r: Vec<&LedgerRow> = rows.into_iter().collect();
    r.sort_by(|a, b| {
        (&a.order_id, a.partition, a.offset).cmp(&(&b.order_id, b.partition, b.offset))
    });
    let s = |f: fn(&LedgerRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(r.iter().map(|x| f(x))))
    };
    let n = |f: fn(&LedgerRow) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(r.iter().map(|x| f(x))))
    };
    batch(
        SCHEMA.clone(),
        vec![
            s(|x| &x.order_id),
            s(|x| &x.entry),
            s(|x| &x.document),
            s(|x| &x.account),
            n(|x| x.debit_cents),
            n(|x| x.credit_cents),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(r.iter().map(|x| x.occurred_at))
                    .with_timezone("UTC"),
            ),
            s(|x| &x.event_id),
            Arc::new(Int32Array::from_iter_values(r.iter().map(|x| x.partition))),
            n(|x| x.offset),
        ],
    )
}
/// Reads rows back from batches of this view (to resume after a restart); an error if the
/// table was written with another layout.
pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<LedgerRow>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(VIEW, &SCHEMA, b)?;
        let s = |i| c.get::<StringArray>(i);
        let n = |i| c.get::<Int64Array>(i);
        let (order, entry, document, account) = (s(0)?, s(1)?, s(2)?, s(3)?);
        let (debit, credit, event, offset) = (n(4)?, n(5)?, s(7)?, n(9)?);
        let at = c.get::<TimestampMillisecondArray>(6)?;
        let partition = c.get::<Int32Array>(8)?;
        for i in 0..b.num_rows() {
            rows.push(LedgerRow {
                order_id: order.value(i).to_owned(),
                entry: entry.value(i).to_owned(),
                document: document.value(i).to_owned(),
                account: account.value(i).to_owned(),
                debit_cents: debit.value(i),
                credit_cents: credit.value(i),
                occurred_at: at.value(i),
                event_id: event.value(i).to_owned(),
                partition: partition.value(i),
                offset: offset.value(i),
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
        let batch = to_batch(&rows).unwrap();
        assert_eq!(from_batches(&[batch]).unwrap(), rows);
        let other = RecordBatch::new_empty(Arc::new(Schema::new(vec![Field::new(
            "order_id",
            DataType::Utf8,
            false,
        )])));
        assert!(from_batches(&[other]).is_err());
    }
}
