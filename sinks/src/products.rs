//! The `products` view: the catalog's current state, one row per sku (sorted by sku, so a
//! point lookup `WHERE sku = …` prunes row groups).

pub const VIEW: &str = "products";

/// The rows, as the projection in `processors` folds them.
pub use processors::catalog::products::ProductRow;

crate::columns! {
    ProductsTable, ProductRow, VIEW, order: |r| &r.sku,
    sku: Text,
    name: Text,
    price_cents: Int,
    discontinued: Bool,
    version: Int,
    updated_at: Time,
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
        crate::table::round_trip::<ProductsTable>(rows);
    }
}
