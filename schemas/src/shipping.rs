//! Shipping service records: saga replies on `shipping.replies` and the shipment state on
//! `shipping.changelog`.

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

record_union! {
    /// Everything `shipping.changelog` may carry.
    ShipmentChangelog { ShipmentState => "../avro/shipping/ShipmentState.avsc" }
}
