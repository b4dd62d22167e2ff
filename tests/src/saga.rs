//! The order-fulfilment saga end to end: simulated orders with forced failures, processed
//! while the services are interrupted, then checked from the topics themselves (not from the
//! services' own state) and from the views:
//! - every saga ends Confirmed or Cancelled, as its forced failure says;
//! - stock is conserved: a confirmed order holds exactly its lines, a cancelled one nothing;
//! - captured − refunded = the revenue of confirmed orders, per order and in total;
//! - exactly one notification per order, of the right kind;
//! - purchasing: every purchase order traces to the low-stock alert that caused it, each
//!   receipt is booked into inventory once, and on hand = received + purchase-order receipts
//!   − shipped, position by position;
//! - nothing was dead-lettered.
//!
//! Duplicates (the fault injection publishes every output twice) are recognized by event id,
//! as every consumer must.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pipelines::saga::simulate::{self, Intent, SimSpec, Simulation};
use pipelines::saga::{self, ProgressProbe};
use pipelines::{Cluster, inventory};
use schemas::Registry;
use schemas::billing::BillingEvent;
use schemas::codec::Decoder;
use schemas::inventory::InventoryEvent;
use schemas::notifications::NotificationEvent;
use schemas::orders::{OrderCommand, OrderEvent};
use schemas::payments::PaymentReply;
use schemas::record::RecordUnion;
use schemas::saga::topics::*;
use sinks::{OutputFormat, QueryEngine};

use crate::scenario::Runner;
use crate::topic;

/// Runs the saga participants (and the per-sku inventory service) on threads of the test.
pub struct InProcessSaga {
    pub inventory: inventory::Options,
    pub saga: saga::Options,
    /// Participants to run (all when empty); views run with the first of them.
    pub participants: Vec<&'static str>,
    /// Whether this runner also runs the per-sku inventory service.
    pub with_inventory: bool,
    pub rt: tokio::runtime::Handle,
    running: Option<(
        Option<inventory::Running>,
        saga::Running,
        Option<Compliance>,
    )>,
}

/// The compliance service on a thread of the test.
struct Compliance {
    stop: pipelines::Stop,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl InProcessSaga {
    pub fn new(cluster: &Cluster, views: &Path, rt: tokio::runtime::Handle) -> Self {
        let state = Some(crate::scenario::state_dir(views));
        let every = Duration::from_secs(1);
        InProcessSaga {
            inventory: inventory::Options {
                state_dir: state.clone(),
                snapshot_every: every,
                ..inventory::Options::new(cluster.clone(), views.to_path_buf())
            },
            saga: saga::Options {
                state_dir: state,
                snapshot_every: every,
                ..saga::Options::new(cluster.clone(), views.to_path_buf())
            },
            participants: Vec::new(),
            with_inventory: true,
            rt,
            running: None,
        }
    }
}

impl Runner for InProcessSaga {
    fn doubles_outputs(&self) -> bool {
        self.saga.duplicate_outputs
    }
    fn start(&mut self) -> anyhow::Result<()> {
        let inventory = self
            .with_inventory
            .then(|| inventory::spawn(&self.inventory, &self.rt));
        let saga = saga::spawn(
            &self.saga,
            &self.rt,
            &self.participants,
            self.with_inventory,
        )?;
        // The runner of the whole (not of one participant) also keeps the audit trail.
        let compliance = self.with_inventory.then(|| {
            let stop = pipelines::Stop::default();
            let opts = pipelines::compliance::Options {
                cluster: self.saga.cluster.clone(),
                views_dir: self.saga.views_dir.clone(),
                flush: Duration::from_millis(300),
            };
            let handle = pipelines::compliance::spawn(&opts, &self.rt, &stop);
            Compliance { stop, handle }
        });
        self.running = Some((inventory, saga, compliance));
        Ok(())
    }
    fn interrupt(&mut self) -> anyhow::Result<()> {
        self.stop()
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some((inventory, saga, compliance)) = self.running.take() {
            saga.stop()?;
            if let Some(inventory) = inventory {
                inventory.stop()?;
            }
            if let Some(c) = compliance {
                c.stop.stop();
                c.handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("compliance panicked"))??;
            }
        }
        Ok(())
    }
}

/// Several runners as one (e.g. the `run inventory` and `run saga` child processes).
pub struct Together(pub Vec<Box<dyn Runner>>);

impl Runner for Together {
    fn start(&mut self) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.start())
    }
    fn doubles_outputs(&self) -> bool {
        self.0.iter().any(|r| r.doubles_outputs())
    }
    fn interrupt(&mut self) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.interrupt())
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.stop())
    }
}

/// How one order ended, as read from the topics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ending {
    Confirmed,
    /// Cancelled, with the kind of reason (`out of stock`, `payment declined`, …).
    Cancelled(String),
}

fn reason_kind(reason: &str) -> String {
    for kind in [
        "out of stock",
        "payment declined",
        "shipment failed",
        "cancelled by customer",
        "timed out",
    ] {
        if reason.starts_with(kind) {
            return kind.to_owned();
        }
    }
    reason.to_owned()
}

/// What the forced failure of `intent` must end in.
pub fn expected_ending(intent: Intent) -> Ending {
    match intent {
        Intent::Confirm => Ending::Confirmed,
        Intent::StockOut => Ending::Cancelled("out of stock".into()),
        Intent::Decline => Ending::Cancelled("payment declined".into()),
        Intent::ShipFailure => Ending::Cancelled("shipment failed".into()),
        Intent::Cancel => Ending::Cancelled("cancelled by customer".into()),
    }
}

/// Order number (position in the simulation) → ending: comparable across runs.
pub type Endings = BTreeMap<usize, Ending>;

/// Whether two runs of simulations with the same intents (e.g. one run and its rerun under
/// other ids) ended alike: every order the same, except that a customer's cancellation that
/// raced the confirmation may have come in time in one run and too late in the other; the
/// check of each run accepts either, visibly refused.
pub fn endings_alike(
    spec: &SimSpec,
    rerun: &SimSpec,
    first: &Endings,
    second: &Endings,
) -> anyhow::Result<()> {
    let (a, b) = (
        placed(&simulate::generate(spec)),
        placed(&simulate::generate(rerun)),
    );
    ensure!(
        a.iter().map(|o| o.1).eq(b.iter().map(|o| o.1)),
        "the two simulations do not have the same intents"
    );
    ensure!(
        first.len() == a.len() && second.len() == b.len(),
        "{} and {} endings for {} orders",
        first.len(),
        second.len(),
        a.len()
    );
    let mut raced = 0;
    for (i, (id, intent, _)) in b.iter().enumerate() {
        let (x, y) = (&first[&i], &second[&i]);
        if x == y {
            continue;
        }
        ensure!(
            *intent == Intent::Cancel,
            "order {i} ({id}, {intent:?}) ended {x:?} in the first run and {y:?} in the second"
        );
        raced += 1;
    }
    if raced > 0 {
        eprintln!("{raced} cancellations raced their confirmation differently in the two runs");
    }
    Ok(())
}

/// The ledger view resumes from its table: a copy of the finished ledger cut in the middle
/// of every partition (rows and checkpoint, as an earlier run would have left them), with one
/// kept row marked, is run again until it is caught up. The marked row must survive (the
/// view took the table back rather than rebuilding) and every other row must equal the
/// finished ledger's: the tail folded once, and events republished across the cut
/// (at-least-once duplicates) posted once.
pub fn ledger_resumes_from_its_table(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    views: &Path,
) -> anyhow::Result<()> {
    use sinks::SnapshotTable;
    use sinks::ledger::{self, LedgerRow};
    let (batches, _) = SnapshotTable::open(views, ledger::VIEW)?
        .load()?
        .context("no ledger view")?;
    let mut full = ledger::from_batches(&batches)?;
    ensure!(!full.is_empty(), "the ledger is empty");
    // Cut each partition at its median row's offset.
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &full {
        offsets.entry(r.partition).or_default().push(r.offset);
    }
    let cut: BTreeMap<i32, i64> = offsets
        .into_iter()
        .map(|(p, mut o)| {
            o.sort_unstable();
            (p, o[o.len() / 2])
        })
        .collect();
    let mut kept: Vec<LedgerRow> = full
        .iter()
        .filter(|r| r.offset < cut[&r.partition])
        .cloned()
        .collect();
    ensure!(
        !kept.is_empty() && kept.len() < full.len(),
        "the cut keeps {} of {} rows",
        kept.len(),
        full.len()
    );
    let marked = kept[0].clone();
    kept[0].document = "kept-by-resume".into();
    let copy = tempfile::tempdir()?;
    let checkpoint = BTreeMap::from([(BILLING_EVENTS.to_owned(), cut.clone())]);
    SnapshotTable::open(copy.path(), ledger::VIEW)?.replace(
        &ledger::to_batch(&kept)?,
        &serde_json::to_string(&checkpoint)?,
    )?;

    let batches = run_view_to_end(
        cluster,
        rt,
        copy.path(),
        ledger::VIEW,
        BILLING_EVENTS,
        saga::topic_views::run::<saga::topic_views::LedgerView>,
    )?;
    let mut resumed = ledger::from_batches(&batches)?;
    let at = resumed
        .iter()
        .position(|r| r.document == "kept-by-resume")
        .context("the marked row is gone: the view rebuilt instead of resuming")?;
    resumed[at] = marked;
    let key = |r: &LedgerRow| (r.partition, r.offset, r.account.clone(), r.event_id.clone());
    full.sort_by_key(key);
    resumed.sort_by_key(key);
    ensure!(
        resumed == full,
        "the resumed ledger has {} rows, the finished one {}",
        resumed.len(),
        full.len()
    );
    eprintln!(
        "ledger: resumed from {} of {} rows (cut at {cut:?}) and caught up alike",
        kept.len(),
        full.len()
    );
    Ok(())
}

