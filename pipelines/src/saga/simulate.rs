//! Seeded order simulation: stock for the catalogue, then orders with a chosen mix of
//! failures (stock-outs, payment declines, shipment failures, customer cancellations).
//!
//! Failures are forced through the participants' deterministic rules: a line for more than
//! any warehouse holds (stock-out), a card token starting with `declined` (payments), the
//! country `XX` that no carrier serves (shipping), a `CancelOrder` right after the order.

use std::time::{Duration, Instant};

use anyhow::Context;
use schemas::Metadata;
use schemas::Registry;
use schemas::codec::Encoder;
use schemas::inventory::{InventoryCommand, ReceiveStock};
use schemas::orders::{CancelOrder, OrderCommand, OrderLine, PlaceOrder};
use schemas::saga::topics::ORDER_COMMANDS;

use crate::kafka::Output;
use crate::load::{Rng, WAREHOUSES};
use crate::topics::inventory::COMMANDS as INVENTORY_COMMANDS;
use crate::{Cluster, Guarantee};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimSpec {
    pub orders: usize,
    pub skus: usize,
    pub seed: u64,
    /// Distinguishes runs of the same seed on one cluster (ids and skus differ, the orders
    /// and their failures do not); 0 leaves the ids as they are.
    pub run: u32,
    /// Shares of orders (0..1) that should fail each way.
    pub stockouts: f64,
    pub declines: f64,
    pub ship_failures: f64,
    pub cancellations: f64,
    /// Stock received per (sku, warehouse) before the orders. The default,
    /// [`STOCK_PER_POSITION`], is more than ordinary orders take; a little makes the run
    /// a purchasing one (low-stock alerts, purchase orders, receipts).
    pub stock_per_position: i64,
    /// When the first order is stamped (`occurred_at`, ms since the epoch); each next one a
    /// second later. [`SIM_BASE_TIME`] by default (deterministic runs); `supplystream
    /// simulate` stamps from now, as real clients do (a participant refuses a saga's input
    /// stamped before what it forgot: see `participant::Sagas`).
    pub base_time: i64,
}

/// The default [`SimSpec::base_time`]: 2026-01-01T00:00:00Z.
pub const SIM_BASE_TIME: i64 = 1_767_225_600_000;

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            orders: 2_000,
            skus: 40,
            seed: 11,
            run: 0,
            stockouts: 0.10,
            declines: 0.10,
            ship_failures: 0.05,
            cancellations: 0.05,
            stock_per_position: STOCK_PER_POSITION,
            base_time: SIM_BASE_TIME,
        }
    }
}

/// Stock on hand per (sku, warehouse) received before the orders: far more than ordinary
/// orders can take, so only forced stock-outs run out.
pub const STOCK_PER_POSITION: i64 = 100_000;
const WAREHOUSE_COUNT: usize = 3;
const COUNTRIES: [&str; 5] = ["NL", "DE", "FR", "BE", "ES"];

/// How an order is meant to end (what the simulation forced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Confirm,
    StockOut,
    Decline,
    ShipFailure,
    Cancel,
}

/// The generated workload.
pub struct Simulation {
    pub stock: Vec<InventoryCommand>,
    /// Orders (and cancellations) in production order, with what each order was meant to do.
    pub orders: Vec<(OrderCommand, Intent)>,
}

/// Label of a simulation's ids: its seed, and its run when not 0.
fn label(spec: &SimSpec) -> String {
    match spec.run {
        0 => spec.seed.to_string(),
        run => format!("{}r{run}", spec.seed),
    }
}

/// Sku `i` of a simulation labelled `label` (each simulation stocks its own skus).
fn sku(label: &str, i: u64) -> String {
    format!("SKU-{label}-{i:04}")
}

