//! The service registry: every service declared once — the topics it owns, and the
//! pipelines (processors and view builders) it runs with what each reads, writes and
//! materializes.
//!
//! Everything that used to list services by hand is derived from [`SERVICES`]: the topics
//! to create ([`topics`]), the ownership map and its check ([`crate::ownership`]), the
//! consumer groups and their lag ([`groups`]), compliance's inputs ([`audited`]), the views
//! and their inputs for read-your-writes ([`view_inputs`]), the external-event topics of the
//! HTTP API, and `supplystream services`.
//!
//! A pipeline's topics are not restated here: a participant's come from its
//! [`Wiring`](crate::saga::Wiring), a view builder's from its [`View`](crate::view::View)
//! (or [`TopicView`](crate::view::TopicView)), the constants the loops themselves run on. Adding a service is one module that implements those, plus one entry in
//! [`SERVICES`].

use processors::billing::Billing;
use processors::inventory::saga::InventorySaga;
use processors::notifications::Notifications;
use processors::orders::Orders;
use processors::payments::Payments;
use processors::shipping::Shipping;
use schemas::saga::topics as saga_topics;

use crate::kafka::TopicSpec;
use crate::saga::Wiring;
use crate::topics::{inventory as inv, saga as st};
use crate::view::{TopicView, View};

/// What a topic is for; it decides how the topic is created and who may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Commands in, from producers outside the service (or another service's processor).
    Commands,
    /// An event log or reply topic: kept forever, audited by compliance.
    Events,
    /// Written and read only inside the service (e.g. inventory's reservations).
    Internal,
    /// A store's changelog: compacted, co-partitioned with its processor's input.
    Changelog,
    /// Dead letters, with reasons in headers: one partition.
    Dlq,
    /// Events of the world outside (a carrier's scans), written only by outside producers
    /// through `POST /events/<topic>`; audited.
    External,
}

/// A topic a service owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether it takes records over HTTP (commands, external events), and how.
    pub ingress: Option<Ingress>,
}

/// How a topic takes records over HTTP: commands of its service
/// (`POST /commands/<service>/<Command>`) or external events (`POST /events/<topic>`).
#[derive(Debug, Clone, Copy)]
pub struct Ingress {
    /// The field naming the aggregate: the record's key, and its metadata's aggregate id.
    pub key: &'static str,
    /// The records it takes from outside, by short name; `None`: every record of its union.
    /// (`DispatchStock` on `inventory.commands` is the inventory saga's, not a caller's.)
    pub records: Option<&'static [&'static str]>,
    /// Opens the topic's JSON encoder (its record union, registered).
    #[cfg(feature = "query")]
    pub open: crate::ingress::Open,
}

impl PartialEq for Ingress {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Ingress {}

/// The process a pipeline runs in (`supplystream run <host>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Inventory,
    Saga,
    Compliance,
}

/// One pipeline of a service: a processor (consume, decide, produce, keep a store) or a view
/// builder (consume, materialize views).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipeline {
    /// Its name: the consumer group, the transactional id's stem and the state directory.
    pub name: &'static str,
    pub host: Host,
    pub reads: &'static [&'static str],
    /// Event, reply and command topics it produces to.
    pub outputs: &'static [&'static str],
    pub changelog: Option<&'static str>,
    pub dlq: Option<&'static str>,
    pub views: &'static [&'static str],
    /// Its store is the fold of its own event log: `replay <name> [--check]` rebuilds it.
    pub rebuild: Option<Rebuild>,
    /// How `supplystream run saga` runs it (`None`: another host runs it).
    pub start: Option<Start>,
}

/// How the saga host runs a pipeline: its loop (blocking, until the stop). A view runs in a
/// process that runs a participant of its service (the saga views with orders), so a
/// deployment that splits the services over processes has one writer per view.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub run: fn(&crate::saga::Options, &tokio::runtime::Handle, &crate::Stop) -> anyhow::Result<()>,
}

