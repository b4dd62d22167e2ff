//! The integration suite against a real Apache Kafka broker (KRaft) and Apicurio Registry,
//! provisioned by `scripts/stack.sh` on free loopback ports and stopped at the end.
//!
//! Runs only with `SUPPLYSTREAM_REAL_KAFKA=1` (`.ci/run` sets it) because it needs Java 17
//! and Maven; prints `N passed, N failed` like any test runner.

use anyhow::Context;
use std::process::ExitCode;

use integration::churn::{self, Fleet};
use integration::duckdb;
use integration::faults;
use integration::saga::{
    Together, participant_down_past_deadline, purchasing_end_to_end, saga_end_to_end,
};
use integration::scenario::{ChildProcess, Runner, inventory_end_to_end};
use integration::stack::{Stack, repo_root};
use pipelines::inventory;
use pipelines::kafka;
use pipelines::load::LoadSpec;
use pipelines::saga::{self, simulate::SimSpec};

type Scenario = fn(&Stack, &tokio::runtime::Runtime) -> anyhow::Result<()>;

fn binary() -> std::path::PathBuf {
    // SUPPLYSTREAM_BIN runs the suite against another build (e.g. target/release/supplystream).
    if let Some(bin) = std::env::var_os("SUPPLYSTREAM_BIN") {
        return bin.into();
    }
    // target/<profile>/deps/real_kafka-<hash> → target/<profile>/supplystream
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("supplystream")
}

/// Where the child processes log (outlives the run, for post-mortems).
fn logs_dir() -> std::path::PathBuf {
    binary()
        .parent()
        .expect("target dir")
        .join("real-kafka-logs")
}

/// `SUPPLYSTREAM_SOAK=1` (`scripts/soak.sh`): the churns at the size issue 13 asks of them
/// (at least 20 rebalances of every group, 140,000 commands, 10,000 orders), on three
/// brokers, with broker bounces and registry outages. Without it, `.ci/run`'s shorter
/// versions of the same scenarios (its budget is 30 minutes in all).
fn soak() -> bool {
    std::env::var_os("SUPPLYSTREAM_SOAK").is_some_and(|v| v != "0")
}

/// The rebalances every churned group must see: 20 in the soak, 10 in `.ci/run`.
fn least_rebalances() -> usize {
    if soak() { 20 } else { 10 }
}

/// Runs one phase of a scenario and says how long it took (the real tier's time budget is
/// spent phase by phase; `.ci/run` has 30 minutes for everything).
fn phase<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let out = f();
    eprintln!("[phase] {name}: {:.1?}", started.elapsed());
    out
}

fn killed_mid_stream(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let views = tempfile::tempdir()?;
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    // Logs of the killed and restarted processes outlive the run, for post-mortems.
    let logs = logs_dir();
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
    // The local state the killed and restarted service kept restores what its events fold to.
    drop(runner);
    integration::saga::local_state_restores_alike(
        &stack.cluster,
        rt.handle(),
        &integration::scenario::state_dir(views.path()),
        &["inventory"],
    )?;
    // The view is plain Parquet: an independent engine reads it and agrees with ours.
    rt.block_on(duckdb::same_answers(
        views.path(),
        &[
            "SELECT sku, warehouse, on_hand, reserved, available FROM stock_levels ORDER BY sku, warehouse",
            "SELECT warehouse, sum(on_hand) AS on_hand, sum(available) AS available, count(*) AS n FROM stock_levels GROUP BY warehouse ORDER BY warehouse",
        ],
    ))
}

/// `supplystream run inventory` and `run saga <extra>` as child processes (SIGKILLed on
/// interruption), logging to target/<profile>/real-kafka-logs/<name>.*.log.
fn saga_children(
    stack: &Stack,
    views: &std::path::Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<Together> {
    let logs = logs_dir();
    std::fs::create_dir_all(&logs)?;
    let mut inventory = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.to_path_buf(),
        logs.join(format!("{name}-inventory")),
    );
    inventory.batch_size = 50;
    let mut saga = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.to_path_buf(),
        logs.join(format!("{name}-saga")),
    );
    saga.args = ["saga"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    saga.batch_size = 50;
    let mut runners: Vec<Box<dyn Runner>> = vec![Box::new(inventory), Box::new(saga)];
    if !extra.contains(&"--participants") {
        let mut compliance = ChildProcess::new(
            binary(),
            stack.cluster.clone(),
            views.to_path_buf(),
            logs.join(format!("{name}-compliance")),
        );
        compliance.args = vec!["compliance".to_owned()];
        runners.push(Box::new(compliance));
    }
    Ok(Together(runners))
}

/// A fleet of `run <args…> --instance <id>` child processes, each keeping its state in its
/// own directory. Inventory members all write `stock_levels` under `views` (kept per
/// partition: each writes the partitions its group gives it, and they move with the churn);
/// of the others, the stable member writes the views and churned ones add `--no-views`.
fn fleet(
    stack: &Stack,
    views: &std::path::Path,
    name: &str,
    args: &[&str],
    period: std::time::Duration,
) -> Fleet {
    let logs = logs_dir();
    let cluster = stack.cluster.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stable_views = views.to_path_buf();
    let shares_views = args == ["inventory"];
    Fleet::new(name, views, 3, period, move |id, dir| {
        let mut p = if shares_views {
            let mut p = ChildProcess::new(
                binary(),
                cluster.clone(),
                stable_views.clone(),
                logs.join(id),
            );
            if dir != stable_views {
                p.state = Some(dir.join(".state"));
            }
            p
        } else {
            ChildProcess::new(binary(), cluster.clone(), dir.to_path_buf(), logs.join(id))
        };
        p.args = args.clone();
        p.args.extend(["--instance".to_owned(), id.to_owned()]);
        // Short sessions: a stopped or killed member (static membership sends no LeaveGroup)
        // expires in 2 s, so the group rebalances often (the test broker allows 1 s).
        for setting in ["session.timeout.ms=2000", "heartbeat.interval.ms=500"] {
            p.args.extend(["-X".to_owned(), setting.to_owned()]);
        }
        if dir != stable_views && !shares_views {
            p.args.push("--no-views".to_owned());
        }
        p.batch_size = 2_000;
        // A stop that lands in a restore waits for it, and a restore waits while a killed
        // member's open transaction holds the changelog's end (transaction.timeout.ms, 10 s, and
        // the coordinator's sweep for timed-out transactions, every 10 s).
        p.stop_timeout = std::time::Duration::from_secs(90);
        Box::new(p)
    })
}

