//! `supplystream`: run the services, feed them, and query their views.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pipelines::embedded::Embedded;
use pipelines::inventory::{self, Options};
use pipelines::load::{self, LoadSpec};
use pipelines::{Cluster, Guarantee, kafka, produce};
use sinks::{OutputFormat, QueryEngine};

#[derive(Parser)]
#[command(
    name = "supplystream",
    version,
    about = "The data layer of a supply chain, as streams."
)]
struct Cli {
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
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Service {
    Inventory,
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
    },
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
    match Cli::parse().command {
        Command::Demo {
            commands,
            seed,
            views,
        } => rt.block_on(demo(commands, seed, views)),
        Command::Run {
            service: Service::Inventory,
            cluster,
            views,
            instance,
            partitions,
            batch_size,
        } => rt.block_on(run(
            cluster.cluster(),
            views,
            instance,
            partitions,
            batch_size,
        )),
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
        Command::Query { sql, views, format } => rt.block_on(query(&sql, &views, format)),
    }
}

async fn demo(commands: usize, seed: u64, views: PathBuf) -> anyhow::Result<()> {
    if views.exists() {
        std::fs::remove_dir_all(&views).with_context(|| format!("clearing {}", views.display()))?;
    }
    let embedded = Embedded::start().await?;
    let cluster = embedded.cluster();
    eprintln!(
        "Embedded broker at {}, schema registry at {}.",
        cluster.brokers, cluster.registry
    );
    let opts = Options::new(cluster.clone(), views.clone());
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
    let stats = running.stop()?;
    eprintln!(
        "Processed {} commands into {} events ({} dead-lettered) in {:.1?}.",
        stats.commands,
        stats.events,
        stats.dead_letters,
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
    println!(
        "Query it yourself: supplystream query --views {} \"SELECT * FROM stock_levels LIMIT 5\"",
        views.display()
    );
    Ok(())
}

async fn run(
    cluster: Cluster,
    views: PathBuf,
    instance: String,
    partitions: i32,
    batch_size: usize,
) -> anyhow::Result<()> {
    kafka::ensure_topics(&cluster, &inventory::topics(partitions)).await?;
    let mut opts = Options::new(cluster, views);
    opts.instance = instance;
    opts.partitions = partitions;
    opts.batch_size = batch_size;
    let running = inventory::spawn(&opts, &tokio::runtime::Handle::current());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => if running.is_finished() { break },
        }
    }
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