/// Starts compare equal: a function pointer's address is no identity.
impl PartialEq for Start {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Start {}

/// How a store is rebuilt from its event log.
#[derive(Debug, Clone, Copy)]
pub struct Rebuild {
    /// The event log it folds.
    pub events: &'static str,
    pub run: fn(&crate::replay::Store<'_>) -> anyhow::Result<crate::replay::StoreReplay>,
}

impl PartialEq for Rebuild {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events
    }
}

impl Eq for Rebuild {}

impl Pipeline {
    /// A saga participant, from the topics its loop runs on.
    pub const fn participant<W: Wiring>() -> Self {
        Pipeline {
            name: W::NAME,
            host: Host::Saga,
            reads: W::INPUTS,
            outputs: W::OUTPUTS,
            changelog: Some(W::CHANGELOG),
            dlq: Some(W::DLQ),
            views: &[],
            rebuild: None,
            start: Some(Start {
                run: crate::saga::run_participant::<W>,
            }),
        }
    }

    /// A participant whose store is the fold of its event log.
    pub const fn event_sourced<W: crate::saga::rebuild::EventSourced>() -> Self {
        Pipeline {
            rebuild: Some(Rebuild {
                events: W::EVENTS,
                run: crate::replay::saga_store::<W>,
            }),
            ..Self::participant::<W>()
        }
    }

    /// A view builder run by `host`, from the constants the view loop runs it on.
    pub const fn view<V: View>(host: Host) -> Self {
        Pipeline {
            name: V::PIPELINE,
            host,
            reads: V::TOPICS,
            outputs: &[],
            changelog: None,
            dlq: match V::DLQ {
                Some((dlq, _)) => Some(dlq),
                None => None,
            },
            views: V::TABLES,
            rebuild: None,
            start: None,
        }
    }

    /// Run by the saga host with `run`, beside its service's participants.
    pub const fn run_by(
        self,
        run: fn(&crate::saga::Options, &tokio::runtime::Handle, &crate::Stop) -> anyhow::Result<()>,
    ) -> Self {
        Pipeline {
            start: Some(Start { run }),
            ..self
        }
    }

    /// A view builder over one topic run by `host`.
    pub const fn topic_view<V: TopicView>(host: Host) -> Self {
        Self::view::<crate::view::OneTopic<V>>(host)
    }

    /// Every topic it writes.
    pub fn writes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.outputs
            .iter()
            .copied()
            .chain(self.changelog)
            .chain(self.dlq)
    }

    /// A processor keeps its position in its consumer group; a view builder keeps it in
    /// its views' checkpoints.
    pub fn is_processor(&self) -> bool {
        self.views.is_empty()
    }
}

/// One service: what it owns and what it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub description: &'static str,
    pub topics: &'static [Topic],
    pub pipelines: &'static [Pipeline],
}

impl Service {
    /// The views its pipelines materialize.
    pub fn views(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.pipelines.iter().flat_map(|p| p.views.iter().copied())
    }
}

pub(crate) const fn topic(name: &'static str, kind: Kind) -> Topic {
    Topic {
        name,
        kind,
        ingress: None,
    }
}

/// A topic that takes records of union `U` over HTTP, keyed by field `key`.
#[cfg_attr(not(feature = "query"), allow(clippy::extra_unused_type_parameters))]
pub(crate) const fn ingress<U: schemas::record::RecordUnion + processors::Validate>(
    name: &'static str,
    kind: Kind,
    key: &'static str,
    records: Option<&'static [&'static str]>,
) -> Topic {
    Topic {
        name,
        kind,
        ingress: Some(Ingress {
            key,
            records,
            #[cfg(feature = "query")]
            open: crate::ingress::open::<U>,
        }),
    }
}

use Kind::*;

