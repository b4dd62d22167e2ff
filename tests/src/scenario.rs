//! The inventory walking-skeleton scenario: 10,000 mixed commands plus one record of every
//! kind of bad input, processed while the service is interrupted mid-stream; then the events,
//! the `stock_levels` view and the dead-letter queue are checked against [`crate::model`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pipelines::inventory::{self, Options, Running};
use pipelines::kafka::Output;
use pipelines::load::{self, LoadSpec};
use pipelines::topics::{dlq_headers, inventory::*};
use pipelines::{Cluster, Guarantee};
use schemas::Registry;
use schemas::codec::{Decoder, Encoder};
use schemas::inventory::*;
use schemas::record::RecordUnion;
use sinks::QueryEngine;

use crate::{model, topic};

/// Starts, interrupts and stops the inventory service under test.
pub trait Runner {
    /// Starts the service (and its view).
    fn start(&mut self) -> anyhow::Result<()>;
    /// Interrupts it the hardest way the mode allows.
    fn interrupt(&mut self) -> anyhow::Result<()>;
    /// Stops it cleanly.
    fn stop(&mut self) -> anyhow::Result<()>;
    /// Whether it publishes every output twice on purpose (`--chaos-duplicate-outputs`), so
    /// that the checks expect each event twice on its topic instead of failing on it.
    fn doubles_outputs(&self) -> bool {
        false
    }
}

/// Runs the service on threads of the test process; interruptions are clean stops
/// (the mock broker gives at-least-once, so a hard kill may legitimately duplicate).
pub struct InProcess {
    pub opts: Options,
    pub rt: tokio::runtime::Handle,
    running: Option<Running>,
}

impl InProcess {
    pub fn new(opts: Options, rt: tokio::runtime::Handle) -> Self {
        InProcess {
            opts,
            rt,
            running: None,
        }
    }
}

impl Runner for InProcess {
    fn start(&mut self) -> anyhow::Result<()> {
        self.running = Some(inventory::spawn(&self.opts, &self.rt));
        Ok(())
    }
    fn interrupt(&mut self) -> anyhow::Result<()> {
        self.stop()
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(r) = self.running.take() {
            r.stop()?;
        }
        Ok(())
    }
}

/// The local state directory the test runners use beside `views` (see `pipelines::state`).
pub fn state_dir(views: &Path) -> PathBuf {
    views.join(".state")
}

