//! Throughput of the inventory pipeline against a bare librdkafka consumer, on one real
//! broker and one pre-filled topic, measured in the same run.
//!
//! - B0: a `BaseConsumer` loop over `inventory.commands` (read_committed), touching each
//!   payload: the ceiling of any consumer on this machine.
//! - B1: B0 plus Avro decoding of every command (Confluent framing, cached reader, serde path).
//! - Pipeline: the inventory service end to end (decode, fold, encode, produce events and
//!   changelog snapshots, commit in Kafka transactions) plus the `stock_levels` view until
//!   both have caught up with the topic.
//! - The Kafka Streams peer (`bench/kafka-streams`): the same fold on the same topic as a
//!   Kafka Streams program (exactly_once_v2, RocksDB stores with changelogs), with 1 and 3
//!   stream threads, right after the pipeline.
//!
//! Run with `scripts/bench.sh` (starts Kafka + Apicurio, runs this, stops them). Needs
//! `SUPPLYSTREAM_BROKERS` and `SUPPLYSTREAM_REGISTRY`; `BENCH_COMMANDS` (default 1,000,000).

mod common;

use std::time::{Duration, Instant};

use pipelines::Cluster;
use pipelines::inventory::{self, Options, ProgressProbe};
use pipelines::kafka;
use pipelines::load::{self, LoadSpec};
use pipelines::topics::inventory::COMMANDS;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::codec::Decoder;
use schemas::inventory::InventoryCommand;

