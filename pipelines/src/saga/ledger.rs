//! The billing service's `ledger` view: the [`Ledger`](processors::billing::ledger) projection
//! of `billing.events`, resumed from its table.

use schemas::saga::topics::BILLING_EVENTS;
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

/// The view's declaration.
pub(crate) struct LedgerView;

impl TopicView for LedgerView {
    type Event = <Self::Projection as processors::Projection>::Event;
    type Projection = processors::billing::ledger::Ledger;
    type Table = sinks::ledger::LedgerTable;
    const TOPIC: &'static str = BILLING_EVENTS;
    const GROUP: &'static str = "ledger-view";
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view::<LedgerView>(Default::default(), opts, rt, stop)
}
