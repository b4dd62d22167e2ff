//! Reading a whole topic (read_committed) for assertions.

use anyhow::Context;
use pipelines::Cluster;
use pipelines::kafka;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms since epoch; create time).
    pub timestamp: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// Value of header `key`, if present.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every committed record of `topic`, partition by partition in offset order: each
/// partition is read until the reader's position reaches the high watermark it had at the
/// start (positions step over transaction markers), as a restore reads a changelog.
pub fn read_all(cluster: &Cluster, topic: &str) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = kafka::consumer_config(cluster, "integration-reader").create()?;
    let n = kafka::partition_count(&consumer, topic)?;
    let mut records = Vec::new();
    for p in 0..n as i32 {
        kafka::read_partition_to_end(cluster, "integration-reader", topic, p, |m| {
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis().unwrap_or(0),
                key: m.key().unwrap_or_default().to_vec(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            Ok(())
        })
        .with_context(|| format!("reading {topic}/{p}"))?;
    }
    Ok(records)
}
