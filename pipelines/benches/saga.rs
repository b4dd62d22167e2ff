//! Throughput of the order-fulfilment saga against a bare librdkafka consumer, on one real
//! broker, measured in the same run.
//!
//! `BENCH_ORDERS` simulated orders (default 20,000; 10% stock-outs, 10% declines, 5% shipment
//! failures, 5% cancellations) and their stock are written to `orders.commands` and
//! `inventory.commands` with every service stopped. Then:
//! - Saga: the inventory service and every participant (orders, inventory-saga, payments,
//!   shipping, notifications, billing, catalog) start in this process, with Kafka
//!   transactions, and run until every consumer group has caught up: every saga has ended
//!   and billed. Views are off (they are measured by the inventory bench).
//! - B0: a bare `BaseConsumer` reading every record of every topic the run wrote or read
//!   (read_committed), touching each payload: the ceiling for reading those records once.
//!
//! The ratio is B0's time over the saga's: how close the whole choreography comes to just
//! reading its own records once. Run with `scripts/bench.sh` (which also runs the inventory
//! bench).

mod common;

use std::time::{Duration, Instant};

use pipelines::saga::{self, simulate};
use pipelines::{inventory, kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let Some(cluster) = common::cluster("saga bench", "scripts/bench.sh")? else {
        return Ok(());
    };
    let orders = common::count("BENCH_ORDERS", 20_000);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(kafka::ensure_topics(&cluster, &inventory::topics(3)))?;
    rt.block_on(kafka::ensure_topics(&cluster, &saga::topics(3)))?;

    let spec = simulate::SimSpec {
        orders,
        skus: 200,
        seed: 77,
        run: 0,
        ..simulate::SimSpec::default()
    };
    let sim = simulate::generate(&spec);
    let fill = Instant::now();
    rt.block_on(simulate::produce(&cluster, &sim, None))?;
    eprintln!(
        "placed {orders} orders (and their stock) in {:.1?}",
        fill.elapsed()
    );

    // The saga, every service in this process, until every group has caught up.
    let views = tempfile::tempdir()?;
    let mut inv = inventory::Options::new(cluster.clone(), views.path().to_path_buf());
    inv.batch_size = 2_000;
    let mut opts = saga::Options::new(cluster.clone(), views.path().to_path_buf());
    opts.batch_size = 2_000;
    let probe = saga::ProgressProbe::new(&opts)?;
    let started = Instant::now();
    let stock = inventory::spawn(&inv, rt.handle());
    let running = saga::spawn(&opts, rt.handle(), &[], false)?;
    let deadline = started + Duration::from_secs(1_800);
    // Until every group has drained, and still has half a second later (a reply in flight
    // between two groups can make both read 0 for an instant): then every saga has ended.
    let elapsed = loop {
        std::thread::sleep(Duration::from_millis(50));
        let progress = probe.progress()?;
        if progress.lag.values().all(|l| *l == 0) {
            let at = started.elapsed();
            std::thread::sleep(Duration::from_millis(500));
            if probe.progress()?.lag.values().all(|l| *l == 0) {
                break at;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "not caught up: {progress:?}");
    };
    running.stop()?;
    stock.stop()?;

    // B0: every record of every topic the run used, read once.
    let topics = [
        "orders.commands",
        "orders.events",
        "inventory.commands",
        "inventory.events",
        "inventory.reservations",
        "inventory.replies",
        "payments.replies",
        "shipping.replies",
        "notifications.events",
        "billing.events",
        "orders.changelog",
        "inventory.changelog",
        "inventory.saga-changelog",
        "payments.changelog",
        "shipping.changelog",
        "notifications.changelog",
        "billing.changelog",
    ];
    let consumer: BaseConsumer = kafka::consumer_config(&cluster, "bench-saga-b0").create()?;
    let probe = kafka::Probe::new(&cluster)?;
    let mut tpl = TopicPartitionList::new();
    let mut records: i64 = 0;
    for topic in topics {
        for (p, end) in kafka::high_watermarks(&probe, topic)? {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            records += end;
        }
    }
    consumer.assign(&tpl)?;
    // Offsets include transaction markers: read until the positions reach the ends.
    let ends: Vec<(String, i32, i64)> = tpl
        .elements()
        .iter()
        .map(|e| {
            let end = kafka::watermarks(&probe, e.topic(), e.partition())
                .map(|w| w.1)
                .unwrap_or(0);
            (e.topic().to_owned(), e.partition(), end)
        })
        .collect();
    let (mut read, mut bytes) = (0i64, 0usize);
    let b0_started = Instant::now();
    loop {
        for m in kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))? {
            bytes += m.payload().map_or(0, <[u8]>::len);
            read += 1;
        }
        let positions = consumer.position()?;
        let done = ends.iter().all(|(t, p, end)| {
            matches!(
                positions.find_partition(t, *p).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o >= *end
            ) || *end == 0
        });
        if done {
            break;
        }
    }
    let b0 = b0_started.elapsed();
    std::hint::black_box(bytes);

    println!();
    println!(
        "| measure ({orders} orders, {read} records in {} topics, real Kafka) | time | per second | ratio B0 / saga |",
        topics.len()
    );
    println!("|---|---|---|---|");
    println!(
        "| B0 bare BaseConsumer over every record of the run | {:.2} s | {:.0} records | 1.000 |",
        b0.as_secs_f64(),
        read as f64 / b0.as_secs_f64()
    );
    println!(
        "| saga end to end (7 services + inventory, transactions) | {:.2} s | {:.0} orders | {:.3} |",
        elapsed.as_secs_f64(),
        orders as f64 / elapsed.as_secs_f64(),
        b0.as_secs_f64() / elapsed.as_secs_f64()
    );
    eprintln!("(topic offsets incl. transaction markers: {records})");
    Ok(())
}
