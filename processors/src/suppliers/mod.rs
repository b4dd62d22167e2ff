//! The suppliers service (purchasing): a low-stock alert from inventory places a purchase
//! order with the sku's supplier, unless one is already open for that position; the goods
//! arrive after the supplier's lead time (a deadline the runtime fires, as it fires the
//! orders' step deadlines), and the receipt is an event inventory books.
//!
//! Event-sourced like billing: it decides events and its state per sku is their fold
//! ([`evolve`]), rebuildable from `suppliers.events` alone. Every purchase order names the
//! alert that caused it (`low_stock_event_id`), and an alert acts at most once: alerts carry
//! the sku's inventory version, and one at or below the last acted on is spent.

pub mod purchase_orders;

use schemas::common::Metadata;
use schemas::suppliers::*;

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by};

pub const SERVICE: &str = "suppliers";

/// The suppliers and their lead times, as a percentage of the base lead time. Which one
/// supplies a sku is fixed by the sku (see [`supplier_of`]).
pub const SUPPLIERS: &[(&str, i64)] =
    &[("SUP-NORDIC", 100), ("SUP-IBERIA", 150), ("SUP-DELTA", 250)];

/// The supplier of `sku` and its lead time in percent of the base (FNV-1a of the sku: stable
/// across processes, builds and replays).
pub fn supplier_of(sku: &str) -> (&'static str, i64) {
    let hash = sku.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    SUPPLIERS[(hash % SUPPLIERS.len() as u64) as usize]
}

/// The purchasing policy.
#[derive(Debug, Clone)]
pub struct Suppliers {
    /// Lead time of a 100% supplier, in milliseconds.
    pub lead_time_ms: i64,
    /// Units ordered on top of what brings the position back to its threshold.
    pub reorder_quantity: i64,
}

impl Default for Suppliers {
    fn default() -> Self {
        Suppliers {
            lead_time_ms: 5_000,
            reorder_quantity: 100,
        }
    }
}

fn fresh(sku: &str) -> SupplyState {
    SupplyState {
        sku: sku.to_owned(),
        version: 0,
        last_alert_version: 0,
        placed: 0,
        received: 0,
        open: Vec::new(),
    }
}

impl Participant for Suppliers {
    type Input = SuppliersIn;
    type Output = SupplierEvent;
    type State = SupplyState;

    fn handle(
        &self,
        state: Option<&SupplyState>,
        input: &SuppliersIn,
        now: i64,
    ) -> Result<Reaction<SupplyState, SupplierEvent>, InvalidCommand> {
        let SuppliersIn::StockLow(alert) = input;
        let cause = &alert.metadata;
        if alert.sku != cause.aggregate_id {
            return Err(InvalidCommand {
                command: "supplychain.inventory.StockLow",
                reason: format!(
                    "sku {:?} differs from metadata.aggregate_id {:?}",
                    alert.sku, cause.aggregate_id
                ),
            });
        }
        let empty = fresh(&alert.sku);
        let s = state.unwrap_or(&empty);
        // Spent (a redelivery, or older than the alert that placed the last order), or an
        // order for this position is already on its way.
        if cause.aggregate_version <= s.last_alert_version
            || s.open.iter().any(|po| po.warehouse == alert.warehouse)
        {
            return Ok(Reaction::none());
        }
        let version = s.version + 1;
        let (supplier, lead_pct) = supplier_of(&alert.sku);
        let mut metadata = caused_by(cause, SERVICE, &alert.sku, &alert.sku, version, now, 0);
        metadata.saga_id = None;
        let event: SupplierEvent = PurchaseOrderPlaced {
            metadata,
            po_id: format!("PO-{}-{}", alert.sku, s.placed + 1),
            supplier_id: supplier.to_owned(),
            sku: alert.sku.clone(),
            warehouse: alert.warehouse.clone(),
            quantity: self.reorder_quantity + (alert.threshold - alert.available).max(0),
            low_stock_event_id: cause.event_id.clone(),
            low_stock_version: cause.aggregate_version,
            expected_at: now + self.lead_time_ms * lead_pct / 100,
        }
        .into();
        Ok(Reaction::new(evolve(state, &event), vec![event]))
    }

    fn deadline(&self, state: &SupplyState) -> Option<i64> {
        state.open.iter().map(|po| po.expected_at).min()
    }

    /// The goods of every order due by `now` arrive, earliest first.
    fn expire(&self, state: &SupplyState, now: i64) -> Reaction<SupplyState, SupplierEvent> {
        let mut due: Vec<&OpenPurchaseOrder> = state
            .open
            .iter()
            .filter(|po| po.expected_at <= now)
            .collect();
        if due.is_empty() {
            return Reaction::none();
        }
        due.sort_by(|a, b| (a.expected_at, &a.po_id).cmp(&(b.expected_at, &b.po_id)));
        let mut next = state.clone();
        let mut emit = Vec::new();
        for po in due {
            // The cause is the order itself: the receipt's id is the same however often the
            // deadline fires before the state lands.
            let cause = Metadata {
                event_id: format!("{}/received", po.po_id),
                ..Metadata::command(&po.po_id, &state.sku, now)
            };
            let mut metadata = caused_by(
                &cause,
                SERVICE,
                &state.sku,
                &state.sku,
                next.version + 1,
                now,
                0,
            );
            metadata.saga_id = None;
            let event: SupplierEvent = PurchaseOrderReceived {
                metadata,
                po_id: po.po_id.clone(),
                supplier_id: po.supplier_id.clone(),
                sku: state.sku.clone(),
                warehouse: po.warehouse.clone(),
                quantity: po.quantity,
                placed_at: po.placed_at,
            }
            .into();
            next = evolve(Some(&next), &event);
            emit.push(event);
        }
        Reaction::new(next, emit)
    }
}

