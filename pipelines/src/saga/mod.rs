//! The order-fulfilment saga: its participants (orders, inventory's saga participant,
//! payments, shipping, notifications) on the generic [`runtime`], their topics, and the
//! `sagas` / `saga_steps` views.
//!
//! The per-sku inventory service ([`crate::inventory`]) must run too: it executes the
//! reservations the inventory participant fans out.

pub mod participant;
pub mod rebuild;
pub mod simulate;
pub mod topic_views;
pub mod views;
mod wiring;

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use processors::billing::Billing;
use processors::inventory::saga::InventorySaga;
use processors::notifications::Notifications;
use processors::orders::Orders;
use processors::payments::Payments;
use processors::shipping::Shipping;

use crate::kafka::TopicSpec;
use crate::{Cluster, Stop};

pub use crate::runtime::Stats;
pub use participant::Wiring;

/// Options of the saga participants and views.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: Cluster,
    /// Identity of this process among each group's instances (part of transactional ids).
    pub instance: String,
    /// Where the `sagas` and `saga_steps` views are written.
    pub views_dir: PathBuf,
    /// Partitions of every saga topic (inputs and changelogs must match).
    pub partitions: i32,
    /// Records per transaction at most.
    pub batch_size: usize,
    /// Deadline of each saga step and of each compensation round.
    pub step_timeout: Duration,
    /// How often changed views are flushed to Parquet.
    pub view_flush: Duration,
    /// Fault injection for tests: publish every output twice.
    pub duplicate_outputs: bool,
    /// How far behind the latest event time an order event may arrive and still count in
    /// its `orders_per_minute` window.
    pub window_lateness: Duration,
    /// Purchasing: lead time of a supplier at 100% (others take 150% and 250%).
    pub lead_time: Duration,
    /// Purchasing: units ordered on top of what brings a position back to its threshold.
    pub reorder_quantity: i64,
    /// Root of the local state directories (`<root>/<service>/<pipeline>/`, see
    /// [`crate::state`]); `None`: restores read whole changelogs.
    pub state_dir: Option<PathBuf>,
    /// How often changed state is snapshotted there.
    pub snapshot_every: Duration,
}

impl Options {
    pub fn new(cluster: Cluster, views_dir: PathBuf) -> Self {
        Options {
            cluster,
            instance: "0".to_owned(),
            views_dir,
            partitions: 3,
            batch_size: 500,
            step_timeout: Duration::from_secs(30),
            view_flush: Duration::from_millis(500),
            duplicate_outputs: false,
            window_lateness: Duration::from_secs(10),
            lead_time: Duration::from_secs(5),
            reorder_quantity: 100,
            state_dir: None,
            snapshot_every: Duration::from_secs(10),
        }
    }
}

/// The participants, by the name `supplystream run` knows them: the saga host's processors
/// in the service registry.
pub fn participants() -> Vec<&'static str> {
    crate::registry::processors(crate::registry::Host::Saga)
        .map(|p| p.name)
        .collect()
}

/// Topics of every service besides the inventory service's own (from the service registry).
pub fn topics(partitions: i32) -> Vec<TopicSpec> {
    crate::registry::topics(partitions)
        .into_iter()
        .filter(|t| crate::registry::owner_of(t.name) != Some("inventory"))
        .collect()
}

/// Consumer groups of the participants with their input topics (for lag), from the
/// service registry.
pub fn groups() -> Vec<(&'static str, &'static [&'static str])> {
    crate::registry::processors(crate::registry::Host::Saga)
        .map(|p| (p.name, p.reads))
        .collect()
}

type Handle = JoinHandle<anyhow::Result<()>>;

impl Options {
    /// How the view loop runs for the views of this host.
    pub fn view_settings(&self) -> crate::view::Settings {
        crate::view::Settings {
            cluster: self.cluster.clone(),
            instance: self.instance.clone(),
            views_dir: self.views_dir.clone(),
            flush: self.view_flush,
        }
    }
}

/// Runs a view of one topic on the view loop until `stop`. Blocking.
pub(crate) fn run_topic_view<V: crate::view::TopicView>(
    projection: V::Projection,
    opts: &Options,
    rt: &tokio::runtime::Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    let registry = schemas::Registry::new(&opts.cluster.registry);
    crate::view::run(
        crate::view::OneTopic::<V>::new(projection, registry),
        &opts.view_settings(),
        rt,
        stop,
    )
}

/// Participants (and views) running on threads of this process.
pub struct Running {
    stop: Stop,
    threads: Vec<(String, Handle)>,
}

fn spawn_one<W: Wiring>(
    w: W,
    opts: &Options,
    rt: &tokio::runtime::Handle,
    stop: &Stop,
) -> (String, Handle) {
    let (o, r, s) = (opts.clone(), rt.clone(), stop.clone());
    let name = W::NAME.to_owned();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || participant::run(w, &o, &r, &s).map(|_| ()))
        .expect("spawning a thread");
    (name, handle)
}

