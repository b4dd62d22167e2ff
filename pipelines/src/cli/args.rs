//! The command line: every command and its options (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use pipelines::{Cluster, Guarantee, saga};
use processors::limits::{MAX_ON_HAND, MAX_QUANTITY};

#[derive(Parser)]
#[command(
    name = "supplystream",
    version,
    about = "The data layer of a supply chain, as streams."
)]
pub(crate) struct Cli {
    /// Pinned pipeline definitions (`<dir>/*.toml`: what each service owns, reads, writes and
    /// materializes; `services --format toml` writes the registry's), checked against the
    /// code before any service starts; by default the service registry's own.
    #[arg(long, global = true, env = "SUPPLYSTREAM_DEFINITIONS")]
    pub(crate) definitions: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the cluster is.
#[derive(clap::Args, Clone)]
pub(crate) struct ClusterArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SUPPLYSTREAM_BROKERS")]
    pub(crate) brokers: String,
    /// Confluent-compatible schema registry URL (Apicurio: .../apis/ccompat/v7).
    #[arg(long, env = "SUPPLYSTREAM_REGISTRY")]
    pub(crate) registry: String,
    /// At-least-once instead of Kafka transactions (for brokers without transactions).
    #[arg(long)]
    pub(crate) at_least_once: bool,
    /// A librdkafka property for every client, applied after supplystream's own
    /// (repeatable): `-X session.timeout.ms=30000`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub(crate) kafka: Vec<(String, String)>,
}

/// A week: the longest duration any `--*-ms` option takes (durations are added to event
/// times, so an unbounded one overflowed them or tripped an assert).
const WEEK_MS: u64 = 7 * 24 * 3_600_000;

/// A duration in milliseconds within `range`.
fn millis(range: std::ops::RangeInclusive<u64>) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(range)
}

/// A count within `range`.
fn count(range: std::ops::RangeInclusive<u64>) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(range)
}

pub(crate) fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE (e.g. -X session.timeout.ms=30000)"
        )),
    }
}

