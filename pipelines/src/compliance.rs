//! The compliance service: the `audit_trail` view over every event log of every service.
//!
//! It reads every partition of every event topic (read_committed), turns each record into a
//! who/what/when/correlation row hash-chained to the previous row of its partition, and appends
//! the rows as a new Parquet part at most every `flush` — each part carrying the positions and
//! chain heads it reflects, so a restart resumes exactly where the last part ends (nothing
//! lost, nothing twice). `supplystream audit verify` recomputes the chains.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::codec::{DecodeError, Decoder};
use schemas::common::HasMetadata;
use schemas::inventory::{InventoryEvent, InventoryReply};
use schemas::notifications::NotificationEvent;
use schemas::orders::OrderEvent;
use schemas::payments::PaymentReply;
use schemas::record::RecordUnion;
use schemas::shipping::ShipmentReply;
use schemas::{Metadata, Registry};
use sinks::audit::{AuditRow, AuditTable, Checkpoint, head_key, sha256};
use tokio::runtime::Handle;
use tracing::{error, info, info_span, warn};

use crate::{Cluster, Stop, kafka, wire};

/// The compliance service's pipeline (its consumer group).
pub const GROUP: &str = "compliance";

/// Every event log compliance audits, in the registry's order: the topics
/// [`crate::registry::audited`] derives (a unit test holds them equal), listed here because
/// each needs its decoder ([`decoder_for`]); the owner of each comes from the registry.
pub const EVENT_TOPICS: &[&str] = &[
    "inventory.events",
    "inventory.replies",
    "inventory.alerts",
    "orders.events",
    "payments.replies",
    "shipping.replies",
    "shipping.tracking",
    "notifications.events",
    "billing.events",
    "catalog.events",
    "suppliers.events",
    "returns.events",
];

/// Small audit parts merged at a time (see `AuditTable::compact`).
const COMPACT_RUN: usize = 16;

/// Options of the compliance service.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: Cluster,
    pub views_dir: PathBuf,
    /// How often new rows are appended.
    pub flush: Duration,
}

/// Decodes any record of one topic down to its name and metadata.
trait MetaDecoder: Send {
    fn decode(
        &mut self,
        rt: &Handle,
        payload: &[u8],
        stop: &Stop,
    ) -> Result<(&'static str, Metadata), DecodeError>;
}

impl<T: RecordUnion + HasMetadata> MetaDecoder for Decoder<T> {
    fn decode(
        &mut self,
        rt: &Handle,
        payload: &[u8],
        stop: &Stop,
    ) -> Result<(&'static str, Metadata), DecodeError> {
        wire::decode(rt, self, payload, stop).map(|v| (v.record_name(), v.metadata().clone()))
    }
}

fn decoder_for(topic: &str, registry: &Registry) -> Box<dyn MetaDecoder> {
    let r = registry.clone();
    match topic {
        "inventory.events" => Box::new(Decoder::<InventoryEvent>::new(r)),
        "inventory.replies" => Box::new(Decoder::<InventoryReply>::new(r)),
        "orders.events" => Box::new(Decoder::<OrderEvent>::new(r)),
        "payments.replies" => Box::new(Decoder::<PaymentReply>::new(r)),
        "shipping.replies" => Box::new(Decoder::<ShipmentReply>::new(r)),
        "billing.events" => Box::new(Decoder::<schemas::billing::BillingEvent>::new(r)),
        "catalog.events" => Box::new(Decoder::<schemas::products::CatalogEvent>::new(r)),
        "inventory.alerts" => Box::new(Decoder::<schemas::inventory::InventoryAlert>::new(r)),
        "suppliers.events" => Box::new(Decoder::<schemas::suppliers::SupplierEvent>::new(r)),
        "shipping.tracking" => Box::new(Decoder::<schemas::shipping::TrackingEvent>::new(r)),
        "notifications.events" => Box::new(Decoder::<NotificationEvent>::new(r)),
        "returns.events" => Box::new(Decoder::<schemas::returns::ReturnEvent>::new(r)),
        other => unreachable!("compliance has no decoder for {other}: add it to decoder_for"),
    }
}

/// Runs the compliance service until `stop`, appending once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let span = info_span!("compliance");
    let _guard = span.enter();
    let table = AuditTable::open(&opts.views_dir)?;
    // Leftovers of a compaction cut short go first (readers already ignore them).
    let mut compacting = compact(&table, true);
    let mut checkpoint = table.checkpoint()?.unwrap_or_default();
    let registry = Registry::new(&opts.cluster.registry);
    let mut decoders: BTreeMap<&str, (&str, Box<dyn MetaDecoder>)> = EVENT_TOPICS
        .iter()
        .map(|t| {
            let owner = crate::registry::owner_of(t).unwrap_or("?");
            (*t, (owner, decoder_for(t, &registry)))
        })
        .collect();
    let consumer: BaseConsumer = kafka::consumer_config(&opts.cluster, GROUP).create()?;
    let probe = kafka::Probe::new(&opts.cluster)?;
    let mut tpl = TopicPartitionList::new();
    for topic in EVENT_TOPICS {
        for p in 0..kafka::partition_count(&consumer, topic)? as i32 {
            let at = checkpoint.positions.get(*topic).and_then(|m| m.get(&p));
            tpl.add_partition_offset(
                topic,
                p,
                at.map_or(Offset::Beginning, |o| Offset::Offset(*o)),
            )?;
        }
    }
    consumer.assign(&tpl)?;
    info!(resume = ?checkpoint.positions, "Compliance service started.");
    let mut pending: Vec<AuditRow> = Vec::new();
    let mut last_flush = Instant::now();
    let mut drain: Option<Drain> = None;
    loop {
        if drain.is_none() && stop.is_stopped() {
            drain = Some(Drain::new(&probe));
        }
        let batch = kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))?;
        let got = !batch.is_empty();
        for m in batch {
            let (service, decoder) = decoders.get_mut(m.topic()).expect("assigned topics only");
            let payload = m.payload().unwrap_or_default();
            let mut row = AuditRow {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                service: (*service).to_owned(),
                payload_sha256: sha256(payload),
                ..AuditRow::default()
            };
            match decoder.decode(rt, payload, stop) {
                Ok((record, meta)) => {
                    row.record = record.to_owned();
                    row.event_id = meta.event_id;
                    row.aggregate_id = meta.aggregate_id;
                    row.correlation_id = meta.correlation_id;
                    row.causation_id = meta.causation_id;
                    row.saga_id = meta.saga_id;
                    row.tenant_id = meta.tenant_id;
                    row.occurred_at = meta.occurred_at;
                }
                Err(e) if e.is_transient() => anyhow::bail!("registry unavailable: {e}"),
                // The trail must be complete: an unreadable record is recorded as such.
                Err(e) => {
                    warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e, "Undecodable event audited as such.");
                    row.record = format!("<undecodable: {}>", e.kind());
                }
            }
            let key = head_key(&row.topic, row.partition);
            let prev = checkpoint.heads.get(&key).cloned().unwrap_or_default();
            let row = row.link(&prev);
            checkpoint.heads.insert(key, row.hash.clone());
            pending.push(row);
        }
        let stopping = match &mut drain {
            Some(d) => d.done(&consumer, &checkpoint, got)?,
            None => false,
        };
        if !pending.is_empty() && (stopping || last_flush.elapsed() >= opts.flush) {
            kafka::note_positions(&consumer, &mut checkpoint.positions)?;
            table.append(&pending, &checkpoint)?;
            pending.clear();
            // Small parts (one per flush) do not pile up: merge a run of them now and then.
            compacting = compact(&table, compacting);
            last_flush = Instant::now();
        }
        if stopping {
            return Ok(());
        }
    }
}