/// The high watermarks of `topic`, by partition.
fn topic_ends(cluster: &Cluster, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    pipelines::kafka::high_watermarks(&pipelines::kafka::Probe::new(cluster)?, topic)
}

/// A view checkpoint with every partition of `topics` at position 0 (as JSON).
fn rewound(cluster: &Cluster, topics: &[&str]) -> anyhow::Result<String> {
    let mut at = BTreeMap::new();
    for topic in topics {
        let zero: BTreeMap<i32, i64> = topic_ends(cluster, topic)?
            .keys()
            .map(|p| (*p, 0))
            .collect();
        at.insert(topic.to_string(), zero);
    }
    Ok(serde_json::to_string(&at)?)
}

/// Runs a single-topic view (`run`) over the views in `dir`, starting from whatever its table
/// there holds, until the positions stored with the table reach the ends `topic` has now;
/// stops it and returns the table.
fn run_view_to_end(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    dir: &Path,
    view: &str,
    topic: &str,
    run: fn(&saga::Options, &tokio::runtime::Handle, &pipelines::Stop) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
    run_views_to_end(cluster, rt, dir, view, &[topic], run)
}

/// [`run_view_to_end`] for views over several `topics` (`view`: the table that carries their
/// checkpoint).
fn run_views_to_end(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    dir: &Path,
    view: &str,
    topics: &[&str],
    run: fn(&saga::Options, &tokio::runtime::Handle, &pipelines::Stop) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
    let mut ends = BTreeMap::new();
    for topic in topics {
        ends.insert(*topic, topic_ends(cluster, topic)?);
    }
    // Caught up means written by this run: the table as it was may already claim the ends
    // (a copy at the finished positions, or one past them that must rebuild).
    let file = sinks::SnapshotTable::open(dir, view)?.path();
    // (An inode number alone may be reused by a later replace; a file written later has a
    // later modification time.)
    let inode = |f: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f)
            .map(|m| (m.ino(), m.modified().ok()))
            .ok()
    };
    let before = inode(&file);
    let opts = saga::Options {
        view_flush: Duration::from_millis(200),
        ..saga::Options::new(cluster.clone(), dir.to_path_buf())
    };
    let stop = pipelines::Stop::default();
    let running = {
        let (o, r, s) = (opts, rt.clone(), stop.clone());
        std::thread::spawn(move || run(&o, &r, &s))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let caught_up = loop {
        let at = pipelines::freshness::view_positions(dir, view)?.unwrap_or_default();
        if inode(&file) != before
            && ends.iter().all(|(topic, ends)| {
                ends.iter().all(|(p, end)| {
                    at.get(*topic).and_then(|t| t.get(p)).copied().unwrap_or(0) >= *end
                })
            })
        {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "the resumed {view} is at {at:?}, the topic ends at {ends:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.stop();
    running
        .join()
        .map_err(|_| anyhow::anyhow!("the {view} view panicked"))??;
    caught_up?;
    Ok(sinks::SnapshotTable::open(dir, view)?
        .load()?
        .with_context(|| format!("the resumed {view} wrote no table"))?
        .0)
}

/// The `purchase_orders` view resumes from its table: a copy of the finished table with one
/// row marked, one row removed and the positions rewound to the beginning of every partition
/// is run again until caught up. The mark survives (the view took the table back rather than
/// rebuilding), the removed order is folded back from its events, and events read again
/// over rows already there change nothing (as a redelivery would not).
pub fn purchase_orders_resume_from_their_table(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    views: &Path,
) -> anyhow::Result<()> {
    const EVENTS: &str = SUPPLIER_EVENTS;
    use sinks::SnapshotTable;
    use sinks::purchasing::{self, PurchaseOrderRow};
    let (batches, _) = SnapshotTable::open(views, purchasing::VIEW)?
        .load()?
        .context("no purchase_orders view")?;
    let mut full = purchasing::from_batches(&batches)?;
    ensure!(full.len() >= 2, "{} purchase orders", full.len());
    let mut copy_rows: Vec<PurchaseOrderRow> = full.clone();
    let removed = copy_rows.pop().expect("two rows at least");
    let marked = copy_rows[0].clone();
    copy_rows[0].warehouse = "kept-by-resume".into();
    let copy = tempfile::tempdir()?;
    SnapshotTable::open(copy.path(), purchasing::VIEW)?.replace(
        &purchasing::to_batch(&copy_rows)?,
        &rewound(cluster, &[EVENTS])?,
    )?;
    let batches = run_view_to_end(
        cluster,
        rt,
        copy.path(),
        purchasing::VIEW,
        EVENTS,
        saga::topic_views::run::<saga::topic_views::PurchaseOrdersView>,
    )?;
    let mut resumed = purchasing::from_batches(&batches)?;
    let at = resumed
        .iter()
        .position(|r| r.warehouse == "kept-by-resume")
        .context("the marked row is gone: the view rebuilt instead of resuming")?;
    resumed[at] = marked;
    ensure!(
        resumed.contains(&removed),
        "the removed purchase order {} was not folded back",
        removed.po_id
    );
    full.sort_by(|a, b| a.po_id.cmp(&b.po_id));
    resumed.sort_by(|a, b| a.po_id.cmp(&b.po_id));
    ensure!(
        resumed == full,
        "the resumed purchase_orders has {} rows, the finished one {}",
        resumed.len(),
        full.len()
    );
    eprintln!(
        "purchase_orders: resumed from {} rows over the whole topic again, alike",
        full.len() - 1
    );
    Ok(())
}

/// The saga views resume from their two tables: a copy of the finished tables has one saga
/// marked and one removed (its row and its steps), with every position rewound to the start.
/// Run again to the ends of the topics, the mark survives (a rebuild would lose it), every
/// step already in the table is recognized by its event id and not added again, and the
/// removed saga is folded back alike (its row; its steps, the same events numbered 1..n).
/// The same copy at the finished tables' own positions: the removed saga stays removed (its
/// messages lie below them), the positions are where the views start. Then the same copy
/// with the two tables' checkpoints apart (a stop between their writes), and with a position
/// past the end of its partition (a topic recreated shorter): the views rebuild, and the
/// mark is gone.
pub fn saga_views_resume_from_their_tables(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    views: &Path,
) -> anyhow::Result<()> {
    use sinks::SnapshotTable;
    use sinks::sagas::{self, SAGA_STEPS, SAGAS, Saga, SagaStep};
    // Both tables' rows, and the checkpoint saga_steps carries.
    let load = |dir: &Path| -> anyhow::Result<(Vec<Saga>, Vec<SagaStep>, String)> {
        let (s, _) = SnapshotTable::open(dir, SAGAS)?
            .load()?
            .context("no sagas view")?;
        let (t, checkpoint) = SnapshotTable::open(dir, SAGA_STEPS)?
            .load()?
            .context("no saga_steps view")?;
        Ok((
            sagas::sagas_from_batches(&s)?,
            sagas::steps_from_batches(&t)?,
            checkpoint,
        ))
    };
    let (full, full_steps, finished) = load(views)?;
    ensure!(full.len() >= 2, "{} sagas", full.len());
    let removed = full.last().expect("two sagas at least").clone();
    let mut rows: Vec<Saga> = full[..full.len() - 1].to_vec();
    rows[0].customer_id = Some("kept-by-resume".into());
    let steps: Vec<SagaStep> = full_steps
        .iter()
        .filter(|s| s.saga_id != removed.saga_id)
        .cloned()
        .collect();
    let rewound = rewound(cluster, saga::views::TOPICS)?;
    let copy = tempfile::tempdir()?;
    let write = |sagas_checkpoint: &str, steps_checkpoint: &str| -> anyhow::Result<()> {
        SnapshotTable::open(copy.path(), SAGAS)?
            .replace(&sagas::sagas_batch(&rows)?, sagas_checkpoint)?;
        SnapshotTable::open(copy.path(), SAGA_STEPS)?
            .replace(&sagas::steps_batch(&steps)?, steps_checkpoint)?;
        Ok(())
    };
    write(&rewound, &rewound)?;
    let run = || {
        run_views_to_end(
            cluster,
            rt,
            copy.path(),
            SAGA_STEPS,
            saga::views::TOPICS,
            saga::views::run,
        )
    };
    run()?;
    let (mut resumed, resumed_steps, _) = load(copy.path())?;
    let marked = resumed
        .iter_mut()
        .find(|s| s.customer_id.as_deref() == Some("kept-by-resume"))
        .context("the marked saga is gone: the views rebuilt instead of resuming, or folded its events again")?;
    marked.customer_id = full[0].customer_id.clone();
    // The removed saga, folded back: the same row, but its current step (the last message
    // read) depends on how the topics' records interleaved, in the live run and here.
    let back = resumed
        .iter_mut()
        .find(|s| s.saga_id == removed.saga_id)
        .with_context(|| format!("the removed saga {} was not folded back", removed.saga_id))?;
    back.current_step = removed.current_step.clone();
    ensure!(
        resumed == full,
        "the resumed sagas differ from the finished ones ({} and {} rows)",
        resumed.len(),
        full.len()
    );
    let removed_id = &removed.saga_id;
    let of = |steps: &[SagaStep], removed: bool| -> Vec<SagaStep> {
        steps
            .iter()
            .filter(|s| (&s.saga_id == removed_id) == removed)
            .cloned()
            .collect()
    };
    ensure!(
        of(&resumed_steps, false) == of(&full_steps, false),
        "steps already in the table were added again or changed ({} steps, {} before)",
        resumed_steps.len(),
        full_steps.len()
    );
    let ids = |steps: Vec<SagaStep>| -> (BTreeSet<String>, Vec<i64>) {
        let mut seq: Vec<i64> = steps.iter().map(|s| s.seq).collect();
        seq.sort();
        (steps.into_iter().map(|s| s.event_id).collect(), seq)
    };
    let (back_ids, back_seq) = ids(of(&resumed_steps, true));
    let (want_ids, _) = ids(of(&full_steps, true));
    ensure!(
        back_ids == want_ids && back_seq == (1..=want_ids.len() as i64).collect::<Vec<_>>(),
        "the removed saga's steps came back as {back_ids:?} numbered {back_seq:?}, not {want_ids:?}"
    );
    // At the finished positions: nothing below them is read again.
    write(&finished, &finished)?;
    run()?;
    let (at_end, _, _) = load(copy.path())?;
    ensure!(
        at_end.iter().all(|s| s.saga_id != removed.saga_id),
        "the views read below their stored positions: the removed saga came back"
    );
    ensure!(
        at_end.len() == rows.len()
            && at_end
                .iter()
                .any(|s| s.customer_id.as_deref() == Some("kept-by-resume")),
        "resumed at the end: {} sagas (want {}), or the mark is gone",
        at_end.len(),
        rows.len()
    );
    // Tables written at different positions, or a position past its partition's end:
    // rebuilt from the topics.
    let mut past_end: BTreeMap<String, BTreeMap<i32, i64>> = serde_json::from_str(&finished)?;
    *past_end
        .get_mut(ORDER_EVENTS)
        .and_then(|c| c.values_mut().next())
        .context("no orders.events position in the checkpoint")? += 1_000_000;
    let past_end = serde_json::to_string(&past_end)?;
    for (sagas_checkpoint, steps_checkpoint, case) in [
        ("{}", rewound.as_str(), "whose checkpoints disagree"),
        (
            past_end.as_str(),
            past_end.as_str(),
            "with a position past its partition's end",
        ),
    ] {
        write(sagas_checkpoint, steps_checkpoint)?;
        run()?;
        let (rebuilt, _, _) = load(copy.path())?;
        ensure!(
            rebuilt
                .iter()
                .all(|s| s.customer_id.as_deref() != Some("kept-by-resume")),
            "the views resumed from tables {case}"
        );
        ensure!(
            rebuilt.len() == full.len(),
            "rebuilt from tables {case}: {} sagas, {} before",
            rebuilt.len(),
            full.len()
        );
    }
    eprintln!(
        "saga views: resumed from {} sagas and {} steps over every topic again, alike; \
         not below its positions; rebuilt when the tables disagree or a position is past the end",
        rows.len(),
        steps.len()
    );
    Ok(())
}

/// `orders_per_minute` resumes from its two tables: a copy of the finished ones, its
/// checkpoint rewound to the start of `orders.events`, is run again to the end. Every event
/// is then a copy: an open window knows its events by id (its row must not change), a final
/// window counts each as late (its figures must not change, its late events grow by every
/// record of the window on the topic, copies included). Run with the finished tables, then
/// with a copy whose watermark was moved past every window (all final, their ids dropped).
/// A rebuild would lose that; the same copy with the two tables at different positions is
/// rebuilt (no added late events, the same orders counted).
pub fn windows_resume_from_their_tables(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    views: &Path,
) -> anyhow::Result<()> {
    use sinks::SnapshotTable;
    use sinks::windows::sources::{self, ORDERS_PER_MINUTE_SOURCES};
    use sinks::windows::{self, ORDERS_PER_MINUTE, SourceRow, WindowRow};
    let load = |dir: &Path| -> anyhow::Result<Vec<WindowRow>> {
        let (b, _) = SnapshotTable::open(dir, ORDERS_PER_MINUTE)?
            .load()?
            .context("no orders_per_minute view")?;
        Ok(windows::from_batches(&b)?)
    };
    let finished = load(views)?;
    let (b, _) = SnapshotTable::open(views, ORDERS_PER_MINUTE_SOURCES)?
        .load()?
        .context("no orders_per_minute_sources view")?;
    let progress = sources::from_batches(&b)?;
    ensure!(!finished.is_empty(), "no windows");
    // Every record the windows count, copies included, per window.
    let every = rt.block_on(read_records::<OrderEvent>(
        cluster,
        ORDER_EVENTS,
        {
            let n = std::cell::Cell::new(0u64);
            move |_| {
                n.set(n.get() + 1);
                n.get().to_string()
            }
        },
        true,
        &Duplicates::Dropped,
    ))?;
    let width = saga::topic_views::WIDTH.as_millis() as i64;
    let mut records: BTreeMap<i64, i64> = BTreeMap::new();
    for e in &every {
        if matches!(
            e,
            OrderEvent::OrderPlaced(_)
                | OrderEvent::OrderConfirmed(_)
                | OrderEvent::OrderCancelled(_)
        ) {
            *records
                .entry(e.metadata().occurred_at.div_euclid(width) * width)
                .or_default() += 1;
        }
    }
    let copy = tempfile::tempdir()?;
    let write = |rows: &[WindowRow],
                 progress: &[SourceRow],
                 sources_at: &str,
                 windows_at: &str|
     -> anyhow::Result<()> {
        SnapshotTable::open(copy.path(), ORDERS_PER_MINUTE_SOURCES)?
            .replace(&sources::to_batch(progress)?, sources_at)?;
        SnapshotTable::open(copy.path(), ORDERS_PER_MINUTE)?
            .replace(&windows::to_batch(rows)?, windows_at)?;
        Ok(())
    };
    let rewound = rewound(cluster, &[ORDER_EVENTS])?;
    let run = || {
        run_view_to_end(
            cluster,
            rt,
            copy.path(),
            ORDERS_PER_MINUTE,
            ORDER_EVENTS,
            saga::topic_views::run_windows,
        )
    };
    // The copy with every window final: the watermark past the last one, no ids kept.
    let past = finished.iter().map(|r| r.window_end).max().unwrap_or(0);
    let all_final: Vec<WindowRow> = finished
        .iter()
        .map(|r| WindowRow {
            is_final: true,
            event_ids: Vec::new(),
            ..r.clone()
        })
        .collect();
    let moved: Vec<SourceRow> = progress
        .iter()
        .map(|s| SourceRow {
            watermark: Some(past),
            ..*s
        })
        .collect();
    for (rows, progress, case) in [
        (&finished, &progress, "as finished"),
        (&all_final, &moved, "with every window final"),
    ] {
        write(rows, progress, &rewound, &rewound)?;
        run()?;
        let want: Vec<WindowRow> = rows
            .iter()
            .map(|r| WindowRow {
                late_events: if r.is_final {
                    r.late_events + records.get(&r.window_start).copied().unwrap_or(0)
                } else {
                    r.late_events
                },
                ..r.clone()
            })
            .collect();
        let again = load(copy.path())?;
        if again != want {
            // The figures, not the ids (hundreds per open window).
            let brief = |r: &WindowRow| WindowRow {
                event_ids: vec![format!("{} ids", r.event_ids.len())],
                ..r.clone()
            };
            let differ = again
                .iter()
                .zip(&want)
                .find(|(a, w)| a != w)
                .map(|(a, w)| (brief(a), brief(w)));
            anyhow::bail!(
                "orders_per_minute {case}, read again from its start: {} rows (want {}); \
                 first differing (got, want): {differ:?}",
                again.len(),
                want.len()
            );
        }
    }
    let counted = |rows: &[WindowRow]| {
        rows.iter()
            .map(|r| r.orders_placed + r.orders_confirmed + r.orders_cancelled)
            .sum::<i64>()
    };
    let late = |rows: &[WindowRow]| rows.iter().map(|r| r.late_events).sum::<i64>();
    write(&all_final, &moved, "{}", &rewound)?;
    run()?;
    let rebuilt = load(copy.path())?;
    ensure!(
        counted(&rebuilt) == counted(&finished) && late(&rebuilt) == late(&finished),
        "tables at different positions: {} orders counted, {} late (want {} and {}): it resumed",
        counted(&rebuilt),
        late(&rebuilt),
        counted(&finished),
        late(&finished)
    );
    eprintln!(
        "orders_per_minute: resumed from {} windows ({} final) and from all final, read again \
         from the start alike; rebuilt when its tables disagree",
        finished.len(),
        finished.iter().filter(|r| r.is_final).count()
    );
    Ok(())
}

/// `orders_per_minute` resumed behind a backlog on two partitions: the view catches up with
/// a few order events on three partitions (its tables written with every partition read to
/// its end) and stops; 150 minutes of events then land on partition 0 and partition 1, one
/// every 30 s each, and the view starts again from its tables. None of them is late: each
/// partition holds the watermark back while the other's backlog, read first, runs ahead.
/// (Before the loop told a resumed view the ends, the partitions were taken for idle as
/// stored, and whichever was read second counted as late.) On a cluster of its own: it writes
/// order events no order service made.
pub fn windows_resume_behind_a_backlog(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    views: &Path,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use schemas::Metadata;
    use schemas::orders::OrderCancelled;
    use sinks::SnapshotTable;
    use sinks::windows::{self, ORDERS_PER_MINUTE, WindowRow};
    let encoder = rt.block_on(schemas::Encoder::<OrderEvent>::register(
        &Registry::new(&cluster.registry),
        ORDER_EVENTS,
    ))?;
    let producer: FutureProducer = pipelines::kafka::producer_config(cluster).create()?;
    let t0 = 1_800_000_000_000i64 / 60_000 * 60_000;
    // Each partition's records sent together, so that they share producer batches (the
    // mock broker answers a fetch with one batch per partition: records sent one at a time
    // would be read interleaved, one per partition in turn).
    let send = |partition: i32, events: &[(i64, i64)]| -> anyhow::Result<()> {
        let mut pending = Vec::new();
        for &(n, at) in events {
            let id = format!("backlog-{partition}-{n}");
            let e: OrderEvent = OrderCancelled {
                metadata: Metadata::command(&id, &id, at),
                order_id: id.clone(),
                customer_id: "C-1".into(),
                reason: "backlog".into(),
                compensations: Vec::new(),
            }
            .into();
            let payload = encoder.encode(&e)?;
            pending.push(
                producer
                    .send_result(
                        FutureRecord::to(ORDER_EVENTS)
                            .partition(partition)
                            .key(&id)
                            .payload(&payload),
                    )
                    .map_err(|(e, _)| e)?,
            );
        }
        for delivery in pending {
            rt.block_on(delivery)?.map_err(|(e, _)| e)?;
        }
        Ok(())
    };
    for p in 0..3 {
        send(p, &[(0, t0), (1, t0 + 1_000), (2, t0 + 2_000)])?;
    }
    let run = || {
        run_view_to_end(
            cluster,
            rt,
            views,
            ORDERS_PER_MINUTE,
            ORDER_EVENTS,
            saga::topic_views::run_windows,
        )
    };
    run()?;
    // 30 s apart: a partition read a few records ahead of the other is minutes ahead.
    let backlog: Vec<(i64, i64)> = (0..300)
        .map(|n| (100 + n, t0 + 60_000 + n * 30_000))
        .collect();
    for p in [0, 1] {
        send(p, &backlog)?;
    }
    run()?;
    let (b, _) = SnapshotTable::open(views, ORDERS_PER_MINUTE)?
        .load()?
        .context("no orders_per_minute view")?;
    let rows: Vec<WindowRow> = windows::from_batches(&b)?;
    let counted: i64 = rows.iter().map(|r| r.orders_cancelled).sum();
    let late: i64 = rows.iter().map(|r| r.late_events).sum();
    ensure!(
        counted == 9 + 600 && late == 0,
        "orders_per_minute resumed behind a backlog: {counted} of {} events counted, {late} late",
        9 + 600
    );
    Ok(())
}

/// The order ids of a simulation with their intents, in order.
fn placed(sim: &Simulation) -> Vec<(String, Intent, i64)> {
    sim.orders
        .iter()
        .filter_map(|(c, intent)| match c {
            OrderCommand::PlaceOrder(p) => Some((
                p.order_id.clone(),
                *intent,
                p.lines
                    .iter()
                    .map(|l| l.quantity * l.unit_price_cents)
                    .sum(),
            )),
            OrderCommand::CancelOrder(_) => None,
        })
        .collect()
}

/// Produces `sim` in `chunks`, interrupting `runner` mid-stream after each but the last,
/// then waits until every saga has ended.
pub async fn run_simulation(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    sim: &Simulation,
    interruptions: usize,
) -> anyhow::Result<()> {
    run_simulation_at(cluster, views, runner, sim, interruptions, None).await
}

/// [`run_simulation`], placing orders at `rate` per second (`None`: as fast as possible).
pub async fn run_simulation_at(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    sim: &Simulation,
    interruptions: usize,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let opts = saga::Options::new(cluster.clone(), views.to_path_buf());
    let probe = std::sync::Arc::new(ProgressProbe::new(&opts)?);
    let started = Instant::now();
    let chunk_len = sim.orders.len().div_ceil(interruptions + 1);
    // Chunks of about `chunk_len`, never separating an order from its cancellation.
    let mut chunks: Vec<&[(OrderCommand, Intent)]> = Vec::new();
    let mut rest = &sim.orders[..];
    while !rest.is_empty() {
        let mut end = chunk_len.min(rest.len());
        while end < rest.len() && matches!(rest[end].0, OrderCommand::CancelOrder(_)) {
            end += 1;
        }
        let (chunk, tail) = rest.split_at(end);
        chunks.push(chunk);
        rest = tail;
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let part = Simulation {
            stock: if i == 0 {
                sim.stock.clone()
            } else {
                Vec::new()
            },
            orders: chunk.to_vec(),
        };
        simulate::produce(cluster, &part, rate).await?;
        if i == last {
            break;
        }
        // Interrupt once the orders service has committed some of the chunk, not all.
        let p = probe.clone();
        let lag = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let lag = p.progress()?.lag.values().sum::<i64>();
                if lag < chunk_len as i64 || Instant::now() > deadline {
                    return Ok(lag);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await??;
        // librdkafka's mock broker stalls a group for ~30 s when its members stop and start
        // again within about a second (docs/notes.md): let the group settle first.
        let settled = started + Duration::from_secs(3);
        if let Some(wait) = settled.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        eprintln!(
            "{:>6.1?} interrupting the saga with {lag} input records uncommitted",
            started.elapsed()
        );
        runner.interrupt()?;
        runner.start()?;
    }
    let ids: Vec<String> = placed(sim).into_iter().map(|(id, _, _)| id).collect();
    wait_ended(views, &ids, Duration::from_secs(240)).await?;
    wait_caught_up(cluster, views).await?;
    eprintln!("{:>6.1?} every saga ended", started.elapsed());
    Ok(())
}

/// Waits until every participant, the sku service and every view has consumed everything.
pub async fn wait_caught_up(cluster: &Cluster, views: &Path) -> anyhow::Result<()> {
    let probe = ProgressProbe::new(&saga::Options::new(cluster.clone(), views.to_path_buf()))?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let progress = probe.progress()?;
            if progress.caught_up() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not caught up: {progress:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await??;
    let stock = inventory::Options::new(cluster.clone(), views.to_path_buf());
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&stock, Duration::from_secs(60)))
        .await?
}

/// Statuses of `ids` in the `sagas` view.
pub async fn view_statuses(
    views: &Path,
    ids: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let engine = QueryEngine::open(views).await?;
    let csv = OutputFormat::Csv.render(&engine.sql("SELECT saga_id, status FROM sagas").await?)?;
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    Ok(csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .filter(|(id, _)| wanted.contains(id))
        .map(|(id, s)| (id.to_owned(), s.to_owned()))
        .collect())
}

/// Waits until the `sagas` view shows every one of `ids` ended.
pub async fn wait_ended(views: &Path, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = view_statuses(views, ids).await.unwrap_or_default();
        let ended = statuses
            .values()
            .filter(|s| *s == "Confirmed" || *s == "Cancelled")
            .count();
        if ended == ids.len() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{ended} of {} sagas ended after {timeout:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where each partition of the topics the saga checks read ended before a run: records
/// from there on are the run's (the topics are shared by the scenarios of a suite, and one
/// of them publishes every output twice on purpose).
#[derive(Debug, Clone, Default)]
pub struct Since(BTreeMap<(String, i32), i64>);

/// The topics [`check`] reads events from.
const CHECKED: &[&str] = &[
    ORDER_EVENTS,
    pipelines::topics::inventory::EVENTS,
    pipelines::topics::inventory::ALERTS,
    PAYMENT_REPLIES,
    NOTIFICATION_EVENTS,
    BILLING_EVENTS,
    SUPPLIER_EVENTS,
];

impl Since {
    /// The checked topics' ends now (topics not created yet: from their start).
    pub fn now(cluster: &Cluster) -> anyhow::Result<Self> {
        Self::of(cluster, CHECKED)
    }

    /// `topics`' ends now.
    pub fn of(cluster: &Cluster, topics: &[&str]) -> anyhow::Result<Self> {
        use rdkafka::consumer::Consumer;
        let probe = pipelines::kafka::Probe::new(cluster)?;
        // Topics not created yet have no records of any run.
        let md = probe.fetch_metadata(None, Duration::from_secs(30))?;
        let mut ends = BTreeMap::new();
        for t in md.topics().iter().filter(|t| topics.contains(&t.name())) {
            for (p, high) in pipelines::kafka::high_watermarks(&probe, t.name())? {
                ends.insert((t.name().to_owned(), p), high);
            }
        }
        Ok(Since(ends))
    }

    fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        offset
            >= self
                .0
                .get(&(topic.to_owned(), partition))
                .copied()
                .unwrap_or(0)
    }
}

/// What a second record with an event id already read means.
#[derive(Debug, Clone)]
pub enum Duplicates {
    /// A doubled effect when the second copy is the run's (past `Since`): the check fails,
    /// naming the event and both offsets (exactly-once).
    Refused(Since),
    /// Expected, and left out: at-least-once delivery (the embedded tier), or services told
    /// to publish every output twice (`--chaos-duplicate-outputs`), whose consumers must
    /// absorb the copies.
    Dropped,
}

impl Duplicates {
    /// Refused under exactly-once unless the run doubles its outputs on purpose.
    pub fn for_run(cluster: &Cluster, doubled: bool, since: Since) -> Self {
        if cluster.guarantee == pipelines::Guarantee::ExactlyOnce && !doubled {
            Duplicates::Refused(since)
        } else {
            Duplicates::Dropped
        }
    }
}

/// Records of `topic` decoded as `T`, each event id once; a second copy of one is an error
/// unless `dups` drops it.
pub async fn read_unique<T: RecordUnion>(
    cluster: &Cluster,
    topic: &str,
    id: impl Fn(&T) -> String,
    dups: &Duplicates,
) -> anyhow::Result<Vec<T>> {
    read_records(cluster, topic, id, false, dups).await
}

/// [`read_unique`] for a topic that takes input from outside: records that do not decode
/// (other scenarios put malformed ones there on purpose; the service dead-letters them) are
/// left out.
async fn read_decodable<T: RecordUnion>(
    cluster: &Cluster,
    topic: &str,
    id: impl Fn(&T) -> String,
    dups: &Duplicates,
) -> anyhow::Result<Vec<T>> {
    read_records(cluster, topic, id, true, dups).await
}

async fn read_records<T: RecordUnion>(
    cluster: &Cluster,
    topic: &str,
    id: impl Fn(&T) -> String,
    skip_undecodable: bool,
    dups: &Duplicates,
) -> anyhow::Result<Vec<T>> {
    let mut decoder = Decoder::<T>::new(Registry::new(&cluster.registry));
    let mut seen: HashMap<String, (i32, i64)> = HashMap::new();
    let mut out = Vec::new();
    for r in topic::read_all(cluster, topic)? {
        let value = match decoder.decode_learning(&r.payload).await {
            Ok(v) => v,
            // Shared topics carry records of other unions (e.g. inventory.events).
            Err(schemas::DecodeError::UnexpectedRecord { .. }) => continue,
            Err(_) if skip_undecodable => continue,
            Err(e) => return Err(e).with_context(|| format!("{topic} offset {}", r.offset)),
        };
        match seen.entry(id(&value)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((r.partition, r.offset));
                out.push(value);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let (p, first) = *o.get();
                ensure!(
                    !matches!(dups, Duplicates::Refused(since)
                        if since.covers(topic, r.partition, r.offset)),
                    "{topic}: event {} published twice (partition {p} offset {first}, then \
                     partition {} offset {}): a doubled effect",
                    o.key(),
                    r.partition,
                    r.offset
                );
            }
        }
    }
    Ok(out)
}

/// The first row of `sql`'s answer as integers (`None` for a non-integer field).
async fn first_row(engine: &QueryEngine, sql: &str) -> anyhow::Result<Vec<Option<i64>>> {
    let csv = OutputFormat::Csv.render(&engine.sql(sql).await?)?;
    Ok(csv
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .map(|n| n.parse().ok())
        .collect())
}

/// Checks every invariant of a finished simulation; returns each order's ending.
/// `dups`: what an event on a topic twice means (under exactly-once, a failure unless the
/// services published every output twice on purpose).
pub async fn check(
    cluster: &Cluster,
    views: &Path,
    sim: &Simulation,
    dups: &Duplicates,
    accept: impl Fn(Intent, &Ending) -> bool,
) -> anyhow::Result<Endings> {
    let orders = placed(sim);
    let index: BTreeMap<&str, usize> = orders
        .iter()
        .enumerate()
        .map(|(i, (id, _, _))| (id.as_str(), i))
        .collect();

    // Endings, from orders.events (with each cancellation's reason in full, for the report).
    let mut endings: BTreeMap<usize, Vec<Ending>> = BTreeMap::new();
    let mut reasons: HashMap<usize, String> = HashMap::new();
    let mut refused: HashSet<usize> = HashSet::new();
    for e in read_unique::<OrderEvent>(
        cluster,
        ORDER_EVENTS,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        let (id, ending) = match &e {
            OrderEvent::OrderConfirmed(c) => (&c.order_id, Ending::Confirmed),
            OrderEvent::OrderCancelled(c) => {
                if let Some(i) = index.get(c.order_id.as_str()) {
                    reasons.insert(*i, c.reason.clone());
                }
                (&c.order_id, Ending::Cancelled(reason_kind(&c.reason)))
            }
            OrderEvent::OrderCancellationRejected(r) => {
                if let Some(i) = index.get(r.order_id.as_str()) {
                    refused.insert(*i);
                }
                continue;
            }
            _ => continue,
        };
        if let Some(i) = index.get(id.as_str()) {
            endings.entry(*i).or_default().push(ending);
        }
    }
    let mut result = Endings::new();
    // Every unexpected ending, not only the first: how many, and why, says which
    // participant stalled (e.g. "timed out waiting for payment").
    let mut unexpected: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (i, (id, intent, _)) in orders.iter().enumerate() {
        let ends = endings.remove(&i).unwrap_or_default();
        if ends.len() != 1 {
            unexpected
                .entry(format!("meant to {intent:?}, ended {} times", ends.len()))
                .or_default()
                .push(id);
            continue;
        }
        // A cancellation that reaches orders after confirmation is refused, visibly.
        let refused_late =
            *intent == Intent::Cancel && ends[0] == Ending::Confirmed && refused.contains(&i);
        if !(accept(*intent, &ends[0]) || refused_late) {
            let why = reasons.get(&i).map_or("confirmed", String::as_str);
            unexpected
                .entry(format!("meant to {intent:?}, ended {why:?}"))
                .or_default()
                .push(id);
        }
        result.insert(i, ends[0].clone());
    }
    if !unexpected.is_empty() {
        let report: Vec<String> = unexpected
            .iter()
            .map(|(what, ids)| {
                let first: Vec<&str> = ids.iter().take(5).copied().collect();
                format!("{} orders {what} (first: {})", ids.len(), first.join(", "))
            })
            .collect();
        anyhow::bail!(
            "orders did not end as their failures say:\n  {}",
            report.join("\n  ")
        );
    }

    // Stock: per order, what its reservations still hold and what left the warehouse.
    let mut held: BTreeMap<usize, i64> = BTreeMap::new();
    let mut shipped: BTreeMap<usize, i64> = BTreeMap::new();
    for e in read_unique::<InventoryEvent>(
        cluster,
        pipelines::topics::inventory::EVENTS,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        let (rid, delta, out) = match &e {
            InventoryEvent::InventoryReserved(r) => (&r.reservation_id, r.quantity, 0),
            InventoryEvent::InventoryReleased(r) => (&r.reservation_id, -r.quantity, 0),
            InventoryEvent::InventoryDispatched(r) => (&r.reservation_id, -r.quantity, r.quantity),
            _ => continue,
        };
        let order = rid.rsplit_once('/').map_or(rid.as_str(), |(o, _)| o);
        if let Some(i) = index.get(order) {
            *held.entry(*i).or_default() += delta;
            *shipped.entry(*i).or_default() += out;
        }
    }
    for (i, (id, _, _)) in orders.iter().enumerate() {
        let want = match result[&i] {
            Ending::Confirmed => sim
                .orders
                .iter()
                .find_map(|(c, _)| match c {
                    OrderCommand::PlaceOrder(p) if &p.order_id == id => {
                        Some(p.lines.iter().map(|l| l.quantity).sum::<i64>())
                    }
                    _ => None,
                })
                .unwrap_or_default(),
            Ending::Cancelled(_) => 0,
        };
        let got = shipped.get(&i).copied().unwrap_or(0);
        ensure!(
            got == want,
            "order {id} ({:?}) shipped {got} units of stock, expected {want}",
            result[&i]
        );
        let holds = held.get(&i).copied().unwrap_or(0);
        ensure!(
            holds == 0,
            "order {id} ({:?}) still holds {holds} units of stock",
            result[&i]
        );
    }

    // The same, position by position, in the stock_levels view: on hand is what was
    // received (stocked, then by purchase orders) less the lines of confirmed orders
    // (shipped), nothing stays reserved.
    let mut positions: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for ((sku, warehouse), quantity) in check_purchasing(cluster, views, sim, dups).await? {
        positions.entry((sku, warehouse)).or_default().0 += quantity;
    }
    for c in &sim.stock {
        if let schemas::inventory::InventoryCommand::ReceiveStock(r) = c {
            positions
                .entry((r.sku.clone(), r.warehouse.clone()))
                .or_default()
                .0 += r.quantity;
        }
    }
    for (c, _) in &sim.orders {
        if let OrderCommand::PlaceOrder(p) = c
            && result[&index[p.order_id.as_str()]] == Ending::Confirmed
        {
            for l in &p.lines {
                positions
                    .entry((l.sku.clone(), l.warehouse.clone()))
                    .or_default()
                    .0 -= l.quantity;
            }
        }
    }
    let engine = QueryEngine::open(views).await?;
    let csv = OutputFormat::Csv.render(
        &engine
            .sql("SELECT sku, warehouse, on_hand, reserved FROM stock_levels")
            .await?,
    )?;
    let mut seen_positions = 0;
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let Some((on_hand, reserved)) = positions.get(&(f[0].to_owned(), f[1].to_owned())) {
            seen_positions += 1;
            ensure!(
                f[2] == on_hand.to_string() && f[3] == reserved.to_string(),
                "stock_levels {line}: expected on_hand {on_hand}, reserved {reserved}"
            );
        }
    }
    ensure!(
        seen_positions == positions.len(),
        "stock_levels has {seen_positions} of {} positions",
        positions.len()
    );

    // Money: captured − refunded per order = its total if confirmed, else 0.
    let mut net: BTreeMap<usize, i64> = BTreeMap::new();
    for r in read_unique::<PaymentReply>(
        cluster,
        PAYMENT_REPLIES,
        |r| r.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        let (id, amount) = match &r {
            PaymentReply::PaymentCaptured(c) => (&c.order.order_id, c.amount_cents),
            PaymentReply::PaymentRefunded(c) => (&c.order_id, -c.amount_cents),
            PaymentReply::PaymentDeclined(_) => continue,
        };
        if let Some(i) = index.get(id.as_str()) {
            *net.entry(*i).or_default() += amount;
        }
    }
    let mut revenue = 0;
    for (i, (id, _, total)) in orders.iter().enumerate() {
        let want = if result[&i] == Ending::Confirmed {
            *total
        } else {
            0
        };
        revenue += want;
        let got = net.get(&i).copied().unwrap_or(0);
        ensure!(
            got == want,
            "order {id} ({:?}): captured − refunded = {got}, expected {want}",
            result[&i]
        );
    }
    ensure!(
        net.values().sum::<i64>() == revenue,
        "captured − refunded ≠ revenue"
    );

    // Notifications: one per order, of the kind of its ending.
    let mut kinds: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for NotificationEvent::NotificationSent(n) in read_unique::<NotificationEvent>(
        cluster,
        NOTIFICATION_EVENTS,
        |n| n.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        if let Some(i) = index.get(n.order_id.as_str()) {
            kinds.entry(*i).or_default().push(n.kind);
        }
    }
    for (i, (id, _, _)) in orders.iter().enumerate() {
        let want = if result[&i] == Ending::Confirmed {
            "confirmation"
        } else {
            "cancellation"
        };
        let got = kinds.remove(&i).unwrap_or_default();
        ensure!(
            got == [want],
            "order {id}: notifications {got:?}, expected one {want}"
        );
    }

    // Billing: one invoice per confirmed order for its total, a credit note per refund,
    // every ledger entry balanced; revenue = captured − refunded; no deposit left over.
    let mut billed: BTreeMap<usize, (i64, i64, i64, usize)> = BTreeMap::new();
    for e in read_unique::<BillingEvent>(
        cluster,
        BILLING_EVENTS,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        let (debits, credits) = e
            .postings()
            .iter()
            .fold((0, 0), |(d, c), p| (d + p.debit_cents, c + p.credit_cents));
        ensure!(
            debits == credits && debits > 0,
            "unbalanced ledger entry {e:?}"
        );
        let Some(i) = index.get(e.metadata().aggregate_id.as_str()) else {
            continue;
        };
        let b = billed.entry(*i).or_default();
        match &e {
            BillingEvent::PaymentReceived(x) => b.0 += x.amount_cents,
            BillingEvent::InvoiceIssued(x) => {
                b.1 += x.amount_cents;
                b.3 += 1;
            }
            BillingEvent::CreditNoteIssued(x) => b.2 += x.amount_cents,
        }
    }
    let engine = QueryEngine::open(views).await?;
    let revenue_csv = OutputFormat::Csv.render(
        &engine
            .sql("SELECT order_id, sum(credit_cents - debit_cents) AS r FROM ledger WHERE account = 'revenue' GROUP BY order_id")
            .await?,
    )?;
    let view_revenue: BTreeMap<String, i64> = revenue_csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(o, r)| (o.to_owned(), r.parse().unwrap_or(i64::MIN)))
        .collect();
    for (i, (id, _, total)) in orders.iter().enumerate() {
        let (received, invoiced, credited, invoices) = billed.get(&i).copied().unwrap_or_default();
        let confirmed = result[&i] == Ending::Confirmed;
        let want_invoices = usize::from(confirmed);
        ensure!(
            invoices == want_invoices && invoiced == if confirmed { *total } else { 0 },
            "order {id} ({:?}): {invoices} invoices for {invoiced} cents",
            result[&i]
        );
        ensure!(
            received - credited == invoiced,
            "order {id}: received {received}, credited {credited}, invoiced {invoiced}: the deposit does not clear"
        );
        ensure!(
            received - credited == net.get(&i).copied().unwrap_or(0),
            "order {id}: billing and payments disagree"
        );
        ensure!(
            view_revenue.get(id).copied().unwrap_or(0) == invoiced,
            "ledger view: revenue of {id} is {:?}, invoiced {invoiced}",
            view_revenue.get(id)
        );
    }
    let balance = OutputFormat::Csv.render(
        &engine
            .sql("SELECT coalesce(sum(debit_cents), 0) = coalesce(sum(credit_cents), 0) AS balanced FROM ledger")
            .await?,
    )?;
    ensure!(
        balance.trim_end().ends_with("true"),
        "the ledger view does not balance: {balance}"
    );

    // The real-time windows count every placed, confirmed and cancelled order of the topic
    // (all runs so far) once, none of them late.
    let (mut placed_all, mut confirmed_all, mut cancelled_all, mut revenue_all) = (0, 0, 0, 0);
    for e in read_unique::<OrderEvent>(
        cluster,
        ORDER_EVENTS,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        match &e {
            OrderEvent::OrderPlaced(_) => placed_all += 1,
            OrderEvent::OrderConfirmed(c) => {
                confirmed_all += 1;
                revenue_all += c.total_cents;
            }
            OrderEvent::OrderCancelled(_) => cancelled_all += 1,
            _ => {}
        }
    }
    let windows = OutputFormat::Csv.render(
        &engine
            .sql("SELECT sum(orders_placed), sum(orders_confirmed), sum(orders_cancelled), sum(revenue_cents), sum(late_events) FROM orders_per_minute")
            .await?,
    )?;
    let want = format!("{placed_all},{confirmed_all},{cancelled_all},{revenue_all},0");
    ensure!(
        windows.lines().nth(1) == Some(want.as_str()),
        "orders_per_minute sums {:?}, the topic says placed,confirmed,cancelled,revenue,late = {want}",
        windows.lines().nth(1)
    );

    // The derived views agree: revenue = captured − refunded = what was invoiced, per order;
    // the funnel's endings are the topic's; orders_current finds an order by id.
    let csv = OutputFormat::Csv.render(
        &engine
            .sql("SELECT order_id, captured_cents, refunded_cents, revenue_cents FROM revenue")
            .await?,
    )?;
    let by_order: BTreeMap<&str, (i64, i64, i64)> = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f[0],
                (f[1].parse().ok()?, f[2].parse().ok()?, f[3].parse().ok()?),
            ))
        })
        .collect();
    for (i, (id, _, total)) in orders.iter().enumerate() {
        let (captured, refunded, revenue) = by_order.get(id.as_str()).copied().unwrap_or_default();
        let want = if result[&i] == Ending::Confirmed {
            *total
        } else {
            0
        };
        ensure!(
            revenue == captured - refunded && revenue == want,
            "revenue view, order {id}: captured {captured} − refunded {refunded}, revenue {revenue}, expected {want}"
        );
    }
    let funnel = first_row(
        &engine,
        "SELECT placed, reserved, paid, shipped, confirmed, cancelled FROM order_funnel",
    )
    .await?;
    let f: Vec<i64> = funnel.iter().flatten().copied().collect();
    ensure!(
        f.len() == 6
            && f[4] == confirmed_all
            && f[5] == cancelled_all
            && f[0] >= f[1]
            && f[1] >= f[2]
            && f[2] >= f[3]
            && f[3] >= f[4],
        "order_funnel {funnel:?}: the topic has {confirmed_all} confirmed, {cancelled_all} cancelled"
    );
    if let Some((id, _, _)) = orders.last() {
        let i = orders.len() - 1;
        let sql = format!("SELECT status FROM orders_current WHERE order_id = '{id}'");
        let got = OutputFormat::Csv.render(&engine.sql(&sql).await?)?;
        let want = if result[&i] == Ending::Confirmed {
            "Confirmed"
        } else {
            "Cancelled"
        };
        ensure!(
            got == format!("status\n{want}\n"),
            "orders_current for {id}: {got:?}"
        );
    }

    // The views agree with the topics.
    let ids: Vec<String> = orders.iter().map(|(id, _, _)| id.clone()).collect();
    let statuses = view_statuses(views, &ids).await?;
    for (i, id) in ids.iter().enumerate() {
        let want = if result[&i] == Ending::Confirmed {
            "Confirmed"
        } else {
            "Cancelled"
        };
        ensure!(
            statuses.get(id).map(String::as_str) == Some(want),
            "sagas view says {:?} for {id}, topics say {want}",
            statuses.get(id)
        );
    }

    // Nothing of this simulation was dead-lettered (other scenarios share the topics).
    let keys: HashSet<&str> = orders
        .iter()
        .map(|(id, _, _)| id.as_str())
        .chain(sim.stock.iter().map(|c| c.sku()))
        .collect();
    for dlq in [
        "billing.dlq",
        "orders.dlq",
        "payments.dlq",
        "shipping.dlq",
        "notifications.dlq",
        "inventory.dlq",
        "suppliers.dlq",
    ] {
        let mut dead = topic::read_all(cluster, dlq)?;
        dead.retain(|r| keys.contains(String::from_utf8_lossy(&r.key).as_ref()));
        let reasons: BTreeSet<&str> = dead.iter().filter_map(|r| r.header("dlq.reason")).collect();
        ensure!(
            dead.is_empty(),
            "{} records in {dlq}: {reasons:?}",
            dead.len()
        );
    }
    let confirmed = result.values().filter(|e| **e == Ending::Confirmed).count();
    eprintln!(
        "{} orders: {confirmed} confirmed, {} cancelled; revenue {revenue} cents",
        orders.len(),
        orders.len() - confirmed
    );
    Ok(result)
}