/// Every service of the platform.
pub const SERVICES: &[Service] = &[
    Service {
        name: "inventory",
        description: "Stock per (sku, warehouse), reservations, low-stock alerts; saga participant (reserve / release); books purchase-order receipts",
        topics: &[
            ingress::<schemas::inventory::InventoryCommand>(
                inv::COMMANDS,
                Commands,
                "sku",
                Some(&[
                    "ReceiveStock",
                    "ReserveStock",
                    "ReleaseReservation",
                    "AdjustStock",
                    "TransferStock",
                    "AuditStock",
                ]),
            ),
            topic(inv::EVENTS, Events),
            topic(inv::REPLIES, Events),
            topic(inv::RESERVATIONS, Internal),
            topic(inv::CHANGELOG, Changelog),
            topic(st::INVENTORY_SAGA_CHANGELOG, Changelog),
            topic(inv::ALERTS, Events),
            topic(inv::RECEIVING_CHANGELOG, Changelog),
            crate::returns::RESTOCKING_STORE,
            topic(inv::DLQ, Dlq),
        ],
        pipelines: &[
            Pipeline {
                name: inv::GROUP,
                host: Host::Inventory,
                reads: &[inv::COMMANDS],
                outputs: &[inv::EVENTS, inv::RESERVATIONS, inv::ALERTS],
                changelog: Some(inv::CHANGELOG),
                dlq: Some(inv::DLQ),
                views: &[],
                rebuild: Some(Rebuild {
                    events: inv::EVENTS,
                    run: crate::replay::inventory_store,
                }),
                start: None,
            },
            Pipeline::topic_view::<crate::inventory::views::StockLevelsView>(Host::Inventory),
            Pipeline::participant::<InventorySaga>(),
            // Purchasing's receipts become stock: only inventory writes inventory.commands.
            Pipeline::participant::<processors::inventory::receiving::Receiving>(),
            // Returns' received units become stock, likewise.
            crate::returns::RESTOCKING,
        ],
    },
    Service {
        name: "orders",
        description: "Order aggregates; initiator of the fulfilment saga (owns its deadlines)",
        topics: &[
            ingress::<schemas::orders::OrderCommand>(
                saga_topics::ORDER_COMMANDS,
                Commands,
                "order_id",
                None,
            ),
            topic(saga_topics::ORDER_EVENTS, Events),
            topic(st::ORDERS_CHANGELOG, Changelog),
            topic(st::ORDERS_DLQ, Dlq),
        ],
        pipelines: &[
            Pipeline::event_sourced::<Orders>(),
            Pipeline::view::<crate::saga::views::SagaViews>(Host::Saga)
                .run_by(crate::saga::views::run),
            Pipeline::view::<crate::saga::topic_views::Windows>(Host::Saga)
                .run_by(crate::saga::topic_views::run_windows),
        ],
    },
    Service {
        name: "payments",
        description: "Charges and refunds (idempotency key = saga + step)",
        topics: &[
            topic(saga_topics::PAYMENT_REPLIES, Events),
            topic(st::PAYMENTS_CHANGELOG, Changelog),
            topic(st::PAYMENTS_DLQ, Dlq),
        ],
        pipelines: &[Pipeline::event_sourced::<Payments>()],
    },
    Service {
        name: "shipping",
        description: "Shipments and carriers (create / cancel); carriers' tracking events",
        topics: &[
            topic(saga_topics::SHIPPING_REPLIES, Events),
            topic(st::SHIPPING_CHANGELOG, Changelog),
            topic(st::SHIPPING_DLQ, Dlq),
            ingress::<schemas::shipping::TrackingEvent>(
                saga_topics::SHIPPING_TRACKING,
                External,
                "shipment_id",
                None,
            ),
        ],
        pipelines: &[
            Pipeline::event_sourced::<Shipping>(),
            Pipeline::topic_view::<crate::saga::topic_views::ShipmentsView>(Host::Saga)
                .run_by(crate::saga::topic_views::run::<crate::saga::topic_views::ShipmentsView>),
        ],
    },
    Service {
        name: "notifications",
        description: "Customer notifications, exactly once per order outcome",
        topics: &[
            topic(saga_topics::NOTIFICATION_EVENTS, Events),
            topic(st::NOTIFICATIONS_CHANGELOG, Changelog),
            topic(st::NOTIFICATIONS_DLQ, Dlq),
        ],
        pipelines: &[Pipeline::participant::<Notifications>()],
    },
    Service {
        name: "billing",
        description: "Invoices, credit notes and a balanced double-entry ledger",
        topics: &[
            topic(saga_topics::BILLING_EVENTS, Events),
            topic(st::BILLING_CHANGELOG, Changelog),
            topic(st::BILLING_DLQ, Dlq),
        ],
        pipelines: &[
            Pipeline::event_sourced::<Billing>(),
            Pipeline::topic_view::<crate::saga::topic_views::LedgerView>(Host::Saga)
                .run_by(crate::saga::topic_views::run::<crate::saga::topic_views::LedgerView>),
        ],
    },
    Service {
        name: "catalog",
        description: "Products, prices and discontinuation: reference data for the others",
        topics: &[
            ingress::<schemas::products::CatalogCommand>(
                saga_topics::CATALOG_COMMANDS,
                Commands,
                "sku",
                None,
            ),
            topic(saga_topics::CATALOG_EVENTS, Events),
            topic(st::CATALOG_CHANGELOG, Changelog),
            topic(st::CATALOG_DLQ, Dlq),
        ],
        pipelines: &[
            Pipeline::event_sourced::<processors::catalog::Catalog>(),
            Pipeline::topic_view::<crate::saga::topic_views::ProductsView>(Host::Saga)
                .run_by(crate::saga::topic_views::run::<crate::saga::topic_views::ProductsView>),
        ],
    },
    Service {
        name: "suppliers",
        description: "Purchasing: low-stock alerts become purchase orders; receipts after the lead time",
        topics: &[
            topic(saga_topics::SUPPLIER_EVENTS, Events),
            topic(st::SUPPLIERS_CHANGELOG, Changelog),
            topic(st::SUPPLIERS_DLQ, Dlq),
        ],
        pipelines: &[
            Pipeline::event_sourced::<processors::suppliers::Suppliers>(),
            Pipeline::topic_view::<crate::saga::topic_views::PurchaseOrdersView>(Host::Saga)
                .run_by(
                    crate::saga::topic_views::run::<crate::saga::topic_views::PurchaseOrdersView>,
                ),
        ],
    },
    Service {
        name: "compliance",
        description: "Hash-chained, append-only audit trail of every event log",
        topics: &[],
        pipelines: &[Pipeline::view::<crate::compliance::AuditView>(
            Host::Compliance,
        )],
    },
    crate::returns::SERVICE,
];

