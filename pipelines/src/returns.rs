//! The returns service, declared: its topics, its two processors on the one runtime (the
//! returns aggregate and the re-keying of deliveries), its view, and — run by inventory, which
//! alone writes `inventory.commands` — the restocking of received returns. Its rules are in
//! [`processors::returns`]; its records in [`schemas::returns`].

use processors::returns::Returns;
use processors::returns::deliveries::Deliveries;
use processors::returns::restocking::Restocking;
use schemas::returns::topics::*;
use schemas::returns::*;
use schemas::saga::topics::{INVENTORY_COMMANDS, ORDER_EVENTS, SHIPPING_TRACKING};

use crate::registry::{Host, Kind, Pipeline, Service, ingress, topic};
use crate::saga::{Options, Wiring};
use crate::view::TopicView;

/// The returns service's entry in the [service registry](crate::registry).
pub const SERVICE: Service = Service {
    name: "returns",
    description: "Customer returns: authorized within 30 days of delivery for what was shipped; received units restock inventory and are refunded",
    topics: &[
        ingress::<ReturnCommand>(COMMANDS, Kind::Commands, "order_id", None),
        topic(EVENTS, Kind::Events),
        topic(DELIVERIES, Kind::Internal),
        topic(CHANGELOG, Kind::Changelog),
        topic(DELIVERIES_CHANGELOG, Kind::Changelog),
        topic(DLQ, Kind::Dlq),
    ],
    pipelines: &[
        Pipeline::participant::<Returns>(),
        Pipeline::participant::<Deliveries>(),
        Pipeline::topic_view::<ReturnsView>(Host::Saga)
            .run_by(crate::saga::topic_views::run::<ReturnsView>),
    ],
};

/// What inventory runs for returns (in inventory's entry of the registry: it writes
/// `inventory.commands`), and the store it keeps.
pub const RESTOCKING: Pipeline = Pipeline::participant::<Restocking>();
pub const RESTOCKING_STORE: crate::registry::Topic = topic(RESTOCKING_CHANGELOG, Kind::Changelog);

/// `returns`.
pub struct ReturnsView;

impl TopicView for ReturnsView {
    type Event = ReturnEvent;
    type Projection = processors::returns::view::ReturnsProjection;
    type Table = sinks::returns::ReturnsTable;
    const TOPIC: &'static str = EVENTS;
    const GROUP: &'static str = "returns-view";
    const DLQ: Option<(&'static str, &'static str)> = Some((DLQ, Self::GROUP));
}

impl Wiring for Returns {
    const NAME: &'static str = "returns";
    const INPUTS: &'static [&'static str] = &[COMMANDS, ORDER_EVENTS, DELIVERIES];
    const OUTPUTS: &'static [&'static str] = &[EVENTS];
    const CHANGELOG: &'static str = CHANGELOG;
    const DLQ: &'static str = DLQ;
    type Changelog = ReturnsChangelog;
    fn new(_: &Options) -> Self {
        Returns
    }
    fn from_changelog(ReturnsChangelog::ReturnsState(s): ReturnsChangelog) -> ReturnsState {
        s
    }
    fn state_key(state: &ReturnsState) -> &str {
        &state.order_id
    }
}

impl Wiring for Deliveries {
    const NAME: &'static str = "returns-deliveries";
    const INPUTS: &'static [&'static str] = &[SHIPPING_TRACKING];
    const OUTPUTS: &'static [&'static str] = &[DELIVERIES];
    const CHANGELOG: &'static str = DELIVERIES_CHANGELOG;
    const DLQ: &'static str = DLQ;
    type Changelog = DeliveriesChangelog;
    fn new(_: &Options) -> Self {
        Deliveries
    }
    fn from_changelog(DeliveriesChangelog::DeliveryState(s): DeliveriesChangelog) -> DeliveryState {
        s
    }
    fn state_key(state: &DeliveryState) -> &str {
        &state.shipment_id
    }
}

impl Wiring for Restocking {
    const NAME: &'static str = "inventory-restocking";
    const INPUTS: &'static [&'static str] = &[EVENTS];
    const OUTPUTS: &'static [&'static str] = &[INVENTORY_COMMANDS];
    const CHANGELOG: &'static str = RESTOCKING_CHANGELOG;
    const DLQ: &'static str = crate::topics::inventory::DLQ;
    type Changelog = RestockingChangelog;
    fn new(_: &Options) -> Self {
        Restocking
    }
    fn from_changelog(
        RestockingChangelog::RestockingState(s): RestockingChangelog,
    ) -> RestockingState {
        s
    }
    fn state_key(state: &RestockingState) -> &str {
        &state.order_id
    }
    /// Always: the state only recognises a return id received again, which after the
    /// retention the horizon refuses; a new return of the order is handled alike without it.
    fn ended(_: &RestockingState) -> bool {
        true
    }
}