/// Generates the workload of `spec`.
pub fn generate(spec: &SimSpec) -> Simulation {
    let mut rng = Rng(spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let label = label(spec);
    let base_time = spec.base_time;
    let mut stock = Vec::new();
    for s in 0..spec.skus as u64 {
        for w in &WAREHOUSES[..WAREHOUSE_COUNT] {
            let id = format!("sim-{label}-stock-{s}-{w}");
            stock.push(
                ReceiveStock {
                    metadata: Metadata::command(&id, &sku(&label, s), base_time),
                    sku: sku(&label, s),
                    warehouse: (*w).into(),
                    quantity: spec.stock_per_position,
                }
                .into(),
            );
        }
    }
    let mut orders = Vec::new();
    let thresholds = [
        (spec.stockouts, Intent::StockOut),
        (spec.declines, Intent::Decline),
        (spec.ship_failures, Intent::ShipFailure),
        (spec.cancellations, Intent::Cancel),
    ];
    for n in 0..spec.orders {
        let order_id = format!("O-{label}-{n:06}");
        let roll = rng.below(1_000_000) as f64 / 1_000_000.0;
        let mut acc = 0.0;
        let mut intent = Intent::Confirm;
        for (share, i) in thresholds {
            acc += share;
            if roll < acc {
                intent = i;
                break;
            }
        }
        let line_count = 1 + rng.below(3) as usize;
        let mut lines: Vec<OrderLine> = (0..line_count)
            .map(|_| OrderLine {
                sku: sku(&label, rng.below(spec.skus as u64)),
                warehouse: WAREHOUSES[rng.below(WAREHOUSE_COUNT as u64) as usize].into(),
                quantity: 1 + rng.below(3) as i64,
                unit_price_cents: 100 * (1 + rng.below(50) as i64),
            })
            .collect();
        if intent == Intent::StockOut {
            let last = lines.len() - 1;
            lines[last].quantity = spec.stock_per_position.max(STOCK_PER_POSITION) * 10;
        }
        let at = base_time + n as i64 * 1_000;
        let place = PlaceOrder {
            metadata: Metadata::command(&format!("{order_id}-place"), &order_id, at),
            order_id: order_id.clone(),
            customer_id: format!("C-{:05}", rng.below(5_000)),
            lines,
            payment_method: if intent == Intent::Decline {
                format!("declined-{}", rng.below(10_000))
            } else {
                format!("card-{}", rng.below(10_000))
            },
            ship_to_country: if intent == Intent::ShipFailure {
                "XX".into()
            } else {
                COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize].into()
            },
            ship_to_postcode: format!("{:05}", rng.below(100_000)),
        };
        orders.push((place.into(), intent));
        if intent == Intent::Cancel {
            let cancel = CancelOrder {
                metadata: Metadata::command(&format!("{order_id}-cancel"), &order_id, at + 1),
                order_id,
                reason: "customer changed their mind".into(),
            };
            orders.push((cancel.into(), intent));
        }
    }
    Simulation { stock, orders }
}

/// Produces the stock, then the orders at `rate` orders per second (`None`: as fast as
/// possible). Plain idempotent producer: these are inputs from outside the system.
pub async fn produce(cluster: &Cluster, sim: &Simulation, rate: Option<f64>) -> anyhow::Result<()> {
    let registry = Registry::new(&cluster.registry);
    let stock_encoder =
        Encoder::<InventoryCommand>::register(&registry, INVENTORY_COMMANDS).await?;
    let order_encoder = Encoder::<OrderCommand>::register(&registry, ORDER_COMMANDS).await?;
    let plain = Cluster {
        guarantee: Guarantee::AtLeastOnce,
        ..cluster.clone()
    };
    let stock = sim.stock.clone();
    let orders: Vec<OrderCommand> = sim.orders.iter().map(|(o, _)| o.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Output::new(&plain, "producer", "simulate")?;
        let mut buf = Vec::with_capacity(256);
        for c in &stock {
            stock_encoder.encode_into(c, &mut buf)?;
            output.send(INVENTORY_COMMANDS, None, c.sku().as_bytes(), &buf, None)?;
        }
        // Stock first: an order must not find the shelves empty because of the race.
        output.flush()?;
        let started = Instant::now();
        let mut placed = 0u64;
        for o in &orders {
            if let (Some(rate), OrderCommand::PlaceOrder(_)) = (rate, o) {
                let due = started + Duration::from_secs_f64(placed as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    output.flush()?;
                    std::thread::sleep(wait);
                }
                placed += 1;
            }
            order_encoder.encode_into(o, &mut buf)?;
            output.send(ORDER_COMMANDS, None, o.order_id().as_bytes(), &buf, None)?;
        }
        output.flush()
    })
    .await
    .context("producer thread")?
}