/// A view pipeline's loop (blocking, until the stop).
type ViewLoop = fn(&Options, &tokio::runtime::Handle, &Stop) -> anyhow::Result<()>;

/// The view pipelines that run beside the participants: each with the participant whose
/// service owns it (`None`: always), its pipeline name and its loop.
const VIEW_PIPELINES: &[(Option<&str>, &str, ViewLoop)] = &[
    (
        Some("catalog"),
        "products-view",
        topic_views::run::<topic_views::ProductsView>,
    ),
    (
        Some("suppliers"),
        "purchase-orders-view",
        topic_views::run::<topic_views::PurchaseOrdersView>,
    ),
    (
        Some("shipping"),
        "shipments-view",
        topic_views::run::<topic_views::ShipmentsView>,
    ),
    (
        Some("billing"),
        "ledger-view",
        topic_views::run::<topic_views::LedgerView>,
    ),
    (None, "orders-windows", topic_views::run_windows),
    (None, views::PIPELINE, views::run),
];

/// The view pipelines that run with the participants `names`.
pub fn view_pipelines<'a>(
    names: &'a [&'a str],
) -> impl Iterator<Item = &'static (Option<&'static str>, &'static str, ViewLoop)> + 'a {
    VIEW_PIPELINES
        .iter()
        .filter(move |(with, _, _)| with.is_none_or(|p| names.contains(&p)))
}

/// Starts the named participants (all of [`participants`] if `names` is empty) and, with
/// `views`, their view pipelines ([`view_pipelines`]).
pub fn spawn(
    opts: &Options,
    rt: &tokio::runtime::Handle,
    names: &[&str],
    views: bool,
) -> anyhow::Result<Running> {
    let stop = Stop::default();
    let mut threads = Vec::new();
    let names: Vec<&str> = if names.is_empty() {
        participants()
    } else {
        names.to_vec()
    };
    for &name in &names {
        threads.push(match name {
            "orders" => spawn_one(
                Orders {
                    step_timeout_ms: opts.step_timeout.as_millis() as i64,
                },
                opts,
                rt,
                &stop,
            ),
            "inventory-saga" => spawn_one(InventorySaga, opts, rt, &stop),
            "payments" => spawn_one(Payments, opts, rt, &stop),
            "shipping" => spawn_one(Shipping, opts, rt, &stop),
            "notifications" => spawn_one(Notifications, opts, rt, &stop),
            "billing" => spawn_one(Billing, opts, rt, &stop),
            "catalog" => spawn_one(processors::catalog::Catalog, opts, rt, &stop),
            "suppliers" => spawn_one(
                processors::suppliers::Suppliers {
                    lead_time_ms: opts.lead_time.as_millis() as i64,
                    reorder_quantity: opts.reorder_quantity,
                },
                opts,
                rt,
                &stop,
            ),
            "inventory-receiving" => {
                spawn_one(processors::inventory::receiving::Receiving, opts, rt, &stop)
            }
            other => anyhow::bail!(
                "unknown saga participant {other:?}; known: {:?}",
                participants()
            ),
        });
    }
    if views {
        for (_, name, run) in view_pipelines(&names) {
            let (o, r, s, run) = (opts.clone(), rt.clone(), stop.clone(), *run);
            let handle = std::thread::Builder::new()
                .name((*name).into())
                .spawn(move || run(&o, &r, &s))
                .expect("spawning a thread");
            threads.push(((*name).to_owned(), handle));
        }
    }
    Ok(Running { stop, threads })
}

