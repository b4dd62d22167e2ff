//! The billing service's `ledger` view: every posting of `billing.events`, rebuilt from the
//! beginning of the topic when it starts (like the saga views) and kept current; its
//! checkpoint (positions on `billing.events`) is stored with the table for freshness and
//! read-your-writes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Registry;
use schemas::billing::BillingEvent;
use schemas::codec::Decoder;
use schemas::record::RecordUnion;
use schemas::saga::topics::BILLING_EVENTS;
use sinks::SnapshotTable;
use sinks::ledger::{self, LedgerRow};
use tokio::runtime::Handle;
use tracing::{info, info_span, warn};

use super::Options;
use crate::{Stop, kafka, wire};

/// Positions per topic and partition (the same shape as the saga views').
pub type Checkpoint = BTreeMap<String, BTreeMap<i32, i64>>;

/// The checkpoint stored with the `ledger` table under `views_dir`, if any.
pub fn checkpoint(views_dir: &std::path::Path) -> anyhow::Result<Option<Checkpoint>> {
    crate::freshness::stored(views_dir, ledger::VIEW)
}

/// Runs the ledger view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    let span = info_span!("view", name = ledger::VIEW);
    let _guard = span.enter();
    let table = SnapshotTable::open(&opts.views_dir, ledger::VIEW)?;
    let mut decoder = Decoder::<BillingEvent>::new(Registry::new(&opts.cluster.registry));
    let consumer: BaseConsumer = kafka::consumer_config(&opts.cluster, "ledger-view").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka::partition_count(&consumer, BILLING_EVENTS)? as i32 {
        tpl.add_partition_offset(BILLING_EVENTS, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut rows: Vec<LedgerRow> = Vec::new();
    // Events published twice (at-least-once) post once.
    let mut seen: HashSet<String> = HashSet::new();
    let mut checkpoint = Checkpoint::new();
    let mut dirty = true;
    let mut last_flush = Instant::now();
    info!("Ledger view started (rebuilding from the beginning of billing.events).");
    loop {
        let stopping = stop.is_stopped();
        for m in kafka::poll_batch(&consumer, 10_000, Duration::from_millis(100))? {
            match wire::decode(rt, &mut decoder, m.payload().unwrap_or_default(), stop) {
                Ok(e) => {
                    let meta = e.metadata();
                    if seen.insert(meta.event_id.clone()) {
                        let document = match &e {
                            BillingEvent::PaymentReceived(x) => x.payment_id.clone(),
                            BillingEvent::InvoiceIssued(x) => x.invoice_id.clone(),
                            BillingEvent::CreditNoteIssued(x) => x.credit_note_id.clone(),
                        };
                        let name = e.record_name();
                        for p in e.postings() {
                            rows.push(LedgerRow {
                                order_id: meta.aggregate_id.clone(),
                                entry: name.rsplit('.').next().unwrap_or(name).to_owned(),
                                document: document.clone(),
                                account: p.account.clone(),
                                debit_cents: p.debit_cents,
                                credit_cents: p.credit_cents,
                                occurred_at: meta.occurred_at,
                                event_id: meta.event_id.clone(),
                                partition: m.partition(),
                                offset: m.offset(),
                            });
                        }
                    }
                }
                Err(e) if e.is_transient() => return Err(e).context("registry unavailable"),
                Err(e) => warn!(partition = m.partition(), offset = m.offset(), error = %e,
                    "Undecodable billing event left out of the ledger view."),
            }
            dirty = true;
        }
        for e in consumer.position()?.elements() {
            if let Offset::Offset(o) = e.offset() {
                let at = checkpoint.entry(e.topic().to_owned()).or_default();
                if at.insert(e.partition(), o) != Some(o) {
                    dirty = true;
                }
            }
        }
        if dirty && (stopping || last_flush.elapsed() >= opts.view_flush) {
            table.replace(
                &ledger::to_batch(&rows)?,
                &serde_json::to_string(&checkpoint)?,
            )?;
            dirty = false;
            last_flush = Instant::now();
        }
        if stopping {
            return Ok(());
        }
    }
}
