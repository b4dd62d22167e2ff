//! `supplystream run <service>` and `serve`: the long-running commands, and how they stop.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pipelines::inventory::{self, Options};
use pipelines::{Cluster, kafka, saga};

use super::args::{ClusterArgs, RunArgs, SagaArgs};

/// The requests to stop a long-running command: SIGINT (Ctrl-C) and SIGTERM (`kill`,
/// `docker stop`, systemd).
///
/// Installed once, first thing in `main`, and kept: tokio hands a signal only to the
/// listeners that exist when it arrives, and once a listener was installed the default
/// action no longer ends the process. A loop that made a new `ctrl_c()` future per turn lost
/// a SIGINT that landed between two turns; one installed after the start-up work lost a
/// SIGINT that came during it when SIGINT was inherited ignored (as by any command started
/// in the background by a non-interactive shell). Either way the process ran on as if never
/// asked to stop (members of the churn scenarios did).
///
/// The first request stops the command cleanly (it finishes the unit of work in flight); a
/// second one ends the process at once, also while the start-up work still blocks (a
/// broker that does not answer).
pub(crate) struct Shutdown {
    requested: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the listeners; call it inside the runtime.
    pub(crate) fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let (tx, requested) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut asked = 0;
            loop {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                asked += 1;
                if asked == 1 {
                    // Nobody waits yet while start-up runs: `wait` sees the value later.
                    tx.send_replace(true);
                } else {
                    eprintln!("Asked to stop again: exiting without finishing.");
                    std::process::exit(130);
                }
            }
        });
        Ok(Shutdown { requested })
    }

    /// Runs start-up work `work` unless a stop comes first: `Ok(false)` then, and the work
    /// is dropped. Before, a stop sent while topics were being created (an admin request
    /// can wait out its timeout on a cluster still electing leaders) was acted on only after.
    pub(crate) async fn unless_stopped(
        &mut self,
        work: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<bool> {
        tokio::select! {
            done = work => done.map(|()| true),
            _ = self.requested.wait_for(|asked| *asked) => {
                eprintln!("Stopped while starting.");
                Ok(false)
            }
        }
    }

    /// Returns when a stop is requested or `finished()` holds (checked twice a second).
    pub(crate) async fn wait(&mut self, finished: impl Fn() -> bool) {
        loop {
            tokio::select! {
                _ = self.requested.wait_for(|asked| *asked) => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => if finished() { return },
            }
        }
    }
}

pub(crate) async fn run(opts: Options, mut signals: Shutdown) -> anyhow::Result<()> {
    let specs = inventory::topics(opts.partitions);
    let topics = kafka::ensure_topics(&opts.cluster, &specs);
    if !signals.unless_stopped(topics).await? {
        return Ok(());
    }
    let running = inventory::spawn(&opts, &tokio::runtime::Handle::current());
    signals.wait(|| running.is_finished()).await;
    let stats = tokio::task::spawn_blocking(move || running.stop()).await??;
    eprintln!("Stopped: {stats:?}");
    Ok(())
}

pub(crate) async fn run_saga(
    opts: saga::Options,
    participants: Vec<String>,
    views: bool,
    mut signals: Shutdown,
) -> anyhow::Result<()> {
    let topics = async {
        kafka::ensure_topics(&opts.cluster, &inventory::topics(opts.partitions)).await?;
        kafka::ensure_topics(&opts.cluster, &saga::topics(opts.partitions)).await
    };
    if !signals.unless_stopped(topics).await? {
        return Ok(());
    }
    let names: Vec<&str> = participants.iter().map(String::as_str).collect();
    let running = saga::spawn(&opts, &tokio::runtime::Handle::current(), &names, views)?;
    signals.wait(|| running.is_finished()).await;
    tokio::task::spawn_blocking(move || running.stop()).await??;
    eprintln!("Stopped.");
    Ok(())
}

pub(crate) async fn run_compliance(
    cluster: Cluster,
    views: PathBuf,
    mut signals: Shutdown,
) -> anyhow::Result<()> {
    let topics = async {
        kafka::ensure_topics(&cluster, &inventory::topics(3)).await?;
        kafka::ensure_topics(&cluster, &saga::topics(3)).await
    };
    if !signals.unless_stopped(topics).await? {
        return Ok(());
    }
    let opts = pipelines::compliance::Options {
        cluster,
        views_dir: views,
        flush: Duration::from_millis(500),
    };
    let stop = pipelines::Stop::default();
    let handle = pipelines::compliance::spawn(&opts, &tokio::runtime::Handle::current(), &stop);
    signals.wait(|| handle.is_finished()).await;
    stop.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("compliance panicked"))??;
    eprintln!("Stopped.");
    Ok(())
}

/// `run inventory`: the options from the command line.
pub(crate) fn inventory_options(
    cluster: &ClusterArgs,
    run: &RunArgs,
    saga: &SagaArgs,
) -> anyhow::Result<Options> {
    let mut opts = Options::new(cluster.cluster(), run.views.clone());
    opts.state_dir = run.state_dir();
    opts.snapshot_every = Duration::from_millis(run.snapshot_every_ms);
    opts.hold_transactions = Duration::from_millis(run.chaos_hold_transactions_ms);
    opts.instance = run.instance()?;
    opts.partitions = run.partitions;
    opts.batch_size = run.batch_size;
    opts.low_stock_threshold = saga.low_stock_threshold;
    opts.run_view = !saga.no_views;
    Ok(opts)
}

/// `run saga`: the options from the command line.
pub(crate) fn saga_options(
    cluster: &ClusterArgs,
    run: &RunArgs,
    saga: &SagaArgs,
) -> anyhow::Result<saga::Options> {
    let mut opts = saga::Options::new(cluster.cluster(), run.views.clone());
    opts.state_dir = run.state_dir();
    opts.snapshot_every = Duration::from_millis(run.snapshot_every_ms);
    opts.hold_transactions = Duration::from_millis(run.chaos_hold_transactions_ms);
    opts.instance = run.instance()?;
    opts.partitions = run.partitions;
    opts.batch_size = run.batch_size;
    opts.step_timeout = Duration::from_millis(saga.step_timeout_ms);
    opts.duplicate_outputs = saga.chaos_duplicate_outputs;
    opts.saga_retention =
        (saga.saga_retention_ms > 0).then(|| Duration::from_millis(saga.saga_retention_ms));
    opts.window_lateness = Duration::from_millis(saga.window_lateness_ms);
    opts.lead_time = Duration::from_millis(saga.lead_time_ms);
    opts.reorder_quantity = saga.reorder_quantity;
    Ok(opts)
}

/// `serve`: the HTTP API until stopped.
pub(crate) async fn serve(
    cluster: Cluster,
    views: PathBuf,
    listen: &str,
    ownership: pipelines::ownership::OwnershipMap,
    mut signals: Shutdown,
) -> anyhow::Result<()> {
    kafka::ensure_topics(&cluster, &pipelines::registry::topics(3)).await?;
    let api = pipelines::http::Api::new(cluster, views, ownership).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!("Serving on http://{}", listener.local_addr()?);
    tokio::select! {
        r = pipelines::http::serve(api, listener) => r,
        () = signals.wait(|| false) => Ok(()),
    }
}
