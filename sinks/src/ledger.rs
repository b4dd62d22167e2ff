//! The `ledger` view: one row per posting of every billing event (double entry: an entry's
//! debits equal its credits), sorted by order id, so `SUM(debit_cents) = SUM(credit_cents)`
//! over any set of whole entries, and `revenue` is `SUM(credit_cents - debit_cents)` of
//! account `revenue`.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::{Result, table::batch};

pub const VIEW: &str = "ledger";

/// One posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub order_id: String,
    /// The billing event (record name): PaymentReceived, InvoiceIssued, CreditNoteIssued.
    pub entry: String,
    /// The document: invoice or credit note id, or the payment id.
    pub document: String,
    pub account: String,
    pub debit_cents: i64,
    pub credit_cents: i64,
    pub occurred_at: i64,
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
}

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
