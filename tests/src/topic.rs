//! Reading a whole topic (read_committed) for assertions.

use std::time::{Duration, Instant};

use pipelines::Cluster;
use pipelines::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

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

/// Every committed record of `topic`, partition by partition in offset order.
pub fn read_all(cluster: &Cluster, topic: &str) -> anyhow::Result<Vec<Record>> {
    let mut config = kafka::consumer_config(cluster, "integration-reader");
    config.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create()?;
    let n = kafka::partition_count(&consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = std::collections::BTreeSet::new();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} did not reach the end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => records.push(Record {
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
            }),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
