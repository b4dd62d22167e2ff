//! `supplystream demo`: the zero-install tour on the embedded broker.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use pipelines::embedded::Embedded;
use pipelines::inventory::{self, Options};
use pipelines::load::{self, LoadSpec};
use pipelines::saga;
use sinks::{OutputFormat, QueryEngine};

pub(crate) async fn demo(
    commands: usize,
    seed: u64,
    views: PathBuf,
    orders: usize,
) -> anyhow::Result<()> {
    // Local state beside the views (data/demo/state): a new embedded cluster each run.
    let state = views.with_file_name("state");
    for dir in [&views, &state] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let embedded = Embedded::start().await?;
    let cluster = embedded.cluster();
    eprintln!(
        "Embedded broker at {}, schema registry at {}.",
        cluster.brokers, cluster.registry
    );
    let opts = Options {
        state_dir: Some(state.clone()),
        ..Options::new(cluster.clone(), views.clone())
    };
    embedded.create_topics(&inventory::topics(opts.partitions))?;
    let running = inventory::spawn(&opts, &tokio::runtime::Handle::current());
    let started = Instant::now();
    let spec = LoadSpec {
        commands,
        seed,
        ..LoadSpec::default()
    };
    load::produce_commands(&cluster, &load::generate(&spec)).await?;
    let wait = opts.clone();
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&wait, Duration::from_secs(120)))
        .await??;
    eprintln!(
        "Processed {commands} commands in {:.1?}.",
        started.elapsed()
    );
    let engine = QueryEngine::open(&views).await?;
    let top = "SELECT sku, warehouse, on_hand, reserved, available FROM stock_levels \
               ORDER BY available DESC, sku, warehouse LIMIT 10";
    println!("stock_levels (top 10 by available):");
    println!("{}", OutputFormat::Table.render(&engine.sql(top).await?)?);
    let totals = "SELECT count(DISTINCT sku) AS skus, count(*) AS positions, sum(on_hand) AS on_hand, \
                  sum(reserved) AS reserved, sum(available) AS available FROM stock_levels";
    println!(
        "{}",
        OutputFormat::Table.render(&engine.sql(totals).await?)?
    );
    // The inventory service keeps running: the saga's reservations go through it (and the
    // mock broker stalls a group that is left and re-joined quickly).
    if orders > 0 {
        demo_saga(&embedded, &views, &state, orders).await?;
    }
    let stats = running.stop()?;
    eprintln!(
        "Inventory service: {} commands, {} events, {} dead-lettered.",
        stats.records, stats.emitted, stats.dead_letters
    );
    println!(
        "Query it yourself: supplystream query --views {} \"SELECT * FROM stock_levels LIMIT 5\"",
        views.display()
    );
    Ok(())
}

