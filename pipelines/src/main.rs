//! `supplystream`: run the services, feed them, and query their views.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pipelines::embedded::Embedded;
use pipelines::inventory::{self, Options};
use pipelines::load::{self, LoadSpec};
use pipelines::{Cluster, Guarantee, kafka, produce, saga};
use sinks::{OutputFormat, QueryEngine};

#[derive(Parser)]
#[command(
    name = "supplystream",
    version,
    about = "The data layer of a supply chain, as streams."
)]
struct Cli {
    /// Pinned pipeline definitions (`<dir>/*.toml`: what each service owns, reads, writes and
    /// materializes; `services --format toml` writes the registry's), checked against the
    /// code before any service starts; by default the service registry's own.
    #[arg(long, global = true, env = "SUPPLYSTREAM_DEFINITIONS")]
    definitions: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where the cluster is.
#[derive(clap::Args, Clone)]
struct ClusterArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SUPPLYSTREAM_BROKERS")]
    brokers: String,
    /// Confluent-compatible schema registry URL (Apicurio: .../apis/ccompat/v7).
    #[arg(long, env = "SUPPLYSTREAM_REGISTRY")]
    registry: String,
    /// At-least-once instead of Kafka transactions (for brokers without transactions).
    #[arg(long)]
    at_least_once: bool,
    /// A librdkafka property for every client, applied after supplystream's own
    /// (repeatable): `-X session.timeout.ms=30000`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    kafka: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE (e.g. -X session.timeout.ms=30000)"
        )),
    }
}