/// A stop requested while a service is still starting (creating topics, initializing its
/// transactions) is honoured: it was lost when the service inherited SIGINT ignored, as any
/// command started in the background by a non-interactive shell does (`cmd &` in a script,
/// CI runners), and the service then ran on for good. SIGINT and SIGTERM, each sent 100 ms
/// after the start, long before the start-up work is done.
fn a_stop_sent_while_a_service_starts_is_honoured(
    stack: &Stack,
    _rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    for signal in ["INT", "TERM"] {
        let views = tempfile::tempdir()?;
        let logs = logs_dir();
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("early-{signal}.log"));
        let log = std::fs::File::create(&log_path)?;
        // `trap '' INT TERM`: both inherited ignored, then exec'd (the ignored dispositions
        // survive exec).
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' INT TERM; exec \"$0\" \"$@\"")
            .arg(binary())
            .args(["run", "inventory", "--instance", &format!("early-{signal}")])
            .args(["--brokers", &stack.cluster.brokers])
            .args(["--registry", &stack.cluster.registry])
            .arg("--views")
            .arg(views.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // Once the binary catches the signal: before that (the shell not yet exec'd, or the
        // binary's first milliseconds) the signal is ignored as inherited and lost, which no
        // program can help. A fixed 100 ms wait lost it once on a loaded machine. The start
        // itself (clients, restore, group join) takes seconds after.
        let bit: u64 = 1 << (if signal == "INT" { 2 } else { 15 } - 1);
        let caught = |pid: u32| -> bool {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
                    u64::from_str_radix(mask.trim(), 16).ok()
                })
                .is_some_and(|mask| mask & bit != 0)
        };
        let waiting = Instant::now();
        while !caught(child.id()) {
            anyhow::ensure!(
                waiting.elapsed() < Duration::from_secs(20),
                "run inventory did not catch SIG{signal} within 20 s of its start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                anyhow::bail!(
                    "run inventory ran on for 60 s after SIG{signal} during its start (log: {})",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        anyhow::ensure!(
            status.success(),
            "run inventory stopped by SIG{signal} during its start with {status}"
        );
    }
    Ok(())
}

