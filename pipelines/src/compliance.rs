//! The compliance service: the `audit_trail` view over every event log of every service.
//!
//! It reads every partition of every event topic (read_committed), turns each record into a
//! who/what/when/correlation row hash-chained to the previous row of its partition, and appends
//! the rows as a new Parquet part at most every `flush` — each part carrying the positions and
//! chain heads it reflects, so a restart resumes exactly where the last part ends (nothing
//! lost, nothing twice). `supplystream audit verify` recomputes the chains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};
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

use crate::view::{Positions, Sink, View};
use crate::{Cluster, Stop, wire};

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

/// The audit trail as a view on the one view loop: it folds every record of every event log
/// into a hash-chained row and appends the rows since the last write as a part
/// ([`Sink::Append`]), each part carrying the positions and chain heads it reflects. A clean
/// stop reads on to the ends the logs had when it came ([`View::DRAIN_ON_STOP`]).
pub struct AuditView {
    table: Option<AuditTable>,
    /// Where the chains stand (the heads), and the positions of the last part written.
    checkpoint: Checkpoint,
    decoders: BTreeMap<&'static str, (&'static str, Box<dyn MetaDecoder>)>,
    pending: Vec<AuditRow>,
    compacting: bool,
}

impl AuditView {
    pub fn new(registry: &Registry) -> Self {
        AuditView {
            table: None,
            checkpoint: Checkpoint::default(),
            decoders: EVENT_TOPICS
                .iter()
                .map(|t| {
                    let owner = crate::registry::owner_of(t).unwrap_or("?");
                    (*t, (owner, decoder_for(t, registry)))
                })
                .collect(),
            pending: Vec::new(),
            compacting: true,
        }
    }
}

impl View for AuditView {
    const PIPELINE: &'static str = GROUP;
    /// None: the trail records an undecodable record as a row of its own
    /// (`<undecodable: kind>`, with the payload's hash), which is where an auditor looks.
    const DLQ: Option<(&'static str, &'static str)> = None;
    const TOPICS: &'static [&'static str] = EVENT_TOPICS;
    const TABLES: &'static [&'static str] = &[sinks::audit::VIEW];
    const SINK: Sink = Sink::Append;
    const DRAIN_ON_STOP: bool = true;

    fn fold(
        &mut self,
        rt: &Handle,
        stop: &Stop,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), DecodeError> {
        let (service, decoder) = self
            .decoders
            .get_mut(m.topic())
            .expect("assigned topics only");
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
            // Stopped during a registry outage: nothing of it is audited yet.
            Err(e) if e.is_transient() => return Err(e),
            // The trail must be complete: an unreadable record is recorded as such.
            Err(e) => {
                warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e, "Undecodable event audited as such.");
                row.record = format!("<undecodable: {}>", e.kind());
            }
        }
        let key = head_key(&row.topic, row.partition);
        let prev = self.checkpoint.heads.get(&key).cloned().unwrap_or_default();
        let row = row.link(&prev);
        self.checkpoint.heads.insert(key, row.hash.clone());
        self.pending.push(row);
        Ok(())
    }

    fn batches(&self) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
        anyhow::bail!("the audit trail is appended to, never replaced")
    }

    fn open_appended(&mut self, views_dir: &Path) -> anyhow::Result<Option<Positions>> {
        let table = AuditTable::open(views_dir)?;
        // Leftovers of a compaction cut short go first (readers already ignore them).
        self.compacting = compact(&table, true);
        let stored = table.checkpoint()?;
        self.checkpoint = stored.clone().unwrap_or_default();
        self.table = Some(table);
        info!(resume = ?self.checkpoint.positions, "Compliance service started.");
        Ok(stored.map(|c| c.positions))
    }

    fn append(&mut self, positions: &Positions) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let table = self.table.as_ref().expect("opened before the first write");
        self.checkpoint.positions = positions.clone();
        table.append(&self.pending, &self.checkpoint)?;
        self.pending.clear();
        // Small parts (one per flush) do not pile up: merge a run of them now and then.
        self.compacting = compact(table, self.compacting);
        Ok(())
    }
}

/// Runs the compliance service until `stop`, appending once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let span = info_span!("compliance");
    let _guard = span.enter();
    let settings = crate::view::Settings {
        cluster: opts.cluster.clone(),
        instance: "0".into(),
        views_dir: opts.views_dir.clone(),
        flush: opts.flush,
    };
    let registry = Registry::new(&opts.cluster.registry);
    crate::view::run(|| AuditView::new(&registry), &settings, rt, stop)
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
