//! What the dead-letter topics hold (`supplystream dead-letters`): per service, how many
//! records its DLQ has and the latest ones with their reasons. Every bad input ends on its
//! service's DLQ with the reason in headers ([`crate::topics::dlq_headers`]); this is where
//! an operator sees them without a Kafka tool, and sees them counted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use crate::Cluster;
use crate::kafka;
use crate::registry::{self, Kind};
use crate::topics::dlq_headers;

/// One dead letter, as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// When it was written (epoch ms), if the record says.
    pub timestamp: Option<i64>,
    /// `dlq.error.kind` (e.g. `malformed`, `invalid-command`, `output-too-large`).
    pub kind: String,
    pub reason: String,
    /// Where the bad input was read: `<topic>/<partition>@<offset>`.
    pub source: String,
    /// The pipeline that dead-lettered it (`dlq.service`).
    pub by: String,
}

/// A service's dead-letter topic: how many records it holds and the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub service: &'static str,
    pub topic: &'static str,
    /// Records read (committed ones: a transaction's markers and aborted records are not
    /// dead letters).
    pub count: u64,
    /// The latest `last`, oldest first.
    pub latest: Vec<DeadLetter>,
}

/// Reads every service's DLQ (or `service`'s only) to its end: its count and its latest
/// `last` dead letters. A DLQ not created yet counts 0; a cluster that cannot be reached is
/// an error, not 0.
pub fn summary(
    cluster: &Cluster,
    service: Option<&str>,
    last: usize,
) -> anyhow::Result<Vec<Summary>> {
    if let Some(name) = service {
        anyhow::ensure!(
            registry::SERVICES.iter().any(|s| s.name == name),
            "no service {name:?} (services: {})",
            registry::SERVICES
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let probe = kafka::Probe::new(cluster)?;
    let client: BaseConsumer = kafka::client_config(cluster).create()?;
    let existing: BTreeSet<String> = client
        .fetch_metadata(None, Duration::from_secs(10))
        .context("listing the cluster's topics")?
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    let mut out = Vec::new();
    for s in registry::SERVICES {
        if service.is_some_and(|name| name != s.name) {
            continue;
        }
        for t in s.topics.iter().filter(|t| t.kind == Kind::Dlq) {
            let (mut count, mut latest) = (0u64, VecDeque::new());
            // Not created yet (its service has not started): nothing dead-lettered.
            let partitions = if existing.contains(t.name) {
                kafka::high_watermarks(&probe, t.name)?
            } else {
                BTreeMap::new()
            };
            for (&p, &end) in &partitions {
                if end == 0 {
                    continue;
                }
                kafka::read_partition_to_end(
                    cluster,
                    "supplystream-dead-letters",
                    t.name,
                    p,
                    |m| {
                        count += 1;
                        let header = |name: &str| -> String {
                            m.headers()
                                .and_then(|h| {
                                    h.iter()
                                        .find(|h| h.key == name)
                                        .and_then(|h| h.value)
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                })
                                .unwrap_or_default()
                        };
                        latest.push_back(DeadLetter {
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp: m.timestamp().to_millis(),
                            kind: header(dlq_headers::KIND),
                            reason: header(dlq_headers::REASON),
                            source: format!(
                                "{}/{}@{}",
                                header(dlq_headers::SOURCE_TOPIC),
                                header(dlq_headers::SOURCE_PARTITION),
                                header(dlq_headers::SOURCE_OFFSET)
                            ),
                            by: header(dlq_headers::SERVICE),
                        });
                        if latest.len() > last {
                            latest.pop_front();
                        }
                        Ok(())
                    },
                )?;
            }
            out.push(Summary {
                service: s.name,
                topic: t.name,
                count,
                latest: latest.into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_service_is_refused_naming_the_services() {
        // Refused before any client is made: no cluster needed.
        let cluster = Cluster {
            brokers: "127.0.0.1:1".into(),
            registry: "http://127.0.0.1:1".into(),
            guarantee: crate::Guarantee::ExactlyOnce,
            kafka: Vec::new(),
        };
        let e = summary(&cluster, Some("warehouse"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no service \"warehouse\"") && e.contains("inventory"),
            "{e}"
        );
    }
}
