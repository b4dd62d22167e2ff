//! The `products` view: the catalog's current state, one row per sku (sorted by sku, so a
//! point lookup `WHERE sku = …` prunes row groups).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::Result;
use crate::table::{Columns, batch};

pub const VIEW: &str = "products";

/// The rows, as the projection in `processors` folds them.
pub use processors::catalog::products::ProductRow;

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

crate::table!(ProductsTable, ProductRow, VIEW);

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

/// Reads rows back from batches of this view (to resume after a restart); an error if the
/// table was written with another layout.
pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<ProductRow>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(VIEW, &SCHEMA, b)?;
        let (sku, name) = (c.get::<StringArray>(0)?, c.get::<StringArray>(1)?);
        let (price, version) = (c.get::<Int64Array>(2)?, c.get::<Int64Array>(4)?);
        let discontinued = c.get::<BooleanArray>(3)?;
        let at = c.get::<TimestampMillisecondArray>(5)?;
        for i in 0..b.num_rows() {
            rows.push(ProductRow {
                sku: sku.value(i).to_owned(),
                name: name.value(i).to_owned(),
                price_cents: price.value(i),
                discontinued: discontinued.value(i),
                version: version.value(i),
                updated_at: at.value(i),
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
        let rows: Vec<ProductRow> = (0..4)
            .map(|i| ProductRow {
                sku: format!("SKU-{i}"),
                name: format!("Product {i}"),
                price_cents: 100 * i,
                discontinued: i == 2,
                version: i + 1,
                updated_at: 1_700_000_000_000 + i,
            })
            .collect();
        assert_eq!(from_batches(&[to_batch(&rows).unwrap()]).unwrap(), rows);
    }
}