/// The saga scenario: `spec`'s orders with `interruptions`, then every check.
pub async fn saga_end_to_end(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    spec: &SimSpec,
    interruptions: usize,
) -> anyhow::Result<Endings> {
    let sim = simulate::generate(spec);
    let since = Since::now(cluster)?;
    runner.start()?;
    let ran = run_simulation(cluster, views, runner, &sim, interruptions).await;
    runner.stop()?;
    ran?;
    let dups = Duplicates::for_run(cluster, runner.doubles_outputs(), since);
    check(cluster, views, &sim, &dups, |i, e| *e == expected_ending(i)).await
}

/// [`saga_end_to_end`] with no interruption of its own, placing orders at `rate` per second
/// (for runners that churn by themselves while the orders keep coming).
pub async fn saga_end_to_end_at(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    spec: &SimSpec,
    rate: f64,
) -> anyhow::Result<Endings> {
    let sim = simulate::generate(spec);
    let since = Since::now(cluster)?;
    runner.start()?;
    let ran = run_simulation_at(cluster, views, runner, &sim, 0, Some(rate)).await;
    runner.stop()?;
    ran?;
    let dups = Duplicates::for_run(cluster, runner.doubles_outputs(), since);
    check(cluster, views, &sim, &dups, |i, e| *e == expected_ending(i)).await
}

