//! `query` (SQL over the views, `--as-of` from the topics) and `saga show`.

use anyhow::Context;
use pipelines::{Cluster, Guarantee};
use sinks::{OutputFormat, QueryEngine};

use super::args::Format;

pub(crate) async fn query(
    sql: &str,
    views: &std::path::Path,
    format: Format,
) -> anyhow::Result<()> {
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

pub(crate) async fn saga_show(saga_id: &str, views: &std::path::Path) -> anyhow::Result<()> {
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

/// `query --as-of`: the SQL answered from the event-sourced views rebuilt up to `at`.
pub(crate) fn query_as_of(
    rt: &tokio::runtime::Runtime,
    sql: &str,
    format: Format,
    at: &str,
    brokers: Option<String>,
    registry: Option<String>,
) -> anyhow::Result<()> {
    let (Some(brokers), Some(registry)) = (brokers, registry) else {
        anyhow::bail!("--as-of rebuilds from the topics: give --brokers and --registry");
    };
    let cluster = Cluster {
        brokers,
        registry,
        guarantee: Guarantee::ExactlyOnce,
        kafka: Vec::new(),
    };
    let at: pipelines::replay::Position = at.parse().map_err(|e: String| anyhow::anyhow!(e))?;
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
    rt.block_on(query(sql, scratch.path(), format))
        .with_context(|| {
            format!(
                "--as-of answers from the event-sourced views only: {:?}",
                pipelines::replay::REPLAYABLE
            )
        })
}