/// A writer killed inside a transaction leaves it open until the coordinator times it out,
/// and every read_committed reader stops at its first offset (the last stable offset) until
/// then, even past records other writers committed after it. A restore that took that
/// offset for the partition's end rebuilt an older state than its committed offsets belong
/// to; a check that did missed records. The partition's end is its high watermark: reading
/// to it waits for the open transaction to be aborted and then returns what was committed.
fn reads_wait_out_a_killed_writers_transaction(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use rdkafka::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::Duration;

    let topic: &'static str =
        Box::leak(format!("test.open-transaction-{}", std::process::id()).into_boxed_str());
    rt.block_on(kafka::ensure_topics(
        &stack.cluster,
        &[kafka::TopicSpec {
            name: topic,
            partitions: 1,
            compacted: false,
        }],
    ))?;
    let transactional = |id: &str| -> anyhow::Result<BaseProducer> {
        let producer: BaseProducer = kafka::producer_config(&stack.cluster)
            .set("transactional.id", id)
            .set("transaction.timeout.ms", "3000")
            .create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        Ok(producer)
    };
    // The "killed" writer: its transaction is left open (never committed, aborted or
    // fenced; the producer is leaked so nothing ends it on drop).
    let killed = transactional(&format!("{topic}-killed"))?;
    killed.begin_transaction()?;
    killed
        .send(BaseRecord::to(topic).key("k").payload("open"))
        .map_err(|(e, _)| e)?;
    killed.flush(Duration::from_secs(30))?;
    std::mem::forget(killed);
    // Another writer commits after it.
    let live = transactional(&format!("{topic}-live"))?;
    live.begin_transaction()?;
    live.send(BaseRecord::to(topic).key("k").payload("committed"))
        .map_err(|(e, _)| e)?;
    live.commit_transaction(Duration::from_secs(30))?;

    let started = std::time::Instant::now();
    let mut read = Vec::new();
    kafka::read_partition_to_end(&stack.cluster, "test-open-transaction", topic, 0, |m| {
        read.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        Ok(())
    })?;
    anyhow::ensure!(
        read == ["committed"],
        "read {read:?} to the partition's end, expected only the committed record"
    );
    eprintln!(
        "read past the open transaction once it was aborted, after {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Three instances of inventory in one group, members joining and leaving (fresh instance
/// ids, clean stops and SIGKILL) while commands arrive: every sku's events are the model's,
/// versions consecutive from 1, no event twice, `stock_levels` equals the model, and the
/// store equals the fold of its event log.
fn inventory_scaled_out_under_churn(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    std::fs::create_dir_all(logs_dir())?;
    let views = tempfile::tempdir()?;
    let kafka_log = stack.kafka_logs()?;
    let before = churn::rebalances(&kafka_log, "inventory")?;
    let mut fleet = fleet(
        stack,
        views.path(),
        "inventory",
        &["inventory"],
        std::time::Duration::from_secs(1),
    );
    let spec = LoadSpec {
        commands: if soak() { 140_000 } else { 50_000 },
        skus: 300,
        warehouses: 4,
        seed: 31,
        first_sku: 10_000,
    };
    let churned = rt.block_on(churn::inventory_under_churn(
        &stack.cluster,
        &mut fleet,
        views.path(),
        &spec,
        5_000.0,
        60,
        std::time::Duration::from_secs(300),
    ))?;
    let rebalances = churn::rebalances(&kafka_log, "inventory")? - before;
    eprintln!("inventory: {churned:?}, {rebalances} rebalances of its group");
    anyhow::ensure!(
        rebalances >= least_rebalances(),
        "only {rebalances} rebalances of the inventory group: the churn proved too little"
    );
    replay_check(stack, "inventory")
}

/// Three instances of inventory with supplystream's default group settings under a steady
/// load; one SIGKILLed inside an open transaction: how long until its partitions are
/// processed again by the others (issue 13's goal: 10 s). A killed static member sends no LeaveGroup, so the
/// coordinator notices it only when its session (`session.timeout.ms`) expires; then the
/// group rebalances and the new owners restore the partitions' state before they work.
fn a_killed_instance_s_partitions_are_taken_over(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    std::fs::create_dir_all(logs_dir())?;
    let views = tempfile::tempdir()?;
    // One views directory for all three, each with its own state: `stock_levels` is kept
    // per partition, each member writing the partitions its group gives it.
    let mut members: Vec<churn::Member> = (0..3)
        .map(|i| {
            let id = format!("takeover-{i}");
            let dir = views.path().to_path_buf();
            let mut p =
                ChildProcess::new(binary(), stack.cluster.clone(), dir, logs_dir().join(&id));
            if i > 0 {
                p.state = Some(views.path().join(".members").join(&id));
            }
            p.args.extend(["--instance".to_owned(), id]);
            // The member killed holds each transaction open for 1.5 s, so the kill lands
            // inside one that wrote its partition's changelog: the open transaction then
            // holds the partition's restore until it is aborted.
            if i == 1 {
                p.args
                    .extend(["--chaos-hold-transactions-ms".to_owned(), "1500".to_owned()]);
            }
            p.batch_size = 500;
            Box::new(p) as churn::Member
        })
        .collect();
    let spec = LoadSpec {
        commands: 40_000,
        skus: 300,
        warehouses: 4,
        seed: 43,
        first_sku: 30_000,
    };
    let takeover = rt.block_on(churn::takeover_after_kill(
        &stack.cluster,
        &mut members,
        views.path(),
        &spec,
        1_000.0,
    ))?;
    eprintln!(
        "a killed instance's partitions processed again after {:.1?} (the first partition \
         after {:.1?}); the rebalance paused the others for {:.1?}",
        takeover.slowest, takeover.fastest, takeover.pause
    );
    // Issue 13's goal. The session timeout (6 s) is most of it; waiting for the killed
    // instance's open transaction to time out instead (10 s after it began, plus up to the
    // broker's 10 s cleanup interval) took 14-16 s on three brokers.
    anyhow::ensure!(
        takeover.slowest <= std::time::Duration::from_secs(10),
        "a killed instance's partitions waited {:.1?} for another instance (goal: 10 s)",
        takeover.slowest
    );
    // The view's partitions, the killed member's too, were written by the members alive:
    // one file per partition of `inventory.events` and no whole-table file beside them
    // (`takeover_after_kill` compared their union with the model).
    let dir = views.path().join(sinks::stock_levels::VIEW);
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    files.sort();
    anyhow::ensure!(
        files
            == [
                "partition-0.parquet",
                "partition-1.parquet",
                "partition-2.parquet"
            ],
        "stock_levels is not kept per partition by the members: {files:?}"
    );
    replay_check(stack, "inventory")
}

/// The single broker frozen (SIGSTOP) for 60 s while one `run inventory` works through a
/// backlog, then resumed: past the request timeout (30 s), the session timeout and the
/// transaction timeout (10 s each), so the batch in flight fails, its transaction is
/// aborted by the coordinator and the member is dropped from its group. The service must
/// recover by itself and drain, with nothing lost or doubled (issue 13: it stayed up idle,
/// its consumer fenced, 134,000 commands unprocessed; a 40 s freeze did not reproduce it).
fn a_frozen_broker_is_ridden_out(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    std::fs::create_dir_all(logs_dir())?;
    let views = tempfile::tempdir()?;
    let mut service = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs_dir().join("frozen-broker"),
    );
    service.batch_size = 2_000;
    service.stop_timeout = std::time::Duration::from_secs(90);
    let spec = LoadSpec {
        commands: 60_000,
        skus: 200,
        warehouses: 4,
        seed: 41,
        first_sku: 20_000,
    };
    let broker = stack.broker_pid(1)?;
    let signal = |sig: &str| faults::signal(sig, &broker);
    let mut freeze = || -> anyhow::Result<()> {
        signal("-STOP")?;
        std::thread::sleep(std::time::Duration::from_secs(60));
        signal("-CONT")
    };
    let through = rt.block_on(churn::inventory_through_fault(
        &stack.cluster,
        &mut service,
        views.path(),
        &spec,
        20_000.0,
        &mut freeze,
    ));
    // Whatever happened, the broker runs on for the scenarios after this one.
    signal("-CONT")?;
    through?;
    replay_check(stack, "inventory")
}

/// Instance identity: two `run inventory` started without `--instance` (each with its own
/// state directory) are two members of the group, not one fencing the other; a third
/// started with the `--instance` of one of them makes that older one stop with an error
/// that says why, never a process that stays up doing nothing (issue 13: it logged
/// `FencedInstanceId` once and idled).
fn an_instance_held_twice_stops_the_older(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    std::fs::create_dir_all(logs_dir())?;
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let mut services: Vec<ChildProcess> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut p = ChildProcess::new(
                binary(),
                stack.cluster.clone(),
                d.path().to_path_buf(),
                logs_dir().join(format!("instance-{i}")),
            );
            p.args = vec!["inventory".to_owned(), "--no-views".to_owned()];
            p
        })
        .collect();
    services[0].start()?;
    services[1].start()?;
    let group_members = |n: usize| -> anyhow::Result<bool> {
        use rdkafka::consumer::Consumer;
        let probe = kafka::Probe::new(&stack.cluster)?;
        let groups =
            probe.fetch_group_list(Some("inventory"), std::time::Duration::from_secs(10))?;
        Ok(groups
            .groups()
            .iter()
            .map(|g| g.members().len())
            .sum::<usize>()
            == n)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !group_members(2)? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "two processes with default instance ids did not become two members in 60 s"
        );
        for s in &mut services[..2] {
            anyhow::ensure!(s.exited()?.is_none(), "{} exited", s.latest_log().display());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The id the first one chose, from its state directory.
    let id =
        std::fs::read_to_string(integration::scenario::state_dir(dirs[0].path()).join("instance"))?
            .trim()
            .to_owned();
    services[2]
        .args
        .extend(["--instance".to_owned(), id.clone()]);
    services[2].start()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = services[0].exited()? {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "a second process took instance {id} and the first is still up after 90 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(services[0].latest_log())?;
    anyhow::ensure!(!status.success(), "the fenced process exited with success");
    anyhow::ensure!(
        log.contains("another process is running as this instance"),
        "the fenced process did not say why it stopped: {}",
        log.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
    );
    for s in &mut services[1..] {
        anyhow::ensure!(s.exited()?.is_none(), "{} exited", s.latest_log().display());
        s.stop()?;
    }
    Ok(())
}

fn ensure_saga_topics(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    rt.block_on(kafka::ensure_topics(&stack.cluster, &saga::topics(3)))
}

const SAGA_SPEC: SimSpec = SimSpec {
    orders: 2_000,
    skus: 40,
    seed: 21,
    run: 0,
    stockouts: 0.10,
    declines: 0.10,
    ship_failures: 0.05,
    cancellations: 0.05,
    stock_per_position: saga::simulate::STOCK_PER_POSITION,
    base_time: saga::simulate::SIM_BASE_TIME,
};

/// 800 orders (2,000 in the soak) with failures while every service is SIGKILLed three times; then the same
/// orders (other ids) with every output published twice and one more kill: both end in the
/// same endings, which are the ones their forced failures call for.
fn sagas_killed_and_duplicated(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    // No saga should time out: kills under a loaded debug build delayed inventory's replies
    // past the default 30 s step deadline (68 of 2,000 orders once), and the deadline is a
    // business setting, not the subject (the timeout scenario has its own).
    let patient = ["--step-timeout-ms", "120000"];
    let mut killed = saga_children(stack, views.path(), "saga-killed", &patient)?;
    // 800 orders in `.ci/run` (its budget: CI took 30 min 8 s with 1,200), 2,000 in the
    // soak: the kills are placed by progress (once the orders service has committed part of
    // each chunk), so three land mid-run either way.
    let first_spec = SimSpec {
        orders: if soak() { 2_000 } else { 800 },
        ..SAGA_SPEC
    };
    let first = phase("killed run", || {
        rt.block_on(saga_end_to_end(
            &stack.cluster,
            views.path(),
            &mut killed,
            &first_spec,
            3,
        ))
    })?;
    // The views are plain Parquet that DuckDB reads with the same answers.
    phase("duckdb", || {
        rt.block_on(duckdb::same_answers(
        views.path(),
        &[
            "SELECT status, count(*) AS n, sum(compensations) AS c FROM sagas GROUP BY status ORDER BY status",
            "SELECT service, step, count(*) AS n FROM saga_steps GROUP BY service, step ORDER BY service, step",
            "SELECT account, sum(debit_cents) AS d, sum(credit_cents) AS c, count(*) AS n FROM ledger GROUP BY account ORDER BY account",
            "SELECT count(*) AS windows, sum(orders_placed) AS p, sum(orders_confirmed) AS c, sum(revenue_cents) AS r, sum(late_events) AS l FROM orders_per_minute",
            "SELECT topic, count(*) AS n, count(DISTINCT event_id) AS events FROM audit_trail GROUP BY topic ORDER BY topic",
            "SELECT * FROM revenue ORDER BY order_id",
            "SELECT * FROM sales_by_day ORDER BY day",
            "SELECT * FROM order_funnel",
            "SELECT order_id, status, current_step, total_cents FROM orders_current WHERE status = 'Cancelled' ORDER BY order_id",
        ],
    ))
    })?;
    // The audit trail, kept by a compliance process killed with the others, is complete and
    // tamper-evident; the CLI agrees.
    phase("audit", || {
        integration::audit::audit_trail_is_complete_and_tamper_evident(&stack.cluster, views.path())
    })?;
    let verify = std::process::Command::new(binary())
        .args(["audit", "verify", "--views"])
        .arg(views.path())
        .output()?;
    anyhow::ensure!(
        verify.status.success(),
        "audit verify failed: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let mut doubled = saga_children(
        stack,
        views.path(),
        "saga-doubled",
        &[patient[0], patient[1], "--chaos-duplicate-outputs"],
    )?;
    let spec = SimSpec {
        run: 1,
        ..first_spec
    };
    let second = phase("doubled run", || {
        rt.block_on(saga_end_to_end(
            &stack.cluster,
            views.path(),
            &mut doubled,
            &spec,
            1,
        ))
    })?;
    integration::saga::endings_alike(&first_spec, &spec, &first, &second)
        .context("the doubled run ended differently")?;
    // Event sourcing: every store equals the fold of its service's event log, after kills and
    // duplicates; the CLI's check agrees.
    drop(doubled);
    drop(killed);
    let compared = phase("stores equal their logs", || {
        integration::saga::stores_equal_their_event_logs(
            &stack.cluster,
            rt.handle(),
            integration::saga::SAGA_STORES,
        )
    })?;
    eprintln!("{compared} states equal the folds of their event logs");
    // The same restored as a restart does from the local state the killed processes left
    // (snapshots every second, so each kill landed between two).
    let from_snapshots = phase("local state", || {
        integration::saga::local_state_restores_alike(
            &stack.cluster,
            rt.handle(),
            &integration::scenario::state_dir(views.path()),
            integration::saga::SAGA_STORES,
        )
    })?;
    eprintln!("{from_snapshots} records restored from local snapshots, the same states");
    // The ledger view (restarted by every kill, resuming from its table) resumes alike from
    // a table cut in the middle.
    phase("ledger resumes", || {
        integration::saga::ledger_resumes_from_its_table(&stack.cluster, rt.handle(), views.path())
    })?;
    // So do the saga views (also resumed at every kill), from a copy with a saga marked and
    // one removed, rewound to the start.
    phase("saga views resume", || {
        integration::saga::saga_views_resume_from_their_tables(
            &stack.cluster,
            rt.handle(),
            views.path(),
        )
    })?;
    phase("windows resume", || {
        integration::saga::windows_resume_from_their_tables(
            &stack.cluster,
            rt.handle(),
            views.path(),
        )
    })?;
    let check = phase("replay orders --check", || {
        cli(stack, &["replay", "orders", "--check"])
    })?;
    anyhow::ensure!(
        check.status.success(),
        "replay orders --check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Lose the stores (delete the changelogs) and rebuild them with the CLI from the event
    // logs alone: a restart restores exactly what it restored before.
    phase("stores rebuild", || {
        integration::saga::stores_rebuild_from_event_logs(&stack.cluster, rt.handle(), |service| {
            // The killed instances leave the group when their sessions expire (6 s); the
            // rebuild refuses to run beside a live instance.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let out = cli(stack, &["replay", service])?;
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() {
                    return Ok(());
                }
                anyhow::ensure!(
                    stderr.contains("active member") && std::time::Instant::now() < deadline,
                    "replay {service} failed: {stderr}"
                );
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })
    })?;
    Ok(())
}

/// The participants of the order saga: the churn scales them out.
const SAGA_PARTICIPANTS: &[&str] = &[
    "orders",
    "inventory-saga",
    "payments",
    "shipping",
    "notifications",
    "billing",
];

/// The groups whose rebalances the saga churn counts (one per participant it checks).
const SAGA_GROUPS: &[&str] = &[
    "inventory",
    "orders",
    "inventory-saga",
    "payments",
    "shipping",
    "billing",
];

/// Three instances of inventory and of every saga participant, members joining and leaving
/// (fresh ids, clean stops and SIGKILL) while 3,000 orders (10,000 in the soak) with failures arrive at 400 a
/// second (more than a debug build processes here: the backlog keeps them busy): every saga ends
/// once as its forced failure says and money is conserved per order (captured − refunded =
/// the total if confirmed, else 0, in payments, the ledger and `revenue` alike: the checks of
/// `saga_end_to_end`), every store equals the fold of its event log, and the inventory
/// events keep consecutive versions.
fn sagas_scaled_out_under_churn(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    std::fs::create_dir_all(logs_dir())?;
    let views = tempfile::tempdir()?;
    let kafka_log = stack.kafka_logs()?;
    let before = SAGA_GROUPS
        .iter()
        .map(|g| churn::rebalances(&kafka_log, g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // No saga should time out: the step deadline is a business setting, not the subject. At
    // 120 s the first orders of the backlog timed out (a debug build under churn ends ~50
    // sagas a second here), and their compensations added to the backlog: 10 minutes.
    // 22,000 orders (until 2026-12-02) left 6,000-10,000 unended in the wait; 10,000 at the
    // same rate still keep every processor busy for minutes.
    // The order saga's participants churn; the services beside them (catalog, purchasing,
    // returns) run in one stable process with their views, as a deployment scales each service
    // on its own: the churn is about the saga.
    let participants = SAGA_PARTICIPANTS.join(",");
    let saga_args = [
        "saga",
        "--step-timeout-ms",
        "600000",
        "--participants",
        &participants,
    ];
    let others = saga::participants()
        .into_iter()
        .filter(|p| !SAGA_PARTICIPANTS.contains(p))
        .collect::<Vec<_>>()
        .join(",");
    let mut beside = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs_dir().join("churn-beside"),
    );
    // With the views of its services (products, purchase_orders, returns): the checks read
    // purchase_orders when stock ran low.
    beside.args = ["saga", "--participants", &others]
        .map(str::to_owned)
        .to_vec();
    // Batches as large as the fleet's: at the default 10, `returns` (one transaction per ten
    // order events) fell 45,000 records behind `orders.events` and never caught up.
    beside.batch_size = 2_000;
    let mut compliance = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs_dir().join("churn-compliance"),
    );
    compliance.args = vec!["compliance".to_owned()];
    // A member joins or leaves every 3 s (the inventory churn: every second). A fresh member
    // restores each of its partitions of six participants from their changelogs before it
    // works; at one action a second the members spent their short lives restoring, and
    // 11,000-16,000 of the 22,000 sagas ended in the wait (runs of 2026-12-01/02). Every
    // group still sees at least 10 rebalances (20 in the soak), most while the backlog is being worked off.
    let period = std::time::Duration::from_secs(3);
    // A release build ends every saga before every group has seen 20 rebalances (billing saw
    // 19 in 87 s): the churn goes on after the last saga until each has, two minutes at most.
    let fleets = [
        fleet(stack, views.path(), "inv", &["inventory"], period),
        fleet(stack, views.path(), "saga", &saga_args, period),
    ]
    .map(|mut f| {
        // The soak's 20 kills: one leave in two.
        if soak() {
            f.kill_one_in = 2;
        }
        f
    });
    let churned = fleets.each_ref().map(|f| f.churned.clone());
    let [inv, sagas] = fleets;
    let churn = ChurnAtLeast {
        inner: Together(vec![
            Box::new(inv),
            Box::new(sagas),
            Box::new(beside),
            Box::new(compliance),
        ]),
        kafka_log: kafka_log.clone(),
        before: SAGA_GROUPS
            .iter()
            .copied()
            .zip(before.iter().copied())
            .collect(),
        rebalances: least_rebalances(),
    };
    // The soak bounces every broker (three clean, three hard) and takes the registry away
    // twice (5 s, 90 s) while the orders come and the members churn.
    let plan = if soak() {
        faults::issue_13_plan(stack.brokers()?)
    } else {
        Vec::new()
    };
    let mut runner = faults::Faults::new(
        churn,
        stack,
        &stack.cluster,
        plan,
        std::time::Duration::from_secs(20),
    );
    let spec = SimSpec {
        orders: if soak() { 10_000 } else { 3_000 },
        run: 2,
        seed: 23,
        ..SAGA_SPEC
    };
    // A read_committed consumer of the event logs throughout: what it reads live is what
    // the logs hold afterwards, no aborted record and no gap.
    let watcher = faults::Watcher::start(
        &stack.cluster,
        &[
            pipelines::topics::inventory::EVENTS,
            schemas::saga::topics::ORDER_EVENTS,
        ],
    )?;
    rt.block_on(integration::saga::saga_end_to_end_at(
        &stack.cluster,
        views.path(),
        &mut runner,
        &spec,
        400.0,
    ))?;
    let injected = runner.injected.clone();
    drop(runner);
    let live = watcher.finish(&stack.cluster)?;
    let kills: usize = churned
        .iter()
        .map(|c| c.lock().expect("not poisoned").killed)
        .sum();
    eprintln!("saga churn: {kills} members killed, faults {injected:?}, {live} records read live");
    if soak() {
        anyhow::ensure!(
            kills >= 20,
            "only {kills} members were killed (the soak asks 20)"
        );
    }
    let mut fewest = usize::MAX;
    for (g, b) in SAGA_GROUPS.iter().zip(before) {
        let n = churn::rebalances(&kafka_log, g)? - b;
        eprintln!("{g}: {n} rebalances");
        fewest = fewest.min(n);
    }
    anyhow::ensure!(
        fewest >= least_rebalances(),
        "a group saw only {fewest} rebalances: the churn proved too little"
    );
    let compared = integration::saga::stores_equal_their_event_logs(
        &stack.cluster,
        rt.handle(),
        integration::saga::SAGA_STORES,
    )?;
    eprintln!("{compared} states equal the folds of their event logs");
    for store in integration::saga::SAGA_STORES {
        replay_check(stack, store)?;
    }
    Ok(())
}

/// Runs `inner`; a stop first lets its churn go on until every group of `before` has seen
/// `rebalances` more generations than it had (two minutes at most; the test then says how
/// many it saw).
struct ChurnAtLeast {
    inner: Together,
    kafka_log: Vec<std::path::PathBuf>,
    before: Vec<(&'static str, usize)>,
    rebalances: usize,
}

impl Runner for ChurnAtLeast {
    fn doubles_outputs(&self) -> bool {
        self.inner.doubles_outputs()
    }
    fn start(&mut self) -> anyhow::Result<()> {
        self.inner.start()
    }
    fn interrupt(&mut self) -> anyhow::Result<()> {
        self.inner.interrupt()
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            let mut short = false;
            for (g, b) in &self.before {
                short |= churn::generations(&self.kafka_log, g)? - b < self.rebalances;
            }
            if !short {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        self.inner.stop()
    }
}

/// `supplystream replay <store> --check` passes: the store equals the fold of its event log.
/// Issue 14: an unreadable changelog record skipped when superseded, holding only its
/// partition when it is its key's last; then `replay catalog --check` reads the same
/// changelog by the same rule.
fn unreadable_changelog_records(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    rt.block_on(
        integration::hostile::unreadable_changelog_records_are_skipped_or_held(
            &stack.cluster,
            views.path(),
        ),
    )?;
    replay_check(stack, "catalog")
}

/// Issue 14: an output over `message.max.bytes` dead-letters its input (exactly-once: the
/// batch aborts and goes again without it).
fn outputs_over_the_size_limit(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    rt.block_on(
        integration::hostile::outputs_over_the_size_limit_are_dead_lettered(
            &stack.cluster,
            views.path(),
        ),
    )
}

/// Issue 14's hostile input beside 600 good orders, against the real binary's processes:
/// every one of them must still be running at the end.
fn hostile_input_while_the_services_run(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    let mut services = saga_children(
        stack,
        views.path(),
        "hostile",
        &["--step-timeout-ms", "120000"],
    )?;
    let spec = SimSpec {
        orders: 600,
        seed: 14,
        run: 14,
        ..SAGA_SPEC
    };
    rt.block_on(integration::hostile::hostile_input_while_the_services_run(
        &stack.cluster,
        views.path(),
        &mut services,
        &spec,
        &format!("real-{}", std::process::id()),
    ))?;
    // What an operator sees of it: `supplystream dead-letters` counts what each DLQ holds
    // (committed records: what a read_committed reader finds) and shows the latest.
    let listed = cli(stack, &["dead-letters", "--last", "2"])?;
    let text = String::from_utf8_lossy(&listed.stdout);
    anyhow::ensure!(
        listed.status.success(),
        "dead-letters failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for (topic, service) in [("inventory.dlq", "inventory"), ("orders.dlq", "orders")] {
        let n = integration::topic::read_all(&stack.cluster, topic)?.len();
        let line = format!("{topic} ({service}): {n} dead letters");
        anyhow::ensure!(
            n > 0 && text.contains(&line),
            "dead-letters does not say {line:?}:\n{text}"
        );
    }
    Ok(())
}

/// Ended sagas forgotten after a retention of 4 s by the real binary's processes, a
/// forgotten saga's duplicate dead-lettered, across a restart.
fn ended_sagas_are_forgotten(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    let retention = std::time::Duration::from_secs(4);
    let ms = retention.as_millis().to_string();
    let mut services = saga_children(
        stack,
        views.path(),
        "forgotten-sagas",
        &["--step-timeout-ms", "120000", "--saga-retention-ms", &ms],
    )?;
    rt.block_on(
        integration::hostile::ended_sagas_are_forgotten_after_their_retention(
            &stack.cluster,
            views.path(),
            &mut services,
            retention,
            std::process::id(),
        ),
    )
}

/// Views dead-letter a record of their event logs they cannot decode (issue 14's hostile
/// scenario asks for undecodable view inputs on real Kafka).
fn views_dead_letter_what_they_cannot_decode(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    rt.block_on(
        integration::hostile::views_dead_letter_what_they_cannot_decode(
            &stack.cluster,
            views.path(),
        ),
    )
}

fn forgotten_reservation_ids(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    rt.block_on(
        integration::hostile::a_skus_forgotten_reservation_ids_leave_its_changelog(
            &stack.cluster,
            views.path(),
            &format!("SKU-HORIZON-{}", std::process::id()),
        ),
    )?;
    // The CLI's own check agrees: the store is the fold of the event log.
    replay_check(stack, "inventory")
}

fn replay_check(stack: &Stack, store: &str) -> anyhow::Result<()> {
    let check = cli(stack, &["replay", store, "--check"])?;
    anyhow::ensure!(
        check.status.success(),
        "replay {store} --check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    Ok(())
}

/// Runs the CLI against the stack.
fn cli(stack: &Stack, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(binary())
        .args(args)
        .env("SUPPLYSTREAM_BROKERS", &stack.cluster.brokers)
        .env("SUPPLYSTREAM_REGISTRY", &stack.cluster.registry)
        .output()?)
}

/// Payments stays down past the step deadline (3 s): every saga times out, its compensation
/// waits for payments and is retried; once payments is back, all end Cancelled and no late
/// reply resurrects one.
fn sagas_time_out_while_payments_is_down(
    stack: &Stack,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    let timeout = ["--step-timeout-ms", "3000"];
    // Every participant but payments.
    let rest_of_them = saga::participants()
        .into_iter()
        .filter(|p| *p != "payments")
        .collect::<Vec<_>>()
        .join(",");
    let mut rest = saga_children(
        stack,
        views.path(),
        "saga-timeout",
        &[&timeout[..], &["--participants", &rest_of_them]].concat(),
    )?;
    let logs = logs_dir();
    let mut payments = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs.join("saga-timeout-payments"),
    );
    payments.args = [
        "saga",
        "--participants",
        "payments",
        "--no-views",
        "--step-timeout-ms",
        "3000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let spec = SimSpec {
        orders: 50,
        seed: 22,
        stockouts: 0.0,
        declines: 0.0,
        ship_failures: 0.0,
        cancellations: 0.0,
        ..SAGA_SPEC
    };
    rt.block_on(participant_down_past_deadline(
        &stack.cluster,
        views.path(),
        &mut rest,
        &mut payments,
        &spec,
        std::time::Duration::from_secs(3),
    ))
}

/// Schema evolution on Apicurio (v1/v2 interleaved, upcast, refusal with reason), then
/// `supplystream schemas check`: the bundled schemas pass against what the services
/// registered; a candidate directory with a breaking change fails (exit 1) naming the subject,
/// the version and the field.
fn schema_evolution_on_apicurio(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    rt.block_on(integration::evolution::schema_evolution(
        &stack.cluster.registry,
        "evolution.",
    ))?;
    let check = |dir: Option<&std::path::Path>| -> anyhow::Result<(bool, String)> {
        let mut command = std::process::Command::new(binary());
        command.args(["schemas", "check", "--registry", &stack.cluster.registry]);
        if let Some(dir) = dir {
            command.arg("--dir").arg(dir);
        }
        let out = command.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };
    let (ok, text) = check(None)?;
    anyhow::ensure!(
        ok && !text.contains("INCOMPATIBLE"),
        "bundled schemas refused:\n{text}"
    );
    anyhow::ensure!(
        text.contains("compatible    inventory.events-supplychain.inventory.InventoryReserved"),
        "{text}"
    );
    // A candidate with a new required field in InventoryReserved.
    let candidate = tempfile::tempdir()?;
    let source = repo_root().join("schemas/avro");
    for service in std::fs::read_dir(&source)? {
        let service = service?.path();
        let target = candidate.path().join(service.file_name().expect("named"));
        std::fs::create_dir_all(&target)?;
        for file in std::fs::read_dir(&service)? {
            let file = file?.path();
            std::fs::copy(&file, target.join(file.file_name().expect("named")))?;
        }
    }
    let reserved = candidate.path().join("inventory/InventoryReserved.avsc");
    let text = std::fs::read_to_string(&reserved)?.replace(
        r#"{"name": "quantity", "type": "long"},"#,
        r#"{"name": "quantity", "type": "long"}, {"name": "priority", "type": "int"},"#,
    );
    std::fs::write(&reserved, text)?;
    let (ok, text) = check(Some(candidate.path()))?;
    anyhow::ensure!(!ok, "a breaking change passed schemas check:\n{text}");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("INCOMPATIBLE  inventory.events-supplychain.inventory.InventoryReserved")
        })
        .ok_or_else(|| anyhow::anyhow!("no refusal for InventoryReserved:\n{text}"))?;
    anyhow::ensure!(
        line.contains("priority"),
        "the reason does not name the field: {line}"
    );
    eprintln!("{line}");
    Ok(())
}

/// 100,000 commands through the inventory service (a child process), then the stock_levels
/// view deleted and rebuilt from the earliest offset (identical), and rebuilt as of a
/// mid-stream time (equal to the fold of the events recorded before it).
/// The HTTP API against real Kafka: the inventory service in its own process, transactions
/// on; a command's token makes the next query see it; a carrier's events posted to an
/// external events topic are read back alike, and DuckDB reads their view the same.
fn http_read_your_writes(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    let logs = logs_dir();
    let mut runner = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs.join("http-inventory"),
    );
    rt.block_on(integration::http::read_your_writes(
        &stack.cluster,
        views.path(),
        &mut runner,
    ))?;
    // The carrier's events, as another engine reads them.
    rt.block_on(duckdb::same_answers(
        views.path(),
        &[
            "SELECT shipment_id, carrier, status, failed_attempts, coalesce(received_by, '-') AS received_by, \
             coalesce(transit_ms, -1) AS transit_ms, scans, array_to_string(scan_ids, '|') AS scan_ids \
             FROM shipments ORDER BY shipment_id",
            "SELECT carrier, shipments, delivered, failed_attempts, mean_transit_ms FROM carrier_performance ORDER BY carrier",
            "SELECT sku, price_cents, CAST(discontinued AS INTEGER) AS discontinued FROM products ORDER BY sku",
        ],
    ))
}

