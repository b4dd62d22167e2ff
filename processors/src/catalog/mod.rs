//! The catalog service: products, their prices, discontinuation. One aggregate per sku,
//! event-sourced like the others: it decides events and its state is their fold
//! ([`evolve`]), so `catalog.events` alone rebuilds it. Rules: a sku is created once; a
//! price is positive; a discontinued product's price no longer changes; a command with an
//! expected version (`metadata.aggregate_version ≥ 0`) must match the product's.

pub mod products;

use schemas::Metadata;
use schemas::products::*;
use schemas::record::RecordUnion;

use crate::InvalidCommand;
use crate::limits::{Check, MAX_UNIT_PRICE_CENTS};
use crate::saga::{Participant, Reaction, caused_by, seen};

pub const SERVICE: &str = "catalog";

#[derive(Debug, Clone, Default)]
pub struct Catalog;

fn validate(c: &CatalogCommand) -> Result<(), InvalidCommand> {
    let check = Check::new(c.record_name());
    check.metadata(c.metadata())?;
    check.sku("sku", c.sku())?;
    let price = |v: i64| {
        check.require(v > 0, || {
            format!("field price_cents must be positive, got {v}")
        })?;
        check.at_most("price_cents", v, MAX_UNIT_PRICE_CENTS)
    };
    match c {
        CatalogCommand::CreateProduct(x) => {
            price(x.price_cents)?;
            check.require(!x.name.trim().is_empty(), || {
                "field name must not be empty".into()
            })?;
            check.text("name", &x.name)
        }
        CatalogCommand::ChangePrice(x) => price(x.price_cents),
        CatalogCommand::DiscontinueProduct(x) => check.text("reason", &x.reason),
    }
}

impl crate::Validate for CatalogCommand {
    fn validate(&self) -> Result<(), InvalidCommand> {
        validate(self)
    }
}

impl Participant for Catalog {
    type Input = CatalogCommand;
    type Output = CatalogEvent;
    type State = ProductState;

    fn handle(
        &self,
        state: Option<&ProductState>,
        input: &CatalogCommand,
        now: i64,
    ) -> Result<Reaction<ProductState, CatalogEvent>, InvalidCommand> {
        validate(input)?;
        let cause = input.metadata();
        if state.is_some_and(|s| seen(&s.steps, &cause.event_id)) {
            return Ok(Reaction::none()); // a duplicate delivery
        }
        let sku = input.sku().to_owned();
        let version = state.map_or(0, |s| s.version);
        let meta = |v: i64| -> Metadata { caused_by(cause, SERVICE, &sku, &sku, v, now, 0) };
        let reject = |reason: String| -> CatalogEvent {
            let name = input.record_name();
            CatalogCommandRejected {
                metadata: meta(version + 1),
                sku: sku.clone(),
                command: name.rsplit('.').next().unwrap_or(name).to_owned(),
                reason,
            }
            .into()
        };
        let event: CatalogEvent = if cause.aggregate_version >= 0
            && cause.aggregate_version != version
        {
            reject(format!(
                "expected version {}, product is at {version}",
                cause.aggregate_version
            ))
        } else {
            match (input, state) {
                (CatalogCommand::CreateProduct(c), None) => ProductCreated {
                    metadata: meta(1),
                    sku: sku.clone(),
                    name: c.name.clone(),
                    price_cents: c.price_cents,
                }
                .into(),
                (CatalogCommand::CreateProduct(_), Some(_)) => {
                    reject(format!("product {sku} exists"))
                }
                (_, None) => reject(format!("unknown product {sku}")),
                (_, Some(s)) if s.discontinued => reject(format!("product {sku} is discontinued")),
                (CatalogCommand::ChangePrice(c), Some(s)) => PriceChanged {
                    metadata: meta(version + 1),
                    sku: sku.clone(),
                    old_price_cents: s.price_cents,
                    new_price_cents: c.price_cents,
                }
                .into(),
                (CatalogCommand::DiscontinueProduct(c), Some(_)) => ProductDiscontinued {
                    metadata: meta(version + 1),
                    sku: sku.clone(),
                    reason: c.reason.clone(),
                }
                .into(),
            }
        };
        Ok(match evolve(state, &event) {
            Some(s) => Reaction::new(s, vec![event]),
            // A rejection for a product that does not exist: an event, no state.
            None => Reaction {
                state: None,
                emit: vec![event],
            },
        })
    }
}

