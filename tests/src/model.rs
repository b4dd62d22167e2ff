//! The inventory rules restated independently of `processors`, as plain arithmetic over
//! maps, to compute what the pipeline must produce.

use std::collections::{BTreeMap, BTreeSet};

use schemas::inventory::InventoryCommand;

/// Expected outcome of a command sequence.
#[derive(Debug, Default)]
pub struct Expected {
    /// (sku, warehouse) → (on_hand, reserved).
    pub positions: BTreeMap<(String, String), (i64, i64)>,
    /// sku → event record names in order.
    pub events: BTreeMap<String, Vec<&'static str>>,
}

impl Expected {
    /// Total number of events.
    pub fn event_count(&self) -> usize {
        self.events.values().map(Vec::len).sum()
    }
}

/// Folds `commands` (in production order; per sku that is processing order).
pub fn expect(commands: &[InventoryCommand]) -> Expected {
    let mut x = Expected::default();
    let mut open: BTreeMap<(String, String), (String, i64)> = BTreeMap::new(); // (sku, id) → (wh, q)
    let mut closed: BTreeSet<(String, String)> = BTreeSet::new();
    // Refused reservation ids are spent for reserving, unknown for releasing.
    let mut refused: BTreeSet<(String, String)> = BTreeSet::new();
    for c in commands {
        let sku = c.sku().to_owned();
        let pos = |x: &mut Expected, w: &str| {
            *x.positions
                .get(&(sku.clone(), w.to_owned()))
                .unwrap_or(&(0, 0))
        };
        let event: Option<&'static str> = match c {
            InventoryCommand::ReceiveStock(c) => {
                x.positions
                    .entry((sku.clone(), c.warehouse.clone()))
                    .or_default()
                    .0 += c.quantity;
                Some("InventoryReceived")
            }
            InventoryCommand::ReserveStock(c) => {
                let key = (sku.clone(), c.reservation_id.clone());
                if open.contains_key(&key) || closed.contains(&key) || refused.contains(&key) {
                    None
                } else {
                    let (on_hand, reserved) = pos(&mut x, &c.warehouse);
                    if on_hand - reserved >= c.quantity {
                        x.positions
                            .entry((sku.clone(), c.warehouse.clone()))
                            .or_default()
                            .1 += c.quantity;
                        open.insert(key, (c.warehouse.clone(), c.quantity));
                        Some("InventoryReserved")
                    } else {
                        refused.insert(key);
                        Some("ReservationRejected")
                    }
                }
            }
            InventoryCommand::ReleaseReservation(c) => {
                let key = (sku.clone(), c.reservation_id.clone());
                if let Some((w, q)) = open.remove(&key) {
                    x.positions.entry((sku.clone(), w)).or_default().1 -= q;
                    closed.insert(key);
                    Some("InventoryReleased")
                } else if closed.contains(&key) {
                    None
                } else {
                    Some("InventoryCommandRejected")
                }
            }
            InventoryCommand::DispatchStock(c) => {
                let key = (sku.clone(), c.reservation_id.clone());
                if let Some((w, q)) = open.remove(&key) {
                    let p = x.positions.entry((sku.clone(), w)).or_default();
                    p.0 -= q;
                    p.1 -= q;
                    closed.insert(key);
                    Some("InventoryDispatched")
                } else if closed.contains(&key) {
                    None
                } else {
                    Some("InventoryCommandRejected")
                }
            }
            InventoryCommand::AdjustStock(c) => {
                let (on_hand, reserved) = pos(&mut x, &c.warehouse);
                if on_hand + c.delta < reserved {
                    Some("InventoryCommandRejected")
                } else {
                    x.positions
                        .entry((sku.clone(), c.warehouse.clone()))
                        .or_default()
                        .0 += c.delta;
                    Some("InventoryAdjusted")
                }
            }
            InventoryCommand::TransferStock(c) => {
                let (on_hand, reserved) = pos(&mut x, &c.from_warehouse);
                if on_hand - reserved < c.quantity {
                    Some("InventoryCommandRejected")
                } else {
                    x.positions
                        .entry((sku.clone(), c.from_warehouse.clone()))
                        .or_default()
                        .0 -= c.quantity;
                    x.positions
                        .entry((sku.clone(), c.to_warehouse.clone()))
                        .or_default()
                        .0 += c.quantity;
                    Some("InventoryTransferred")
                }
            }
            InventoryCommand::AuditStock(c) => {
                let (_, reserved) = pos(&mut x, &c.warehouse);
                if c.counted < reserved {
                    Some("InventoryCommandRejected")
                } else {
                    x.positions
                        .entry((sku.clone(), c.warehouse.clone()))
                        .or_default()
                        .0 = c.counted;
                    Some("InventoryAudited")
                }
            }
        };
        if let Some(e) = event {
            x.events.entry(sku).or_default().push(e);
        }
    }
    x
}