/// Purchasing with every process SIGKILLed once mid-run: little stock, so orders drain it,
/// inventory alerts, suppliers order, receipts (1 s lead time) restock it while orders keep
/// coming. Every purchase order traces to its alert and is placed once, each receipt is
/// booked into inventory once (exactly-once across the kill), on hand = received + receipts −
/// shipped; the suppliers store is the fold of its log; DuckDB reads the view alike.
fn purchasing_killed_mid_run(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    let mut runner = saga_children(
        stack,
        views.path(),
        "purchasing",
        &["--lead-time-ms", "1000"],
    )?;
    let spec = SimSpec {
        orders: 600,
        skus: 4,
        seed: 31,
        stockouts: 0.0,
        stock_per_position: 30,
        ..SAGA_SPEC
    };
    let placed = rt.block_on(purchasing_end_to_end(
        &stack.cluster,
        views.path(),
        &mut runner,
        &spec,
        1,
        100.0,
    ))?;
    anyhow::ensure!(
        placed >= 12,
        "only {placed} purchase orders for 12 positions"
    );
    drop(runner);
    integration::saga::stores_equal_their_event_logs(&stack.cluster, rt.handle(), &["suppliers"])?;
    integration::saga::local_state_restores_alike(
        &stack.cluster,
        rt.handle(),
        &integration::scenario::state_dir(views.path()),
        &["suppliers", "inventory"],
    )?;
    integration::saga::purchase_orders_resume_from_their_table(
        &stack.cluster,
        rt.handle(),
        views.path(),
    )?;
    let check = cli(stack, &["replay", "suppliers", "--check"])?;
    anyhow::ensure!(
        check.status.success(),
        "replay suppliers --check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    rt.block_on(duckdb::same_answers(
        views.path(),
        &[
            "SELECT supplier_id, count(*) AS n, sum(quantity) AS q, count(received_at) AS received FROM purchase_orders GROUP BY supplier_id ORDER BY supplier_id",
            "SELECT * FROM supplier_performance ORDER BY supplier_id",
            "SELECT sku, warehouse, on_hand, reserved FROM stock_levels ORDER BY sku, warehouse",
        ],
    ))
}