/// The product after `event`: the fold that rebuilds the catalog from `catalog.events`.
/// `None` for an event about no existing product (a rejected command for an unknown sku).
pub fn evolve(state: Option<&ProductState>, event: &CatalogEvent) -> Option<ProductState> {
    let meta = event.metadata();
    let mut s = match (state, event) {
        (None, CatalogEvent::ProductCreated(e)) => ProductState {
            sku: e.sku.clone(),
            version: 0,
            name: e.name.clone(),
            price_cents: e.price_cents,
            discontinued: false,
            steps: Vec::new(),
        },
        (None, _) => return None,
        (Some(s), _) => s.clone(),
    };
    match event {
        CatalogEvent::ProductCreated(_) | CatalogEvent::CatalogCommandRejected(_) => {}
        CatalogEvent::PriceChanged(e) => s.price_cents = e.new_price_cents,
        CatalogEvent::ProductDiscontinued(_) => s.discontinued = true,
    }
    s.version = s.version.max(meta.aggregate_version);
    if let Some(cause) = &meta.causation_id
        && !seen(&s.steps, cause)
    {
        s.steps.push(cause.clone());
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> Metadata {
        Metadata::command(id, "SKU-1", 0)
    }

    fn run(commands: Vec<CatalogCommand>) -> (Option<ProductState>, Vec<CatalogEvent>) {
        let mut state = None;
        let mut events = Vec::new();
        for c in &commands {
            let r = Catalog.handle(state.as_ref(), c, 1).unwrap();
            if r.state.is_some() {
                state = r.state;
            }
            events.extend(r.emit);
        }
        let folded = events.iter().fold(None, |s: Option<ProductState>, e| {
            evolve(s.as_ref(), e).or(s)
        });
        assert_eq!(folded, state, "the state is the fold of the events");
        (state, events)
    }

    fn create(id: &str, price: i64) -> CatalogCommand {
        CreateProduct {
            metadata: m(id),
            sku: "SKU-1".into(),
            name: "Widget".into(),
            price_cents: price,
        }
        .into()
    }

    fn price(id: &str, price: i64) -> CatalogCommand {
        ChangePrice {
            metadata: m(id),
            sku: "SKU-1".into(),
            price_cents: price,
        }
        .into()
    }

    fn reasons(events: &[CatalogEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                CatalogEvent::CatalogCommandRejected(r) => Some(r.reason.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_product_is_created_repriced_and_discontinued() {
        let discontinue: CatalogCommand = DiscontinueProduct {
            metadata: m("d"),
            sku: "SKU-1".into(),
            reason: "end of line".into(),
        }
        .into();
        let (state, events) = run(vec![
            create("c", 250),
            price("p", 300),
            price("p", 300), // a duplicate delivery acts once
            discontinue,
            price("q", 100),
            create("c2", 1),
        ]);
        let state = state.unwrap();
        assert_eq!(
            (state.price_cents, state.discontinued, state.version),
            (300, true, 5)
        );
        assert_eq!(
            reasons(&events),
            ["product SKU-1 is discontinued", "product SKU-1 exists"]
        );
    }

    #[test]
    fn unknown_products_stale_versions_and_bad_prices() {
        let (state, events) = run(vec![price("p", 300)]);
        assert!(state.is_none());
        assert_eq!(reasons(&events), ["unknown product SKU-1"]);
        let mut stale = price("s", 300);
        if let CatalogCommand::ChangePrice(c) = &mut stale {
            c.metadata.aggregate_version = 7;
        }
        let (_, events) = run(vec![create("c", 250), stale]);
        assert_eq!(reasons(&events), ["expected version 7, product is at 1"]);
        let e = Catalog.handle(None, &create("c", 0), 1).unwrap_err();
        assert_eq!(e.reason, "field price_cents must be positive, got 0");
    }
}