/// The order-fulfilment saga on the embedded broker: simulated orders with failures.
pub(crate) async fn demo_saga(
    embedded: &Embedded,
    views: &std::path::Path,
    state: &std::path::Path,
    orders: usize,
) -> anyhow::Result<()> {
    let cluster = embedded.cluster();
    embedded.create_topics(&saga::topics(3))?;
    let opts = saga::Options {
        // Purchase orders arrive within the demo.
        lead_time: Duration::from_secs(1),
        state_dir: Some(state.to_path_buf()),
        ..saga::Options::new(cluster.clone(), views.to_path_buf())
    };
    let running = saga::spawn(&opts, &tokio::runtime::Handle::current(), &[], true)?;
    let audit_stop = pipelines::Stop::default();
    let audit = pipelines::compliance::spawn(
        &pipelines::compliance::Options {
            cluster: cluster.clone(),
            views_dir: views.to_path_buf(),
            flush: Duration::from_millis(500),
        },
        &tokio::runtime::Handle::current(),
        &audit_stop,
    );
    let started = Instant::now();
    let spec = saga::simulate::SimSpec {
        orders,
        // Little stock, so orders drain positions and purchasing restocks them.
        stock_per_position: 25,
        ..saga::simulate::SimSpec::default()
    };
    saga::simulate::produce(&cluster, &saga::simulate::generate(&spec), None).await?;
    let views_dir = views.to_path_buf();
    let probe = saga::ProgressProbe::new(&opts)?;
    let (c, rt) = (cluster.clone(), tokio::runtime::Handle::current());
    let ended = tokio::task::spawn_blocking(move || {
        wait_sagas_ended(&views_dir, orders, Duration::from_secs(120))?;
        // Then the carriers report on the shipments (external events).
        let scanned = rt.block_on(saga::simulate::carriers(&c))?;
        eprintln!("Carriers reported on {scanned} shipments.");
        wait_no_open_purchase_orders(&views_dir, Duration::from_secs(60))?;
        // Billing and the ledger follow the sagas' outcomes: let them catch up too.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !probe.progress()?.caught_up() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the services did not catch up in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
    .await?;
    running.stop()?;
    audit_stop.stop();
    audit
        .join()
        .map_err(|_| anyhow::anyhow!("compliance panicked"))??;
    ended?;
    eprintln!("Ran {orders} order sagas in {:.1?}.", started.elapsed());
    let verified = sinks::audit::verify(views)?;
    println!(
        "audit_trail: {} events of {} partitions, hash chains verified (supplystream audit verify --views {}).",
        verified.records,
        verified.partitions,
        views.display()
    );
    let engine = QueryEngine::open(views).await?;
    let table = |title: &'static str, sql: &'static str| {
        let engine = &engine;
        async move {
            println!("{title}:");
            println!("{}", OutputFormat::Table.render(&engine.sql(sql).await?)?);
            anyhow::Ok(())
        }
    };
    table(
        "sagas by outcome",
        "SELECT status, count(*) AS sagas, sum(compensations) AS compensations, \
         min(outcome) AS example_outcome FROM sagas GROUP BY status ORDER BY status",
    )
    .await?;
    println!(
        "Explain one: supplystream saga show --views {} O-11-000003",
        views.display()
    );
    table(
        "purchasing (low-stock alerts → purchase orders → receipts booked into inventory)",
        "SELECT supplier_id, purchase_orders, received, units_ordered, mean_lead_time_ms \
         FROM supplier_performance ORDER BY supplier_id",
    )
    .await?;
    table(
        "carriers (their scans on shipping.tracking, external events)",
        "SELECT carrier, shipments, delivered, failed_attempts, mean_transit_ms \
         FROM carrier_performance ORDER BY carrier",
    )
    .await?;
    table(
        "billing ledger (double entry: debits = credits; revenue = captured − refunded)",
        "SELECT account, sum(debit_cents) AS debit_cents, sum(credit_cents) AS credit_cents, \
         sum(credit_cents) - sum(debit_cents) AS balance_cents FROM ledger \
         GROUP BY account ORDER BY account",
    )
    .await
}

/// The single count a SQL text over `views` answers (`None`: no answer yet, e.g. the view
/// is not written yet).
fn count(
    rt: &tokio::runtime::Runtime,
    views: &std::path::Path,
    sql: &str,
) -> anyhow::Result<Option<usize>> {
    let engine = rt.block_on(QueryEngine::open(views))?;
    Ok(rt
        .block_on(engine.sql(sql))
        .ok()
        .and_then(|b| OutputFormat::Csv.render(&b).ok())
        .and_then(|csv| csv.lines().nth(1)?.trim().parse().ok()))
}

/// Waits until every purchase order placed has been received (none placed: at once).
fn wait_no_open_purchase_orders(views: &std::path::Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    loop {
        let sql = "SELECT count(*) FROM purchase_orders WHERE received_at IS NULL";
        let open = count(&rt, views, sql)?;
        if open == Some(0) || (open.is_none() && !views.join(sinks::purchasing::VIEW).exists()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{open:?} purchase orders still open after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the sagas view holds `n` sagas, all ended.
fn wait_sagas_ended(views: &std::path::Path, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    loop {
        let sql = "SELECT count(*) FILTER (WHERE status IN ('Confirmed', 'Cancelled')) AS ended FROM sagas";
        let ended = count(&rt, views, sql)?.unwrap_or(0);
        if ended >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{ended} of {n} sagas ended after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