/// A sku's purchasing after `event`: the fold that rebuilds suppliers from its event log.
pub fn evolve(state: Option<&SupplyState>, event: &SupplierEvent) -> SupplyState {
    let meta = event.metadata();
    let mut s = state.cloned().unwrap_or_else(|| fresh(&meta.aggregate_id));
    match event {
        SupplierEvent::PurchaseOrderPlaced(e) => {
            s.placed += 1;
            s.last_alert_version = s.last_alert_version.max(e.low_stock_version);
            s.open.push(OpenPurchaseOrder {
                po_id: e.po_id.clone(),
                supplier_id: e.supplier_id.clone(),
                warehouse: e.warehouse.clone(),
                quantity: e.quantity,
                placed_at: meta.occurred_at,
                expected_at: e.expected_at,
            });
        }
        SupplierEvent::PurchaseOrderReceived(e) => {
            s.received += 1;
            s.open.retain(|po| po.po_id != e.po_id);
        }
    }
    s.version = s.version.max(meta.aggregate_version);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(version: i64, warehouse: &str, available: i64) -> SuppliersIn {
        StockLow {
            metadata: Metadata {
                aggregate_version: version,
                ..Metadata::command(&format!("alert-{version}"), "SKU-1", 1)
            },
            sku: "SKU-1".into(),
            warehouse: warehouse.into(),
            available,
            threshold: 10,
        }
        .into()
    }

    fn fold(events: &[SupplierEvent]) -> Option<SupplyState> {
        events.iter().fold(None, |s: Option<SupplyState>, e| {
            Some(evolve(s.as_ref(), e))
        })
    }

    #[test]
    fn an_alert_places_one_order_that_arrives_after_the_lead_time() {
        let p = Suppliers {
            lead_time_ms: 1_000,
            reorder_quantity: 100,
        };
        let mut events = Vec::new();
        let r = p.handle(None, &alert(7, "AMS", 4), 10).unwrap();
        events.extend(r.emit.clone());
        let s = r.state.unwrap();
        let [SupplierEvent::PurchaseOrderPlaced(po)] = r.emit.as_slice() else {
            panic!("{:?}", r.emit)
        };
        assert_eq!(po.low_stock_event_id, "alert-7");
        assert_eq!(
            po.quantity, 106,
            "back to the threshold, plus the reorder quantity"
        );
        let (_, pct) = supplier_of("SKU-1");
        assert_eq!(po.expected_at, 10 + 10 * pct);
        assert_eq!(p.deadline(&s), Some(po.expected_at));
        // The same alert again, a later one for the same position, an older one: nothing.
        assert_eq!(
            p.handle(Some(&s), &alert(7, "AMS", 4), 11).unwrap(),
            Reaction::none()
        );
        assert_eq!(
            p.handle(Some(&s), &alert(9, "AMS", 2), 11).unwrap(),
            Reaction::none()
        );
        assert_eq!(
            p.handle(Some(&s), &alert(5, "RTM", 2), 11).unwrap(),
            Reaction::none()
        );
        // Another warehouse's dip orders for that warehouse.
        let r = p.handle(Some(&s), &alert(9, "RTM", 2), 12).unwrap();
        events.extend(r.emit.clone());
        let s = r.state.unwrap();
        assert_eq!(s.open.len(), 2);
        assert_eq!(
            p.expire(&s, po.expected_at - 1),
            Reaction::none(),
            "not yet due"
        );
        let r = p.expire(&s, po.expected_at + 10 * 250);
        assert_eq!(r.emit.len(), 2, "both due");
        events.extend(r.emit.clone());
        let s = r.state.unwrap();
        assert!(s.open.is_empty() && s.received == 2 && s.version == 4);
        assert_eq!(p.deadline(&s), None);
        // The state is the fold of the events.
        assert_eq!(fold(&events), Some(s.clone()));
        // Once received, a new dip orders again.
        let r = p.handle(Some(&s), &alert(12, "AMS", 1), 99).unwrap();
        assert_eq!(r.emit.len(), 1);
        let SupplierEvent::PurchaseOrderPlaced(po) = &r.emit[0] else {
            panic!()
        };
        assert_eq!(po.po_id, "PO-SKU-1-3");
    }

    #[test]
    fn an_alert_whose_sku_is_not_its_key_is_refused_naming_both() {
        let SuppliersIn::StockLow(mut a) = alert(3, "AMS", 1);
        a.sku = "SKU-2".into();
        let err = Suppliers::default()
            .handle(None, &a.into(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("SKU-2") && err.contains("SKU-1"), "{err}");
    }

    #[test]
    fn suppliers_are_spread_over_skus_and_stable() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..30 {
            seen.insert(supplier_of(&format!("SKU-{i}")).0);
        }
        assert_eq!(seen.len(), SUPPLIERS.len());
        assert_eq!(supplier_of("SKU-1"), supplier_of("SKU-1"));
    }
}
