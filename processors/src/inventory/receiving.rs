//! `inventory-receiving`: inventory's side of purchasing. Suppliers announce that a purchase
//! order's goods arrived (`PurchaseOrderReceived` on `suppliers.events`); only inventory may
//! write `inventory.commands`, so this participant books each receipt as a `ReceiveStock`
//! there, once. Its state per sku is the last receipt handled: suppliers' versions of a sku
//! grow by one per event, so a redelivery is any receipt at or below it.

use schemas::inventory::{ReceiveStock, ReceivingOut, ReceivingState};
use schemas::suppliers::ReceivingIn;

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by};

/// The service that owns it (and `inventory.commands`).
pub const SERVICE: &str = "inventory";

#[derive(Debug, Clone, Default)]
pub struct Receiving;

impl Participant for Receiving {
    type Input = ReceivingIn;
    type Output = ReceivingOut;
    type State = ReceivingState;

    fn handle(
        &self,
        state: Option<&ReceivingState>,
        input: &ReceivingIn,
        now: i64,
    ) -> Result<Reaction<ReceivingState, ReceivingOut>, InvalidCommand> {
        let ReceivingIn::PurchaseOrderReceived(r) = input;
        let version = r.metadata.aggregate_version;
        if state.is_some_and(|s| version <= s.last_version) {
            return Ok(Reaction::none());
        }
        if r.quantity <= 0 {
            return Err(InvalidCommand {
                command: "supplychain.suppliers.PurchaseOrderReceived",
                reason: format!("quantity must be positive, got {}", r.quantity),
            });
        }
        // The command id derives from the receipt's id; it expects no particular version.
        let mut metadata = caused_by(&r.metadata, SERVICE, &r.sku, &r.sku, -1, now, 0);
        metadata.saga_id = None;
        let command = ReceiveStock {
            metadata,
            sku: r.sku.clone(),
            warehouse: r.warehouse.clone(),
            quantity: r.quantity,
        };
        let mut next = state.cloned().unwrap_or_else(|| ReceivingState {
            sku: r.sku.clone(),
            last_version: 0,
            receipts: 0,
            received_quantity: 0,
        });
        next.last_version = version;
        next.receipts += 1;
        next.received_quantity += r.quantity;
        Ok(Reaction::new(next, vec![command.into()]))
    }
}

#[cfg(test)]
mod tests {
    use schemas::common::Metadata;
    use schemas::suppliers::PurchaseOrderReceived;

    use super::*;

    fn receipt(version: i64, quantity: i64) -> ReceivingIn {
        PurchaseOrderReceived {
            metadata: Metadata {
                aggregate_version: version,
                ..Metadata::command(&format!("rcv-{version}"), "SKU-1", 1)
            },
            po_id: format!("PO-SKU-1-{version}"),
            supplier_id: "SUP".into(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity,
            placed_at: 0,
        }
        .into()
    }

    #[test]
    fn each_receipt_is_booked_once() {
        let first = Receiving.handle(None, &receipt(2, 40), 5).unwrap();
        let state = first.state.unwrap();
        let [ReceivingOut::ReceiveStock(cmd)] = first.emit.as_slice() else {
            panic!("{:?}", first.emit)
        };
        assert_eq!((cmd.quantity, cmd.metadata.aggregate_version), (40, -1));
        assert_eq!(cmd.metadata.causation_id.as_deref(), Some("rcv-2"));
        assert_eq!(cmd.metadata.saga_id, None);
        let again = Receiving.handle(Some(&state), &receipt(2, 40), 6).unwrap();
        assert_eq!(again, Reaction::none(), "a redelivery books nothing");
        let next = Receiving.handle(Some(&state), &receipt(4, 10), 7).unwrap();
        assert_eq!(next.state.unwrap().received_quantity, 50);
        assert!(Receiving.handle(None, &receipt(1, 0), 1).is_err());
    }
}