/// The service named `name`.
pub fn service(name: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|s| s.name == name)
}

/// Every pipeline, with its service.
pub fn pipelines() -> impl Iterator<Item = (&'static Service, &'static Pipeline)> {
    SERVICES
        .iter()
        .flat_map(|s| s.pipelines.iter().map(move |p| (s, p)))
}

/// The service that runs the pipeline `name`. A pipeline the registry does not list is a
/// programming error (every loop's name is in it).
pub fn service_of(pipeline: &str) -> &'static str {
    pipelines()
        .find(|(_, p)| p.name == pipeline)
        .map(|(s, _)| s.name)
        .unwrap_or_else(|| panic!("pipeline {pipeline} is not in the service registry"))
}

/// The pipeline named `name`.
pub fn pipeline(name: &str) -> Option<&'static Pipeline> {
    pipelines().map(|(_, p)| p).find(|p| p.name == name)
}

/// Every topic with its owner.
pub fn owned_topics() -> impl Iterator<Item = (&'static Service, &'static Topic)> {
    SERVICES
        .iter()
        .flat_map(|s| s.topics.iter().map(move |t| (s, t)))
}

/// The service that owns `topic`.
pub fn owner_of(topic: &str) -> Option<&'static str> {
    owned_topics()
        .find(|(_, t)| t.name == topic)
        .map(|(s, _)| s.name)
}

/// How `topic` is created with `partitions` partitions (DLQs: one; changelogs compacted).
pub fn topic_spec(topic: &Topic, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: topic.name,
        partitions: if topic.kind == Dlq { 1 } else { partitions },
        compacted: topic.kind == Changelog,
    }
}