impl ClusterArgs {
    fn cluster(&self) -> Cluster {
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
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Service {
    /// The per-sku inventory service and its stock_levels view.
    Inventory,
    /// The order-fulfilment saga's participants and the sagas/saga_steps views.
    Saga,
    /// The compliance service: the hash-chained audit_trail view of every event log.
    Compliance,
}

/// Options of `run saga`.
#[derive(clap::Args, Clone)]
struct SagaArgs {
    /// Participants to run (comma-separated); all when absent: orders, inventory-saga,
    /// payments, shipping, notifications, billing, catalog, suppliers, inventory-receiving.
    #[arg(long, value_delimiter = ',')]
    participants: Vec<String>,
    /// Deadline of each saga step (and each compensation round), in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    step_timeout_ms: u64,
    /// Do not run the views in this process (`run saga`: sagas/saga_steps; `run inventory`:
    /// stock_levels): for instances scaled out to share the processing.
    #[arg(long)]
    no_views: bool,
    /// Fault injection for tests: publish every output twice.
    #[arg(long, hide = true)]
    chaos_duplicate_outputs: bool,
    /// Allowed lateness of order events in the orders_per_minute windows, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    window_lateness_ms: u64,
    /// Purchasing: lead time of the fastest supplier, in milliseconds (others take 1.5x
    /// and 2.5x).
    #[arg(long, default_value_t = 5_000)]
    lead_time_ms: u64,
    /// Purchasing: units ordered on top of what brings a position back to its threshold.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
    reorder_quantity: i64,
    /// Inventory: a position whose available stock falls below this raises a StockLow
    /// alert, which suppliers answers with a purchase order (0: no alerts).
    #[arg(long, default_value_t = 10)]
    low_stock_threshold: i64,
}

/// What `simulate` generates.
#[derive(clap::Args, Clone)]
struct SimArgs {
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    #[arg(long, default_value_t = 40)]
    skus: usize,
    /// Shares of orders (0 to 1) forced to fail each way.
    #[arg(long, default_value_t = 0.10)]
    stockouts: f64,
    #[arg(long, default_value_t = 0.10)]
    declines: f64,
    #[arg(long, default_value_t = 0.05)]
    ship_failures: f64,
    #[arg(long, default_value_t = 0.05)]
    cancellations: f64,
    /// Stock per (sku, warehouse) before the orders; a little (e.g. 30) makes inventory
    /// run low, so suppliers order more.
    #[arg(long, default_value_t = saga::simulate::STOCK_PER_POSITION)]
    stock_per_position: i64,
}

impl SimArgs {
    fn spec(&self) -> saga::simulate::SimSpec {
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
        }
    }
}

#[derive(Subcommand)]
enum SchemasCommand {
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
enum OffsetsCommand {
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
enum AuditCommand {
    /// Recompute every hash chain of the audit_trail view; exit 1 naming the first record
    /// that was altered, removed or reordered.
    Verify {
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
    },
}

#[derive(Subcommand)]
enum SagaCommand {
    /// The timeline of one saga across services, from the saga_steps view.
    Show {
        saga_id: String,
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
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
        /// Where the views are written.
        #[arg(long, default_value = "data/views")]
        views: PathBuf,
        /// This instance's id within the service's consumer group.
        #[arg(long, default_value = "0")]
        instance: String,
        /// Partitions of the service's topics when they are created.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Input records per transaction at most.
        #[arg(long, default_value_t = 2_000)]
        batch_size: usize,
        /// Local state: `<state-dir>/<service>/<pipeline>/` holds snapshots of the changelog
        /// partitions a processor owns, so a restart reads only the changelog's tail. One
        /// directory per instance (it is locked).
        #[arg(long, default_value = "data/state")]
        state_dir: PathBuf,
        /// Keep no local state: every restart restores from the whole changelog.
        #[arg(long)]
        no_state_dir: bool,
        /// How often changed state is snapshotted (also on a clean stop).
        #[arg(long, default_value_t = 10_000)]
        snapshot_every_ms: u64,
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
        /// (orders, payments, shipping, inventory).
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
enum MapFormat {
    Text,
    /// Graphviz: `supplystream services --format dot | dot -Tsvg > services.svg`.
    Dot,
    /// Definition files, one per service (each after a `# <service>.toml` line): the start
    /// of an operator's own `--definitions DIR`.
    Toml,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SUPPLYSTREAM_LOG")
                .unwrap_or_else(|_| "warn,pipelines=info,supplystream=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    let cli = Cli::parse();
    // A command that runs until stopped listens for the stop from its first moment: a signal
    // that came before the listener was lost when the process had inherited SIGINT ignored
    // (as every command started in the background by a non-interactive shell does), and the
    // process then ran on for good.
    let shutdown = || -> anyhow::Result<Shutdown> {
        let _runtime = rt.enter();
        Shutdown::install()
    };
    let mut signals = match &cli.command {
        Command::Serve { .. } | Command::Run { .. } => Some(shutdown()?),
        _ => None,
    };
    let mut signals = move || {
        signals
            .take()
            .expect("one long-running command per process")
    };
    // Database per service: the definitions must hold, and declare whatever is about to run.
    let ownership = || pipelines::ownership::OwnershipMap::load(cli.definitions.as_deref());
    match &cli.command {
        Command::Run {
            service: Service::Inventory,
            ..
        } => ownership()?.enforce(&["inventory", "inventory-views"])?,
        Command::Run {
            service: Service::Saga,
            saga,
            ..
        } => {
            let mut names: Vec<&str> = if saga.participants.is_empty() {
                saga::participants()
            } else {
                saga.participants.iter().map(String::as_str).collect()
            };
            if !saga.no_views {
                let views: Vec<&str> = saga::view_pipelines(&names).map(|v| v.1).collect();
                names.extend(views);
            }
            ownership()?.enforce(&names)?
        }
        Command::Run {
            service: Service::Compliance,
            ..
        } => ownership()?.enforce(&["compliance"])?,
        Command::Demo { .. } => ownership()?.enforce(&[])?,
        _ => {}
    }
    match cli.command {
        Command::Serve {
            cluster,
            views,
            listen,
        } => rt.block_on(async {
            let cluster = cluster.cluster();
            kafka::ensure_topics(&cluster, &inventory::topics(3)).await?;
            kafka::ensure_topics(&cluster, &saga::topics(3)).await?;
            let api = pipelines::http::Api::new(cluster, views, ownership()?).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            eprintln!("Serving on http://{}", listener.local_addr()?);
            let mut stop = signals();
            tokio::select! {
                r = pipelines::http::serve(api, listener) => r,
                () = stop.wait(|| false) => Ok(()),
            }
        }),
        Command::Services { format, state_dir } => {
            let map = ownership()?;
            print!(
                "{}",
                match format {
                    MapFormat::Text => map.render_text(&state_dir),
                    MapFormat::Dot => map.render_dot(),
                    MapFormat::Toml => map
                        .to_toml()
                        .into_iter()
                        .map(|(file, text)| format!("# {file}\n{text}\n"))
                        .collect(),
                }
            );
            Ok(())
        }
        Command::Demo {
            commands,
            seed,
            views,
            orders,
        } => rt.block_on(demo(commands, seed, views, orders)),
        Command::Run {
            service: Service::Inventory,
            cluster,
            views,
            instance,
            partitions,
            batch_size,
            state_dir,
            no_state_dir,
            snapshot_every_ms,
            saga,
        } => {
            let mut opts = Options::new(cluster.cluster(), views);
            opts.state_dir = (!no_state_dir).then_some(state_dir);
            opts.snapshot_every = Duration::from_millis(snapshot_every_ms);
            opts.instance = instance;
            opts.partitions = partitions;
            opts.batch_size = batch_size;
            opts.low_stock_threshold = saga.low_stock_threshold;
            opts.run_view = !saga.no_views;
            rt.block_on(run(opts, signals()))
        }
        Command::Run {
            service: Service::Saga,
            cluster,
            views,
            instance,
            partitions,
            batch_size,
            state_dir,
            no_state_dir,
            snapshot_every_ms,
            saga,
        } => {
            let mut opts = saga::Options::new(cluster.cluster(), views);
            opts.state_dir = (!no_state_dir).then_some(state_dir);
            opts.snapshot_every = Duration::from_millis(snapshot_every_ms);
            opts.instance = instance;
            opts.partitions = partitions;
            opts.batch_size = batch_size;
            opts.step_timeout = Duration::from_millis(saga.step_timeout_ms);
            opts.duplicate_outputs = saga.chaos_duplicate_outputs;
            opts.window_lateness = Duration::from_millis(saga.window_lateness_ms);
            opts.lead_time = Duration::from_millis(saga.lead_time_ms);
            opts.reorder_quantity = saga.reorder_quantity;
            rt.block_on(run_saga(opts, saga.participants, !saga.no_views, signals()))
        }
        Command::Simulate { cluster, sim, rate } => rt.block_on(async {
            let cluster = cluster.cluster();
            kafka::ensure_topics(&cluster, &inventory::topics(3)).await?;
            kafka::ensure_topics(&cluster, &saga::topics(3)).await?;
            let simulation = saga::simulate::generate(&sim.spec());
            let started = Instant::now();
            saga::simulate::produce(&cluster, &simulation, rate).await?;
            eprintln!("Placed {} orders in {:.1?}.", sim.orders, started.elapsed());
            Ok(())
        }),
        Command::Saga {
            command: SagaCommand::Show { saga_id, views },
        } => rt.block_on(saga_show(&saga_id, &views)),
        Command::Run {
            service: Service::Compliance,
            cluster,
            views,
            ..
        } => rt.block_on(run_compliance(cluster.cluster(), views, signals())),
        Command::Audit {
            command: AuditCommand::Verify { views },
        } => match sinks::audit::verify(&views) {
            Ok(v) => {
                println!(
                    "audit trail intact: {} records in {} partitions ({} parts) under {}",
                    v.records,
                    v.partitions,
                    v.parts,
                    views.display()
                );
                Ok(())
            }
            Err(t) => {
                println!("{t}");
                std::process::exit(1);
            }
        },
        Command::Schemas { command } => {
            let refused = rt.block_on(schemas_command(command))?;
            if refused > 0 {
                eprintln!("{refused} subjects refused.");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Produce { cluster, file } => rt.block_on(produce_file(cluster.cluster(), file)),
        Command::Load {
            cluster,
            commands,
            skus,
            seed,
        } => rt.block_on(async {
            let spec = LoadSpec {
                commands,
                skus,
                seed,
                ..LoadSpec::default()
            };
            let cluster = cluster.cluster();
            kafka::ensure_topics(&cluster, &inventory::topics(3)).await?;
            let started = Instant::now();
            load::produce_commands(&cluster, &load::generate(&spec)).await?;
            eprintln!("Produced {commands} commands in {:.1?}.", started.elapsed());
            Ok(())
        }),
        Command::Query {
            sql,
            views,
            format,
            as_of: None,
            ..
        } => rt.block_on(query(&sql, &views, format)),
        Command::Query {
            sql,
            format,
            as_of: Some(at),
            brokers,
            registry,
            ..
        } => {
            let (Some(brokers), Some(registry)) = (brokers, registry) else {
                anyhow::bail!("--as-of rebuilds from the topics: give --brokers and --registry");
            };
            let cluster = Cluster {
                brokers,
                registry,
                guarantee: Guarantee::ExactlyOnce,
                kafka: Vec::new(),
            };
            let at: pipelines::replay::Position =
                at.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            if !matches!(at, pipelines::replay::Position::Time(_)) {
                anyhow::bail!("--as-of takes an RFC 3339 time, e.g. 2026-11-24T14:00:00Z");
            }
            let scratch = tempfile::tempdir()?;
            for view in pipelines::replay::REPLAYABLE {
                pipelines::replay::replay_view(
                    &cluster,
                    rt.handle(),
                    scratch.path(),
                    view,
                    pipelines::replay::Position::Earliest,
                    at,
                    Some(scratch.path()),
                    false,
                )?;
            }
            rt.block_on(query(&sql, scratch.path(), format))
                .with_context(|| {
                    format!(
                        "--as-of answers from the event-sourced views only: {:?}",
                        pipelines::replay::REPLAYABLE
                    )
                })
        }
        Command::Replay {
            view,
            check,
            cluster,
            views,
            from,
            to,
            out,
            state_dir,
        } => {
            let started = Instant::now();
            if pipelines::replay::REBUILDABLE.contains(&view.as_str()) {
                use pipelines::replay::Position;
                anyhow::ensure!(
                    matches!(from, Position::Earliest) && matches!(to, Position::Latest),
                    "a state store is the fold of its whole event log: --from earliest --to latest only ({view})"
                );
                let r = pipelines::replay::replay_store(
                    &cluster.cluster(),
                    rt.handle(),
                    &view,
                    check,
                    true,
                    state_dir.as_deref(),
                )?;
                eprintln!(
                    "Folded {} events of {} into {} {view} states in {:.1?}.",
                    r.events,
                    r.events_topic,
                    r.states,
                    started.elapsed()
                );
                return match r.differing {
                    Some(d) if d.is_empty() => {
                        let source = match &state_dir {
                            Some(dir) => format!(
                                "the restore from {} ({} records from local snapshots)",
                                dir.display(),
                                r.from_snapshot
                            ),
                            None => "the changelog".to_owned(),
                        };
                        println!("{view}: {source} equals the fold of {}", r.events_topic);
                        Ok(())
                    }
                    Some(d) => anyhow::bail!(
                        "{view}: {} states differ between the changelog and the fold of {}: {}",
                        d.len(),
                        r.events_topic,
                        d.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                    ),
                    None => {
                        println!("{view}: wrote {} snapshots into its changelog", r.written);
                        eprintln!(
                            "Delete {view}'s local state directories (<state-dir>/{view}/) before it starts again: their snapshots describe the changelog as it was."
                        );
                        Ok(())
                    }
                };
            }
            anyhow::ensure!(
                !check,
                "--check applies to state stores ({:?})",
                pipelines::replay::REBUILDABLE
            );
            let r = pipelines::replay::replay_view(
                &cluster.cluster(),
                rt.handle(),
                &views,
                &view,
                from,
                to,
                out.as_deref(),
                true,
            )?;
            eprintln!(
                "Replayed {} events into {} in {:.1?} (up to offsets {:?}).",
                r.events,
                r.table.display(),
                started.elapsed(),
                r.to
            );
            Ok(())
        }
        Command::Offsets {
            command: OffsetsCommand::Show { cluster, group },
        } => {
            let cluster = cluster.cluster();
            let mut groups: Vec<(String, Vec<&str>)> = saga::groups()
                .into_iter()
                .map(|(g, t)| (g.to_owned(), t.to_vec()))
                .collect();
            groups.push((
                pipelines::topics::inventory::GROUP.to_owned(),
                vec![pipelines::topics::inventory::COMMANDS],
            ));
            if let Some(g) = group {
                groups.retain(|(name, _)| *name == g);
                anyhow::ensure!(!groups.is_empty(), "unknown group {g:?}");
            }
            println!(
                "{:<16} {:<24} {:>9} {:>10} {:>10} {:>8}",
                "group", "topic", "partition", "committed", "end", "lag"
            );
            for (g, topics) in groups {
                for pipelines::replay::GroupOffset {
                    topic,
                    partition: p,
                    committed: at,
                    end,
                } in pipelines::replay::show_offsets(&cluster, &g, &topics)?
                {
                    let lag = end - at.unwrap_or(0);
                    let at = at.map_or("-".to_owned(), |o| o.to_string());
                    println!("{g:<16} {topic:<24} {p:>9} {at:>10} {end:>10} {lag:>8}");
                }
            }
            Ok(())
        }
        Command::Offsets {
            command:
                OffsetsCommand::Reset {
                    cluster,
                    group,
                    topic,
                    to,
                },
        } => {
            let moved = pipelines::replay::reset_offsets(&cluster.cluster(), &group, &topic, to)?;
            println!("{group} on {topic} now at {moved:?}");
            Ok(())
        }
    }
}

async fn demo(commands: usize, seed: u64, views: PathBuf, orders: usize) -> anyhow::Result<()> {
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
        stats.commands, stats.events, stats.dead_letters
    );
    println!(
        "Query it yourself: supplystream query --views {} \"SELECT * FROM stock_levels LIMIT 5\"",
        views.display()
    );
    Ok(())
}

/// The order-fulfilment saga on the embedded broker: simulated orders with failures.
async fn demo_saga(
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

async fn run_compliance(
    cluster: Cluster,
    views: PathBuf,
    mut signals: Shutdown,
) -> anyhow::Result<()> {
    kafka::ensure_topics(&cluster, &inventory::topics(3)).await?;
    kafka::ensure_topics(&cluster, &saga::topics(3)).await?;
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

async fn run_saga(
    opts: saga::Options,
    participants: Vec<String>,
    views: bool,
    mut signals: Shutdown,
) -> anyhow::Result<()> {
    kafka::ensure_topics(&opts.cluster, &inventory::topics(opts.partitions)).await?;
    kafka::ensure_topics(&opts.cluster, &saga::topics(opts.partitions)).await?;
    let names: Vec<&str> = participants.iter().map(String::as_str).collect();
    let running = saga::spawn(&opts, &tokio::runtime::Handle::current(), &names, views)?;
    signals.wait(|| running.is_finished()).await;
    tokio::task::spawn_blocking(move || running.stop()).await??;
    eprintln!("Stopped.");
    Ok(())
}

async fn schemas_command(command: SchemasCommand) -> anyhow::Result<usize> {
    use pipelines::schemas_cli;
    match command {
        SchemasCommand::Check { registry, dir } => {
            let candidates = schemas_cli::candidates(dir.as_deref())?;
            schemas_cli::run(&schemas::Registry::new(&registry), &candidates, false).await
        }
        SchemasCommand::Register { registry, dir } => {
            let candidates = schemas_cli::candidates(dir.as_deref())?;
            schemas_cli::run(&schemas::Registry::new(&registry), &candidates, true).await
        }
        SchemasCommand::Config {
            registry,
            level,
            subject,
        } => {
            let parsed = schemas::registry::Compatibility::parse(&level)
                .with_context(|| format!("unknown compatibility level {level:?}"))?;
            schemas::Registry::new(&registry)
                .set_level(subject.as_deref(), parsed)
                .await?;
            println!(
                "{} is {}",
                subject.as_deref().unwrap_or("the global level"),
                parsed.name()
            );
            Ok(0)
        }
    }
}

async fn saga_show(saga_id: &str, views: &std::path::Path) -> anyhow::Result<()> {
    let engine = QueryEngine::open(views).await?;
    let quoted = saga_id.replace('\'', "''");
    let summary = format!(
        "SELECT saga_id, status, current_step, outcome, compensations, compensation_attempts, \
         started_at, updated_at FROM sagas WHERE saga_id = '{quoted}'"
    );
    let summary = engine.sql(&summary).await?;
    if summary.iter().map(|b| b.num_rows()).sum::<usize>() == 0 {
        anyhow::bail!(
            "no saga {saga_id:?} in the sagas view under {}",
            views.display()
        );
    }
    println!("{}", OutputFormat::Table.render(&summary)?);
    let steps = format!(
        "SELECT seq, occurred_at, service, step, detail, topic, \"partition\", \"offset\" \
         FROM saga_steps WHERE saga_id = '{quoted}' ORDER BY seq"
    );
    println!(
        "{}",
        OutputFormat::Table.render(&engine.sql(&steps).await?)?
    );
    Ok(())
}

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
struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Returns when a stop is requested or `finished()` holds (checked twice a second).
    async fn wait(&mut self, finished: impl Fn() -> bool) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => return,
                _ = self.terminate.recv() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => if finished() { return },
            }
        }
    }
}

async fn run(opts: Options, mut signals: Shutdown) -> anyhow::Result<()> {
    kafka::ensure_topics(&opts.cluster, &inventory::topics(opts.partitions)).await?;
    let running = inventory::spawn(&opts, &tokio::runtime::Handle::current());
    signals.wait(|| running.is_finished()).await;
    let stats = tokio::task::spawn_blocking(move || running.stop()).await??;
    eprintln!("Stopped: {stats:?}");
    Ok(())
}

async fn produce_file(cluster: Cluster, file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut text = String::new();
    match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => {
            text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            std::io::stdin().read_to_string(&mut text)?;
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let commands = produce::parse_lines(&text, now)?;
    kafka::ensure_topics(&cluster, &inventory::topics(3)).await?;
    load::produce_commands(&cluster, &commands).await?;
    eprintln!(
        "Produced {} commands to inventory.commands.",
        commands.len()
    );
    Ok(())
}

async fn query(sql: &str, views: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let engine = QueryEngine::open(views).await?;
    let batches = engine
        .sql(sql)
        .await
        .with_context(|| format!("views in {}: {:?}", views.display(), engine.tables()))?;
    let format = match format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    print!("{}", format.render(&batches)?);
    if matches!(format, OutputFormat::Table) {
        println!();
    }
    Ok(())
}