impl ClusterArgs {
    pub(crate) fn cluster(&self) -> Cluster {
        Cluster {
            brokers: self.brokers.clone(),
            registry: self.registry.clone(),
            guarantee: if self.at_least_once {
                Guarantee::AtLeastOnce
            } else {
                Guarantee::ExactlyOnce
            },
            kafka: self.kafka.clone(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Service {
    /// The per-sku inventory service and its stock_levels view.
    Inventory,
    /// The order-fulfilment saga's participants and the sagas/saga_steps views.
    Saga,
    /// The compliance service: the hash-chained audit_trail view of every event log.
    Compliance,
}

/// Options of every `run <service>`.
#[derive(clap::Args, Clone)]
pub(crate) struct RunArgs {
    /// Where the views are written.
    #[arg(long, default_value = "data/views")]
    pub(crate) views: PathBuf,
    /// This instance's id within the service's consumer groups (its static membership and
    /// transactional ids). Two live processes must not share one: the older stops, naming
    /// the other. By default the id kept in the state directory (`<state-dir>/instance`,
    /// made on the first start as `<host>-<random>`), or `<host>-<pid>` with
    /// `--no-state-dir`.
    #[arg(long)]
    pub(crate) instance: Option<String>,
    /// Partitions of the service's topics when they are created.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub(crate) partitions: i32,
    /// Input records per transaction at most (1 to 1,000,000; 0 used to process nothing).
    /// 10,000 by default: under a backlog that is ~120 ms of inventory commands a
    /// transaction, close to Kafka Streams' 100 ms commit interval; 2,000 spent 41% of the
    /// inventory pipeline's time committing (BENCHMARKS.md). A batch takes only what is
    /// waiting, so a light load still commits at once.
    #[arg(long, default_value_t = 10_000, value_parser = count(1..=1_000_000))]
    pub(crate) batch_size: usize,
    /// Local state: `<state-dir>/<service>/<pipeline>/` holds snapshots of the changelog
    /// partitions a processor owns, so a restart reads only the changelog's tail. One
    /// directory per instance (it is locked).
    #[arg(long, default_value = "data/state")]
    pub(crate) state_dir: PathBuf,
    /// Keep no local state: every restart restores from the whole changelog.
    #[arg(long)]
    pub(crate) no_state_dir: bool,
    /// How often changed state is snapshotted (also on a clean stop).
    #[arg(long, default_value_t = 10_000, value_parser = millis(1..=WEEK_MS))]
    pub(crate) snapshot_every_ms: u64,
    /// Fault injection for tests: keep every transaction open this long before it commits,
    /// so that a kill lands inside one.
    #[arg(long, hide = true, default_value_t = 0, value_parser = millis(0..=60_000))]
    pub(crate) chaos_hold_transactions_ms: u64,
}

impl RunArgs {
    /// The local state directory, unless `--no-state-dir`.
    pub(crate) fn state_dir(&self) -> Option<PathBuf> {
        (!self.no_state_dir).then(|| self.state_dir.clone())
    }

    /// `--instance`, else the state directory's (made on first use), else `<host>-<pid>`.
    /// Before, every process defaulted to `0`: a second one on another host fenced the first.
    pub(crate) fn instance(&self) -> anyhow::Result<String> {
        if let Some(i) = &self.instance {
            return Ok(i.clone());
        }
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let Some(dir) = self.state_dir() else {
            return Ok(format!("{host}-{}", std::process::id()));
        };
        instance_kept_in(&dir, &host)
    }
}

/// The instance id kept in `dir/instance`, written there as `<host>-<random>` when absent.
/// Processes started together on one state directory get the same id: each writes its
/// candidate to a file of its own, then links it as `instance`, which fails for all but the
/// first; the others read the first's.
pub(crate) fn instance_kept_in(dir: &std::path::Path, host: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let file = dir.join("instance");
    let read = || -> anyhow::Result<Option<String>> {
        match std::fs::read_to_string(&file) {
            Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    };
    if let Some(id) = read()? {
        return Ok(id);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("{host}-{}", &suffix[..8]);
    // Written aside and linked: a process killed meanwhile leaves no half id behind, and a
    // link never replaces an id another process kept first.
    let part = dir.join(format!("instance.{suffix}.part"));
    std::fs::write(&part, format!("{id}\n"))
        .with_context(|| format!("writing {}", part.display()))?;
    let linked = std::fs::hard_link(&part, &file);
    // The part is only scaffolding: one left behind (a full disk, a kill) is harmless.
    std::fs::remove_file(&part).ok();
    match linked {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read()? {
            Some(id) => Ok(id),
            None => anyhow::bail!("{} exists but holds no instance id", file.display()),
        },
        Err(e) => Err(e).with_context(|| format!("writing {}", file.display())),
    }
}

/// Options of `run saga`.
#[derive(clap::Args, Clone)]
pub(crate) struct SagaArgs {
    /// Participants to run (comma-separated); all when absent: orders, inventory-saga,
    /// payments, shipping, notifications, billing, catalog, suppliers, inventory-receiving.
    #[arg(long, value_delimiter = ',')]
    pub(crate) participants: Vec<String>,
    /// Deadline of each saga step (and each compensation round), in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = millis(1..=WEEK_MS))]
    pub(crate) step_timeout_ms: u64,
    /// How long an ended saga (e.g. a confirmed or cancelled order) is kept after its last
    /// change, in milliseconds, before it is forgotten from memory and the changelog (its
    /// event log and views keep it); an input older than what was forgotten is then
    /// dead-lettered as a possible duplicate. 0: keep every saga forever.
    #[arg(long, default_value_t = 86_400_000, value_parser = millis(0..=100 * WEEK_MS))]
    pub(crate) saga_retention_ms: u64,
    /// Do not run the views in this process (`run saga`: sagas/saga_steps; `run inventory`:
    /// stock_levels): for instances scaled out to share the processing.
    #[arg(long)]
    pub(crate) no_views: bool,
    /// Fault injection for tests: publish every output twice.
    #[arg(long, hide = true)]
    pub(crate) chaos_duplicate_outputs: bool,
    /// Allowed lateness of order events in the orders_per_minute windows, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = millis(0..=WEEK_MS))]
    pub(crate) window_lateness_ms: u64,
    /// Purchasing: lead time of the fastest supplier, in milliseconds (others take 1.5x
    /// and 2.5x).
    #[arg(long, default_value_t = 5_000, value_parser = millis(1..=WEEK_MS))]
    pub(crate) lead_time_ms: u64,
    /// Purchasing: units ordered on top of what brings a position back to its threshold.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=MAX_QUANTITY))]
    pub(crate) reorder_quantity: i64,
    /// Inventory: a position whose available stock falls below this raises a StockLow
    /// alert, which suppliers answers with a purchase order (0: no alerts).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(0..=MAX_ON_HAND))]
    pub(crate) low_stock_threshold: i64,
}

/// What `simulate` generates.
#[derive(clap::Args, Clone)]
pub(crate) struct SimArgs {
    #[arg(long, default_value_t = 2_000)]
    pub(crate) orders: usize,
    #[arg(long, default_value_t = 11)]
    pub(crate) seed: u64,
    #[arg(long, default_value_t = 40)]
    pub(crate) skus: usize,
    /// Shares of orders (0 to 1) forced to fail each way.
    #[arg(long, default_value_t = 0.10)]
    pub(crate) stockouts: f64,
    #[arg(long, default_value_t = 0.10)]
    pub(crate) declines: f64,
    #[arg(long, default_value_t = 0.05)]
    pub(crate) ship_failures: f64,
    #[arg(long, default_value_t = 0.05)]
    pub(crate) cancellations: f64,
    /// Stock per (sku, warehouse) before the orders; a little (e.g. 30) makes inventory
    /// run low, so suppliers order more.
    #[arg(long, default_value_t = saga::simulate::STOCK_PER_POSITION)]
    pub(crate) stock_per_position: i64,
}

impl SimArgs {
    pub(crate) fn spec(&self) -> saga::simulate::SimSpec {
        saga::simulate::SimSpec {
            orders: self.orders,
            skus: self.skus,
            seed: self.seed,
            run: 0,
            stockouts: self.stockouts,
            declines: self.declines,
            ship_failures: self.ship_failures,
            cancellations: self.cancellations,
            stock_per_position: self.stock_per_position,
            base_time: pipelines::wire::now_ms(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum SchemasCommand {
    /// Say, subject by subject, whether the schemas may be registered; exit 1 if any may not.
    Check {
        /// Registry URL.
        #[arg(long, env = "SUPPLYSTREAM_REGISTRY")]
        registry: String,
        /// Candidate schemas (`<dir>/<service>/<Record>.avsc`); the bundled ones by default.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Register the schemas (after the same check); exit 1 if any is refused.
    Register {
        #[arg(long, env = "SUPPLYSTREAM_REGISTRY")]
        registry: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Set the compatibility level of a subject, or the global one.
    Config {
        #[arg(long, env = "SUPPLYSTREAM_REGISTRY")]
        registry: String,
        /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE.
        level: String,
        /// The subject (`<topic>-<record full name>`); the global level when absent.
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum OffsetsCommand {
    /// Committed offsets, ends and lag of a group (every service's group when absent).
    Show {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        group: Option<String>,
    },
    /// Move a stopped group's offsets on a topic.
    Reset {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest | latest | <offset> | <RFC 3339 time>
        #[arg(long)]
        to: pipelines::replay::Position,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute every hash chain of the audit_trail view; exit 1 naming the first record
    /// that was altered, removed or reordered.
    Verify {
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum SagaCommand {
    /// The timeline of one saga across services, from the saga_steps view.
    Show {
        saga_id: String,
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Start an in-process broker and registry, run inventory, generate load, print stock_levels.
    Demo {
        /// Commands to generate.
        #[arg(long, default_value_t = 5_000)]
        commands: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where the views are written (wiped first: the embedded broker starts empty).
        #[arg(long, default_value = "data/demo/views")]
        views: PathBuf,
        /// Orders to run through the fulfilment saga.
        #[arg(long, default_value_t = 500)]
        orders: usize,
    },
    /// Run a service (and its views) against a real cluster until Ctrl-C.
    Run {
        #[arg(value_enum)]
        service: Service,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        saga: SagaArgs,
    },
    /// Place simulated orders (seeded) with a mix of failures, after stocking the shelves.
    Simulate {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        sim: SimArgs,
        /// Orders per second; as fast as possible when absent.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Check schemas against the registry before a deploy, register them, set compatibility.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Check the tamper-evident audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Inspect sagas.
    Saga {
        #[command(subcommand)]
        command: SagaCommand,
    },
    /// Produce JSON-lines commands (from FILE or stdin) as Avro to inventory.commands.
    Produce {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// JSON-lines file; `-` or absent for stdin.
        file: Option<PathBuf>,
    },
    /// Produce generated commands (seeded) to inventory.commands.
    Load {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long, default_value_t = 100_000)]
        commands: usize,
        #[arg(long, default_value_t = 500)]
        skus: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Run SQL over the views.
    Query {
        sql: String,
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Answer from the state at this RFC 3339 time (event-sourced views only:
        /// stock_levels), rebuilt from the topic; needs the cluster.
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, env = "SUPPLYSTREAM_BROKERS")]
        brokers: Option<String>,
        #[arg(long, env = "SUPPLYSTREAM_REGISTRY")]
        registry: Option<String>,
    },
    /// Rebuild a view from its topic (beside the live one, then swapped in atomically), or a
    /// service's state store from its own event log.
    Replay {
        /// A view (stock_levels), or a service whose store is the fold of its events
        /// (orders, payments, shipping, billing, catalog, suppliers, inventory).
        view: String,
        /// Stores: compare the fold of the event log with what a restart restores from the
        /// changelog, and exit non-zero on any difference; write nothing.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
        /// earliest | latest | <offset> | <RFC 3339 time>
        #[arg(long, default_value = "earliest")]
        from: pipelines::replay::Position,
        /// Where to stop (exclusive); latest = the end when the replay starts.
        #[arg(long, default_value = "latest")]
        to: pipelines::replay::Position,
        /// Write `<out>/<view>/` instead of replacing the live view.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Stores with --check: restore as a restart on this state directory would (its
        /// local snapshots, then the changelog's tail); the service must be stopped.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Dead letters per service: how many records its DLQ holds, and the latest with their
    /// reasons and where the bad input was read (reads each DLQ to its end).
    DeadLetters {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Only this service's DLQ.
        #[arg(long)]
        service: Option<String>,
        /// How many of the latest dead letters to show per DLQ.
        #[arg(long, default_value_t = 5)]
        last: usize,
    },
    /// Inspect or move consumer-group offsets.
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// The HTTP API: POST /commands/<service>/<Command>, GET|POST /query (read-your-writes
    /// with the command's token), GET /views (freshness).
    Serve {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// The ownership map: which service owns which topics and views, and what each of its
    /// pipelines reads and writes (database per service, as enforced at start-up).
    Services {
        #[arg(long, value_enum, default_value_t = MapFormat::Text)]
        format: MapFormat,
        /// Where `run` keeps local state (its `--state-dir`): each stateful pipeline's
        /// directory is printed under it.
        #[arg(long, default_value = "data/state")]
        state_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum MapFormat {
    Text,
    /// Graphviz: `supplystream services --format dot | dot -Tsvg > services.svg`.
    Dot,
    /// Definition files, one per service (each after a `# <service>.toml` line): the start
    /// of an operator's own `--definitions DIR`.
    Toml,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, instance_kept_in};

    /// Numbers that used to be accepted and then misbehave are refused by name.
    #[test]
    fn out_of_range_numbers_are_refused_naming_the_option() {
        let parse = |args: &[&str]| {
            let mut argv = vec![
                "supplystream",
                "run",
                "saga",
                "--brokers",
                "b",
                "--registry",
                "r",
            ];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).err().map(|e| e.to_string())
        };
        assert_eq!(parse(&[]), None);
        // `--batch-size 0` processed nothing, silently.
        let e = parse(&["--batch-size", "0"]).expect("refused");
        assert!(
            e.contains("--batch-size") && e.contains("1..=1000000"),
            "{e}"
        );
        // A huge lateness wrapped to a negative i64 and tripped an assert in the windows.
        let e = parse(&["--window-lateness-ms", "18446744073709551615"]).expect("refused");
        assert!(e.contains("--window-lateness-ms"), "{e}");
        assert!(parse(&["--step-timeout-ms", "0"]).is_some());
        assert!(parse(&["--partitions", "0"]).is_some());
        assert!(parse(&["--low-stock-threshold", "-1"]).is_some());
        assert_eq!(parse(&["--window-lateness-ms", "0"]), None);
    }

    /// Processes started together on one state directory (`run inventory` beside `run saga`)
    /// all get its one id. Before, they raced on one `instance.part`: the loser's rename
    /// failed ("writing …/instance: No such file or directory") and that service exited.
    #[test]
    fn processes_started_together_share_the_state_directory_s_instance_id() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join(".state");
            let ids: Vec<anyhow::Result<String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| instance_kept_in(&state, "host")))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ids: Vec<String> = ids.into_iter().map(|r| r.unwrap()).collect();
            assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
            let kept = std::fs::read_to_string(state.join("instance")).unwrap();
            assert_eq!(kept.trim(), ids[0]);
            let left: Vec<_> = std::fs::read_dir(&state)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["instance"], "nothing but the id is left behind");
        }
    }
}
