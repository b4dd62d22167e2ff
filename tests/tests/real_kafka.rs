//! The integration suite against a real Apache Kafka broker (KRaft) and Apicurio Registry,
//! provisioned by `scripts/stack.sh` on free loopback ports and stopped at the end.
//!
//! Runs only with `SUPPLYSTREAM_REAL_KAFKA=1` (`.ci/run` sets it) because it needs Java 17
//! and Maven; prints `N passed, N failed` like any test runner.

use std::process::ExitCode;

use integration::duckdb;
use integration::scenario::{ChildProcess, inventory_end_to_end};
use integration::stack::{Stack, repo_root};
use pipelines::inventory;
use pipelines::kafka;

type Scenario = fn(&Stack, &tokio::runtime::Runtime) -> anyhow::Result<()>;

fn binary() -> std::path::PathBuf {
    // target/<profile>/deps/real_kafka-<hash> → target/<profile>/supplystream
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("supplystream")
}

fn killed_mid_stream(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let views = tempfile::tempdir()?;
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    // Logs of the killed and restarted processes outlive the run, for post-mortems.
    let logs = binary()
        .parent()
        .expect("target dir")
        .join("real-kafka-logs");
    std::fs::create_dir_all(&logs)?;
    let mut runner = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs.join("inventory"),
    );
    rt.block_on(inventory_end_to_end(
        &stack.cluster,
        views.path(),
        &mut runner,
        3,
    ))?;
    // The view is plain Parquet: an independent engine reads it and agrees with ours.
    rt.block_on(duckdb::same_answers(
        views.path(),
        &[
            "SELECT sku, warehouse, on_hand, reserved, available FROM stock_levels ORDER BY sku, warehouse",
            "SELECT warehouse, sum(on_hand) AS on_hand, sum(available) AS available, count(*) AS n FROM stock_levels GROUP BY warehouse ORDER BY warehouse",
        ],
    ))
}

fn main() -> ExitCode {
    if std::env::var_os("SUPPLYSTREAM_REAL_KAFKA").is_none() {
        println!("real-Kafka suite not run: set SUPPLYSTREAM_REAL_KAFKA=1 (.ci/run does)");
        return ExitCode::SUCCESS;
    }
    if !binary().exists() {
        eprintln!(
            "{} is missing: run `cargo build --bin supplystream` first",
            binary().display()
        );
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stack = match Stack::up() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "cannot start Kafka + Apicurio from {}: {e:#}",
                repo_root().display()
            );
            return ExitCode::FAILURE;
        }
    };
    let scenarios: [(&str, Scenario); 1] = [(
        "inventory_killed_mid_stream_exactly_once",
        killed_mid_stream,
    )];
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        let started = std::time::Instant::now();
        match scenario(&stack, &rt) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1?})", started.elapsed());
            }
            Err(e) => {
                failed += 1;
                println!(
                    "test {name} ... FAILED: {e:#}\n  logs: {}",
                    stack.dir().display()
                );
            }
        }
    }
    if failed > 0 {
        // Keep the logs of a failed run.
        let kept = stack.dir().to_path_buf();
        drop(stack);
        println!("stack logs were in {}", kept.display());
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
