//! The catalog service's `products` view: the [`Products`](processors::catalog::products)
//! projection of `catalog.events`, resumed from its table.

use schemas::saga::topics::CATALOG_EVENTS;
use tokio::runtime::Handle;

use super::Options;
use crate::Stop;
use crate::view::TopicView;

/// The view's declaration.
pub(crate) struct ProductsView;

impl TopicView for ProductsView {
    type Event = <Self::Projection as processors::Projection>::Event;
    type Projection = processors::catalog::products::Products;
    type Table = sinks::products::ProductsTable;
    const TOPIC: &'static str = CATALOG_EVENTS;
    const GROUP: &'static str = "products-view";
}

/// Runs the view until `stop`, flushing once more on the way out. Blocking.
pub fn run(opts: &Options, rt: &Handle, stop: &Stop) -> anyhow::Result<()> {
    super::run_topic_view::<ProductsView>(Default::default(), opts, rt, stop)
}