/// A purchasing run: `spec` with little stock per position, so orders drain it, inventory
/// raises low-stock alerts, suppliers place purchase orders, and their receipts (after the
/// lead time) restock inventory while orders keep coming at `rate` per second. Every order
/// ends once, as its forced failure says or out of stock; then every check of [`check`],
/// once every purchase order has been received. Returns the purchase orders placed.
pub async fn purchasing_end_to_end(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    spec: &SimSpec,
    interruptions: usize,
    rate: f64,
) -> anyhow::Result<usize> {
    let sim = simulate::generate(spec);
    let since = Since::now(cluster)?;
    runner.start()?;
    let mut ran = run_simulation_at(cluster, views, runner, &sim, interruptions, Some(rate)).await;
    if ran.is_ok() {
        ran = wait_purchase_orders_received(cluster, views, Duration::from_secs(120)).await;
    }
    runner.stop()?;
    ran?;
    let endings = check(
        cluster,
        views,
        &sim,
        &Duplicates::for_run(cluster, runner.doubles_outputs(), since),
        |i, e| *e == expected_ending(i) || *e == Ending::Cancelled("out of stock".into()),
    )
    .await?;
    let engine = QueryEngine::open(views).await?;
    let counts = first_row(
        &engine,
        "SELECT count(*), count(received_at) FROM purchase_orders",
    )
    .await?;
    let (placed, received) = (counts[0].unwrap_or(0), counts[1].unwrap_or(0));
    ensure!(
        placed > 0,
        "no purchase order was placed: stock never ran low?"
    );
    ensure!(
        placed == received,
        "{placed} purchase orders, {received} received"
    );
    let confirmed = endings
        .values()
        .filter(|e| **e == Ending::Confirmed)
        .count();
    eprintln!(
        "purchasing: {placed} purchase orders placed and received; {confirmed} of {} orders confirmed",
        endings.len()
    );
    Ok(placed as usize)
}