/// A clean stop audits what was written before it: it goes on until every partition is read
/// to the end it had when the stop came (positions step over transaction markers, so they
/// reach it), or reading made no progress for [`QUIET`] (a partition held back by another
/// producer's open transaction: `read_committed` stops at its last stable offset, and a stop
/// does not wait for someone else's commit), or [`STOP_DRAIN`] passed. Stopping at the first
/// empty poll could leave the trail a fetch behind the logs until the next start.
struct Drain {
    ends: BTreeMap<String, BTreeMap<i32, i64>>,
    deadline: Instant,
    last_progress: Instant,
    behind: i64,
}

/// Longest a clean stop goes on auditing.
const STOP_DRAIN: Duration = Duration::from_secs(10);
/// No progress for this long during a stop: the rest is held back, not on its way.
const QUIET: Duration = Duration::from_secs(3);

impl Drain {
    /// The ends to reach; none (stop at once) if they cannot be read (the broker is down:
    /// what is not audited now is on the next start).
    fn new(probe: &kafka::Probe) -> Self {
        let now = Instant::now();
        let mut ends = BTreeMap::new();
        for topic in EVENT_TOPICS {
            match kafka::high_watermarks(probe, topic) {
                Ok(e) => {
                    ends.insert(topic.to_string(), e);
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "Stopping without reading on: the ends of the event logs cannot be read.");
                    ends.clear();
                    break;
                }
            }
        }
        Drain {
            ends,
            deadline: now + STOP_DRAIN,
            last_progress: now,
            behind: i64::MAX,
        }
    }

    fn done(
        &mut self,
        consumer: &BaseConsumer,
        checkpoint: &Checkpoint,
        got: bool,
    ) -> anyhow::Result<bool> {
        let now = Instant::now();
        let mut at = checkpoint.positions.clone();
        kafka::note_positions(consumer, &mut at)?;
        let behind: i64 = self
            .ends
            .iter()
            .flat_map(|(t, ends)| ends.iter().map(move |(p, end)| (t, p, *end)))
            .map(|(t, p, end)| {
                let read = at.get(t).and_then(|m| m.get(p)).copied().unwrap_or(0);
                (end - read).max(0)
            })
            .sum();
        if got || behind < self.behind {
            self.last_progress = now;
        }
        self.behind = behind;
        let done = behind == 0 || now - self.last_progress >= QUIET || now >= self.deadline;
        if done && behind > 0 && now >= self.deadline {
            warn!(
                behind,
                "Stopped before auditing everything written before the stop; the next start goes on from there."
            );
        }
        Ok(done)
    }
}

/// Merges a run of small parts if `compacting`; returns whether to go on compacting. A part
/// that fails its digest is evidence: it is left as it is, compaction stops for the life of
/// the process with an error in the log, and the trail goes on being appended to.
fn compact(table: &AuditTable, compacting: bool) -> bool {
    if !compacting {
        return false;
    }
    match table.compact(COMPACT_RUN) {
        Ok(0) => true,
        Ok(merged) => {
            info!(parts = merged, "Audit trail parts merged.");
            true
        }
        Err(e) => {
            error!(error = %e, "Audit trail compaction stopped; appends go on. Run `supplystream audit verify`.");
            false
        }
    }
}

/// The compliance service on its own thread.
pub fn spawn(
    opts: &Options,
    rt: &Handle,
    stop: &Stop,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let (o, r, s) = (opts.clone(), rt.clone(), stop.clone());
    std::thread::Builder::new()
        .name("compliance".into())
        .spawn(move || run(&o, &r, &s))
        .expect("spawning a thread")
}
