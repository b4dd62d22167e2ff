//! Customer returns end to end: orders placed and confirmed by the saga, carriers deliver
//! them (some 40 days ago, some never), customers ask for returns of every kind — good, late,
//! over the quantity shipped, of an undelivered order, a second one past what is left — and
//! the warehouse receives the authorized ones, some units damaged, one receipt more than was
//! authorized. Then, against an independent statement of the rules in this file:
//! - each return is authorized or rejected as the rules say, in `returns.events` and in the
//!   `returns` view alike, with the refund of what was received at the order's price;
//! - payments refunded exactly that, once per received return, never more than captured;
//! - stock grew by the sellable units received, position by position (damaged ones are
//!   written off), and by nothing else;
//! - the over-receipt is in `returns.dlq` with its reason, and nothing else of the run is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pipelines::kafka::Output;
use pipelines::saga::simulate::{self, Intent, SimSpec};
use pipelines::{Cluster, Guarantee};
use schemas::Metadata;
use schemas::codec::Encoder;
use schemas::orders::OrderCommand;
use schemas::payments::PaymentReply;
use schemas::record::RecordUnion;
use schemas::returns::topics as returns;
use schemas::returns::*;
use schemas::saga::topics::{PAYMENT_REPLIES, SHIPPING_TRACKING};
use schemas::shipping::{ParcelDelivered, TrackingEvent};
use sinks::{OutputFormat, QueryEngine};

use crate::saga::{Duplicates, Since, read_unique, run_simulation, wait_caught_up};
use crate::scenario::Runner;
use crate::topic;

const DAY: i64 = 24 * 3600 * 1000;

/// What each order is put through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// One unit back, sellable.
    Good,
    /// Every unit of the first line back, one damaged.
    Damaged,
    /// Delivered 40 days ago: rejected.
    Late,
    /// One more than shipped: rejected.
    OverQuantity,
    /// Never delivered: rejected.
    Undelivered,
    /// One unit back and received; then the whole line again: rejected.
    Twice,
    /// Authorized, then a receipt of more than authorized: dead-lettered, never received.
    OverReceipt,
}

const CASES: [Case; 7] = [
    Case::Good,
    Case::Damaged,
    Case::Late,
    Case::OverQuantity,
    Case::Undelivered,
    Case::Twice,
    Case::OverReceipt,
];

/// One return as the rules decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    status: &'static str,
    sellable: i64,
    damaged: i64,
    refund: i64,
}

/// Writes `records` to `topic` as another producer would (the registry's schemas, no API).
pub(crate) async fn produce<T: RecordUnion>(
    cluster: &Cluster,
    topic: &'static str,
    records: Vec<(String, T)>,
) -> anyhow::Result<()> {
    let registry = schemas::Registry::new(&cluster.registry);
    let encoder = Encoder::<T>::register(&registry, topic).await?;
    let plain = Cluster {
        guarantee: Guarantee::AtLeastOnce,
        ..cluster.clone()
    };
    tokio::task::spawn_blocking(move || {
        let output = Output::new(&plain, "producer", "returns-test")?;
        let mut buf = Vec::new();
        for (key, r) in &records {
            encoder.encode_into(r, &mut buf)?;
            output.send(topic, None, key.as_bytes(), &buf, None)?;
        }
        output.flush()
    })
    .await
    .context("producer thread")?
}

/// Runs the scenario with `runner` (the saga, the inventory service and their views);
/// `seed` keeps runs on one cluster apart. With `interrupt`, the runner is interrupted (a
/// child process: SIGKILLed) right after the requests and again right after the receipts are
/// produced, and started again. Returns the number of returns checked.
pub async fn returns_end_to_end(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
    seed: u64,
    interrupt: bool,
) -> anyhow::Result<usize> {
    let spec = SimSpec {
        orders: 7 * 6,
        skus: 5,
        seed,
        stockouts: 0.0,
        declines: 0.0,
        ship_failures: 0.0,
        cancellations: 0.0,
        ..SimSpec::default()
    };
    let sim = simulate::generate(&spec);
    let since = Since::of(cluster, &[returns::EVENTS, PAYMENT_REPLIES])?;
    let dups = Duplicates::for_run(cluster, runner.doubles_outputs(), since);
    runner.start()?;
    let ran = async {
        run_simulation(cluster, views, runner, &sim, 0).await?;
        returns_phase(cluster, views, &sim, runner, interrupt, &dups).await
    }
    .await;
    runner.stop()?;
    ran
}

