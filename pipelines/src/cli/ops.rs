//! The operator's commands: feeding topics, schemas, the ownership map, the audit trail,
//! offsets and replays.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use pipelines::load::{self, LoadSpec};
use pipelines::replay::Position;
use pipelines::{Cluster, kafka, produce, saga};

use super::args::{ClusterArgs, MapFormat, SchemasCommand, SimArgs};

pub(crate) async fn schemas_command(command: SchemasCommand) -> anyhow::Result<usize> {
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

pub(crate) async fn produce_file(cluster: Cluster, file: Option<PathBuf>) -> anyhow::Result<()> {
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
    kafka::ensure_topics(&cluster, &pipelines::registry::topics_of(&["inventory"], 3)).await?;
    load::produce_commands(&cluster, &commands).await?;
    eprintln!(
        "Produced {} commands to inventory.commands.",
        commands.len()
    );
    Ok(())
}

/// `services`: the ownership map.
pub(crate) fn services(
    map: &pipelines::ownership::OwnershipMap,
    format: MapFormat,
    state_dir: &Path,
) -> anyhow::Result<()> {
    print!(
        "{}",
        match format {
            MapFormat::Text => map.render_text(state_dir),
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

/// `audit verify`: exit 1 naming the first record altered, removed or reordered.
pub(crate) fn audit_verify(views: &Path) -> anyhow::Result<()> {
    match sinks::audit::verify(views) {
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
    }
}

/// `schemas check|register|config`: exit 1 if any subject is refused.
pub(crate) async fn schemas(command: SchemasCommand) -> anyhow::Result<()> {
    let refused = schemas_command(command).await?;
    if refused > 0 {
        eprintln!("{refused} subjects refused.");
        std::process::exit(1);
    }
    Ok(())
}

/// `load`: generated commands to inventory.commands.
pub(crate) async fn load(
    cluster: &ClusterArgs,
    commands: usize,
    skus: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let spec = LoadSpec {
        commands,
        skus,
        seed,
        ..LoadSpec::default()
    };
    let cluster = cluster.cluster();
    kafka::ensure_topics(&cluster, &pipelines::registry::topics_of(&["inventory"], 3)).await?;
    let started = Instant::now();
    load::produce_commands(&cluster, &load::generate(&spec)).await?;
    eprintln!("Produced {commands} commands in {:.1?}.", started.elapsed());
    Ok(())
}

/// `simulate`: seeded orders with a mix of failures.
pub(crate) async fn simulate(
    cluster: &ClusterArgs,
    sim: &SimArgs,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let cluster = cluster.cluster();
    kafka::ensure_topics(&cluster, &pipelines::registry::topics(3)).await?;
    let simulation = saga::simulate::generate(&sim.spec());
    let started = Instant::now();
    saga::simulate::produce(&cluster, &simulation, rate).await?;
    eprintln!("Placed {} orders in {:.1?}.", sim.orders, started.elapsed());
    Ok(())
}

/// `replay`: a view rebuilt from its topic, or a store from its event log (`--check`:
/// compared with what a restart restores).
#[allow(clippy::too_many_arguments)]
pub(crate) fn replay(
    rt: &tokio::runtime::Handle,
    view: String,
    check: bool,
    cluster: &ClusterArgs,
    views: &Path,
    from: Position,
    to: Position,
    out: Option<PathBuf>,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    if pipelines::replay::rebuildable().contains(&view.as_str()) {
        use pipelines::replay::Position;
        anyhow::ensure!(
            matches!(from, Position::Earliest) && matches!(to, Position::Latest),
            "a state store is the fold of its whole event log: --from earliest --to latest only ({view})"
        );
        let r = pipelines::replay::replay_store(
            &cluster.cluster(),
            rt,
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
                let forgotten = match r.forgotten {
                    0 => String::new(),
                    n => format!(" ({n} ended sagas forgotten after their retention)"),
                };
                println!(
                    "{view}: {source} equals the fold of {}{forgotten}",
                    r.events_topic
                );
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
        pipelines::replay::rebuildable()
    );
    let r = pipelines::replay::replay_view(
        &cluster.cluster(),
        rt,
        views,
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

/// `offsets show`: committed offsets, ends and lag of every processor's group (or one).
pub(crate) fn offsets_show(cluster: &ClusterArgs, group: Option<String>) -> anyhow::Result<()> {
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

/// `dead-letters`: each service's DLQ, its count and latest dead letters with their reasons.
pub(crate) fn dead_letters(
    cluster: &ClusterArgs,
    service: Option<&str>,
    last: usize,
) -> anyhow::Result<()> {
    for s in pipelines::dead_letters::summary(&cluster.cluster(), service, last)? {
        println!("{} ({}): {} dead letters", s.topic, s.service, s.count);
        for d in &s.latest {
            let at = d
                .timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map_or("-".to_owned(), |t| {
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                });
            println!(
                "  {}@{} {at} {} {} by {}: {}",
                d.partition, d.offset, d.kind, d.source, d.by, d.reason
            );
        }
    }
    Ok(())
}

/// `offsets reset`: moves a stopped group's offsets on a topic.
pub(crate) fn offsets_reset(
    cluster: &ClusterArgs,
    group: &str,
    topic: &str,
    to: Position,
) -> anyhow::Result<()> {
    let moved = pipelines::replay::reset_offsets(&cluster.cluster(), group, topic, to)?;
    println!("{group} on {topic} now at {moved:?}");
    Ok(())
}
