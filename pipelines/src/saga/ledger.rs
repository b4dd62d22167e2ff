//! The billing service's `ledger` view: every posting of `billing.events`, kept current. Its
//! rows are its whole fold state (the event ids seen are theirs), so a restart resumes from
//! the table and the positions stored with it instead of reading the topic again.

use std::collections::HashSet;

use schemas::billing::BillingEvent;
use schemas::record::RecordUnion;
use schemas::saga::topics::BILLING_EVENTS;
use sinks::ledger::{self, LedgerRow};
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

#[derive(Default)]
pub(crate) struct Ledger {
    rows: Vec<LedgerRow>,
    /// Events published twice (at-least-once) post once.
    seen: HashSet<String>,
}

impl TopicView for Ledger {
    type Event = BillingEvent;
    const VIEW: &'static str = ledger::VIEW;
    const TOPIC: &'static str = BILLING_EVENTS;
    const GROUP: &'static str = "ledger-view";

    fn fold(&mut self, partition: i32, offset: i64, e: BillingEvent) {
        let meta = e.metadata();
        if !self.seen.insert(meta.event_id.clone()) {
            return;
        }
        let document = match &e {
            BillingEvent::PaymentReceived(x) => &x.payment_id,
            BillingEvent::InvoiceIssued(x) => &x.invoice_id,
            BillingEvent::CreditNoteIssued(x) => &x.credit_note_id,
        };
        let name = e.record_name();
        for p in e.postings() {
            self.rows.push(LedgerRow {
                order_id: meta.aggregate_id.clone(),
                entry: name.rsplit('.').next().unwrap_or(name).to_owned(),
                document: document.clone(),
                account: p.account.clone(),
                debit_cents: p.debit_cents,
                credit_cents: p.credit_cents,
                occurred_at: meta.occurred_at,
                event_id: meta.event_id.clone(),
                partition,
                offset,
            });
        }
    }

    fn batch(&self) -> anyhow::Result<arrow::record_batch::RecordBatch> {
        Ok(ledger::to_batch(&self.rows)?)
    }

    const RESUMES: bool = true;

    fn resume(&mut self, table: &[arrow::record_batch::RecordBatch]) -> anyhow::Result<()> {
        let rows = ledger::from_batches(table)?;
        self.seen = rows.iter().map(|r| r.event_id.clone()).collect();
        self.rows = rows;
        Ok(())
    }
}

/// Runs the ledger view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view(Ledger::default(), opts, rt, stop)
}