async fn returns_phase(
    cluster: &Cluster,
    views: &Path,
    sim: &simulate::Simulation,
    runner: &mut dyn Runner,
    interrupt: bool,
    dups: &Duplicates,
) -> anyhow::Result<usize> {
    let interrupted = |runner: &mut dyn Runner| -> anyhow::Result<()> {
        if interrupt {
            runner.interrupt()?;
            runner.start()?;
        }
        Ok(())
    };
    let before = stock_levels(views).await?;
    let now = pipelines::wire::now_ms();
    // Every order confirms (no failure was forced); the case of each by its index.
    let orders: Vec<(&schemas::orders::PlaceOrder, Case)> = sim
        .orders
        .iter()
        .filter_map(|(o, intent)| match (o, intent) {
            (OrderCommand::PlaceOrder(p), Intent::Confirm) => Some(p),
            _ => None,
        })
        .zip(CASES.iter().copied().cycle())
        .collect();
    ensure!(orders.len() >= CASES.len(), "{} orders", orders.len());

    // The carriers deliver.
    let scans: Vec<(String, TrackingEvent)> = orders
        .iter()
        .filter(|(_, case)| *case != Case::Undelivered)
        .map(|(p, case)| {
            let shipment = format!("SHP-{}", p.order_id);
            let at = if *case == Case::Late {
                now - 40 * DAY
            } else {
                now - DAY
            };
            let scan = ParcelDelivered {
                metadata: Metadata::command(&format!("{shipment}/delivered"), &shipment, at),
                shipment_id: shipment.clone(),
                carrier: "DHL".into(),
                location: "doorstep".into(),
                received_by: None,
            };
            (shipment, scan.into())
        })
        .collect();
    produce(cluster, SHIPPING_TRACKING, scans).await?;
    wait_caught_up(cluster, views).await?;

    // Customers ask; the rules decide (the independent model).
    let mut requests: Vec<(String, ReturnCommand)> = Vec::new();
    let mut expected: BTreeMap<(String, String), Expected> = BTreeMap::new();
    let mut receipts: Vec<(String, ReturnCommand)> = Vec::new();
    let rejected = |refund| Expected {
        status: "Rejected",
        sellable: 0,
        damaged: 0,
        refund,
    };
    for (p, case) in &orders {
        let line = &p.lines[0];
        // Units of the sku shipped (an order may list one sku on several lines).
        let shipped: i64 = p
            .lines
            .iter()
            .filter(|l| l.sku == line.sku)
            .map(|l| l.quantity)
            .sum();
        let order = p.order_id.clone();
        let ask = |id: &str, quantity: i64| -> (String, ReturnCommand) {
            let cmd = RequestReturn {
                metadata: Metadata::command(&format!("{order}/{id}/ask"), &order, now),
                order_id: order.clone(),
                return_id: id.into(),
                lines: vec![ReturnLine {
                    sku: line.sku.clone(),
                    quantity,
                }],
            };
            (order.clone(), cmd.into())
        };
        let receive = |id: &str, sellable: i64, damaged: i64| -> (String, ReturnCommand) {
            let cmd = ReceiveReturn {
                metadata: Metadata::command(&format!("{order}/{id}/receive"), &order, now),
                order_id: order.clone(),
                return_id: id.into(),
                warehouse: line.warehouse.clone(),
                lines: vec![ReceivedLine {
                    sku: line.sku.clone(),
                    sellable,
                    damaged,
                }],
            };
            (order.clone(), cmd.into())
        };
        let received = |sellable: i64, damaged: i64| Expected {
            status: "Received",
            sellable,
            damaged,
            refund: (sellable + damaged) * line.unit_price_cents,
        };
        let key = |id: &str| (order.clone(), id.to_owned());
        match case {
            Case::Good => {
                requests.push(ask("R1", 1));
                receipts.push(receive("R1", 1, 0));
                expected.insert(key("R1"), received(1, 0));
            }
            Case::Damaged => {
                requests.push(ask("R1", shipped));
                receipts.push(receive("R1", shipped - 1, 1));
                expected.insert(key("R1"), received(shipped - 1, 1));
            }
            Case::Late | Case::Undelivered => {
                requests.push(ask("R1", 1));
                expected.insert(key("R1"), rejected(0));
            }
            Case::OverQuantity => {
                requests.push(ask("R1", shipped + 1));
                expected.insert(key("R1"), rejected(0));
            }
            Case::Twice => {
                requests.push(ask("R1", 1));
                requests.push(ask("R2", shipped));
                receipts.push(receive("R1", 1, 0));
                expected.insert(key("R1"), received(1, 0));
                expected.insert(key("R2"), rejected(0));
            }
            Case::OverReceipt => {
                requests.push(ask("R1", 1));
                receipts.push(receive("R1", 2, 0));
                expected.insert(
                    key("R1"),
                    Expected {
                        status: "Authorized",
                        sellable: 0,
                        damaged: 0,
                        refund: 0,
                    },
                );
            }
        }
    }
    produce(cluster, returns::COMMANDS, requests).await?;
    interrupted(runner)?;
    wait_caught_up(cluster, views).await?;
    produce(cluster, returns::COMMANDS, receipts).await?;
    interrupted(runner)?;
    wait_caught_up(cluster, views).await?;
    wait_view(views, &expected, Duration::from_secs(60)).await?;

    // returns.events says the same as the model.
    let mut events: HashMap<(String, String), Expected> = HashMap::new();
    let mut received_ids: HashMap<String, (String, i64)> = HashMap::new();
    let ours: HashSet<&str> = orders.iter().map(|(p, _)| p.order_id.as_str()).collect();
    for e in read_unique::<ReturnEvent>(
        cluster,
        returns::EVENTS,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        let m = e.metadata();
        if !ours.contains(m.aggregate_id.as_str()) {
            continue;
        }
        let key = (m.aggregate_id.clone(), e.return_id().to_owned());
        match &e {
            ReturnEvent::ReturnAuthorized(_) => {
                ensure!(
                    events
                        .insert(
                            key.clone(),
                            Expected {
                                status: "Authorized",
                                sellable: 0,
                                damaged: 0,
                                refund: 0
                            }
                        )
                        .is_none(),
                    "{key:?} decided twice"
                );
            }
            ReturnEvent::ReturnRejected(_) => {
                ensure!(
                    events.insert(key.clone(), rejected(0)).is_none(),
                    "{key:?} decided twice"
                );
            }
            ReturnEvent::ReturnReceived(rcv) => {
                let slot = events
                    .get_mut(&key)
                    .with_context(|| format!("{key:?} received before authorized"))?;
                ensure!(
                    slot.status == "Authorized",
                    "{key:?} received while {}",
                    slot.status
                );
                *slot = Expected {
                    status: "Received",
                    sellable: rcv.lines.iter().map(|l| l.sellable).sum(),
                    damaged: rcv.lines.iter().map(|l| l.damaged).sum(),
                    refund: rcv.refund_cents,
                };
                received_ids.insert(m.event_id.clone(), (rcv.order_id.clone(), rcv.refund_cents));
            }
        }
    }
    let want: HashMap<(String, String), Expected> = expected.clone().into_iter().collect();
    ensure!(
        events == want,
        "returns.events:\n{events:#?}\nthe rules say:\n{want:#?}"
    );

    // Payments refunded each received return once, by exactly its refund.
    let mut refunds: HashMap<String, i64> = HashMap::new();
    for r in read_unique::<PaymentReply>(
        cluster,
        PAYMENT_REPLIES,
        |e| e.metadata().event_id.clone(),
        dups,
    )
    .await?
    {
        if let PaymentReply::PaymentRefunded(p) = r
            && let Some(cause) = p.metadata.causation_id.as_deref()
            && received_ids.contains_key(cause)
        {
            ensure!(
                refunds.insert(cause.to_owned(), p.amount_cents).is_none(),
                "{cause} refunded twice"
            );
        }
    }
    for (id, (order, cents)) in &received_ids {
        ensure!(
            refunds.get(id) == Some(cents),
            "return {id} of {order}: refunded {:?}, received for {cents}",
            refunds.get(id)
        );
    }

    // Stock grew by the sellable units, and by nothing else.
    let mut grown: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (p, _) in &orders {
        let line = &p.lines[0];
        if let Some(e) = expected.get(&(p.order_id.clone(), "R1".into())) {
            *grown
                .entry((line.sku.clone(), line.warehouse.clone()))
                .or_default() += e.sellable;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = stock_levels(views).await?;
        let mut diff: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (k, v) in &after {
            let d = v - before.get(k).copied().unwrap_or(0);
            if d != 0 {
                diff.insert(k.clone(), d);
            }
        }
        grown.retain(|_, v| *v != 0);
        if diff == grown {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "stock_levels on hand grew by {diff:?}; the sellable units received are {grown:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The over-receipts are dead-lettered with their reason; nothing else of ours is.
    let dead: Vec<_> = topic::read_all(cluster, returns::DLQ)?
        .into_iter()
        .filter(|r| ours.contains(String::from_utf8_lossy(&r.key).as_ref()))
        .collect();
    let over = orders
        .iter()
        .filter(|(_, c)| *c == Case::OverReceipt)
        .count();
    ensure!(
        dead.len() == over,
        "{} records in {}, {over} expected",
        dead.len(),
        returns::DLQ
    );
    for r in &dead {
        let reason = r.header("dlq.reason").unwrap_or_default();
        ensure!(
            reason.contains("2 of") && reason.contains("1 authorized"),
            "dead letter reason: {reason}"
        );
    }
    eprintln!(
        "returns: {} returns over {} orders: {} received ({} refunds), {} rejected",
        expected.len(),
        orders.len(),
        received_ids.len(),
        refunds.len(),
        expected.values().filter(|e| e.status == "Rejected").count()
    );
    Ok(expected.len())
}

/// On hand per (sku, warehouse).
async fn stock_levels(views: &Path) -> anyhow::Result<BTreeMap<(String, String), i64>> {
    let engine = QueryEngine::open(views).await?;
    let csv = OutputFormat::Csv.render(
        &engine
            .sql("SELECT sku, warehouse, on_hand FROM stock_levels")
            .await?,
    )?;
    Ok(csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some(((f[0].to_owned(), f[1].to_owned()), f[2].parse().ok()?))
        })
        .collect())
}

/// Waits until the `returns` view holds `expected` for these orders.
async fn wait_view(
    views: &Path,
    expected: &BTreeMap<(String, String), Expected>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let want: String = expected
        .iter()
        .map(|((o, r), e)| {
            format!(
                "{o},{r},{},{},{},{}\n",
                e.status, e.sellable, e.damaged, e.refund
            )
        })
        .collect();
    let ours: HashSet<&str> = expected.keys().map(|(o, _)| o.as_str()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let got = match QueryEngine::open(views).await {
            Ok(engine) => match engine
                .sql("SELECT order_id, return_id, status, sellable, damaged, refund_cents FROM returns ORDER BY order_id, return_id")
                .await
            {
                Ok(batches) => OutputFormat::Csv
                    .render(&batches)?
                    .lines()
                    .skip(1)
                    .filter(|l| l.split(',').next().is_some_and(|o| ours.contains(o)))
                    .map(|l| format!("{l}\n"))
                    .collect(),
                Err(_) => String::new(), // not written yet
            },
            Err(_) => String::new(),
        };
        if got == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "returns view:\n{got}\nthe rules say:\n{want}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