/// Runs `supplystream run inventory` as a child process; interruptions are SIGKILL.
pub struct ChildProcess {
    /// `supplystream run <args…>`; `["inventory"]` by default.
    pub args: Vec<String>,
    /// Records per transaction (small: many transactions, so kills land mid-stream).
    pub batch_size: usize,
    /// How long a clean stop may take (30 s by default).
    pub stop_timeout: Duration,
    pub binary: PathBuf,
    pub cluster: Cluster,
    pub views: PathBuf,
    /// Its local state directory; [`state_dir`] of `views` by default. Processes that share
    /// a views directory each need their own (it is locked).
    pub state: Option<PathBuf>,
    pub log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl ChildProcess {
    pub fn new(binary: PathBuf, cluster: Cluster, views: PathBuf, log: PathBuf) -> Self {
        ChildProcess {
            args: vec!["inventory".to_owned()],
            batch_size: 10,
            stop_timeout: Duration::from_secs(30),
            binary,
            cluster,
            views,
            state: None,
            log,
            child: None,
            starts: 0,
        }
    }
}

impl ChildProcess {
    /// How the process ended, if it has (`None` while it runs or before it started).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// The log file of its latest start.
    pub fn latest_log(&self) -> PathBuf {
        self.log.with_extension(format!("{}.log", self.starts))
    }
}

impl Runner for ChildProcess {
    fn doubles_outputs(&self) -> bool {
        self.args.iter().any(|a| a == "--chaos-duplicate-outputs")
    }
    fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let path = self.latest_log();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the log directory {}", dir.display()))?;
        }
        let log = std::fs::File::create(&path)
            .with_context(|| format!("creating the log {}", path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("run")
            .args(&self.args)
            .args([
                "--brokers",
                &self.cluster.brokers,
                "--registry",
                &self.cluster.registry,
            ])
            .args(
                self.cluster
                    .kafka
                    .iter()
                    .flat_map(|(k, v)| ["-X".to_owned(), format!("{k}={v}")]),
            )
            .arg("--views")
            .arg(&self.views)
            // Local state beside the views (removed with them), snapshotted every second so
            // that kills land between snapshots and restarts restore from one plus a tail.
            .arg("--state-dir")
            .arg(self.state.clone().unwrap_or_else(|| state_dir(&self.views)))
            .args(["--snapshot-every-ms", "1000"])
            .args(["--batch-size", &self.batch_size.to_string()])
            .env("RUST_BACKTRACE", "0")
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.cluster.guarantee == Guarantee::AtLeastOnce {
            command.arg("--at-least-once");
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        Ok(())
    }
    fn interrupt(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?; // SIGKILL: no chance to finish the transaction in flight
            c.wait()?;
        }
        Ok(())
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // A service never exits on its own: one that did fails the scenario here, with
            // its reason, instead of as sagas or commands that never ended.
            if let Some(status) = c.try_wait()? {
                let log = std::fs::read_to_string(self.latest_log()).unwrap_or_default();
                anyhow::bail!(
                    "{} exited on its own ({status}) before it was stopped: {}",
                    self.latest_log().display(),
                    log.lines().rev().take(4).collect::<Vec<_>>().join(" / ")
                );
            }
            Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status()?;
            let deadline = Instant::now() + self.stop_timeout;
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    // Where it is stuck, for the post-mortem (when gdb is installed).
                    let stacks = self.log.with_extension("stacks.txt");
                    let dumped = std::fs::File::create(&stacks).and_then(|out| {
                        Command::new("gdb")
                            .args(["-p", &c.id().to_string(), "-batch", "-ex"])
                            .arg("thread apply all bt")
                            .stdout(out)
                            .stderr(std::process::Stdio::null())
                            .status()
                    });
                    c.kill()?;
                    anyhow::bail!(
                        "{} did not stop within {:?} of SIGINT (threads: {})",
                        self.log.display(),
                        self.stop_timeout,
                        if dumped.is_ok_and(|s| s.success()) {
                            stacks.display().to_string()
                        } else {
                            "no gdb".to_owned()
                        }
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }
}

/// One bad record and the dead-letter kind it must get.
struct Bad {
    key: Vec<u8>,
    payload: Vec<u8>,
    kind: &'static str,
}

async fn bad_records(cluster: &Cluster) -> anyhow::Result<Vec<Bad>> {
    let registry = Registry::new(&cluster.registry);
    let commands = Encoder::<InventoryCommand>::register(&registry, COMMANDS).await?;
    let events = Encoder::<InventoryEvent>::register(&registry, EVENTS).await?;
    let receive = |sku: &str, quantity| -> InventoryCommand {
        ReceiveStock {
            metadata: Metadata::command(&format!("bad-{sku}-{quantity}"), sku, 0),
            sku: sku.into(),
            warehouse: "AMS".into(),
            quantity,
        }
        .into()
    };
    let mut truncated = commands.encode(&receive("SKU-BAD-1", 5))?;
    truncated.truncate(truncated.len() - 2);
    let event: InventoryEvent = InventoryReceived {
        metadata: Metadata::command("bad-ev", "SKU-BAD-2", 0),
        sku: "SKU-BAD-2".into(),
        warehouse: "AMS".into(),
        quantity: 1,
    }
    .into();
    Ok(vec![
        Bad {
            key: b"SKU-BAD-0".to_vec(),
            payload: b"{\"this\": \"is JSON, not Avro\"}".to_vec(),
            kind: "malformed",
        },
        Bad {
            key: b"SKU-BAD-0".to_vec(),
            payload: vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6],
            kind: "unknown-schema",
        },
        Bad {
            key: b"SKU-BAD-1".to_vec(),
            payload: truncated,
            kind: "invalid-datum",
        },
        Bad {
            key: b"SKU-BAD-2".to_vec(),
            payload: events.encode(&event)?,
            kind: "unexpected-record",
        },
        Bad {
            key: b"SKU-BAD-3".to_vec(),
            payload: commands.encode(&receive("SKU-BAD-3", 0))?,
            kind: "invalid-command",
        },
        Bad {
            key: b"SKU-BAD-5".to_vec(),
            payload: commands.encode(&receive("SKU-BAD-4", 3))?,
            kind: "wrong-key",
        },
    ])
}

fn produce_raw(cluster: &Cluster, bad: &[Bad]) -> anyhow::Result<()> {
    let output = Output::new(
        &Cluster {
            guarantee: Guarantee::AtLeastOnce,
            ..cluster.clone()
        },
        "test",
        "bad",
    )?;
    for b in bad {
        output.send(COMMANDS, None, &b.key, &b.payload, None)?;
    }
    output.flush()
}

/// Runs the scenario; topics must exist. `interruptions` hard stops happen mid-stream.
pub async fn inventory_end_to_end(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    interruptions: usize,
) -> anyhow::Result<()> {
    let spec = LoadSpec {
        commands: 10_000,
        skus: 200,
        warehouses: 4,
        seed: 7,
        first_sku: 0,
    };
    let commands = load::generate(&spec);
    let expected = model::expect(&commands);
    let bad = bad_records(cluster).await?;
    let total = (commands.len() + bad.len()) as i64;
    let opts = Options::new(cluster.clone(), views.to_path_buf());

    let started = Instant::now();
    runner.start()?;
    // Produce in chunks (bad records in the middle one); after each chunk but the last, kill
    // the service once it has committed part of that chunk but not all of it: mid-stream.
    let chunks: Vec<&[InventoryCommand]> = commands
        .chunks(commands.len().div_ceil(interruptions + 1))
        .collect();
    let mut produced = 0i64;
    let probe = std::sync::Arc::new(inventory::ProgressProbe::new(&opts)?);
    for (i, chunk) in chunks.iter().enumerate() {
        load::produce_commands(cluster, chunk).await?;
        produced += chunk.len() as i64;
        if i == chunks.len() / 2 {
            produce_raw(cluster, &bad)?;
            produced += bad.len() as i64;
        }
        if i + 1 == chunks.len() {
            break;
        }
        let chunk_len = chunk.len() as i64;
        let probe = probe.clone();
        let lag = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let lag = probe.progress()?.command_lag;
                if lag < chunk_len * 9 / 10 || Instant::now() > deadline {
                    return Ok(lag);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .await??;
        eprintln!(
            "{:>6.1?} killing with {lag} of {produced} produced commands uncommitted",
            started.elapsed()
        );
        runner.interrupt()?;
        runner.start()?;
    }
    ensure!(produced == total, "produced {produced} of {total}");
    let o = opts.clone();
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&o, Duration::from_secs(180)))
        .await??;
    eprintln!("{:>6.1?} caught up", started.elapsed());
    runner.stop()?;

