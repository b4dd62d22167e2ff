//! How fresh each view is, and read-your-writes across the CQRS split.
//!
//! Every view stores, with its data, the topic positions it reflects (next offset to read;
//! consumer positions, which step over transaction markers, so a caught-up view's positions
//! equal the high watermarks). A command written through the API is answered with a token,
//! `<topic>@<partition>:<offset>`. A query that carries it waits until
//! 1. the service that consumes the command topic has committed past the offset: with
//!    transactions its events are then committed too (same transaction), so every event the
//!    command caused lies below the event topics' high watermarks read at that moment;
//! 2. every view the query reads has reached those high watermarks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::Cluster;
use crate::kafka::{self, TX_TIMEOUT};

/// Positions per topic and partition.
pub use crate::view::Positions;

/// The topics each view folds (what its freshness is measured against): the reads of the
/// pipeline that builds it, from the service registry.
pub fn view_inputs(view: &str) -> Option<Vec<&'static str>> {
    crate::registry::view_inputs(view).map(<[&str]>::to_vec)
}

/// Views whose freshness is known: every view of the registry.
pub fn views() -> Vec<&'static str> {
    crate::registry::views().collect()
}

/// The positions stored with `view` under `views_dir` (`None`: the view does not exist yet).
/// Every view but the audit trail (an append-only log of parts with its own manifest) keeps
/// them in the one checkpoint format of the view loop.
pub fn view_positions(views_dir: &Path, view: &str) -> anyhow::Result<Option<Positions>> {
    if !views_dir.join(view).exists() {
        return Ok(None);
    }
    if view == sinks::audit::VIEW {
        return Ok(sinks::audit::AuditTable::open(views_dir)?
            .checkpoint()?
            .map(|c| c.positions));
    }
    crate::view::checkpoint(views_dir, view)
}

/// One row of the `views` system table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub view: String,
    pub topic: String,
    pub partition: i32,
    /// Next offset the view will fold (`None`: nothing folded yet).
    pub position: Option<i64>,
    /// The topic's high watermark.
    pub end: i64,
}

impl Freshness {
    /// Offsets not yet folded (transaction markers included, so ≥ the records left).
    pub fn lag(&self) -> i64 {
        (self.end - self.position.unwrap_or(0)).max(0)
    }
}

/// Freshness of every known view under `views_dir`, per input partition.
pub fn freshness(cluster: &Cluster, views_dir: &Path) -> anyhow::Result<Vec<Freshness>> {
    let probe = kafka::Probe::new(cluster)?;
    let mut ends: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut rows = Vec::new();
    for view in views() {
        let Some(positions) = view_positions(views_dir, view)? else {
            continue;
        };
        for topic in view_inputs(view).unwrap_or_default() {
            if !ends.contains_key(topic) {
                ends.insert(topic, kafka::high_watermarks(&probe, topic)?);
            }
            for (p, end) in &ends[topic] {
                rows.push(Freshness {
                    view: (*view).to_owned(),
                    topic: topic.to_owned(),
                    partition: *p,
                    position: positions.get(topic).and_then(|ps| ps.get(p)).copied(),
                    end: *end,
                });
            }
        }
    }
    Ok(rows)
}

/// A write's position: `<topic>@<partition>:<offset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.topic, self.partition, self.offset)
    }
}

impl std::str::FromStr for Token {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an offset token (<topic>@<partition>:<offset>)");
        let (topic, rest) = s.rsplit_once('@').ok_or_else(bad)?;
        let (p, o) = rest.split_once(':').ok_or_else(bad)?;
        Ok(Token {
            topic: topic.to_owned(),
            partition: p.parse().map_err(|_| bad())?,
            offset: o.parse().map_err(|_| bad())?,
        })
    }
}

/// Waits (up to `timeout`) until `views` reflect the write at `token`: its consumer group
/// (`group`, the pipeline that processes the token's topic) has committed past it, and each
/// view has folded its input topics up to their ends as of that commit. Without a group (an
/// external event, folded by views directly) the ends are read at once: the write was
/// acknowledged, so they are past it.
pub fn wait_for(
    cluster: &Cluster,
    views_dir: &Path,
    token: &Token,
    group: Option<&str>,
    views: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    if let Some(group) = group {
        wait_committed(cluster, token, group, deadline, timeout)?;
    }
    let probe = kafka::Probe::new(cluster)?;
    for view in views {
        let Some(inputs) = view_inputs(view) else {
            continue;
        };
        let mut targets: Vec<(&str, BTreeMap<i32, i64>)> = Vec::new();
        for topic in inputs {
            targets.push((topic, kafka::high_watermarks(&probe, topic)?));
        }
        loop {
            let positions = view_positions(views_dir, view)?.unwrap_or_default();
            let behind: Vec<String> = targets
                .iter()
                .flat_map(|(topic, ends)| {
                    let positions = &positions;
                    ends.iter().filter_map(move |(p, end)| {
                        let at = positions.get(*topic).and_then(|ps| ps.get(p)).copied();
                        (at.unwrap_or(0) < *end)
                            .then(|| format!("{topic}/{p} at {} of {end}", at.unwrap_or(0)))
                    })
                })
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for view {view} to reach {token}: {}",
                    behind.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Waits until `group` has committed past `token`.
fn wait_committed(
    cluster: &Cluster,
    token: &Token,
    group: &str,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka::consumer_config(cluster, group).create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&token.topic, token.partition);
    loop {
        let committed = consumer
            .committed_offsets(tpl.clone(), TX_TIMEOUT)
            .with_context(|| format!("reading {group}'s committed offsets"))?;
        let at = match committed
            .find_partition(&token.topic, token.partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        };
        if at > token.offset {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {group} to process {token} (it has committed up to offset {at})"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_named() {
        let t: Token = "inventory.commands@2:4711".parse().unwrap();
        assert_eq!(
            t,
            Token {
                topic: "inventory.commands".into(),
                partition: 2,
                offset: 4711
            }
        );
        assert_eq!(t.to_string(), "inventory.commands@2:4711");
        assert!(
            "inventory.commands:2"
                .parse::<Token>()
                .unwrap_err()
                .contains("is not an offset token")
        );
    }

    #[test]
    fn every_view_with_freshness_names_its_inputs() {
        for v in views() {
            assert!(view_inputs(v).is_some_and(|t| !t.is_empty()), "{v}");
        }
    }
}
