//! The shipping service: creates a shipment for paid orders, cancels it on compensation.

use schemas::saga::ShippingIn;
use schemas::shipping::*;

use super::{Participant, Reaction, caused_by, evolve, saga_of};
use crate::InvalidCommand;

pub const SERVICE: &str = "shipping";

pub mod status {
    pub const CREATED: &str = "Created";
    pub const FAILED: &str = "Failed";
    pub const CANCELLED: &str = "Cancelled";
    /// Compensated before a shipment existed: a late request to ship is ignored.
    pub const COMPENSATED: &str = "Compensated";
}
use status::*;

/// The carrier serving a country; `None` (shipment fails) for `XX`, the country no carrier
/// serves (tests and simulations force shipment failures with it).
pub fn carrier_for(country: &str) -> Option<&'static str> {
    match country {
        "XX" | "" => None,
        "DE" | "AT" => Some("DHL"),
        "FR" => Some("Colissimo"),
        "NL" | "BE" => Some("PostNL"),
        _ => Some("UPS"),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Shipping;

impl Participant for Shipping {
    type Input = ShippingIn;
    type Output = ShipmentReply;
    type State = ShipmentState;

    fn handle(
        &self,
        state: Option<&ShipmentState>,
        input: &ShippingIn,
        now: i64,
    ) -> Result<Reaction<ShipmentState, ShipmentReply>, InvalidCommand> {
        let cause = input.metadata();
        let order_id = saga_of(cause);
        let Some(mut s) = evolve(
            state,
            &cause.event_id,
            |s| &mut s.steps,
            || ShipmentState {
                order_id: order_id.clone(),
                version: 0,
                status: String::new(),
                shipment_id: None,
                carrier: None,
                steps: Vec::new(),
            },
        ) else {
            return Ok(Reaction::none());
        };
        let meta = |version| caused_by(cause, SERVICE, &order_id, &order_id, version, now, 0);
        let reply: ShipmentReply = match input {
            ShippingIn::PaymentCaptured(p) => {
                if !s.status.is_empty() {
                    return Ok(Reaction::new(s, Vec::new())); // acts once; or compensated
                }
                s.version += 1;
                match carrier_for(&p.order.ship_to_country) {
                    None => {
                        s.status = FAILED.into();
                        ShipmentFailed {
                            metadata: meta(s.version),
                            order_id: order_id.clone(),
                            reason: format!(
                                "no carrier serves {} {}",
                                p.order.ship_to_country, p.order.ship_to_postcode
                            ),
                        }
                        .into()
                    }
                    Some(carrier) => {
                        let id = format!("SHP-{order_id}");
                        s.status = CREATED.into();
                        s.shipment_id = Some(id.clone());
                        s.carrier = Some(carrier.into());
                        ShipmentCreated {
                            metadata: meta(s.version),
                            order_id: order_id.clone(),
                            shipment_id: id,
                            carrier: carrier.into(),
                        }
                        .into()
                    }
                }
            }
            ShippingIn::OrderCancelling(_) => {
                let cancelled = if s.status == CREATED {
                    s.status = CANCELLED.into();
                    s.shipment_id.clone()
                } else {
                    if s.status.is_empty() {
                        s.status = COMPENSATED.into();
                    }
                    None
                };
                s.version += 1;
                ShipmentCancelled {
                    metadata: meta(s.version),
                    order_id: order_id.clone(),
                    shipment_id: cancelled,
                }
                .into()
            }
        };
        Ok(Reaction::new(s, vec![reply]))
    }
}
