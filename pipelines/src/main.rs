//! `supplystream`: run the services, feed them, and query their views.
//!
//! This file parses and dispatches; the commands live in [`cli`]: `args` (every command and
//! option), `run` (the long-running services, `serve`, stop signals), `demo`, `query`, `ops`
//! (feeding topics, schemas, the ownership map, audit, offsets, replays).

mod cli;

use clap::Parser;
use cli::args::{AuditCommand, Cli, Command, OffsetsCommand, SagaCommand, Service};
use cli::run::Shutdown;
use pipelines::saga;

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
    use pipelines::ownership::Registered;
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
                let views: Vec<&str> = saga::view_pipelines(&names).map(|v| v.0).collect();
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
        } => rt.block_on(cli::run::serve(
            cluster.cluster(),
            views,
            &listen,
            ownership()?,
            signals(),
        )),
        Command::Services { format, state_dir } => {
            cli::ops::services(&ownership()?, format, &state_dir)
        }
        Command::Demo {
            commands,
            seed,
            views,
            orders,
        } => rt.block_on(cli::demo::demo(commands, seed, views, orders)),
        Command::Run {
            service,
            cluster,
            run,
            saga,
        } => match service {
            Service::Inventory => rt.block_on(cli::run::run(
                cli::run::inventory_options(&cluster, &run, &saga)?,
                signals(),
            )),
            Service::Saga => rt.block_on(cli::run::run_saga(
                cli::run::saga_options(&cluster, &run, &saga)?,
                saga.participants,
                !saga.no_views,
                signals(),
            )),
            Service::Compliance => rt.block_on(cli::run::run_compliance(
                cluster.cluster(),
                run.views,
                signals(),
            )),
        },
        Command::Simulate { cluster, sim, rate } => {
            rt.block_on(cli::ops::simulate(&cluster, &sim, rate))
        }
        Command::Saga {
            command: SagaCommand::Show { saga_id, views },
        } => rt.block_on(cli::query::saga_show(&saga_id, &views)),
        Command::Audit {
            command: AuditCommand::Verify { views },
        } => cli::ops::audit_verify(&views),
        Command::Schemas { command } => rt.block_on(cli::ops::schemas(command)),
        Command::Produce { cluster, file } => {
            rt.block_on(cli::ops::produce_file(cluster.cluster(), file))
        }
        Command::Load {
            cluster,
            commands,
            skus,
            seed,
        } => rt.block_on(cli::ops::load(&cluster, commands, skus, seed)),
        Command::Query {
            sql,
            views,
            format,
            as_of: None,
            ..
        } => rt.block_on(cli::query::query(&sql, &views, format)),
        Command::Query {
            sql,
            format,
            as_of: Some(at),
            brokers,
            registry,
            ..
        } => cli::query::query_as_of(&rt, &sql, format, &at, brokers, registry),
        Command::Replay {
            view,
            check,
            cluster,
            views,
            from,
            to,
            out,
            state_dir,
        } => cli::ops::replay(
            rt.handle(),
            view,
            check,
            &cluster,
            &views,
            from,
            to,
            out,
            state_dir,
        ),
        Command::DeadLetters {
            cluster,
            service,
            last,
        } => cli::ops::dead_letters(&cluster, service.as_deref(), last),
        Command::Offsets {
            command: OffsetsCommand::Show { cluster, group },
        } => cli::ops::offsets_show(&cluster, group),
        Command::Offsets {
            command:
                OffsetsCommand::Reset {
                    cluster,
                    group,
                    topic,
                    to,
                },
        } => cli::ops::offsets_reset(&cluster, &group, &topic, to),
    }
}