    check_events(cluster, &expected).await?;
    check_view(views, &expected).await?;
    check_dead_letters(cluster, &bad)?;
    Ok(())
}

async fn check_events(cluster: &Cluster, expected: &model::Expected) -> anyhow::Result<()> {
    let records = topic::read_all(cluster, EVENTS)?;
    let mut decoder = Decoder::<InventoryEvent>::new(Registry::new(&cluster.registry));
    let mut actual: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for r in &records {
        let event = decoder.decode_learning(&r.payload).await?;
        ensure!(
            r.key == event.sku().as_bytes(),
            "event keyed {:?} for sku {}",
            String::from_utf8_lossy(&r.key),
            event.sku()
        );
        ensure!(
            ids.insert(event.metadata().event_id.clone()),
            "duplicate event {:?}",
            event
        );
        let name = event.record_name().rsplit('.').next().expect("named");
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        actual.entry(event.sku().to_owned()).or_default().push(name);
    }
    ensure!(
        records.len() == expected.event_count(),
        "{} events, expected {}",
        records.len(),
        expected.event_count()
    );
    for (sku, events) in &expected.events {
        ensure!(
            actual.get(sku) == Some(events),
            "events of {sku} differ:\n actual {:?}\n expected {events:?}",
            actual.get(sku)
        );
    }
    ensure!(
        actual.len() == expected.events.len(),
        "events for unexpected skus"
    );
    Ok(())
}