/// Plays the carriers: for every shipment created so far on `shipping.replies` (and not
/// cancelled), publishes its scans on `shipping.tracking` as an outside producer would (a
/// pick-up two hours after the shipment, delivery a day later; one in five first has a failed
/// attempt and is delivered a day later still). Ids are the shipment's and the scan's, so running it twice posts the same scans
/// (the `shipments` view counts each once). Returns the shipments scanned.
pub async fn carriers(cluster: &Cluster) -> anyhow::Result<usize> {
    use schemas::saga::topics::{SHIPPING_REPLIES, SHIPPING_TRACKING};
    use schemas::shipping::{
        DeliveryAttemptFailed, ParcelDelivered, ParcelPickedUp, ShipmentReply, TrackingEvent,
    };

    let registry = Registry::new(&cluster.registry);
    let encoder = Encoder::<TrackingEvent>::register(&registry, SHIPPING_TRACKING).await?;
    let plain = Cluster {
        guarantee: Guarantee::AtLeastOnce,
        ..cluster.clone()
    };
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Shipment id → (carrier, created at), less the cancelled ones.
        let mut shipments = std::collections::BTreeMap::new();
        let mut decoder = schemas::codec::Decoder::<ShipmentReply>::new(registry);
        let stop = crate::Stop::default();
        let probe: rdkafka::consumer::BaseConsumer =
            crate::kafka::client_config(&plain).create()?;
        for p in 0..crate::kafka::partition_count(&probe, SHIPPING_REPLIES)? as i32 {
            crate::kafka::read_partition_to_end(&plain, "carriers", SHIPPING_REPLIES, p, |m| {
                use rdkafka::message::Message;
                let payload = m.payload().unwrap_or_default();
                match crate::wire::decode(&rt, &mut decoder, payload, &stop)? {
                    ShipmentReply::ShipmentCreated(c) => {
                        shipments.insert(c.shipment_id, (c.carrier, c.metadata.occurred_at));
                    }
                    ShipmentReply::ShipmentCancelled(c) => {
                        if let Some(id) = c.shipment_id {
                            shipments.remove(&id);
                        }
                    }
                    ShipmentReply::ShipmentFailed(_) => {}
                }
                Ok(())
            })?;
        }
        let output = Output::new(&plain, "producer", "carriers")?;
        let mut buf = Vec::with_capacity(256);
        const HOUR: i64 = 3_600_000;
        for (n, (shipment_id, (carrier, created))) in shipments.iter().enumerate() {
            let meta = |scan: &str, at: i64| {
                Metadata::command(&format!("{shipment_id}/{scan}"), shipment_id, at)
            };
            let (id, carrier) = (shipment_id.clone(), carrier.clone());
            let mut scans: Vec<TrackingEvent> = vec![
                ParcelPickedUp {
                    metadata: meta("pickup", created + 2 * HOUR),
                    shipment_id: id.clone(),
                    carrier: carrier.clone(),
                    location: "depot".into(),
                }
                .into(),
            ];
            let failed = n % 5 == 4;
            if failed {
                scans.push(
                    DeliveryAttemptFailed {
                        metadata: meta("attempt-1", created + 20 * HOUR),
                        shipment_id: id.clone(),
                        carrier: carrier.clone(),
                        location: "doorstep".into(),
                        reason: "nobody home".into(),
                    }
                    .into(),
                );
            }
            scans.push(
                ParcelDelivered {
                    metadata: meta("delivered", created + if failed { 50 } else { 26 } * HOUR),
                    shipment_id: id.clone(),
                    carrier,
                    location: "doorstep".into(),
                    received_by: (n % 3 == 0).then(|| "neighbour".to_owned()),
                }
                .into(),
            );
            for s in &scans {
                encoder.encode_into(s, &mut buf)?;
                output.send(SHIPPING_TRACKING, None, id.as_bytes(), &buf, None)?;
            }
        }
        output.flush()?;
        Ok(shipments.len())
    })
    .await
    .context("carriers thread")?
}
