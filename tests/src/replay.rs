//! Replay: after ≥100,000 events, the `stock_levels` view is deleted and rebuilt from the
//! earliest offset — identical to the one the live view built; rebuilt up to a mid-stream
//! time, it equals a fold of exactly the events recorded before that time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use pipelines::inventory::{self, Options};
use pipelines::load::{self, LoadSpec};
use pipelines::replay::{self, Position};
use pipelines::{Cluster, topics};
use processors::inventory::StockLevelsProjection;
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::inventory::InventoryEvent;
use sinks::SnapshotTable;
use sinks::stock_levels::{self, StockLevel};

use crate::scenario::Runner;
use crate::topic;

fn rows(views: &Path) -> anyhow::Result<Vec<StockLevel>> {
    // Kept per partition: the union of its files.
    let batches = sinks::table::load_all(views, stock_levels::VIEW)?
        .ok_or_else(|| anyhow::anyhow!("no stock_levels under {}", views.display()))?;
    let mut rows = stock_levels::from_batches(&batches)?;
    rows.sort_by(|a, b| (&a.sku, &a.warehouse).cmp(&(&b.sku, &b.warehouse)));
    Ok(rows)
}

/// Runs ≥`commands` through the inventory service (`runner`), then checks both replays.
pub async fn replay_rebuilds_the_view(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    commands: usize,
    as_of: bool,
) -> anyhow::Result<()> {
    let spec = LoadSpec {
        commands,
        skus: 500,
        warehouses: 4,
        seed: 99,
        first_sku: 0,
    };
    runner.start()?;
    let started = Instant::now();
    load::produce_commands(cluster, &load::generate(&spec)).await?;
    let opts = Options::new(cluster.clone(), views.to_path_buf());
    let o = opts.clone();
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&o, Duration::from_secs(600)))
        .await??;
    runner.stop()?;
    eprintln!("{:>6.1?} {commands} commands processed", started.elapsed());
    let live = rows(views)?;

    // Every event of the topic, in partition order, for the as-of expectation.
    let records = topic::read_all(cluster, topics::inventory::EVENTS)?;
    ensure!(records.len() >= commands, "only {} events", records.len());

    // The state store (restored from the changelog, as a restart does) equals the fold of the
    // event log alone.
    let rt = tokio::runtime::Handle::current();
    let (o, c) = (opts.clone(), cluster.clone());
    let (restored, (folded, events)) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            inventory::service::restore_store(&o, &rt)?.0,
            replay::inventory_from_events(&c, &rt)?,
        ))
    })
    .await??;
    ensure!(
        events as usize == records.len(),
        "folded {events} of {} events",
        records.len()
    );
    ensure!(
        restored.len() == folded.len(),
        "{} skus in the changelog, {} in the event log",
        restored.len(),
        folded.len()
    );
    for (sku, aggregate) in &folded {
        ensure!(
            restored.get(sku) == Some(aggregate),
            "{sku}: the changelog says {:?}, the events say {aggregate:?}",
            restored.get(sku)
        );
    }
    eprintln!(
        "{} sku aggregates: changelog = fold of {events} events",
        folded.len()
    );
    if as_of {
        // (Real Kafka.) Lose the store: delete inventory.changelog and rebuild it from the
        // event log alone; a restart restores exactly the same aggregates.
        let rt = tokio::runtime::Handle::current();
        let (o, c) = (opts.clone(), cluster.clone());
        let rebuilt = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            // A killed instance stays a group member until its session expires (6 s).
            let deadline = Instant::now() + Duration::from_secs(60);
            while let Err(e) = pipelines::kafka::ensure_group_stopped(&c, topics::inventory::GROUP)
            {
                ensure!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            kafka_delete(&c, &rt, topics::inventory::CHANGELOG)?;
            let r = replay::replay_store(&c, &rt, "inventory", false, false, None)?;
            ensure!(r.written > 0, "nothing written");
            Ok(inventory::service::restore_store(&o, &rt)?.0)
        })
        .await??;
        ensure!(
            rebuilt == restored,
            "the rebuilt inventory store differs from the original ({} vs {} skus)",
            rebuilt.len(),
            restored.len()
        );
        eprintln!(
            "inventory.changelog deleted and rebuilt from the event log: {} aggregates identical",
            rebuilt.len()
        );
    }

    // Delete the view; rebuild it from the earliest offset.
    std::fs::remove_dir_all(views.join(stock_levels::VIEW))?;
    let rt = tokio::runtime::Handle::current();
    let (c, v) = (cluster.clone(), views.to_path_buf());
    let replay_started = Instant::now();
    let replayed = tokio::task::spawn_blocking(move || {
        replay::replay_view(
            &c,
            &rt,
            &v,
            stock_levels::VIEW,
            Position::Earliest,
            Position::Latest,
            None,
            false,
        )
    })
    .await??;
    let took = replay_started.elapsed();
    ensure!(
        replayed.events as usize == records.len(),
        "replayed {} of {} events",
        replayed.events,
        records.len()
    );
    let rebuilt = rows(views)?;
    ensure!(
        rebuilt == live,
        "the rebuilt stock_levels differs from the live one ({} vs {} rows)",
        rebuilt.len(),
        live.len()
    );
    eprintln!(
        "rebuilt stock_levels from {} events in {took:.1?}: identical ({} rows)",
        replayed.events,
        live.len()
    );

    if !as_of {
        return Ok(());
    }
    // As of the time of the middle event: the events recorded before it, per partition.
    let middle = records[records.len() / 2].timestamp;
    let mut decoder = Decoder::<InventoryEvent>::new(Registry::new(&cluster.registry));
    let mut expected = StockLevelsProjection::default();
    let mut cut: BTreeMap<i32, bool> = BTreeMap::new();
    let mut before = 0;
    for r in &records {
        let stopped = cut.entry(r.partition).or_default();
        if *stopped || r.timestamp >= middle {
            *stopped = true;
            continue;
        }
        expected.apply(&decoder.decode_learning(&r.payload).await?);
        before += 1;
    }
    let as_of = tempfile::tempdir()?;
    let rt = tokio::runtime::Handle::current();
    let (c, v, out) = (
        cluster.clone(),
        views.to_path_buf(),
        as_of.path().to_path_buf(),
    );
    let replayed = tokio::task::spawn_blocking(move || {
        replay::replay_view(
            &c,
            &rt,
            &v,
            stock_levels::VIEW,
            Position::Earliest,
            Position::Time(middle),
            Some(&out),
            false,
        )
    })
    .await??;
    ensure!(
        replayed.events == before,
        "as-of replay folded {} events, {before} precede the time",
        replayed.events
    );
    let table = SnapshotTable::open(as_of.path(), "expected")?;
    inventory::views::flush_stock_levels(&table, &expected, "{}")?;
    let mut want = stock_levels::from_batches(&table.load()?.expect("written").0)?;
    want.sort_by(|a, b| (&a.sku, &a.warehouse).cmp(&(&b.sku, &b.warehouse)));
    let got = rows(as_of.path())?;
    ensure!(
        got == want,
        "stock_levels as of {middle} differs from the fold of the {before} events before it"
    );
    ensure!(
        got != live,
        "the as-of view equals the final one: the time was not mid-stream"
    );
    eprintln!("stock_levels as of {middle} ms = the fold of the {before} events before it");
    Ok(())
}

fn kafka_delete(cluster: &Cluster, rt: &tokio::runtime::Handle, topic: &str) -> anyhow::Result<()> {
    rt.block_on(pipelines::kafka::delete_topics(cluster, &[topic]))
}