async fn check_view(views: &Path, expected: &model::Expected) -> anyhow::Result<()> {
    let engine = QueryEngine::open(views).await?;
    let batches = engine.sql("SELECT sku, warehouse, on_hand, reserved, available FROM stock_levels ORDER BY sku, warehouse").await?;
    let csv = sinks::OutputFormat::Csv.render(&batches)?;
    let mut actual = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let n = |i: usize| f[i].parse::<i64>().expect("number");
        ensure!(n(4) == n(2) - n(3) && n(4) >= 0, "bad available in {line}");
        actual.insert((f[0].to_owned(), f[1].to_owned()), (n(2), n(3)));
    }
    ensure!(
        actual == expected.positions,
        "stock_levels differs from the model: {} rows vs {}",
        actual.len(),
        expected.positions.len()
    );
    let totals = engine
        .sql("SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved FROM stock_levels")
        .await?;
    let csv = sinks::OutputFormat::Csv.render(&totals)?;
    let on_hand: i64 = expected.positions.values().map(|p| p.0).sum();
    let reserved: i64 = expected.positions.values().map(|p| p.1).sum();
    ensure!(
        csv.trim_end().ends_with(&format!("{on_hand},{reserved}")),
        "totals {csv} vs {on_hand},{reserved}"
    );
    Ok(())
}

fn check_dead_letters(cluster: &Cluster, bad: &[Bad]) -> anyhow::Result<()> {
    let dead = topic::read_all(cluster, DLQ)?;
    let commands = topic::read_all(cluster, COMMANDS)?;
    let mut kinds: Vec<&str> = dead
        .iter()
        .filter_map(|r| r.header(dlq_headers::KIND))
        .collect();
    kinds.sort();
    let mut want: Vec<&str> = bad.iter().map(|b| b.kind).collect();
    want.sort();
    ensure!(
        kinds == want,
        "dead-letter kinds {kinds:?}, expected {want:?}"
    );
    for r in &dead {
        let kind = r.header(dlq_headers::KIND).unwrap_or_default();
        let b = bad.iter().find(|b| b.kind == kind).expect("checked above");
        ensure!(
            r.payload == b.payload && r.key == b.key,
            "{kind}: payload or key altered"
        );
        let reason = r.header(dlq_headers::REASON).unwrap_or_default();
        ensure!(reason.len() > 10, "{kind}: reason {reason:?}");
        ensure!(
            r.header(dlq_headers::SOURCE_TOPIC) == Some(COMMANDS),
            "{kind}: source topic"
        );
        let p: i32 = r
            .header(dlq_headers::SOURCE_PARTITION)
            .unwrap_or_default()
            .parse()?;
        let o: i64 = r
            .header(dlq_headers::SOURCE_OFFSET)
            .unwrap_or_default()
            .parse()?;
        let source = commands
            .iter()
            .find(|c| c.partition == p && c.offset == o)
            .context("source record not found")?;
        ensure!(
            source.payload == b.payload,
            "{kind}: source coordinates point elsewhere"
        );
        eprintln!("dead letter {kind}: {reason}");
    }
    // `supplystream dead-letters` (`pipelines::dead_letters`) sees the same: each counted,
    // with its kind, reason and source.
    let summary = pipelines::dead_letters::summary(cluster, Some("inventory"), dead.len())?;
    let listed = summary
        .iter()
        .find(|s| s.topic == DLQ)
        .context("inventory.dlq is not in the dead-letters summary")?;
    ensure!(
        listed.count == dead.len() as u64 && listed.latest.len() == dead.len(),
        "dead-letters counts {} and lists {}, the topic holds {}",
        listed.count,
        listed.latest.len(),
        dead.len()
    );
    for (d, r) in listed.latest.iter().zip(&dead) {
        let header = |name| r.header(name).unwrap_or_default();
        let source = format!(
            "{}/{}@{}",
            header(dlq_headers::SOURCE_TOPIC),
            header(dlq_headers::SOURCE_PARTITION),
            header(dlq_headers::SOURCE_OFFSET)
        );
        ensure!(
            d.offset == r.offset
                && d.kind == header(dlq_headers::KIND)
                && d.reason == header(dlq_headers::REASON)
                && d.source == source,
            "dead-letters lists {d:?} for the record at offset {}",
            r.offset
        );
    }
    Ok(())
}
