//! The catalog service's `products` projection: each product's current state, folded from
//! `catalog.events` with the same [`evolve`](super::evolve) as the aggregate. A product's
//! row is its state for this view (versions only grow, so the version is all the fold needs
//! to ignore a redelivered event), so the view resumes from its table.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemas::products::{CatalogEvent, ProductState};

use crate::{Projection, Source};

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

/// Each product and when it last changed.
#[derive(Debug, Default)]
pub struct Products(BTreeMap<String, (ProductState, i64)>);

impl Projection for Products {
    type Event = CatalogEvent;
    type Row = ProductRow;
    const RESUMES: bool = true;

    fn apply(&mut self, _at: Source<'_>, e: &CatalogEvent) {
        let meta = e.metadata();
        let current = self.0.get(&meta.aggregate_id).map(|(s, _)| s);
        // Versions only grow: a redelivered event (same version) changes nothing.
        if current.is_some_and(|s| s.version >= meta.aggregate_version) {
            return;
        }
        if let Some(next) = super::evolve(current, e) {
            self.0
                .insert(meta.aggregate_id.clone(), (next, meta.occurred_at));
        }
    }

    fn rows(&self) -> Vec<Cow<'_, ProductRow>> {
        self.0
            .values()
            .map(|(s, at)| {
                Cow::Owned(ProductRow {
                    sku: s.sku.clone(),
                    name: s.name.clone(),
                    price_cents: s.price_cents,
                    discontinued: s.discontinued,
                    version: s.version,
                    updated_at: *at,
                })
            })
            .collect()
    }

    /// The causation ids the aggregate keeps for its own dedup start empty and are not shown.
    fn restore(rows: Vec<ProductRow>) -> Option<Self> {
        Some(Products(
            rows.into_iter()
                .map(|r| {
                    let state = ProductState {
                        sku: r.sku.clone(),
                        version: r.version,
                        name: r.name,
                        price_cents: r.price_cents,
                        discontinued: r.discontinued,
                        steps: Vec::new(),
                    };
                    (r.sku, (state, r.updated_at))
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use schemas::Metadata;
    use schemas::products::{PriceChanged, ProductCreated};

    use super::*;

    const AT: Source<'static> = Source {
        topic: "catalog.events",
        partition: 0,
        offset: 0,
    };

    fn meta(version: i64, at: i64) -> Metadata {
        Metadata {
            aggregate_version: version,
            ..Metadata::command(&format!("e{version}"), "SKU-1", at)
        }
    }

    fn created() -> CatalogEvent {
        ProductCreated {
            metadata: meta(1, 10),
            sku: "SKU-1".into(),
            name: "Bolt".into(),
            price_cents: 100,
        }
        .into()
    }

    fn repriced(version: i64, cents: i64) -> CatalogEvent {
        PriceChanged {
            metadata: meta(version, 10 * version),
            sku: "SKU-1".into(),
            old_price_cents: 0,
            new_price_cents: cents,
        }
        .into()
    }

    #[test]
    fn a_product_row_is_its_latest_version_and_redeliveries_change_nothing() {
        let mut products = Products::default();
        products.apply(AT, &created());
        products.apply(AT, &repriced(2, 150));
        // An older event delivered again does not move the price back.
        products.apply(AT, &repriced(2, 150));
        products.apply(AT, &created());
        let row = products.rows()[0].clone().into_owned();
        assert_eq!((row.price_cents, row.version, row.updated_at), (150, 2, 20));
        // Restored from its rows, it goes on from that version.
        let mut back = Products::restore(vec![row]).unwrap();
        back.apply(AT, &repriced(2, 999));
        back.apply(AT, &repriced(3, 175));
        assert_eq!(back.rows()[0].price_cents, 175);
    }
}