impl Running {
    /// Whether any thread has ended (normally only after a stop, or on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().any(|(_, t)| t.is_finished())
    }

    /// Stops every loop after its current batch and waits; the first error wins.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.stop();
        let mut result = Ok(());
        for (name, t) in self.threads {
            let r = t
                .join()
                .map_err(|_| anyhow::anyhow!("{name} panicked"))
                .and_then(|r| r);
            if let (Err(e), true) = (r, result.is_ok()) {
                result = Err(e.context(format!("{name} failed")));
            }
        }
        result
    }
}

/// How far the saga's processors and views are behind the ends of their input topics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Uncommitted input records per consumer group (participants and the sku service).
    pub lag: std::collections::BTreeMap<&'static str, i64>,
    /// Offsets of the saga topics not yet in the views.
    pub view_lag: i64,
}

impl Progress {
    pub fn caught_up(&self) -> bool {
        self.view_lag == 0 && self.lag.values().all(|l| *l == 0)
    }
}

/// Measures [`Progress`] repeatedly with long-lived clients.
pub struct ProgressProbe {
    views_dir: PathBuf,
    watermarks: crate::kafka::Probe,
    groups: Vec<(
        &'static str,
        &'static [&'static str],
        rdkafka::consumer::BaseConsumer,
    )>,
}

impl ProgressProbe {
    pub fn new(opts: &Options) -> anyhow::Result<Self> {
        let mut groups = groups();
        groups.push((
            crate::topics::inventory::GROUP,
            &[crate::topics::inventory::COMMANDS],
        ));
        Ok(ProgressProbe {
            views_dir: opts.views_dir.clone(),
            watermarks: crate::kafka::Probe::new(&opts.cluster)?,
            groups: groups
                .into_iter()
                .map(|(g, t)| {
                    Ok((
                        g,
                        t,
                        crate::kafka::consumer_config(&opts.cluster, g).create()?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }

    pub fn progress(&self) -> anyhow::Result<Progress> {
        use rdkafka::consumer::Consumer;
        let mut ends = std::collections::BTreeMap::new();
        let mut end =
            |topic: &'static str| -> anyhow::Result<std::collections::BTreeMap<i32, i64>> {
                if let Some(e) = ends.get(topic) {
                    return Ok(std::collections::BTreeMap::clone(e));
                }
                let e = crate::kafka::high_watermarks(&self.watermarks, topic)?;
                ends.insert(topic, e.clone());
                Ok(e)
            };
        let mut progress = Progress::default();
        for (group, topics, consumer) in &self.groups {
            let mut tpl = rdkafka::TopicPartitionList::new();
            let mut wanted = Vec::new();
            for topic in topics.iter() {
                for (p, hw) in end(topic)? {
                    tpl.add_partition(topic, p);
                    wanted.push((*topic, p, hw));
                }
            }
            let committed = consumer.committed_offsets(tpl, crate::kafka::TX_TIMEOUT)?;
            let mut lag = 0;
            for (topic, p, hw) in wanted {
                let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => o,
                    _ => 0,
                };
                lag += (hw - at).max(0);
            }
            progress.lag.insert(group, lag);
        }
        // The saga views always; the others where they run.
        for (view, always) in [
            (sinks::sagas::SAGA_STEPS, true),
            (sinks::windows::ORDERS_PER_MINUTE, false),
            (sinks::ledger::VIEW, false),
            (sinks::products::VIEW, false),
            (sinks::purchasing::VIEW, false),
            (sinks::shipments::VIEW, false),
        ] {
            let positions = match crate::freshness::view_positions(&self.views_dir, view)? {
                Some(p) => p,
                None if always => Default::default(),
                None => continue,
            };
            for topic in crate::freshness::view_inputs(view).unwrap_or_default() {
                for (p, hw) in end(topic)? {
                    let at = positions
                        .get(topic)
                        .and_then(|c| c.get(&p))
                        .copied()
                        .unwrap_or(0);
                    progress.view_lag += (hw - at).max(0);
                }
            }
        }
        Ok(progress)
    }
}
