//! The `products` view: the catalog's current state, one row per sku (sorted by sku, so a
//! point lookup `WHERE sku = …` prunes row groups).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::{Result, table::batch};

pub const VIEW: &str = "products";

/// One product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRow {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub discontinued: bool,
    pub version: i64,
    pub updated_at: i64,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("price_cents", DataType::Int64, false),
        Field::new("discontinued", DataType::Boolean, false),
        Field::new("version", DataType::Int64, false),
        Field::new(
            "updated_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
});

/// The batch, sorted by sku.
pub fn to_batch<'a>(rows: impl IntoIterator<Item = &'a ProductRow>) -> Result<RecordBatch> {
    let mut r: Vec<&ProductRow> = rows.into_iter().collect();
    r.sort_by(|a, b| a.sku.cmp(&b.sku));
    batch(
        SCHEMA.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                r.iter().map(|x| x.sku.as_str()),
            )) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                r.iter().map(|x| x.name.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                r.iter().map(|x| x.price_cents),
            )),
            Arc::new(
                r.iter()
                    .map(|x| Some(x.discontinued))
                    .collect::<BooleanArray>(),
            ),
            Arc::new(Int64Array::from_iter_values(r.iter().map(|x| x.version))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(r.iter().map(|x| x.updated_at))
                    .with_timezone("UTC"),
            ),
        ],
    )
}
