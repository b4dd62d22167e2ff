//! `inventory-restocking`: the sellable units of a received return go back into stock,
//! through inventory's own commands. The returns service brings this participant; the
//! inventory service runs it (only inventory writes `inventory.commands`), as it runs its
//! receiving of purchase orders. One `ReceiveStock` per sku with sellable units, once per
//! return; damaged units are written off (they never re-enter stock).

use schemas::inventory::{ReceiveStock, ReceivingOut};
use schemas::returns::{RestockingIn, RestockingState};

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by};

/// The service that runs it (and owns `inventory.commands`).
pub const SERVICE: &str = "inventory";

#[derive(Debug, Clone, Default)]
pub struct Restocking;

impl Participant for Restocking {
    type Input = RestockingIn;
    type Output = ReceivingOut;
    type State = RestockingState;

    fn handle(
        &self,
        state: Option<&RestockingState>,
        input: &RestockingIn,
        now: i64,
    ) -> Result<Reaction<RestockingState, ReceivingOut>, InvalidCommand> {
        let RestockingIn::ReturnReceived(r) = input;
        if state.is_some_and(|s| s.returns.contains(&r.return_id)) {
            return Ok(Reaction::none()); // booked already
        }
        let mut next = state.cloned().unwrap_or_else(|| RestockingState {
            order_id: r.order_id.clone(),
            returns: Vec::new(),
            units: 0,
        });
        next.returns.push(r.return_id.clone());
        let mut emit = Vec::new();
        for (nth, line) in r.lines.iter().filter(|l| l.sellable > 0).enumerate() {
            // The command id derives from the receipt's id and the line; no expected version.
            let mut metadata = caused_by(&r.metadata, SERVICE, &line.sku, &line.sku, -1, now, nth);
            metadata.saga_id = None;
            emit.push(
                ReceiveStock {
                    metadata,
                    sku: line.sku.clone(),
                    warehouse: r.warehouse.clone(),
                    quantity: line.sellable,
                }
                .into(),
            );
            next.units = next.units.saturating_add(line.sellable);
        }
        Ok(Reaction::new(next, emit))
    }
}
