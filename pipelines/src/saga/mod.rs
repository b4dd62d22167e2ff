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

use crate::kafka::TopicSpec;
use crate::{Cluster, Stop};

pub use crate::runtime::Stats;
pub use participant::Wiring;

/// How long an ended saga is kept by default: a day, well past any saga's steps and
/// compensations, and Kafka's default `delete.retention.ms`.
pub const DEFAULT_SAGA_RETENTION: Duration = Duration::from_secs(24 * 3600);

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
    /// Fault injection for tests: how long each transaction stays open before it commits.
    pub hold_transactions: Duration,
    /// How long a participant keeps an ended saga after its last change before it forgets
    /// it (see [`participant::Sagas`]); `None`: forever.
    pub saga_retention: Option<Duration>,
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
            hold_transactions: Duration::ZERO,
            saga_retention: Some(DEFAULT_SAGA_RETENTION),
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
/// `projection` makes an empty projection (once per partition taken of a view kept per
/// partition).
pub(crate) fn run_topic_view<V: crate::view::TopicView>(
    mut projection: impl FnMut() -> V::Projection,
    opts: &Options,
    rt: &tokio::runtime::Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    let registry = schemas::Registry::new(&opts.cluster.registry);
    crate::view::run(
        || crate::view::OneTopic::<V>::new(projection(), registry.clone()),
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

/// Runs participant `W`, as `opts` configure it, until `stop`. Blocking: the loop the service
/// registry starts it with.
pub fn run_participant<W: Wiring>(
    opts: &Options,
    rt: &tokio::runtime::Handle,
    stop: &Stop,
) -> anyhow::Result<()> {
    participant::run(W::new(opts), opts, rt, stop).map(|_| ())
}

/// The view pipelines that run with the participants `names`: each saga-host view of a
/// service one of them belongs to (the saga views with orders). Before, the saga views ran
/// in every saga process with views: two processes sharing the services wrote them twice.
pub fn view_pipelines<'a>(
    names: &'a [&'a str],
) -> impl Iterator<Item = (&'static str, crate::registry::Start)> + 'a {
    use crate::registry::{Host, pipelines, service_of};
    pipelines().filter_map(move |(service, p)| {
        let start = p
            .start
            .filter(|_| p.host == Host::Saga && !p.is_processor())?;
        let beside = names.iter().any(|n| service_of(n) == service.name);
        beside.then_some((p.name, start))
    })
}

/// Starts the named participants (all of [`participants`] if `names` is empty) and, with
/// `views`, their view pipelines ([`view_pipelines`]), each as the service registry says.
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
    let mut loops = Vec::new();
    for &name in &names {
        let start = crate::registry::processors(crate::registry::Host::Saga)
            .find(|p| p.name == name)
            .and_then(|p| p.start)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown saga participant {name:?}; known: {:?}",
                    participants()
                )
            })?;
        loops.push((crate::registry::pipeline(name).expect("found").name, start));
    }
    if views {
        loops.extend(view_pipelines(&names));
    }
    for (name, start) in loops {
        let (o, r, s, run) = (opts.clone(), rt.clone(), stop.clone(), start.run);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&o, &r, &s))
            .expect("spawning a thread");
        threads.push((name.to_owned(), handle));
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
        // saga_steps always (a probe waits for it to be written); the others where they run.
        for view in crate::registry::pipelines()
            .map(|(_, p)| p)
            .filter(|p| p.host == crate::registry::Host::Saga && !p.is_processor())
            .flat_map(|p| p.views.iter().copied())
        {
            let always = view == sinks::sagas::SAGA_STEPS;
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