/// Waits until the `purchase_orders` view has no open order, and everything (the receipts'
/// stock included) has been consumed.
async fn wait_purchase_orders_received(
    cluster: &Cluster,
    views: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        wait_caught_up(cluster, views).await?;
        let engine = QueryEngine::open(views).await?;
        // An error: the view is not written yet.
        let open = first_row(
            &engine,
            "SELECT count(*) FROM purchase_orders WHERE received_at IS NULL",
        )
        .await
        .ok()
        .and_then(|r| r.first().copied().flatten());
        if open == Some(0) {
            // The last receipt's stock may still be on its way through inventory.
            return wait_caught_up(cluster, views).await;
        }
        ensure!(
            Instant::now() < deadline,
            "{open:?} purchase orders still open after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Purchasing, checked from the topics: every purchase order names a `StockLow` alert of its
/// position on `inventory.alerts` and at most one order per position is open; each receipt
/// became exactly one `ReceiveStock` (caused by the receipt) and one `InventoryReceived`; the
/// `purchase_orders` view agrees with `suppliers.events`. Returns the quantity received by
/// purchase orders per (sku, warehouse) of `sim`'s skus.
async fn check_purchasing(
    cluster: &Cluster,
    views: &Path,
    sim: &Simulation,
    dups: &Duplicates,
) -> anyhow::Result<BTreeMap<(String, String), i64>> {
    use schemas::inventory::{InventoryAlert, InventoryCommand};
    use schemas::suppliers::SupplierEvent;

    let skus: HashSet<&str> = sim.stock.iter().map(|c| c.sku()).collect();
    let alerts: BTreeMap<String, (String, String)> = read_unique::<InventoryAlert>(
        cluster,
        INVENTORY_ALERTS,
        |a| a.metadata().event_id.clone(),
        dups,
    )
    .await?
    .into_iter()
    .map(|InventoryAlert::StockLow(a)| (a.metadata.event_id, (a.sku, a.warehouse)))
    .collect();
    // po id → (sku, warehouse, quantity, received event id)
    let mut pos: BTreeMap<String, (String, String, i64, Option<String>)> = BTreeMap::new();
    let mut open: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in read_unique::<SupplierEvent>(
        cluster,
        SUPPLIER_EVENTS,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        match e {
            SupplierEvent::PurchaseOrderPlaced(p) => {
                let position = (p.sku.clone(), p.warehouse.clone());
                ensure!(
                    alerts.get(&p.low_stock_event_id) == Some(&position),
                    "purchase order {} names low-stock event {}, which is not an alert of {position:?} on {INVENTORY_ALERTS}",
                    p.po_id,
                    p.low_stock_event_id
                );
                ensure!(
                    pos.insert(p.po_id.clone(), (p.sku, p.warehouse, p.quantity, None))
                        .is_none(),
                    "purchase order {} placed twice (under two event ids)",
                    p.po_id
                );
                let n = open.entry(position.clone()).or_default();
                *n += 1;
                ensure!(*n == 1, "two purchase orders open at once for {position:?}");
            }
            SupplierEvent::PurchaseOrderReceived(r) => {
                let po = pos
                    .get_mut(&r.po_id)
                    .with_context(|| format!("{} received before it was placed", r.po_id))?;
                ensure!(po.3.is_none(), "{} received twice", r.po_id);
                ensure!(
                    r.quantity == po.2,
                    "{} received {} of {}",
                    r.po_id,
                    r.quantity,
                    po.2
                );
                po.3 = Some(r.metadata.event_id.clone());
                *open.entry((r.sku, r.warehouse)).or_default() -= 1;
            }
        }
    }
    // Each receipt booked once: one ReceiveStock caused by it, one InventoryReceived by that.
    let receipts: HashMap<&str, &str> = pos
        .iter()
        .filter_map(|(po, (_, _, _, received))| received.as_deref().map(|r| (r, po.as_str())))
        .collect();
    let mut commands: HashMap<String, &str> = HashMap::new();
    let decoded = if receipts.is_empty() {
        Vec::new()
    } else {
        read_decodable::<InventoryCommand>(
            cluster,
            pipelines::topics::inventory::COMMANDS,
            |c| c.metadata().event_id.clone(),
            &Duplicates::Dropped,
        )
        .await?
    };
    for c in decoded {
        if let InventoryCommand::ReceiveStock(r) = &c
            && let Some(po) = r
                .metadata
                .causation_id
                .as_deref()
                .and_then(|id| receipts.get(id))
        {
            ensure!(
                commands.insert(r.metadata.event_id.clone(), po).is_none(),
                "ReceiveStock {} twice",
                r.metadata.event_id
            );
        }
    }
    ensure!(
        commands.len() == receipts.len(),
        "{} receipts, {} ReceiveStock commands booking them",
        receipts.len(),
        commands.len()
    );
    let mut booked: BTreeMap<&str, usize> = BTreeMap::new();
    let events = if receipts.is_empty() {
        Vec::new()
    } else {
        read_unique::<InventoryEvent>(
            cluster,
            pipelines::topics::inventory::EVENTS,
            |e| e.metadata().event_id.clone(),
            dups,
        )
        .await?
    };
    for e in events {
        if let InventoryEvent::InventoryReceived(r) = &e
            && let Some(po) = r
                .metadata
                .causation_id
                .as_deref()
                .and_then(|c| commands.get(c))
        {
            *booked.entry(po).or_default() += 1;
        }
    }
    ensure!(
        booked.len() == receipts.len() && booked.values().all(|n| *n == 1),
        "receipts booked into inventory: {} of {}, counts {:?}",
        booked.len(),
        receipts.len(),
        booked.values().filter(|n| **n != 1).collect::<Vec<_>>()
    );
    // The view agrees with the topic.
    if !pos.is_empty() {
        let engine = QueryEngine::open(views).await?;
        let csv = OutputFormat::Csv.render(
            &engine
                .sql("SELECT po_id, sku, warehouse, quantity, received_at IS NOT NULL FROM purchase_orders ORDER BY po_id")
                .await?,
        )?;
        let want: String = pos
            .iter()
            .map(|(po, (sku, w, q, r))| format!("{po},{sku},{w},{q},{}\n", r.is_some()))
            .collect();
        let got: String = csv.lines().skip(1).map(|l| format!("{l}\n")).collect();
        ensure!(
            got == want,
            "purchase_orders view:\n{got}\ntopic says:\n{want}"
        );
        eprintln!(
            "purchasing: {} purchase orders, each traced to its low-stock alert ({} alerts); {} received and booked once",
            pos.len(),
            alerts.len(),
            receipts.len()
        );
    }
    let mut received = BTreeMap::new();
    for (sku, warehouse, quantity, r) in pos.into_values() {
        if r.is_some() && skus.contains(sku.as_str()) {
            *received.entry((sku, warehouse)).or_default() += quantity;
        }
    }
    Ok(received)
}

/// A participant down past the deadline: its sagas time out and compensate, and its late
/// replies do not resurrect them when it comes back. `start_missing` brings it back.
pub async fn participant_down_past_deadline(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    start_missing: &mut dyn Runner,
    spec: &SimSpec,
    step_timeout: Duration,
) -> anyhow::Result<()> {
    let sim = simulate::generate(spec);
    let ids: Vec<String> = placed(&sim).into_iter().map(|(id, _, _)| id).collect();
    let since = Since::now(cluster)?;
    runner.start()?;
    simulate::produce(cluster, &sim, None).await?;
    // Past two deadlines: every saga timed out, and its compensation is stuck (the missing
    // participant must refund) and retried.
    let deadline = Instant::now() + step_timeout * 2 + Duration::from_secs(60);
    loop {
        let engine = QueryEngine::open(views).await;
        let stuck = match engine {
            Ok(engine) => {
                let sql = "SELECT saga_id FROM sagas WHERE status = 'Compensating' AND compensation_attempts >= 2";
                let csv = OutputFormat::Csv.render(&engine.sql(sql).await.unwrap_or_default())?;
                let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
                csv.lines().filter(|l| wanted.contains(l)).count()
            }
            Err(_) => 0,
        };
        if stuck == ids.len() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{stuck} of {} sagas stuck compensating",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "all {} sagas timed out and are stuck compensating; starting the missing participant",
        ids.len()
    );
    start_missing.start()?;
    let mut ended = wait_ended(views, &ids, Duration::from_secs(120)).await;
    if ended.is_ok() {
        ended = wait_caught_up(cluster, views).await;
    }
    start_missing.stop()?;
    runner.stop()?;
    ended?;
    check(
        cluster,
        views,
        &sim,
        &Duplicates::for_run(cluster, runner.doubles_outputs(), since),
        |_, e| *e == Ending::Cancelled("timed out".into()),
    )
    .await?;
    Ok(())
}

/// The stores of the saga's event-sourced services (orders, payments, shipping, billing) and of
/// the per-sku inventory service are the folds of their own event logs: what a restart
/// restores from each changelog equals the fold, state by state. Returns the states compared.
pub const SAGA_STORES: &[&str] = &["orders", "payments", "shipping", "billing", "inventory"];

/// Checks `services`' stores against their event logs (see [`SAGA_STORES`]).
pub fn stores_equal_their_event_logs(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    services: &[&str],
) -> anyhow::Result<usize> {
    let mut compared = 0;
    for service in services {
        let r = pipelines::replay::replay_store(cluster, rt, service, true, false, None)?;
        let differing = r.differing.unwrap_or_default();
        ensure!(
            differing.is_empty(),
            "{service}: {} of {} states differ from the fold of {} ({} events), e.g. {:?}",
            differing.len(),
            r.states,
            r.events_topic,
            r.events,
            &differing[..differing.len().min(5)]
        );
        ensure!(r.states > 0, "{service}: no state to compare");
        compared += r.states;
    }
    Ok(compared)
}

/// Every store of `services` as a restart on `state_dir` restores it (its local snapshots,
/// then the changelog's tail) equals the fold of the service's event log, and the snapshots
/// were used. The services must be stopped (a running instance holds the directory's lock).
/// Returns the records taken from snapshots.
pub fn local_state_restores_alike(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    state_dir: &Path,
    services: &[&str],
) -> anyhow::Result<usize> {
    let mut from_snapshots = 0;
    for service in services {
        let r =
            pipelines::replay::replay_store(cluster, rt, service, true, false, Some(state_dir))?;
        let differing = r.differing.unwrap_or_default();
        ensure!(
            differing.is_empty(),
            "{service}: restored from {}, {} of {} states differ from the fold of {}, e.g. {:?}",
            state_dir.display(),
            differing.len(),
            r.states,
            r.events_topic,
            &differing[..differing.len().min(5)]
        );
        ensure!(
            r.from_snapshot > 0,
            "{service}: no local snapshot under {} was used",
            state_dir.display()
        );
        from_snapshots += r.from_snapshot;
    }
    Ok(from_snapshots)
}

/// Deletes the changelogs (the state stores) of orders, payments and shipping, rebuilds each
/// with `rebuild(service)` (the CLI's `supplystream replay <service>` in the real suite), and
/// demands that a restart would restore exactly the states it restored before. The services
/// must be stopped.
pub fn stores_rebuild_from_event_logs(
    cluster: &Cluster,
    rt: &tokio::runtime::Handle,
    mut rebuild: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use pipelines::saga::rebuild::{EventSourced, Stores, differences, restore};
    use processors::{billing::Billing, orders::Orders, payments::Payments, shipping::Shipping};

    fn one<W: EventSourced>(
        cluster: &Cluster,
        rt: &tokio::runtime::Handle,
        service: &str,
        rebuild: &mut dyn FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let before: Stores<W::State> = restore::<W>(cluster, rt, None)?.0;
        rt.block_on(pipelines::kafka::delete_topics(cluster, &[W::CHANGELOG]))?;
        rebuild(service)?;
        let after: Stores<W::State> = restore::<W>(cluster, rt, None)?.0;
        let differing = differences(&before, &after);
        ensure!(
            differing.is_empty(),
            "{service}: {} states differ after the rebuild, e.g. {:?}",
            differing.len(),
            &differing[..differing.len().min(5)]
        );
        let n: usize = after.values().map(|s| s.len()).sum();
        ensure!(n > 0, "{service}: nothing restored");
        eprintln!("{service}: {n} states rebuilt from its event log, identical to the originals");
        Ok(())
    }
    one::<Orders>(cluster, rt, "orders", &mut rebuild)?;
    one::<Payments>(cluster, rt, "payments", &mut rebuild)?;
    one::<Shipping>(cluster, rt, "shipping", &mut rebuild)?;
    one::<Billing>(cluster, rt, "billing", &mut rebuild)
}
