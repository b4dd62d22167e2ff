//! The inventory service: its topics, its command processor and its views.
//!
//! [`service::run`] consumes `inventory.commands`, folds each sku's aggregate (restored from
//! the co-partitioned `inventory.changelog` when a partition is assigned), produces
//! `inventory.events` and one snapshot per changed sku to the changelog, and commits the
//! input offsets with them — in one Kafka transaction with exactly-once, or flush-then-commit
//! with at-least-once. [`views::run_stock_levels`] materializes `stock_levels` from the events.

pub mod service;
pub mod views;

use std::path::PathBuf;
use std::time::Duration;

use crate::Cluster;
use crate::kafka::TopicSpec;
use crate::topics::inventory::*;

/// Options of the inventory service and its views.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: Cluster,
    /// Consumer group of the command processor.
    pub group: String,
    /// Identity of this process among the group's instances (part of the transactional id).
    pub instance: String,
    /// Where views are written (`stock_levels`: `<views_dir>/stock_levels/partition-<p>.parquet`).
    pub views_dir: PathBuf,
    /// Partitions of the inventory topics (commands and changelog must match).
    pub partitions: i32,
    /// Records per transaction at most.
    pub batch_size: usize,
    /// How often a changed view is flushed to Parquet.
    pub view_flush: Duration,
    /// A position whose available stock drops below this raises a `StockLow` alert on
    /// `inventory.alerts` (0: no alerts).
    pub low_stock_threshold: i64,
    /// Root of the local state directories (see [`crate::state`]); `None`: restores read
    /// the whole changelog.
    pub state_dir: Option<PathBuf>,
    /// How often changed state is snapshotted there.
    pub snapshot_every: Duration,
    /// Fault injection for tests: how long each transaction stays open before it commits.
    pub hold_transactions: Duration,
    /// Whether [`spawn`] runs the `stock_levels` view beside the service (off for extra
    /// instances scaled out for processing only).
    pub run_view: bool,
}

impl Options {
    /// Defaults for `cluster`, writing views under `views_dir`.
    pub fn new(cluster: Cluster, views_dir: PathBuf) -> Self {
        Options {
            cluster,
            group: GROUP.to_owned(),
            instance: "0".to_owned(),
            views_dir,
            partitions: 3,
            batch_size: 10_000,
            view_flush: Duration::from_millis(500),
            low_stock_threshold: 10,
            state_dir: None,
            snapshot_every: Duration::from_secs(10),
            hold_transactions: Duration::ZERO,
            run_view: true,
        }
    }
}

/// The topics the inventory service owns (from the service registry).
pub fn topics(partitions: i32) -> Vec<TopicSpec> {
    crate::registry::topics_of(&["inventory"], partitions)
}

/// The inventory service and its views running on threads of this process.
pub struct Running {
    stop: crate::Stop,
    service: std::thread::JoinHandle<anyhow::Result<crate::runtime::Stats>>,
    view: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// Starts the service and the `stock_levels` view on their own threads.
pub fn spawn(opts: &Options, rt: &tokio::runtime::Handle) -> Running {
    let stop = crate::Stop::default();
    let (o, r, s) = (opts.clone(), rt.clone(), stop.clone());
    let service = std::thread::Builder::new()
        .name("inventory".into())
        .spawn(move || service::run(&o, &r, &s))
        .expect("spawning a thread");
    let (o, r, s) = (opts.clone(), rt.clone(), stop.clone());
    let view = opts.run_view.then(|| {
        std::thread::Builder::new()
            .name("stock_levels".into())
            .spawn(move || views::run_stock_levels(&o, &r, &s))
            .expect("spawning a thread")
    });
    Running {
        stop,
        service,
        view,
    }
}

impl Running {
    /// Whether either loop has ended (normally only after a stop, or on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.service.is_finished() || self.view.as_ref().is_some_and(|v| v.is_finished())
    }

    /// Stops both loops after their current batch and waits for them.
    pub fn stop(self) -> anyhow::Result<crate::runtime::Stats> {
        self.stop.stop();
        let stats = self
            .service
            .join()
            .map_err(|_| anyhow::anyhow!("inventory service panicked"))??;
        if let Some(view) = self.view {
            view.join()
                .map_err(|_| anyhow::anyhow!("stock_levels view panicked"))??;
        }
        Ok(stats)
    }
}

/// Progress of the service and its view against the ends of their input topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Commands not yet committed by the service.
    pub command_lag: i64,
    /// Event offsets not yet in the stock_levels file (transaction markers included).
    pub view_lag: i64,
}

impl Progress {
    /// True when both are fully caught up.
    pub fn caught_up(&self) -> bool {
        self.command_lag == 0 && self.view_lag == 0
    }
}

/// Measures [`Progress`] repeatedly with long-lived clients (cheap enough to poll).
pub struct ProgressProbe {
    opts: Options,
    watermarks: crate::kafka::Probe,
    group: rdkafka::consumer::BaseConsumer,
}

impl ProgressProbe {
    /// Clients for `opts`' cluster and group.
    pub fn new(opts: &Options) -> anyhow::Result<Self> {
        Ok(ProgressProbe {
            opts: opts.clone(),
            watermarks: crate::kafka::Probe::new(&opts.cluster)?,
            group: crate::kafka::consumer_config(&opts.cluster, &opts.group).create()?,
        })
    }

    /// Progress now.
    pub fn progress(&self) -> anyhow::Result<Progress> {
        use rdkafka::consumer::Consumer;
        let lag = |ends: &std::collections::BTreeMap<i32, i64>,
                   at: &std::collections::BTreeMap<i32, i64>| {
            ends.iter()
                .map(|(p, end)| (end - at.get(p).copied().unwrap_or(0)).max(0))
                .sum::<i64>()
        };
        let commands = crate::kafka::high_watermarks(&self.watermarks, COMMANDS)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in commands.keys() {
            tpl.add_partition(COMMANDS, *p);
        }
        let committed: std::collections::BTreeMap<i32, i64> = self
            .group
            .committed_offsets(tpl, crate::kafka::TX_TIMEOUT)?
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        let events = crate::kafka::high_watermarks(&self.watermarks, EVENTS)?;
        let view = views::stock_levels_checkpoint(&self.opts.views_dir)?.unwrap_or_default();
        Ok(Progress {
            command_lag: lag(&commands, &committed),
            view_lag: lag(&events, &view),
        })
    }
}

/// Measures [`Progress`] once.
pub fn progress(opts: &Options) -> anyhow::Result<Progress> {
    ProgressProbe::new(opts)?.progress()
}

/// Waits until [`progress`] says caught up, or fails after `timeout` with the last progress.
pub fn wait_caught_up(opts: &Options, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let probe = ProgressProbe::new(opts)?;
    loop {
        // A broker just back from a pause answers metadata requests with errors for a while
        // (e.g. an unknown partition): retried until the deadline, which reports the last.
        match probe.progress() {
            Ok(p) if p.caught_up() => return Ok(()),
            Ok(p) if std::time::Instant::now() > deadline => {
                anyhow::bail!("not caught up after {timeout:?}: {p:?}")
            }
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e.context(format!("not caught up after {timeout:?}")));
            }
            Ok(_) | Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
