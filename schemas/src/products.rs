//! Catalog service records (products, prices, discontinuation): commands on
//! `catalog.commands`, events on `catalog.events`, the product aggregate on
//! `catalog.changelog`. (The module is `products` because `schemas::catalog` is the catalog
//! of schema subjects.)

use serde::{Deserialize, Serialize};

use crate::{record_union, records, union_metadata};

records! {
    /// Command: add a product.
    CreateProduct { sku: String, name: String, price_cents: i64 }
    /// Command: change a product's price.
    ChangePrice { sku: String, price_cents: i64 }
    /// Command: stop selling a product.
    DiscontinueProduct { sku: String, reason: String }
    /// Event: a product was added.
    ProductCreated { sku: String, name: String, price_cents: i64 }
    /// Event: a product's price changed.
    PriceChanged { sku: String, old_price_cents: i64, new_price_cents: i64 }
    /// Event: a product is no longer sold.
    ProductDiscontinued { sku: String, reason: String }
    /// Event: a well-formed command broke a catalog rule.
    CatalogCommandRejected { sku: String, command: String, reason: String }
}

/// Changelog record: the product aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductState {
    pub sku: String,
    pub version: i64,
    pub name: String,
    pub price_cents: i64,
    pub discontinued: bool,
    /// Causation ids of its events (dedup).
    pub steps: Vec<String>,
}

record_union! {
    /// Everything `catalog.commands` may carry.
    CatalogCommand {
        CreateProduct => "../avro/catalog/CreateProduct.avsc",
        ChangePrice => "../avro/catalog/ChangePrice.avsc",
        DiscontinueProduct => "../avro/catalog/DiscontinueProduct.avsc",
    }
}
union_metadata!(CatalogCommand {
    CreateProduct,
    ChangePrice,
    DiscontinueProduct
});

impl CatalogCommand {
    /// The product (sku) the command addresses; also its Kafka key.
    pub fn sku(&self) -> &str {
        match self {
            CatalogCommand::CreateProduct(c) => &c.sku,
            CatalogCommand::ChangePrice(c) => &c.sku,
            CatalogCommand::DiscontinueProduct(c) => &c.sku,
        }
    }
}

record_union! {
    /// Everything `catalog.events` may carry.
    CatalogEvent {
        ProductCreated => "../avro/catalog/ProductCreated.avsc",
        PriceChanged => "../avro/catalog/PriceChanged.avsc",
        ProductDiscontinued => "../avro/catalog/ProductDiscontinued.avsc",
        CatalogCommandRejected => "../avro/catalog/CatalogCommandRejected.avsc",
    }
}
union_metadata!(CatalogEvent {
    ProductCreated,
    PriceChanged,
    ProductDiscontinued,
    CatalogCommandRejected
});

record_union! {
    /// Everything `catalog.changelog` may carry.
    CatalogChangelog { ProductState => "../avro/catalog/ProductState.avsc" }
}
