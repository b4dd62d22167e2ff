//! The shipping service: creates a shipment for paid orders, cancels it on compensation.

pub mod shipments;

use schemas::saga::ShippingIn;
use schemas::shipping::*;

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by, saga_of, seen};

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

/// The shipment id of an order's shipment.
pub fn shipment_id(order_id: &str) -> String {
    format!("SHP-{order_id}")
}

/// The order a shipment id was made for (`None`: not one of [`shipment_id`]'s).
pub fn order_of_shipment(shipment_id: &str) -> Option<&str> {
    shipment_id.strip_prefix("SHP-").filter(|o| !o.is_empty())
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
        if state.is_some_and(|s| seen(&s.steps, &cause.event_id)) {
            return Ok(Reaction::none());
        }
        let status = state.map(|s| s.status.as_str()).unwrap_or_default();
        let version = state.map_or(0, |s| s.version) + 1;
        let meta = caused_by(cause, SERVICE, &order_id, &order_id, version, now, 0);
        let reply: ShipmentReply = match input {
            ShippingIn::PaymentCaptured(p) => {
                if !status.is_empty() {
                    // Acts once; or compensated. Nothing changes, so a redelivery decides
                    // the same again.
                    return Ok(Reaction::none());
                }
                match carrier_for(&p.order.ship_to_country) {
                    None => ShipmentFailed {
                        metadata: meta,
                        order_id: order_id.clone(),
                        reason: format!(
                            "no carrier serves {} {}",
                            p.order.ship_to_country, p.order.ship_to_postcode
                        ),
                    }
                    .into(),
                    Some(carrier) => ShipmentCreated {
                        metadata: meta,
                        shipment_id: shipment_id(&order_id),
                        order_id: order_id.clone(),
                        carrier: carrier.into(),
                    }
                    .into(),
                }
            }
            // Compensation: always answered, so a retried compensation runs the chain again.
            ShippingIn::OrderCancelling(_) => ShipmentCancelled {
                metadata: meta,
                order_id: order_id.clone(),
                shipment_id: match state {
                    Some(s) if s.status == CREATED => s.shipment_id.clone(),
                    _ => None,
                },
            }
            .into(),
        };
        Ok(Reaction::new(evolve(state, &reply), vec![reply]))
    }
}

/// An order's shipment after `reply`: the fold that rebuilds every shipment from
/// `shipping.replies` alone.
pub fn evolve(state: Option<&ShipmentState>, reply: &ShipmentReply) -> ShipmentState {
    let meta = reply.metadata();
    let mut s = state.cloned().unwrap_or_else(|| ShipmentState {
        order_id: saga_of(meta),
        version: 0,
        status: String::new(),
        shipment_id: None,
        carrier: None,
        steps: Vec::new(),
    });
    match reply {
        ShipmentReply::ShipmentCreated(r) => {
            s.status = CREATED.into();
            s.shipment_id = Some(r.shipment_id.clone());
            s.carrier = Some(r.carrier.clone());
        }
        ShipmentReply::ShipmentFailed(_) => s.status = FAILED.into(),
        ShipmentReply::ShipmentCancelled(r) => {
            if r.shipment_id.is_some() {
                s.status = CANCELLED.into();
            } else if s.status.is_empty() {
                s.status = COMPENSATED.into();
            }
        }
    }
    s.version = s.version.max(meta.aggregate_version);
    if let Some(cause) = &meta.causation_id
        && !seen(&s.steps, cause)
    {
        s.steps.push(cause.clone());
    }
    s
}