/// Every topic of `services` (all when empty), as it is created.
pub fn topics_of(services: &[&str], partitions: i32) -> Vec<TopicSpec> {
    owned_topics()
        .filter(|(s, _)| services.is_empty() || services.contains(&s.name))
        .map(|(_, t)| topic_spec(t, partitions))
        .collect()
}

/// Every topic of every service, as it is created.
pub fn topics(partitions: i32) -> Vec<TopicSpec> {
    topics_of(&[], partitions)
}

/// Processors of `host`, by name.
pub fn processors(host: Host) -> impl Iterator<Item = &'static Pipeline> {
    pipelines()
        .map(|(_, p)| p)
        .filter(move |p| p.host == host && p.is_processor())
}

/// The consumer groups of every processor with their input topics (for lag and offsets).
pub fn groups() -> Vec<(&'static str, &'static [&'static str])> {
    pipelines()
        .map(|(_, p)| p)
        .filter(|p| p.is_processor())
        .map(|p| (p.name, p.reads))
        .collect()
}

/// Every view, by name.
pub fn views() -> impl Iterator<Item = &'static str> {
    pipelines().flat_map(|(_, p)| p.views.iter().copied())
}

/// The pipeline that materializes `view`.
pub fn pipeline_of_view(view: &str) -> Option<&'static Pipeline> {
    pipelines()
        .map(|(_, p)| p)
        .find(|p| p.views.contains(&view))
}

/// The topics `view` is built from (`None`: no such view).
pub fn view_inputs(view: &str) -> Option<&'static [&'static str]> {
    pipelines()
        .map(|(_, p)| p)
        .find(|p| p.views.contains(&view))
        .map(|p| p.reads)
}

/// Every topic compliance audits, with its owner: the event, reply and external-event logs.
pub fn audited() -> impl Iterator<Item = (&'static str, &'static str)> {
    owned_topics()
        .filter(|(_, t)| matches!(t.kind, Events | External))
        .map(|(s, t)| (t.name, s.name))
}

/// Every topic that takes records over HTTP, with its owner.
pub fn ingresses() -> impl Iterator<Item = (&'static str, &'static Topic, Ingress)> {
    owned_topics().filter_map(|(s, t)| t.ingress.map(|i| (s.name, t, i)))
}

/// Every external-event topic (`POST /events/<topic>`), with its owner.
pub fn external_events() -> impl Iterator<Item = (&'static str, &'static str)> {
    owned_topics()
        .filter(|(_, t)| t.kind == External)
        .map(|(s, t)| (t.name, s.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_registry_is_a_valid_ownership_map() {
        use crate::ownership::Registered;
        let map = crate::ownership::OwnershipMap::from_registry();
        let problems = map.problems();
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn names_are_unique() {
        let mut seen = BTreeSet::new();
        for (_, p) in pipelines() {
            assert!(seen.insert(p.name), "pipeline {} twice", p.name);
        }
        let mut seen = BTreeSet::new();
        for (_, t) in owned_topics() {
            assert!(seen.insert(t.name), "topic {} twice", t.name);
        }
        let mut seen = BTreeSet::new();
        for v in views() {
            assert!(seen.insert(v), "view {v} twice");
        }
    }

    #[test]
    fn compliance_audits_every_event_log_it_can_decode() {
        let audited: Vec<&str> = audited().map(|(t, _)| t).collect();
        assert_eq!(crate::compliance::EVENT_TOPICS, audited.as_slice());
    }

    #[test]
    fn topics_are_created_by_kind() {
        let specs = topics(3);
        let dlq = specs.iter().find(|t| t.name == inv::DLQ).unwrap();
        assert_eq!((dlq.partitions, dlq.compacted), (1, false));
        let changelog = specs.iter().find(|t| t.name == inv::CHANGELOG).unwrap();
        assert_eq!((changelog.partitions, changelog.compacted), (3, true));
        assert_eq!(specs.len(), owned_topics().count());
    }
}
