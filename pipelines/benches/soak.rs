//! Bounded state over a long history (issue 14): ten million inventory commands over 100,000
//! skus, reservations opened and closed as often (`load::Load::balanced`), 100 ms apart in
//! event time: 11.6 days of history, past the 24 h horizon of spent reservation ids many
//! times over.
//!
//! In two halves. Each is produced, then the inventory service (exactly-once, local state, no
//! view) runs until it has caught up while the process's RSS is sampled every 250 ms; then the
//! store a restart restores is counted (skus, open reservations, spent ids remembered). Bounded
//! means the second half ends with about the state and RSS of the first, not twice them.
//!
//! Run with `scripts/bench.sh soak`. `BENCH_SOAK_COMMANDS` (default 10,000,000) and
//! `BENCH_SOAK_SKUS` (default 100,000).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pipelines::inventory::{self, Options, ProgressProbe};
use pipelines::load::{self, Load, LoadSpec};
use pipelines::topics::inventory::{CHANGELOG, COMMANDS};
use pipelines::{Cluster, kafka};

/// The process's resident set size in bytes (Linux: `VmRSS` of /proc/self/status).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    let Some(cluster) = common::cluster("soak", "scripts/bench.sh soak")? else {
        return Ok(());
    };
    let total = common::count("BENCH_SOAK_COMMANDS", 10_000_000);
    let skus = common::count("BENCH_SOAK_SKUS", 100_000);
    let spacing_ms = 100;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(kafka::ensure_topics(&cluster, &inventory::topics(3)))?;
    let spec = LoadSpec {
        commands: total,
        skus,
        warehouses: 4,
        seed: 14,
        first_sku: 0,
    };
    let state = tempfile::tempdir()?;
    let opts = soak_options(&cluster, state.path());
    match std::env::var("SOAK_ROLE").as_deref() {
        // Children, so that the process whose RSS is sampled runs the service only: the
        // producer (librdkafka's queues) and the count (a whole copy of the store) would
        // otherwise leave their memory in its heap.
        Ok("produce") => {
            let skip: usize = std::env::var("SOAK_SKIP")?.parse()?;
            let n: usize = std::env::var("SOAK_N")?.parse()?;
            let commands = Load::new(&spec)
                .balanced()
                .spaced(spacing_ms)
                .skip(skip)
                .take(n);
            let sent = rt.block_on(load::produce_stream(&cluster, commands))?;
            anyhow::ensure!(sent == n, "produced {sent} of {n} commands");
            return Ok(());
        }
        Ok("count") => {
            let dir: std::path::PathBuf = std::env::var("SOAK_STATE")?.into();
            let (store, _) = inventory::service::restore_store(
                &Options {
                    state_dir: None,
                    ..soak_options(&cluster, &dir)
                },
                rt.handle(),
            )?;
            let (mut open, mut spent) = (0usize, 0usize);
            for sku in store.values() {
                for r in sku.reservation_records() {
                    if r.open {
                        open += 1;
                    } else {
                        spent += 1;
                    }
                }
            }
            println!("{} {open} {spent}", store.len());
            return Ok(());
        }
        _ => {}
    }
    let child = |role: &str, vars: &[(&str, String)]| -> anyhow::Result<String> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .env("SOAK_ROLE", role)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "soak {role} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let probe = kafka::Probe::new(&cluster)?;
    println!(
        "soak: {total} commands over {skus} skus, {spacing_ms} ms apart in event time ({:.1} days), reservations opened and closed alike; one inventory service (exactly-once, local state, no view) throughout; RSS of the process that runs it alone",
        (total as f64 * spacing_ms as f64) / 86_400_000.0
    );
    println!(
        "| after | produced in | processed in | commands/s | RSS max | RSS at end | skus | open reservations | spent ids kept | changelog records written |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max) = (stop.clone(), max.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let progress = ProgressProbe::new(&opts)?;
    let running = inventory::spawn(&opts, rt.handle());
    let half = total / 2;
    for (phase, (skip, n)) in [(0, half), (half, total - half)].into_iter().enumerate() {
        let produced = Instant::now();
        child(
            "produce",
            &[("SOAK_SKIP", skip.to_string()), ("SOAK_N", n.to_string())],
        )?;
        let produced = produced.elapsed();
        let started = Instant::now();
        let mut failing_since: Option<Instant> = None;
        loop {
            // A fresh group's coordinator may not be ready yet (NOT_COORDINATOR): asked again.
            match progress.progress() {
                Ok(p) if p.command_lag == 0 => break,
                Ok(_) => failing_since = None,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    anyhow::ensure!(
                        since.elapsed() < Duration::from_secs(60),
                        "progress unreadable for a minute: {e:#}"
                    );
                }
            }
            anyhow::ensure!(
                !running.is_finished(),
                "the inventory service stopped early"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let took = started.elapsed();
        let at_end = rss();
        let peak = max.swap(0, Ordering::Relaxed).max(at_end);
        let counts = child(
            "count",
            &[("SOAK_STATE", state.path().display().to_string())],
        )?;
        let counts: Vec<&str> = counts.split_whitespace().collect();
        let written: i64 = kafka::high_watermarks(&probe, CHANGELOG)?.values().sum();
        let consumed: i64 = kafka::high_watermarks(&probe, COMMANDS)?.values().sum();
        println!(
            "| {} commands | {:.1} s | {:.1} s | {:.0} | {:.0} MiB | {:.0} MiB | {} | {} | {} | {written} |",
            consumed,
            produced.as_secs_f64(),
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            mib(peak),
            mib(at_end),
            counts.first().unwrap_or(&"?"),
            counts.get(1).unwrap_or(&"?"),
            counts.get(2).unwrap_or(&"?"),
        );
        eprintln!("phase {} done", phase + 1);
    }
    running.stop()?;
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    println!(
        "bound: a sku keeps at most {} spent ids, within {} h of event time of its newest (processors::inventory)",
        processors::inventory::MAX_SPENT_IDS,
        processors::inventory::SPENT_ID_RETENTION_MS / 3_600_000
    );
    Ok(())
}

/// The service's options: its group named after the soak's directory, so the children (the
/// count) find the same changelog and state as the parent.
fn soak_options(cluster: &Cluster, state: &std::path::Path) -> Options {
    let mut opts = Options::new(cluster.clone(), state.join("views"));
    opts.group = "bench-soak".to_owned();
    opts.state_dir = Some(state.to_path_buf());
    opts.run_view = false;
    opts.low_stock_threshold = 0;
    opts
}