fn consume_all(
    cluster: &Cluster,
    total: i64,
    rt: &tokio::runtime::Runtime,
    decode: bool,
) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer =
        kafka::consumer_config(cluster, &format!("bench-b-{decode}")).create()?;
    let partitions = kafka::partition_count(&consumer, COMMANDS)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(COMMANDS, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut decoder = Decoder::<InventoryCommand>::new(Registry::new(&cluster.registry));
    let (mut seen, mut bytes, mut quantity) = (0i64, 0usize, 0i64);
    let started = Instant::now();
    while seen < total {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            let payload = m.payload().unwrap_or_default();
            bytes += payload.len();
            if decode {
                let command = match decoder.decode(payload) {
                    Err(schemas::DecodeError::NotCached(_)) => {
                        rt.block_on(decoder.decode_learning(payload))?
                    }
                    other => other?,
                };
                quantity += command.metadata().occurred_at & 1;
            }
            seen += 1;
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box((bytes, quantity));
    if decode && !decoder.resolving_ids().is_empty() {
        eprintln!(
            "schema ids read by resolution: {:?}",
            decoder.resolving_ids()
        );
    }
    Ok(elapsed)
}

/// In-memory decode of `n` generated commands: our decoder (serde path) and apache-avro's
/// `Value` path (decode to `Value`, then `from_value`), both with schemas parsed once.
fn decode_in_memory(
    n: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(Duration, Duration)> {
    use schemas::record::RecordUnion;
    let server = rt.block_on(schemas::registry::embedded::EmbeddedRegistry::start())?;
    let registry = Registry::new(server.url());
    let encoder = rt.block_on(schemas::Encoder::<InventoryCommand>::register(
        &registry, COMMANDS,
    ))?;
    let commands = load::generate(&LoadSpec {
        commands: n,
        skus: 1_000,
        warehouses: 4,
        seed: 3,
        first_sku: 0,
    });
    let payloads: Vec<Vec<u8>> = commands
        .iter()
        .map(|c| encoder.encode(c))
        .collect::<Result<_, _>>()?;
    let mut decoder = Decoder::<InventoryCommand>::new(registry);
    for p in &payloads {
        rt.block_on(decoder.decode_learning(p))?;
    }
    let started = Instant::now();
    for p in &payloads {
        std::hint::black_box(decoder.decode(p)?);
    }
    let serde_path = started.elapsed();
    let readers: Vec<_> = InventoryCommand::schemas()
        .iter()
        .map(|s| apache_avro::reader::datum::GenericDatumReader::builder(s).build())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for (p, c) in payloads.iter().zip(&commands) {
        let i = c.variant();
        let value = readers[i].read_value(&mut &p[5..])?;
        std::hint::black_box(InventoryCommand::from_resolved(i, value)?);
    }
    Ok((serde_path, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let Some(cluster) = common::cluster("inventory bench", "scripts/bench.sh")? else {
        return Ok(());
    };
    let rt0 = tokio::runtime::Runtime::new()?;
    let (serde_path, value_path) = decode_in_memory(200_000, &rt0)?;
    println!(
        "in-memory decode of 200,000 commands: serde path {:.0} ns/record, Value path {:.0} ns/record ({:.2}x)",
        serde_path.as_nanos() as f64 / 2e5,
        value_path.as_nanos() as f64 / 2e5,
        value_path.as_secs_f64() / serde_path.as_secs_f64()
    );
    drop(rt0);
    let n = common::count("BENCH_COMMANDS", 1_000_000);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(kafka::ensure_topics(&cluster, &inventory::topics(3)))?;

    let probe = kafka::Probe::new(&cluster)?;
    let mut total: i64 = kafka::high_watermarks(&probe, COMMANDS)?.values().sum();
    if total < n as i64 {
        let fill = Instant::now();
        let chunk = 100_000;
        for (i, start) in (total as usize..n).step_by(chunk).enumerate() {
            let spec = LoadSpec {
                commands: chunk.min(n - start),
                skus: 1_000,
                warehouses: 4,
                seed: 1_000 + i as u64,
                first_sku: 0,
            };
            rt.block_on(load::produce_commands(&cluster, &load::generate(&spec)))?;
        }
        total = kafka::high_watermarks(&probe, COMMANDS)?.values().sum();
        eprintln!(
            "filled {COMMANDS} to {total} commands in {:.1?}",
            fill.elapsed()
        );
    }

    // B0 varies from run to run (page cache, broker warm-up): the median of three.
    let mut b0s = [0; 3].map(|_| {
        let cpu = common::cpu_time();
        consume_all(&cluster, total, &rt, false).map(|d| (d, common::cpu_time() - cpu))
    });
    b0s.sort_by_key(|r| r.as_ref().map(|d| d.0).unwrap_or(Duration::MAX));
    let (b0, b0_cpu) = std::mem::replace(&mut b0s[1], Ok(Default::default()))?;
    let cpu = common::cpu_time();
    let b1 = consume_all(&cluster, total, &rt, true)?;
    let b1_cpu = common::cpu_time() - cpu;

    let views = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let mut opts = Options::new(cluster.clone(), views.path().to_path_buf());
    opts.group = format!("bench-inventory-{}", std::process::id());
    // BENCH_BATCH_SIZE: commands per transaction (the service's `--batch-size`).
    opts.batch_size = common::count("BENCH_BATCH_SIZE", opts.batch_size);
    println!("batch size: {} commands per transaction", opts.batch_size);
    // Local snapshots as `run` keeps them (the default 10 s), written once more on stop;
    // BENCH_NO_STATE_DIR=1 runs the pipeline without (what local state costs).
    let with_state = std::env::var("BENCH_NO_STATE_DIR").is_err();
    opts.state_dir = with_state.then(|| state.path().to_path_buf());
    println!(
        "local state directory: {}",
        if with_state { "on" } else { "off" }
    );
    let progress = ProgressProbe::new(&opts)?;
    let cpu = common::cpu_time();
    let started = Instant::now();
    let running = inventory::spawn(&opts, rt.handle());
    loop {
        let p = progress.progress()?;
        if p.caught_up() {
            break;
        }
        anyhow::ensure!(!running.is_finished(), "the pipeline stopped early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pipeline = started.elapsed();
    let pipeline_cpu = common::cpu_time() - cpu;
    let stats = running.stop()?;

    // The Kafka Streams peer on the same topic, right after: 1 and 3 stream threads.
    let mut peers = Vec::new();
    for threads in [1, 3] {
        if let Some(peer) = common::kafka_streams_peer(&cluster, COMMANDS, threads)? {
            anyhow::ensure!(
                peer.records == total as u64,
                "the peer read {} of {total} commands",
                peer.records
            );
            peers.push(peer);
        }
    }

    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    let per_cpu = |cpu: Duration| total as f64 / cpu.as_secs_f64().max(1e-3);
    println!(
        "| measure ({total} commands, 3 partitions, real Kafka) | time | records/s | ratio to B0 | commands per CPU-second |"
    );
    println!("|---|---|---|---|---|");
    let mut rows = vec![
        ("B0 bare BaseConsumer".to_owned(), b0, b0_cpu),
        ("B1 consume + Avro decode".to_owned(), b1, b1_cpu),
        (
            "inventory pipeline end to end".to_owned(),
            pipeline,
            pipeline_cpu,
        ),
    ];
    for peer in &peers {
        rows.push((
            format!(
                "Kafka Streams peer, {} stream thread{}",
                peer.threads,
                if peer.threads == 1 { "" } else { "s" }
            ),
            peer.elapsed,
            peer.cpu,
        ));
    }
    for (name, d, cpu) in &rows {
        println!(
            "| {name} | {:.2} s | {:.0} | {:.3} | {:.0} |",
            d.as_secs_f64(),
            rate(*d),
            b0.as_secs_f64() / d.as_secs_f64(),
            per_cpu(*cpu)
        );
    }
    if let Some(best) = peers.iter().min_by_key(|p| p.elapsed) {
        println!(
            "pipeline / best Kafka Streams peer ({} thread{}): {:.2}x its speed (goal: 2x)",
            best.threads,
            if best.threads == 1 { "" } else { "s" },
            best.elapsed.as_secs_f64() / pipeline.as_secs_f64()
        );
    }
    // State: restore every partition from the changelog (what a restart does) against
    // rebuilding every aggregate from the event log alone (a full replay).
    let restore_started = Instant::now();
    let without_state = Options {
        state_dir: None,
        ..opts.clone()
    };
    let (restored, _) = inventory::service::restore_store(&without_state, rt.handle())?;
    let restore = restore_started.elapsed();
    // The same from the local snapshots the stopped pipeline left (and the changelog's tail:
    // empty after a clean stop).
    let local_started = Instant::now();
    let local_opts = Options {
        state_dir: Some(state.path().to_path_buf()),
        ..opts.clone()
    };
    let (from_local, read) = inventory::service::restore_store(&local_opts, rt.handle())?;
    let local = local_started.elapsed();
    anyhow::ensure!(
        from_local == restored && (read.from_snapshot > 0 || !with_state),
        "the restore from local snapshots differs from the changelog's ({} records from snapshots)",
        read.from_snapshot
    );
    let replay_started = Instant::now();
    let (folded, events) = pipelines::replay::inventory_from_events(&cluster, rt.handle())?;
    let replay = replay_started.elapsed();
    anyhow::ensure!(
        restored.len() == folded.len(),
        "restore and replay disagree"
    );
    let view_started = Instant::now();
    let view = pipelines::replay::replay_view(
        &cluster,
        rt.handle(),
        views.path(),
        sinks::stock_levels::VIEW,
        pipelines::replay::Position::Earliest,
        pipelines::replay::Position::Latest,
        None,
        false,
    )?;
    let view_replay = view_started.elapsed();
    println!();
    println!(
        "| state of {} skus | time | ratio to restore from changelog |",
        restored.len()
    );
    println!("|---|---|---|");
    println!(
        "| restore from inventory.changelog (a restart without local state) | {:.2} s | 1 |",
        restore.as_secs_f64()
    );
    println!(
        "| restore from local snapshots ({} records) + changelog tail ({} records) | {:.2} s | {:.2} |",
        read.from_snapshot,
        read.from_topic,
        local.as_secs_f64(),
        local.as_secs_f64() / restore.as_secs_f64()
    );
    println!(
        "| rebuild from inventory.events ({events} events, full replay) | {:.2} s | {:.1} |",
        replay.as_secs_f64(),
        replay.as_secs_f64() / restore.as_secs_f64()
    );
    println!(
        "| replay stock_levels view from earliest ({} events) | {:.2} s | {:.1} |",
        view.events,
        view_replay.as_secs_f64(),
        view_replay.as_secs_f64() / restore.as_secs_f64()
    );
    println!(
        "pipeline: {} events, {} transactions, {} dead letters; service time in poll {:.1?}, \
         processing {:.1?}, committing {:.1?}",
        stats.emitted,
        stats.transactions,
        stats.dead_letters,
        stats.poll_time,
        stats.process_time,
        stats.commit_time
    );
    Ok(())
}
