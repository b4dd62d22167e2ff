//! Hostile input (issue 14): records no rule of ours wrote, on topics the views fold.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pipelines::kafka::Output;
use pipelines::topics::dlq_headers;
use pipelines::{Cluster, Guarantee};

/// A plain producer that writes what no rule of ours would.
fn raw_producer(cluster: &Cluster) -> anyhow::Result<Output> {
    Output::new(
        &Cluster {
            guarantee: Guarantee::AtLeastOnce,
            ..cluster.clone()
        },
        "test",
        "hostile",
    )
}

/// Every view dead-letters a record of its topics it cannot decode, with the reason and the
/// view's name, and folds on: before, every view but `stock_levels` and `shipments` left such
/// a record out with only a warning in its log. Runs the views of orders, billing, catalog and
/// suppliers (the saga's process), writes a record that is not Avro to each event log they
/// read, and waits for each view's dead letter. (The audit trail records such a record as a
/// row of its own.)
pub async fn views_dead_letter_what_they_cannot_decode(
    cluster: &Cluster,
    views: &Path,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    let opts = pipelines::saga::Options::new(cluster.clone(), views.to_path_buf());
    let running = pipelines::saga::spawn(
        &opts,
        &rt,
        &["orders", "billing", "catalog", "suppliers"],
        true,
    )?;
    // (event log, the DLQ its views write, the views that must report it)
    let expected: [(&str, &str, &[&str]); 4] = [
        ("billing.events", "billing.dlq", &["ledger-view"]),
        ("catalog.events", "catalog.dlq", &["products-view"]),
        (
            "suppliers.events",
            "suppliers.dlq",
            &["purchase-orders-view"],
        ),
        (
            "orders.events",
            "orders.dlq",
            &["saga-views", "orders-windows"],
        ),
    ];
    let raw = raw_producer(cluster)?;
    for (topic, _, _) in expected {
        let key = format!("HOSTILE-{topic}");
        raw.send(topic, None, key.as_bytes(), b"not Avro at all", None)?;
    }
    raw.flush()?;
    // On the real tier the views first fold every event the scenarios before left.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        let wanted: Vec<(&str, &str, &str)> = expected
            .iter()
            .flat_map(|(t, dlq, views)| views.iter().map(move |v| (*t, *dlq, *v)))
            .collect();
        for (topic, dlq, view) in wanted {
            let key = format!("HOSTILE-{topic}");
            let found = crate::topic::read_all(cluster, dlq)?
                .into_iter()
                .find(|r| r.key == key.as_bytes() && r.header(dlq_headers::SERVICE) == Some(view));
            match found {
                None => missing.push(format!("{view}'s dead letter of {topic} in {dlq}")),
                Some(r) => {
                    let reason = r.header(dlq_headers::REASON).unwrap_or_default();
                    ensure!(
                        !reason.is_empty()
                            && r.header(dlq_headers::SOURCE_TOPIC) == Some(topic)
                            && r.payload == b"not Avro at all",
                        "{view}'s dead letter of {topic} lacks its reason, source or payload: {:?}",
                        r.headers
                    );
                }
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stopped = tokio::task::spawn_blocking(move || running.stop()).await?;
    ensure!(missing.is_empty(), "never dead-lettered: {missing:?}");
    stopped
}

/// An unreadable changelog record (issue 14) follows `pipelines::runtime::Quarantine`'s rule.
/// The catalog creates a dozen products; then, with it stopped, its changelog gets a record
/// that is not Avro for two products in two partitions: for one it is followed by a copy of
/// the product's good record (superseded), for the other it is the product's last. Restarted,
/// the catalog must take every price change of the first partition's products, and of the
/// third's, while the held partition's wait — the process up all along; before, the restore
/// failed and the process exited at every start. Then a good record of the held product is
/// written after the bad one (the operator's repair), and the held partition's changes must
/// come through too: every product's price changed exactly once.
pub async fn unreadable_changelog_records_are_skipped_or_held(
    cluster: &Cluster,
    views: &Path,
) -> anyhow::Result<()> {
    use schemas::Metadata;
    use schemas::products::{CatalogCommand, ChangePrice, CreateProduct};
    const CHANGELOG: &str = "catalog.changelog";
    const EVENTS: &str = "catalog.events";
    let rt = tokio::runtime::Handle::current();
    let opts = pipelines::saga::Options::new(cluster.clone(), views.to_path_buf());
    let skus: Vec<String> = (0..12).map(|i| format!("SKU-CL-{i}")).collect();
    let is_ours = |key: &[u8]| skus.iter().any(|s| s.as_bytes() == key);
    // Events of our products, per product.
    let events_of = || -> anyhow::Result<BTreeMap<Vec<u8>, usize>> {
        let mut n = BTreeMap::new();
        for r in crate::topic::read_all(cluster, EVENTS)? {
            if is_ours(&r.key) {
                *n.entry(r.key).or_default() += 1;
            }
        }
        Ok(n)
    };
    let wait_for = |what: &str, done: &dyn Fn() -> anyhow::Result<bool>| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done()? {
            ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    };

    let running = pipelines::saga::spawn(&opts, &rt, &["catalog"], false)?;
    let created = skus
        .iter()
        .map(|s| {
            let create = CreateProduct {
                metadata: Metadata::command(&format!("create-{s}"), s, 1),
                sku: s.clone(),
                name: format!("Product {s}"),
                price_cents: 1_000,
            };
            (s.clone(), CatalogCommand::from(create))
        })
        .collect();
    crate::returns::produce(cluster, "catalog.commands", created).await?;
    tokio::task::block_in_place(|| {
        wait_for("the products created", &|| {
            Ok(events_of()?.values().filter(|n| **n == 1).count() == skus.len())
        })
    })?;
    tokio::task::spawn_blocking(move || running.stop()).await??;

    // Each product's last changelog record, and the partition it is in.
    let mut last: BTreeMap<Vec<u8>, crate::topic::Record> = Default::default();
    for r in crate::topic::read_all(cluster, CHANGELOG)? {
        if is_ours(&r.key) {
            last.insert(r.key.clone(), r);
        }
    }
    ensure!(
        last.len() == skus.len(),
        "{} products in {CHANGELOG}",
        last.len()
    );
    let mut partitions: Vec<i32> = last.values().map(|r| r.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    ensure!(
        partitions.len() >= 2,
        "the products landed in {partitions:?} only"
    );
    let in_partition = |p: i32| last.values().find(|r| r.partition == p).expect("one");
    let (skipped, held) = (
        in_partition(partitions[0]).clone(),
        in_partition(partitions[1]).clone(),
    );
    let raw = raw_producer(cluster)?;
    let garbage: &[u8] = b"not Avro at all";
    raw.send(
        CHANGELOG,
        Some(skipped.partition),
        &skipped.key,
        garbage,
        None,
    )?;
    raw.send(
        CHANGELOG,
        Some(skipped.partition),
        &skipped.key,
        &skipped.payload,
        None,
    )?;
    raw.send(CHANGELOG, Some(held.partition), &held.key, garbage, None)?;
    raw.flush()?;

    let running = pipelines::saga::spawn(&opts, &rt, &["catalog"], false)?;
    let changes = skus
        .iter()
        .map(|s| {
            let change = ChangePrice {
                metadata: Metadata::command(&format!("reprice-{s}"), s, 2),
                sku: s.clone(),
                price_cents: 1_500,
            };
            (s.clone(), CatalogCommand::from(change))
        })
        .collect();
    crate::returns::produce(cluster, "catalog.commands", changes).await?;
    let of_held: Vec<Vec<u8>> = last
        .values()
        .filter(|r| r.partition == held.partition)
        .map(|r| r.key.clone())
        .collect();
    let others = skus.len() - of_held.len();
    tokio::task::block_in_place(|| {
        wait_for("the changes of the partitions not held", &|| {
            ensure!(!running.is_finished(), "the catalog stopped");
            Ok(events_of()?.values().filter(|n| **n == 2).count() == others)
        })
    })?;
    // The held partition's changes wait (two retries' worth), with the process up.
    std::thread::sleep(pipelines::runtime::QUARANTINE_RETRY * 2);
    let now = events_of()?;
    for k in &of_held {
        ensure!(
            now.get(k) == Some(&1),
            "{} changed while its state was unknown: {:?} events",
            String::from_utf8_lossy(k),
            now.get(k)
        );
    }
    ensure!(!running.is_finished(), "the catalog stopped");

    // The repair: a good record of the held product after the bad one.
    raw.send(
        CHANGELOG,
        Some(held.partition),
        &held.key,
        &held.payload,
        None,
    )?;
    raw.flush()?;
    tokio::task::block_in_place(|| {
        wait_for("the held partition's changes after the repair", &|| {
            Ok(events_of()?.values().filter(|n| **n == 2).count() == skus.len())
        })
    })?;
    tokio::task::spawn_blocking(move || running.stop()).await??;
    let events = events_of()?;
    ensure!(
        events.len() == skus.len() && events.values().all(|n| *n == 2),
        "every product created once and repriced once: {events:?}"
    );
    Ok(())
}

/// An input whose output is over the record size limit (issue 14) is dead-lettered with the
/// reason, and the service goes on with the next: before, the producer refused the output
/// and the whole batch failed, for every partition, again and again. The orders service runs
/// with `message.max.bytes` lowered to 100,000 (as an operator's `-X` would) and gets an
/// order of 600 long lines (its `OrderPlaced` ~130 KB, and the order itself too, so its dead
/// letter is cut to fit and says so), then a small one.
pub async fn outputs_over_the_size_limit_are_dead_lettered(
    cluster: &Cluster,
    views: &Path,
) -> anyhow::Result<()> {
    use schemas::Metadata;
    use schemas::orders::{OrderCommand, OrderLine, PlaceOrder};
    let rt = tokio::runtime::Handle::current();
    let mut limited = cluster.clone();
    limited
        .kafka
        .push(("message.max.bytes".into(), "100000".into()));
    let opts = pipelines::saga::Options::new(limited, views.to_path_buf());
    let running = pipelines::saga::spawn(&opts, &rt, &["orders"], false)?;
    let order = |id: &str, lines: usize| {
        let place = PlaceOrder {
            metadata: Metadata::command(&format!("place-{id}"), id, 1),
            order_id: id.into(),
            customer_id: "C-1".into(),
            lines: (0..lines)
                .map(|i| OrderLine {
                    sku: format!("SKU-{i:04}-{}", "x".repeat(200)),
                    warehouse: "AMS".into(),
                    quantity: 1,
                    unit_price_cents: 100,
                })
                .collect(),
            payment_method: "card".into(),
            ship_to_country: "NL".into(),
            ship_to_postcode: "1011AB".into(),
        };
        (id.to_owned(), OrderCommand::from(place))
    };
    crate::returns::produce(
        cluster,
        "orders.commands",
        vec![order("O-HUGE", 600), order("O-SMALL", 2)],
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (dead, placed) = loop {
        ensure!(!running.is_finished(), "the orders service stopped");
        let dead = crate::topic::read_all(cluster, "orders.dlq")?
            .into_iter()
            .find(|r| r.key == b"O-HUGE");
        let placed = crate::topic::read_all(cluster, "orders.events")?
            .into_iter()
            .filter(|r| r.key == b"O-SMALL" || r.key == b"O-HUGE")
            .map(|r| String::from_utf8_lossy(&r.key).into_owned())
            .collect::<Vec<_>>();
        if let Some(dead) = dead
            && placed.iter().any(|k| k == "O-SMALL")
        {
            break (dead, placed);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out: dead letter of O-HUGE and O-SMALL's events (events so far: {placed:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stopped = tokio::task::spawn_blocking(move || running.stop()).await?;
    ensure!(
        !placed.iter().any(|k| k == "O-HUGE"),
        "the huge order was applied: {placed:?}"
    );
    ensure!(
        dead.header(dlq_headers::KIND) == Some("output-too-large")
            && dead
                .header(dlq_headers::REASON)
                .is_some_and(|r| r.contains("over the limit")),
        "dead letter headers: {:?}",
        dead.headers
    );
    let original: usize = dead
        .header(dlq_headers::TRUNCATED)
        .context("the dead letter of an order over the limit says it was cut")?
        .parse()?;
    ensure!(
        original > 100_000 && dead.payload.len() < 100_000,
        "cut from {original} to {} bytes",
        dead.payload.len()
    );
    stopped
}

/// A sku's horizon of spent reservation ids (issue 14: bounded state), end to end: a
/// reservation spent two days (event time) before the sku's newest one is forgotten, its
/// changelog record deleted by a tombstone; a duplicate of its request is refused as a
/// possible duplicate, never held again; a command dated hours ahead of the service's clock
/// is dead-lettered; and the store restored from the changelog still equals the fold of the
/// event log. `sku` must be new to the cluster.
pub async fn a_skus_forgotten_reservation_ids_leave_its_changelog(
    cluster: &Cluster,
    views: &Path,
    sku: &str,
) -> anyhow::Result<()> {
    use pipelines::inventory;
    use pipelines::topics::inventory::{CHANGELOG, COMMANDS, DLQ, EVENTS};
    use schemas::Metadata;
    use schemas::inventory::*;

    let rt = tokio::runtime::Handle::current();
    let opts = inventory::Options {
        run_view: false,
        ..inventory::Options::new(cluster.clone(), views.to_path_buf())
    };
    let running = inventory::spawn(&opts, &rt);
    let now = pipelines::wire::now_ms();
    let two_days_ago = now - 2 * processors::inventory::SPENT_ID_RETENTION_MS;
    let meta = |id: &str, at: i64| Metadata::command(&format!("{sku}-{id}"), sku, at);
    let reserve = |id: &str, at: i64| -> InventoryCommand {
        ReserveStock {
            metadata: meta(&format!("reserve-{id}-{at}"), at),
            reservation_id: id.into(),
            sku: sku.into(),
            warehouse: "AMS".into(),
            quantity: 1,
        }
        .into()
    };
    let release = |id: &str, at: i64| -> InventoryCommand {
        ReleaseReservation {
            metadata: meta(&format!("release-{id}"), at),
            reservation_id: id.into(),
            sku: sku.into(),
        }
        .into()
    };
    let receive = |id: &str, at: i64| -> InventoryCommand {
        ReceiveStock {
            metadata: meta(id, at),
            sku: sku.into(),
            warehouse: "AMS".into(),
            quantity: 10,
        }
        .into()
    };
    let commands = vec![
        receive("receive", now),
        reserve("R-OLD", two_days_ago),
        release("R-OLD", two_days_ago),
        reserve("R-NEW", now),
        release("R-NEW", now),
        // Its request again, as a late duplicate comes (the same record): refused, never held.
        reserve("R-OLD", two_days_ago),
        receive("from-the-future", now + 2 * 60 * 60 * 1000),
    ];
    crate::returns::produce(
        cluster,
        COMMANDS,
        commands.into_iter().map(|c| (sku.to_owned(), c)).collect(),
    )
    .await?;
    let (c, s) = (cluster.clone(), sku.to_owned());
    let wait = tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let refused = crate::topic::read_all(&c, EVENTS)?
                .into_iter()
                .filter(|r| r.key == s.as_bytes())
                .filter_map(|r| {
                    String::from_utf8_lossy(&r.payload)
                        .contains("may be a duplicate")
                        .then(|| String::from_utf8_lossy(&r.payload).into_owned())
                })
                .next();
            let dead = crate::topic::read_all(&c, DLQ)?
                .into_iter()
                .find(|r| r.key == s.as_bytes())
                .map(|r| r.header(dlq_headers::REASON).unwrap_or_default().to_owned());
            if let (Some(refused), Some(dead)) = (refused, dead) {
                return Ok((refused, dead));
            }
            if Instant::now() > deadline {
                let events = crate::topic::read_all(&c, EVENTS)?;
                let dlq = crate::topic::read_all(&c, DLQ)?;
                anyhow::bail!(
                    "no refusal of the forgotten id's duplicate and a dead letter of the future command within 60 s: {} events of {s} ({:?}), dead letters {:?}",
                    events.iter().filter(|r| r.key == s.as_bytes()).count(),
                    events
                        .iter()
                        .filter(|r| r.key == s.as_bytes())
                        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
                        .collect::<Vec<_>>(),
                    dlq.iter()
                        .map(|r| r.header(dlq_headers::REASON).unwrap_or_default().to_owned())
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let (_, dead) = wait.await??;
    ensure!(
        dead.contains("ahead of this service's clock"),
        "the dead letter of a command from the future says {dead:?}"
    );
    let tombstone = format!("{sku}/R-OLD");
    let changelog = crate::topic::read_all(cluster, CHANGELOG)?;
    ensure!(
        changelog
            .iter()
            .any(|r| r.key == tombstone.as_bytes() && r.payload.is_empty()),
        "no tombstone of {tombstone} in {CHANGELOG}"
    );
    let stopped = tokio::task::spawn_blocking(move || running.stop()).await?;
    stopped?;
    let (o, c) = (opts.clone(), cluster.clone());
    let (restored, (folded, _)) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            inventory::service::restore_store(&o, &rt)?.0,
            pipelines::replay::inventory_from_events(&c, &rt)?,
        ))
    })
    .await??;
    let (restored, folded) = (restored.get(sku), folded.get(sku));
    ensure!(
        restored.is_some() && restored == folded,
        "{sku}: the changelog says {restored:?}, the events say {folded:?}"
    );
    let aggregate = restored.context("restored")?;
    ensure!(
        aggregate.forgotten_until() == two_days_ago && !aggregate.is_reserved("R-OLD"),
        "{sku} after its horizon: {aggregate:?}"
    );
    Ok(())
}

/// Hostile input while the services run (issue 14's scenario), beside a simulation of good
/// orders (`spec`) that `runner` (inventory, every participant and the views) processes:
/// - schema-valid commands with impossible numbers (i64 extremes, zero, 1,001 lines, a
///   300-byte id, a time past 9999): each dead-lettered with a reason naming the field;
/// - 30,000 `CancelOrder` on one confirmed order: each answered with a rejection, and the
///   order's state stays small;
/// - over HTTP: a gzip bomb (415), a 3 MB body (413), and commands retried with their
///   `Idempotency-Key` after a 503 from a server whose time limit is 1 ms (the write landed
///   for at least one): each applied once.
///
/// Afterwards the good orders pass every check of [`crate::saga::check`] (each ended once,
/// as its forced failure says; stores equal their event logs), so the good records' effects
/// are exactly once and nothing stalled past the simulation's deadline. `label` keeps this
/// run's hostile keys apart from other runs'.
pub async fn hostile_input_while_the_services_run(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn crate::scenario::Runner,
    spec: &pipelines::saga::simulate::SimSpec,
    label: &str,
) -> anyhow::Result<()> {
    use crate::saga::{Duplicates, Since};
    use pipelines::saga::simulate;

    let sim = simulate::generate(spec);
    let since = Since::now(cluster)?;
    runner.start()?;
    let started = Instant::now();
    let good = crate::saga::run_simulation(cluster, views, runner, &sim, 0);
    let bad = feed_hostile_input(cluster, views, label);
    let (good, bad) = tokio::join!(good, bad);
    let good_took = started.elapsed();
    let stopped = runner.stop();
    good?;
    let report = bad?;
    stopped.context("a service did not survive the hostile input")?;
    eprintln!(
        "{} good order commands: every saga ended in {good_took:.1?} ({:.0}/s) beside the hostile input: {report}",
        sim.orders.len(),
        sim.orders.len() as f64 / good_took.as_secs_f64()
    );
    let dups = Duplicates::for_run(cluster, runner.doubles_outputs(), since);
    crate::saga::check(cluster, views, &sim, &dups, |i, e| {
        *e == crate::saga::expected_ending(i)
    })
    .await?;
    Ok(())
}

/// Feeds the hostile input of [`hostile_input_while_the_services_run`] and checks each
/// answer; returns a line saying what it fed.
async fn feed_hostile_input(
    cluster: &Cluster,
    views: &Path,
    label: &str,
) -> anyhow::Result<String> {
    use pipelines::topics::inventory as inv;
    use schemas::Metadata;
    use schemas::inventory::*;
    use schemas::orders::{CancelOrder, OrderCommand, OrderLine, PlaceOrder};

    let key = |what: &str| format!("HOSTILE-{label}-{what}");
    let sku = key("SKU");
    let order = key("ORDER");
    let meta = |id: &str, aggregate: &str| {
        Metadata::command(&key(id), aggregate, pipelines::wire::now_ms())
    };
    let line = |quantity: i64, unit_price_cents: i64| OrderLine {
        sku: sku.clone(),
        warehouse: "AMS".into(),
        quantity,
        unit_price_cents,
    };
    let place = |id: &str, lines: Vec<OrderLine>| -> OrderCommand {
        PlaceOrder {
            metadata: meta(&format!("place-{id}"), id),
            order_id: id.to_owned(),
            customer_id: "C-HOSTILE".into(),
            lines,
            payment_method: "card-1".into(),
            ship_to_country: "NL".into(),
            ship_to_postcode: "1011".into(),
        }
        .into()
    };

    // One good order of a sku of its own, confirmed, then cancelled 30,000 times.
    crate::returns::produce(
        cluster,
        inv::COMMANDS,
        vec![(
            sku.clone(),
            InventoryCommand::from(ReceiveStock {
                metadata: meta("stock", &sku),
                sku: sku.clone(),
                warehouse: "AMS".into(),
                quantity: 10,
            }),
        )],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    crate::returns::produce(
        cluster,
        "orders.commands",
        vec![(order.clone(), place(&order, vec![line(1, 100)]))],
    )
    .await?;
    crate::saga::wait_ended(
        views,
        std::slice::from_ref(&order),
        Duration::from_secs(120),
    )
    .await?;
    let latest = crate::topic::read_all(cluster, pipelines::topics::saga::ORDERS_CHANGELOG)?
        .into_iter()
        .rfind(|r| r.key == order.as_bytes())
        .context("the hostile order's state")?;
    ensure!(
        latest.payload.windows(9).any(|w| w == b"Confirmed"),
        "the hostile order {order} ended, but not confirmed: {}",
        String::from_utf8_lossy(&latest.payload)
    );
    /// What a confirmed order answers a cancellation with (`OrderCancellationRejected`).
    const REFUSAL: &[u8] = b"the order is confirmed and handed to the carrier";
    const CANCELLATIONS: usize = 30_000;
    let cancellations = (0..CANCELLATIONS)
        .map(|i| {
            let c = CancelOrder {
                metadata: meta(&format!("cancel-{i}"), &order),
                order_id: order.clone(),
                reason: "again".into(),
            };
            (order.clone(), OrderCommand::from(c))
        })
        .collect();
    crate::returns::produce(cluster, "orders.commands", cancellations).await?;

    // Impossible numbers, each under a key of its own.
    let inventory: Vec<(String, InventoryCommand, &str)> = {
        let receive = |k: &str, quantity: i64, at: i64| -> InventoryCommand {
            ReceiveStock {
                metadata: Metadata::command(&key(k), &key(k), at),
                sku: key(k),
                warehouse: "AMS".into(),
                quantity,
            }
            .into()
        };
        let now = pipelines::wire::now_ms();
        vec![
            (
                key("I-MAX"),
                receive("I-MAX", i64::MAX, now),
                "field quantity",
            ),
            (
                key("I-MIN"),
                receive("I-MIN", i64::MIN, now),
                "field quantity",
            ),
            (key("I-ZERO"), receive("I-ZERO", 0, now), "field quantity"),
            (key("I-LATE"), receive("I-LATE", 1, i64::MAX), "occurred_at"),
            (key("I-EARLY"), receive("I-EARLY", 1, -1), "occurred_at"),
            (
                key("I-ADJ"),
                AdjustStock {
                    metadata: Metadata::command(&key("I-ADJ"), &key("I-ADJ"), now),
                    sku: key("I-ADJ"),
                    warehouse: "AMS".into(),
                    delta: i64::MIN,
                    reason: "hostile".into(),
                }
                .into(),
                "field delta",
            ),
            (
                key("I-AUDIT"),
                AuditStock {
                    metadata: Metadata::command(&key("I-AUDIT"), &key("I-AUDIT"), now),
                    sku: key("I-AUDIT"),
                    warehouse: "AMS".into(),
                    counted: i64::MAX,
                }
                .into(),
                "field counted",
            ),
            (
                key("I-MOVE"),
                TransferStock {
                    metadata: Metadata::command(&key("I-MOVE"), &key("I-MOVE"), now),
                    sku: key("I-MOVE"),
                    from_warehouse: "AMS".into(),
                    to_warehouse: "BER".into(),
                    quantity: i64::MAX,
                }
                .into(),
                "field quantity",
            ),
        ]
    };
    let orders: Vec<(String, OrderCommand, &str)> = vec![
        (
            key("O-PRICE"),
            place(&key("O-PRICE"), vec![line(1, i64::MAX)]),
            "unit_price_cents",
        ),
        (
            key("O-QTY"),
            place(&key("O-QTY"), vec![line(i64::MAX, 1)]),
            "quantity",
        ),
        (
            key("O-LINES"),
            place(&key("O-LINES"), (0..1_001).map(|_| line(1, 1)).collect()),
            "lines",
        ),
        (
            key("O-TOTAL"),
            place(
                &key("O-TOTAL"),
                (0..1_000)
                    .map(|_| line(1_000_000_000, 1_000_000_000_000))
                    .collect(),
            ),
            "total",
        ),
    ];
    let long_id = format!("{}-{}", key("O-ID"), "x".repeat(300));
    let mut expect: Vec<(&str, String, &str)> = Vec::new();
    for (k, _, says) in &inventory {
        expect.push((inv::DLQ, k.clone(), says));
    }
    for (k, _, says) in &orders {
        expect.push((pipelines::topics::saga::ORDERS_DLQ, k.clone(), says));
    }
    expect.push((pipelines::topics::saga::ORDERS_DLQ, long_id.clone(), "256"));
    crate::returns::produce(
        cluster,
        inv::COMMANDS,
        inventory.into_iter().map(|(k, c, _)| (k, c)).collect(),
    )
    .await?;
    let mut order_commands: Vec<(String, OrderCommand)> =
        orders.into_iter().map(|(k, c, _)| (k, c)).collect();
    order_commands.push((long_id.clone(), place(&long_id, vec![line(1, 1)])));
    crate::returns::produce(cluster, "orders.commands", order_commands).await?;

    let http = hostile_http(cluster, views, &key("HTTP")).await?;

    // Every bad record is dead-lettered with a reason that names what was wrong.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut missing = Vec::new();
        for dlq in [inv::DLQ, pipelines::topics::saga::ORDERS_DLQ] {
            let dead = crate::topic::read_all(cluster, dlq)?;
            for (topic, k, says) in expect.iter().filter(|(t, _, _)| *t == dlq) {
                match dead.iter().find(|r| r.key == k.as_bytes()) {
                    None => missing.push(format!("{k} on {topic}")),
                    Some(r) => {
                        let reason = r.header(dlq_headers::REASON).unwrap_or_default();
                        ensure!(
                            reason.contains(says),
                            "the dead letter of {k} says {reason:?}, not naming {says:?}"
                        );
                    }
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not dead-lettered within 120 s: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The cancellations: answered one by one, and the order's state did not grow with them.
    let deadline = Instant::now() + Duration::from_secs(240);
    let (rejected, state_bytes) = loop {
        let rejected = crate::topic::read_all(cluster, "orders.events")?
            .iter()
            .filter(|r| r.key == order.as_bytes())
            .filter(|r| r.payload.windows(REFUSAL.len()).any(|w| w == REFUSAL))
            .count();
        let state = crate::topic::read_all(cluster, pipelines::topics::saga::ORDERS_CHANGELOG)?
            .into_iter()
            .filter(|r| r.key == order.as_bytes())
            .map(|r| r.payload.len())
            .max()
            .unwrap_or(0);
        if rejected >= CANCELLATIONS || Instant::now() > deadline {
            break (rejected, state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    ensure!(
        rejected == CANCELLATIONS,
        "{rejected} of {CANCELLATIONS} cancellations of the confirmed order {order} answered"
    );
    ensure!(
        state_bytes < 4_096,
        "the confirmed order's state grew to {state_bytes} bytes with its cancellations"
    );
    Ok(format!(
        "{} impossible commands dead-lettered with their reasons; {CANCELLATIONS} cancellations of a confirmed order answered (its state at most {state_bytes} bytes); {http}",
        expect.len()
    ))
}

/// The HTTP part of the hostile input: a gzip bomb, a body past the limit, and keyed retries
/// after forced 503s (servers with time limits of 0.2 to 4 ms), for `sku`.
async fn hostile_http(cluster: &Cluster, views: &Path, sku: &str) -> anyhow::Result<String> {
    use std::io::Write;

    let open = || async {
        pipelines::http::Api::new(
            cluster.clone(),
            views.to_path_buf(),
            <pipelines::ownership::OwnershipMap as pipelines::ownership::Registered>::load(None)?,
        )
        .await
    };
    let serve = |api: pipelines::http::Api, limits: pipelines::http::Limits| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(pipelines::http::serve_within(api, listener, limits));
        anyhow::Ok((base, server))
    };
    let (base, server) = serve(open().await?, Default::default()).await?;
    let client = reqwest::Client::new();
    // The hurried servers live for one request each, on ports the OS hands out again: a
    // pooled connection to an aborted one was reused once for a later server on the same
    // port ("connection closed before message completed"). No idle connections for them.
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let url = |base: &str| format!("{base}/commands/inventory/ReceiveStock");
    let body = serde_json::json!({"sku": sku, "warehouse": "AMS", "quantity": 5});

    // A gzip bomb: 64 MB of zeros in a few KB. Refused for its encoding, never inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros)?;
    }
    let bomb = gz.finish()?;
    let r = client
        .post(url(&base))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb.clone())
        .send()
        .await?;
    ensure!(r.status().as_u16() == 415, "a gzip bomb: {}", r.status());
    // A body past the 2 MB limit.
    let big = format!(
        r#"{{"sku": "{sku}", "warehouse": "AMS", "quantity": 1, "pad": "{}"}}"#,
        "x".repeat(3 << 20)
    );
    // The server answers 413 after reading 2 MB and closes with the rest unread: the client,
    // still writing, may see the connection closed before it reads the answer (no lingering
    // close in hyper). A transport error is tried again, twice; an answer must be a 413.
    let mut tries = 0;
    let r = loop {
        tries += 1;
        match once
            .post(url(&base))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
        {
            Ok(r) => break r,
            Err(e) if tries < 3 && !e.is_status() => {
                eprintln!("a 3 MB body, try {tries}: {e} (sent again)");
            }
            Err(e) => return Err(e.into()),
        }
    };
    ensure!(r.status().as_u16() == 413, "a 3 MB body: {}", r.status());

    // Keyed retries after 503s: until one of the first attempts is known to have landed.
    // Keyed commands sent, 503s among their first answers, and of these the writes landed.
    let (mut keys, mut forced, mut landed) = (0, 0, 0);
    let mut last_token = String::new();
    let mut sent: Vec<String> = Vec::new();
    for i in 0..40 {
        // A server whose time limit falls, for some of these, between the write being sent
        // and its acknowledgement: answered 503, though the write lands.
        let hurried = pipelines::http::Limits {
            timeout: Duration::from_micros(200 * (1 + i % 20)),
            ..Default::default()
        };
        let (hurried_base, hurried_server) = serve(open().await?, hurried).await?;
        // Fixed width and a terminator: no key is a substring of another.
        let k = format!("{sku}.retry.{i:03}.");
        sent.push(k.clone());
        let first = once
            .post(url(&hurried_base))
            .header("idempotency-key", &k)
            .json(&body)
            .send()
            .await?;
        hurried_server.abort();
        keys += 1;
        if first.status().as_u16() != 503 {
            ensure!(first.status().as_u16() == 200, "{k}: {}", first.status());
            let answer: serde_json::Value = first.json().await?;
            last_token = answer["token"].as_str().context("a token")?.to_owned();
            continue;
        }
        forced += 1;
        // Did the write land anyway?
        tokio::time::sleep(Duration::from_millis(500)).await;
        let wrote = crate::topic::read_all(cluster, pipelines::topics::inventory::COMMANDS)?
            .iter()
            .any(|r| r.header(pipelines::topics::IDEMPOTENCY_KEY) == Some(k.as_str()));
        landed += usize::from(wrote);
        let retry = client
            .post(url(&base))
            .header("idempotency-key", &k)
            .json(&body)
            .send()
            .await?;
        ensure!(
            retry.status().as_u16() == 200,
            "retry of {k}: {}",
            retry.status()
        );
        let answer: serde_json::Value = retry.json().await?;
        last_token = answer["token"].as_str().context("a token")?.to_owned();
        if landed >= 2 {
            break;
        }
    }
    ensure!(
        landed >= 1,
        "no 503 whose write had landed in {keys} tries ({forced} 503s): nothing proved about retries"
    );
    // Wait for read-your-writes on the last answer, then count what each key caused: a
    // retried command applied twice would show two StockReceived events carrying its id as
    // their causation. (Stock levels alone cannot tell: low stock on this sku may already
    // have led the suppliers' saga to order and receive more.)
    let read: serde_json::Value = client
        .get(format!("{base}/query"))
        .query(&[
            (
                "sql",
                format!(
                    "SELECT on_hand FROM stock_levels WHERE sku = '{sku}' AND warehouse = 'AMS'"
                ),
            ),
            ("token", last_token),
        ])
        .send()
        .await?
        .json()
        .await?;
    ensure!(read.is_array(), "the read-your-writes query: {read}");
    let events: Vec<_> = crate::topic::read_all(cluster, pipelines::topics::inventory::EVENTS)?
        .into_iter()
        .filter(|r| r.key == sku.as_bytes())
        .collect();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let applied: BTreeMap<&str, usize> = sent
        .iter()
        .map(|k| {
            let n = events
                .iter()
                .filter(|r| contains(&r.payload, k.as_bytes()))
                .count();
            (k.as_str(), n)
        })
        .collect();
    ensure!(
        applied.values().all(|&n| n == 1),
        "{keys} keyed commands, {forced} retried after a 503 ({landed} of whose first writes landed): events caused per key {applied:?}, expected 1 each"
    );
    server.abort();
    Ok(format!(
        "HTTP: a gzip bomb of {} bytes refused 415, a 3 MB body 413, {keys} keyed commands applied once each, {forced} of them retried after a 503 ({landed} of those first writes had landed)",
        bomb.len()
    ))
}

/// Ended sagas are forgotten after their retention, and a duplicate of a forgotten saga's
/// input does not start it again (issue 14: saga stores held every saga ever, all scanned
/// every 200 ms). `runner` runs the whole saga with `retention` (e.g. `--saga-retention-ms`)
/// and a state directory; this starts and stops it.
///
/// Orders end; within the retention and a little, the orders store holds none of them (the
/// changelog has their tombstones). Their `PlaceOrder` sent again — as a client's late
/// retry sends the same record — is dead-lettered, naming the horizon, and emits nothing; a
/// new order still goes through. After a restart (from the local snapshots and the
/// changelog's tail) the horizon still holds. `replay orders --check` agrees with the store,
/// counting the forgotten sagas apart.
pub async fn ended_sagas_are_forgotten_after_their_retention(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn crate::scenario::Runner,
    retention: Duration,
    run: u32,
) -> anyhow::Result<()> {
    use pipelines::saga::rebuild::restore;
    use pipelines::saga::simulate::{self, Intent, SimSpec, Simulation};
    use pipelines::topics::saga::ORDERS_DLQ;
    use processors::orders::Orders;
    use schemas::orders::{OrderCommand, PlaceOrder};
    use schemas::saga::topics::ORDER_EVENTS;

    let rt = tokio::runtime::Handle::current();
    let orders = 30;
    // Stamped in the recent past, as a client stamps its commands (not in 2026-01).
    let spec = SimSpec {
        orders,
        seed: 1_400,
        run,
        base_time: pipelines::wire::now_ms() - (orders as i64 + 5) * 1_000,
        ..SimSpec::default()
    };
    let sim = simulate::generate(&spec);
    let places: Vec<PlaceOrder> = sim
        .orders
        .iter()
        .filter_map(|(c, _)| match c {
            OrderCommand::PlaceOrder(p) => Some(p.clone()),
            OrderCommand::CancelOrder(_) => None,
        })
        .collect();
    let ids: Vec<String> = places.iter().map(|p| p.order_id.clone()).collect();
    runner.start()?;
    let started = Instant::now();
    simulate::produce(cluster, &sim, None).await?;
    crate::saga::wait_ended(views, &ids, Duration::from_secs(120)).await?;
    eprintln!(
        "{:>6.1?} {} orders ended; waiting out the retention of {retention:?}",
        started.elapsed(),
        ids.len()
    );
    // Forgotten: the store a restart restores holds none of them.
    let (c, r, wanted) = (cluster.clone(), rt.clone(), ids.clone());
    let held = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let deadline = Instant::now() + retention + Duration::from_secs(60);
        loop {
            let stores = restore::<Orders>(&c, &r, None)?.0;
            let held = stores
                .values()
                .flat_map(|s| s.keys())
                .filter(|k| wanted.contains(k))
                .count();
            if held == 0 || Instant::now() > deadline {
                return Ok(held);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await??;
    ensure!(
        held == 0,
        "{held} of {} ended orders still in the orders store {:?} after a retention of {retention:?}",
        ids.len(),
        started.elapsed()
    );
    eprintln!(
        "{:>6.1?} every ended order forgotten (tombstoned in orders.changelog)",
        started.elapsed()
    );
    // The other event-sourced participants forgot what ended there too (declined or refunded
    // payments, failed or cancelled shipments, credited bills), and kept the rest.
    fn ended_left<W: pipelines::saga::rebuild::EventSourced>(
        cluster: &Cluster,
        rt: &tokio::runtime::Handle,
        ids: &[String],
    ) -> anyhow::Result<(usize, usize)> {
        let stores = restore::<W>(cluster, rt, None)?.0;
        let ours: Vec<&W::State> = stores
            .values()
            .flat_map(|s| s.iter())
            .filter(|(k, _)| ids.contains(k))
            .map(|(_, s)| s)
            .collect();
        Ok((ours.iter().filter(|s| W::ended(s)).count(), ours.len()))
    }
    let (c, r, wanted) = (cluster.clone(), rt.clone(), ids.clone());
    let left = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(&str, usize, usize)>> {
        use processors::{billing::Billing, payments::Payments, shipping::Shipping};
        // Their last touches came before the orders' (an order's end follows its replies),
        // but each participant scans on its own 200 ms beat: a little patience.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Vec<(&str, usize, usize)> = vec![
                ("payments", ended_left::<Payments>(&c, &r, &wanted)?),
                ("shipping", ended_left::<Shipping>(&c, &r, &wanted)?),
                ("billing", ended_left::<Billing>(&c, &r, &wanted)?),
            ]
            .into_iter()
            .map(|(n, (ended, kept))| (n, ended, kept))
            .collect();
            if left.iter().all(|(_, ended, _)| *ended == 0) || Instant::now() > deadline {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await??;
    for (service, ended, kept) in &left {
        ensure!(
            *ended == 0,
            "{service}: {ended} ended sagas of this run still held after the retention"
        );
        eprintln!("{service}: every ended saga forgotten, {kept} open ones kept");
    }

    let events_of = |id: &str| -> anyhow::Result<usize> {
        Ok(crate::topic::read_all(cluster, ORDER_EVENTS)?
            .iter()
            .filter(|r| r.key == id.as_bytes())
            .count())
    };
    // A duplicate of a forgotten order's PlaceOrder, then a new order: the first is refused
    // with the horizon's reason, the second goes through.
    let resend = |place: &PlaceOrder, fresh: Option<&str>| -> Simulation {
        let mut place = place.clone();
        if let Some(id) = fresh {
            place.order_id = id.to_owned();
            place.metadata =
                schemas::Metadata::command(&format!("{id}-place"), id, pipelines::wire::now_ms());
        }
        Simulation {
            stock: Vec::new(),
            orders: vec![(place.into(), Intent::Confirm)],
        }
    };
    let refused = |id: String| {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let dead = crate::topic::read_all(&c, ORDERS_DLQ)?
                    .into_iter()
                    .find(|r| r.key == id.as_bytes())
                    .map(|r| r.header(dlq_headers::REASON).unwrap_or_default().to_owned());
                if let Some(reason) = dead {
                    return Ok(reason);
                }
                ensure!(
                    Instant::now() < deadline,
                    "the duplicate PlaceOrder of forgotten order {id} was not dead-lettered within 90 s"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    for (round, place) in places.iter().take(2).enumerate() {
        if round == 1 {
            // The horizon survives a restart.
            runner.stop()?;
            runner.start()?;
            eprintln!("{:>6.1?} restarted", started.elapsed());
        }
        let id = &place.order_id;
        let before = events_of(id)?;
        let fresh = format!("O-after-horizon-{run}-{round}");
        simulate::produce(cluster, &resend(place, None), None).await?;
        simulate::produce(cluster, &resend(place, Some(&fresh)), None).await?;
        let reason = refused(id.clone()).await??;
        ensure!(
            reason.contains("forgot") && reason.contains("duplicate"),
            "the dead letter of {id}'s duplicate gives another reason: {reason}"
        );
        crate::saga::wait_ended(
            views,
            std::slice::from_ref(&fresh),
            Duration::from_secs(120),
        )
        .await
        .with_context(|| format!("a new order ({fresh}) after the horizon did not end"))?;
        let after = events_of(id)?;
        ensure!(
            after == before,
            "the duplicate of forgotten order {id} emitted {} events",
            after - before
        );
        eprintln!(
            "{:>6.1?} round {round}: {id}'s duplicate dead-lettered ({reason}); {fresh} ended",
            started.elapsed()
        );
    }
    runner.stop()?;
    for service in ["orders", "payments", "shipping", "billing"] {
        let (c, rt) = (cluster.clone(), rt.clone());
        let r = tokio::task::spawn_blocking(move || {
            pipelines::replay::replay_store(&c, &rt, service, true, false, None)
        })
        .await??;
        let differing = r.differing.unwrap_or_default();
        ensure!(
            differing.is_empty(),
            "replay {service} --check: {} states differ, e.g. {:?}",
            differing.len(),
            &differing[..differing.len().min(5)]
        );
        ensure!(
            service != "orders" || r.forgotten >= ids.len(),
            "replay orders --check counted {} forgotten sagas, {} were",
            r.forgotten,
            ids.len()
        );
        eprintln!(
            "replay {service} --check: the store equals the fold of {} events, {} forgotten sagas apart",
            r.events, r.forgotten
        );
    }
    Ok(())
}
