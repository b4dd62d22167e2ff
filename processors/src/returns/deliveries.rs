//! `returns-deliveries`: carriers scan parcels by shipment id (`shipping.tracking`), but a
//! return is decided per order. This participant re-keys each shipment's first
//! `ParcelDelivered` to its order, as `OrderDelivered` on `returns.deliveries`, so the returns
//! aggregate reads it co-partitioned with the order's commands. (Other scans it skips; a
//! delivery whose shipment id names no order is dead-lettered.)

use schemas::returns::{DeliveriesIn, DeliveryEvent, DeliveryState, OrderDelivered};

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by};

#[derive(Debug, Clone, Default)]
pub struct Deliveries;

impl Participant for Deliveries {
    type Input = DeliveriesIn;
    type Output = DeliveryEvent;
    type State = DeliveryState;

    fn handle(
        &self,
        state: Option<&DeliveryState>,
        input: &DeliveriesIn,
        now: i64,
    ) -> Result<Reaction<DeliveryState, DeliveryEvent>, InvalidCommand> {
        let DeliveriesIn::ParcelDelivered(d) = input;
        if state.is_some() {
            return Ok(Reaction::none()); // the first delivery scan counts
        }
        let order_id =
            crate::shipping::order_of_shipment(&d.shipment_id).ok_or_else(|| InvalidCommand {
                command: "supplychain.shipping.ParcelDelivered",
                reason: format!(
                    "shipment_id {:?} is not a shipment of an order (SHP-<order id>)",
                    d.shipment_id
                ),
            })?;
        let delivered_at = d.metadata.occurred_at;
        let event = OrderDelivered {
            metadata: caused_by(&d.metadata, super::SERVICE, order_id, order_id, 1, now, 0),
            order_id: order_id.to_owned(),
            shipment_id: d.shipment_id.clone(),
            delivered_at,
        };
        let next = DeliveryState {
            shipment_id: d.shipment_id.clone(),
            order_id: order_id.to_owned(),
            delivered_at,
        };
        Ok(Reaction::new(next, vec![event.into()]))
    }
}
