//! Shipping service records: saga replies on `shipping.replies`, the shipment state on
//! `shipping.changelog`, and the carriers' tracking events on `shipping.tracking`.
//!
//! `shipping.tracking` is an *external events* topic: shipping owns it, but only outside
//! producers (carriers, through `POST /events/shipping.tracking`) write it; no pipeline of
//! shipping does (declared and enforced in `pipelines/definitions/shipping.toml`). Keyed by
//! shipment id.

use serde::{Deserialize, Serialize};

use crate::{record_union, records, union_metadata};

records! {
    /// Reply: a shipment was created and a carrier assigned.
    ShipmentCreated { order_id: String, shipment_id: String, carrier: String }
    /// Reply: no carrier serves the address.
    ShipmentFailed { order_id: String, reason: String }
    /// Reply (compensation): `shipment_id` is `None` when there was nothing to cancel.
    ShipmentCancelled { order_id: String, shipment_id: Option<String> }
}

/// Changelog record: one order's shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentState {
    pub order_id: String,
    pub version: i64,
    /// Created, Failed, Cancelled, Compensated.
    pub status: String,
    pub shipment_id: Option<String>,
    pub carrier: Option<String>,
    pub steps: Vec<String>,
}

record_union! {
    /// Everything `shipping.replies` may carry.
    ShipmentReply {
        ShipmentCreated => "../avro/shipping/ShipmentCreated.avsc",
        ShipmentFailed => "../avro/shipping/ShipmentFailed.avsc",
        ShipmentCancelled => "../avro/shipping/ShipmentCancelled.avsc",
    }
}
union_metadata!(ShipmentReply {
    ShipmentCreated,
    ShipmentFailed,
    ShipmentCancelled
});

records! {
    /// External event (carrier): the parcel was picked up. `metadata.occurred_at` is the scan
    /// time, `metadata.event_id` the carrier's scan id (the same id twice is one scan).
    ParcelPickedUp { shipment_id: String, carrier: String, location: String }
    /// External event (carrier): a delivery attempt failed; the carrier tries again.
    DeliveryAttemptFailed { shipment_id: String, carrier: String, location: String, reason: String }
    /// External event (carrier): the parcel was delivered.
    ParcelDelivered { shipment_id: String, carrier: String, location: String, received_by: Option<String> }
}

record_union! {
    /// Everything `shipping.tracking` may carry.
    TrackingEvent {
        ParcelPickedUp => "../avro/shipping/ParcelPickedUp.avsc",
        DeliveryAttemptFailed => "../avro/shipping/DeliveryAttemptFailed.avsc",
        ParcelDelivered => "../avro/shipping/ParcelDelivered.avsc",
    }
}
union_metadata!(TrackingEvent {
    ParcelPickedUp,
    DeliveryAttemptFailed,
    ParcelDelivered
});

impl TrackingEvent {
    /// The shipment the event is about; also its Kafka key.
    pub fn shipment_id(&self) -> &str {
        match self {
            TrackingEvent::ParcelPickedUp(e) => &e.shipment_id,
            TrackingEvent::DeliveryAttemptFailed(e) => &e.shipment_id,
            TrackingEvent::ParcelDelivered(e) => &e.shipment_id,
        }
    }

    /// The carrier that scanned it.
    pub fn carrier(&self) -> &str {
        match self {
            TrackingEvent::ParcelPickedUp(e) => &e.carrier,
            TrackingEvent::DeliveryAttemptFailed(e) => &e.carrier,
            TrackingEvent::ParcelDelivered(e) => &e.carrier,
        }
    }

    /// Where it was scanned.
    pub fn location(&self) -> &str {
        match self {
            TrackingEvent::ParcelPickedUp(e) => &e.location,
            TrackingEvent::DeliveryAttemptFailed(e) => &e.location,
            TrackingEvent::ParcelDelivered(e) => &e.location,
        }
    }
}

record_union! {
    /// Everything `shipping.changelog` may carry.
    ShipmentChangelog { ShipmentState => "../avro/shipping/ShipmentState.avsc" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Metadata;
    use crate::record::testing::round_trip;

    #[test]
    fn tracking_events_round_trip() {
        let m = Metadata::command("scan-1", "SHP-1", 1_700_000_000_000);
        round_trip(TrackingEvent::from(ParcelPickedUp {
            metadata: m.clone(),
            shipment_id: "SHP-1".into(),
            carrier: "PostNL".into(),
            location: "Utrecht".into(),
        }));
        round_trip(TrackingEvent::from(DeliveryAttemptFailed {
            metadata: m.clone(),
            shipment_id: "SHP-1".into(),
            carrier: "PostNL".into(),
            location: "Amsterdam".into(),
            reason: "nobody home".into(),
        }));
        for received_by in [None, Some("J. Jansen".to_owned())] {
            round_trip(TrackingEvent::from(ParcelDelivered {
                metadata: m.clone(),
                shipment_id: "SHP-1".into(),
                carrier: "PostNL".into(),
                location: "Amsterdam".into(),
                received_by,
            }));
        }
    }
}
