//! Which record travels on which topic: every subject supplystream registers
//! (`<topic>-<record full name>`, TopicRecordNameStrategy), with the bundled schema.
//!
//! `supplystream schemas check` and `schemas register` walk this list.

use apache_avro::Schema;

use crate::billing::{BillingChangelog, BillingEvent};
use crate::inventory::{
    InventoryAlert, InventoryChangelog, InventoryCommand, InventoryEvent,
    InventoryReceivingChangelog, InventoryReply, InventorySagaChangelog,
};
use crate::notifications::{NotificationChangelog, NotificationEvent};
use crate::orders::{OrderChangelog, OrderCommand, OrderEvent};
use crate::payments::{PaymentChangelog, PaymentReply};
use crate::products::{CatalogChangelog, CatalogCommand, CatalogEvent};
use crate::record::RecordUnion;
use crate::returns::{
    DeliveriesChangelog, DeliveryEvent, RestockingChangelog, ReturnCommand, ReturnEvent,
    ReturnsChangelog, topics as returns,
};
use crate::saga::topics::INVENTORY_RESERVATIONS;
use crate::shipping::{ShipmentChangelog, ShipmentReply, TrackingEvent};
use crate::suppliers::{SupplierEvent, SuppliersChangelog};

/// One subject: a record on a topic.
#[derive(Debug, Clone)]
pub struct Subject {
    pub topic: &'static str,
    /// Full name of the record (`supplychain.inventory.InventoryReserved`).
    pub record: &'static str,
    /// The current (bundled) schema.
    pub schema: &'static Schema,
}

impl Subject {
    /// The subject name in the registry.
    pub fn name(&self) -> String {
        format!("{}-{}", self.topic, self.record)
    }
}

fn of<T: RecordUnion>(topic: &'static str, keep: impl Fn(&str) -> bool) -> Vec<Subject> {
    T::names()
        .iter()
        .zip(T::schemas())
        .filter(|(name, _)| keep(name))
        .map(|(name, schema)| Subject {
            topic,
            record: name.as_str(),
            schema,
        })
        .collect()
}

/// Every subject of every service, topic by topic.
pub fn subjects() -> Vec<Subject> {
    let all = |_: &str| true;
    let per_line = |name: &str| crate::saga::expected_topic(name) == Some(INVENTORY_RESERVATIONS);
    [
        of::<InventoryCommand>("inventory.commands", all),
        of::<InventoryEvent>("inventory.events", all),
        of::<InventoryEvent>(INVENTORY_RESERVATIONS, per_line),
        of::<InventoryChangelog>("inventory.changelog", all),
        of::<InventoryReply>("inventory.replies", all),
        of::<InventorySagaChangelog>("inventory.saga-changelog", all),
        of::<OrderCommand>("orders.commands", all),
        of::<OrderEvent>("orders.events", all),
        of::<OrderChangelog>("orders.changelog", all),
        of::<PaymentReply>("payments.replies", all),
        of::<PaymentChangelog>("payments.changelog", all),
        of::<ShipmentReply>("shipping.replies", all),
        of::<ShipmentChangelog>("shipping.changelog", all),
        of::<TrackingEvent>(crate::saga::topics::SHIPPING_TRACKING, all),
        of::<NotificationEvent>("notifications.events", all),
        of::<NotificationChangelog>("notifications.changelog", all),
        of::<BillingEvent>("billing.events", all),
        of::<CatalogCommand>("catalog.commands", all),
        of::<CatalogEvent>("catalog.events", all),
        of::<CatalogChangelog>("catalog.changelog", all),
        of::<BillingChangelog>("billing.changelog", all),
        of::<InventoryAlert>("inventory.alerts", all),
        of::<InventoryReceivingChangelog>("inventory.receiving-changelog", all),
        of::<SupplierEvent>("suppliers.events", all),
        of::<SuppliersChangelog>("suppliers.changelog", all),
        of::<ReturnCommand>(returns::COMMANDS, all),
        of::<ReturnEvent>(returns::EVENTS, all),
        of::<DeliveryEvent>(returns::DELIVERIES, all),
        of::<ReturnsChangelog>(returns::CHANGELOG, all),
        of::<DeliveriesChangelog>(returns::DELIVERIES_CHANGELOG, all),
        of::<RestockingChangelog>(returns::RESTOCKING_CHANGELOG, all),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The topics a record travels on.
pub fn topics_of(record: &str) -> Vec<&'static str> {
    subjects()
        .into_iter()
        .filter(|s| s.record == record)
        .map(|s| s.topic)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_has_a_subject_and_shared_ones_have_several() {
        let all = subjects();
        assert!(all.len() > 40, "{}", all.len());
        assert_eq!(
            topics_of("supplychain.inventory.InventoryReserved"),
            ["inventory.events", INVENTORY_RESERVATIONS]
        );
        assert_eq!(
            topics_of("supplychain.orders.PlaceOrder"),
            ["orders.commands"]
        );
    }
}