/// Customer returns end to end on real Kafka, the services as child processes SIGKILLed
/// right after the requests and right after the receipts: each return decided, refunded and
/// restocked exactly once.
fn returns_end_to_end(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    ensure_saga_topics(stack, rt)?;
    let views = tempfile::tempdir()?;
    let mut runner = saga_children(stack, views.path(), "returns", &[])?;
    let checked = rt.block_on(integration::returns::returns_end_to_end(
        &stack.cluster,
        views.path(),
        &mut runner,
        51,
        true,
    ))?;
    anyhow::ensure!(checked >= 7, "{checked} returns");
    Ok(())
}

fn replay_rebuilds_views(stack: &Stack, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    rt.block_on(kafka::ensure_topics(&stack.cluster, &inventory::topics(3)))?;
    let views = tempfile::tempdir()?;
    let logs = logs_dir();
    let mut runner = ChildProcess::new(
        binary(),
        stack.cluster.clone(),
        views.path().to_path_buf(),
        logs.join("replay-inventory"),
    );
    runner.batch_size = 2_000;
    rt.block_on(integration::replay::replay_rebuilds_the_view(
        &stack.cluster,
        views.path(),
        &mut runner,
        100_000,
        true,
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
    // Services run in this process by some scenarios log here (warnings by default, like
    // the embedded tier); the child processes log to their own files.
    let filter = std::env::var("SUPPLYSTREAM_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _already = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stack = match Stack::with_brokers(if soak() { 3 } else { 1 }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "cannot start Kafka + Apicurio from {}: {e:#}",
                repo_root().display()
            );
            return ExitCode::FAILURE;
        }
    };
    let scenarios: [(&str, Scenario); 21] = [
        (
            "a_stop_sent_while_a_service_starts_is_honoured",
            a_stop_sent_while_a_service_starts_is_honoured,
        ),
        (
            "an_instance_held_twice_stops_the_older",
            an_instance_held_twice_stops_the_older,
        ),
        (
            "reads_wait_out_a_killed_writers_transaction",
            reads_wait_out_a_killed_writers_transaction,
        ),
        (
            "inventory_killed_mid_stream_exactly_once",
            killed_mid_stream,
        ),
        (
            "sagas_killed_and_duplicated_end_alike",
            sagas_killed_and_duplicated,
        ),
        (
            "sagas_time_out_while_payments_is_down",
            sagas_time_out_while_payments_is_down,
        ),
        ("schema_evolution_on_apicurio", schema_evolution_on_apicurio),
        ("replay_rebuilds_views", replay_rebuilds_views),
        ("http_read_your_writes", http_read_your_writes),
        ("purchasing_killed_mid_run", purchasing_killed_mid_run),
        ("returns_end_to_end", returns_end_to_end),
        (
            "unreadable_changelog_records_are_skipped_or_held",
            unreadable_changelog_records,
        ),
        // Last: they leave far more records on the shared topics than the scenarios above
        // count exactly. The saga churn first: its churned members restore inventory's
        // changelog from the start, and after the inventory churn's 140,000 commands that
        // alone (40-70k records a partition, uncompacted) stalled inventory past the step
        // deadline (docs/next.md).
        ("sagas_scaled_out_under_churn", sagas_scaled_out_under_churn),
        (
            "inventory_scaled_out_under_churn",
            inventory_scaled_out_under_churn,
        ),
        // After the churns: its 60,000 commands grow inventory's changelog (uncompacted on a
        // broker that lives minutes), which every fresh member of the saga churn restores.
        (
            "a_frozen_broker_is_ridden_out",
            a_frozen_broker_is_ridden_out,
        ),
        // Last too: its 40,000 commands run stock low and leave thousands of low-stock alerts
        // that the saga scenarios' suppliers would then work off (before it was moved here,
        // the timeout and returns scenarios after it found their services busy with them).
        (
            "a_killed_instance_s_partitions_are_taken_over",
            a_killed_instance_s_partitions_are_taken_over,
        ),
        // After every saga scenario: it leaves a dead letter on orders.dlq, where they
        // demand none.
        (
            "outputs_over_the_size_limit_are_dead_lettered",
            outputs_over_the_size_limit,
        ),
        // After every inventory scenario: it leaves a dead letter on inventory.dlq.
        (
            "a_skus_forgotten_reservation_ids_leave_its_changelog",
            forgotten_reservation_ids,
        ),
        // Last: dead letters on inventory.dlq and orders.dlq, 30,000 cancellations.
        (
            "hostile_input_while_the_services_run",
            hostile_input_while_the_services_run,
        ),
        // Last of all: the orders it forgets leave a horizon on orders' partitions, before
        // which every order the 2026-01-01-stamped simulations of the scenarios above place
        // would be refused as a possible duplicate (as the rule says).
        ("ended_sagas_are_forgotten", ended_sagas_are_forgotten),
        // Very last: it writes a record that is not Avro to four event logs, which every
        // scenario above reads (and `replay --check` folds, refusing what it cannot decode).
        (
            "views_dead_letter_what_they_cannot_decode",
            views_dead_letter_what_they_cannot_decode,
        ),
    ];
    // `cargo test ... --test real_kafka -- <substring>...` runs the scenarios matching any.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in scenarios {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
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
        let kept = stack.stop_and_keep();
        println!("stack logs and data kept in {}", kept.display());
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
