//! The HTTP API end to end: a command posted over HTTP is answered with an offset token, and
//! a query carrying the token sees the command's effect on the first try (read-your-writes
//! across the CQRS split); bad input is a 4xx naming what was wrong, and nothing is written.

use std::path::Path;

use anyhow::{Context, ensure};
use pipelines::Cluster;
use pipelines::ownership::{OwnershipMap, Registered};
use serde_json::{Value, json};

use crate::scenario::Runner;

async fn post(client: &reqwest::Client, url: String, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = client.post(url).json(&body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.context("a JSON answer")?))
}

/// Starts the API on a free loopback port beside the running inventory service (`runner`).
pub async fn read_your_writes(
    cluster: &Cluster,
    views: &Path,
    runner: &mut dyn Runner,
) -> anyhow::Result<()> {
    runner.start()?;
    let api = pipelines::http::Api::new(
        cluster.clone(),
        views.to_path_buf(),
        OwnershipMap::load(None)?,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(pipelines::http::serve(api, listener));
    let client = reqwest::Client::new();

    // Several writes, each read back through the view with its token, on the first try.
    let mut expected = 0;
    for (i, quantity) in [7, 5, 11].into_iter().enumerate() {
        let (status, answer) = post(
            &client,
            format!("{base}/commands/inventory/ReceiveStock"),
            json!({"sku": "SKU-HTTP", "warehouse": "AMS", "quantity": quantity}),
        )
        .await?;
        ensure!(status == 200, "command refused: {answer}");
        expected += quantity;
        let token = answer["token"].as_str().context("a token")?.to_owned();
        ensure!(token.starts_with("inventory.commands@"), "token {token}");
        let rows: Value = client
            .get(format!("{base}/query"))
            .query(&[
                (
                    "sql",
                    "SELECT on_hand FROM stock_levels WHERE sku = 'SKU-HTTP' AND warehouse = 'AMS'",
                ),
                ("token", token.as_str()),
            ])
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            rows == json!([{ "on_hand": expected }]),
            "write {i}: the query with its token saw {rows}, expected on_hand {expected}"
        );
    }

    // A client retrying (its first answer lost, say a 503 after the write had landed) sends
    // the same Idempotency-Key: applied once, also by the instance that restores the sku
    // after a restart, while a new key is a new command.
    let keyed = |key: &'static str, quantity: i64| {
        let (client, url) = (
            client.clone(),
            format!("{base}/commands/inventory/ReceiveStock"),
        );
        async move {
            let r = client
                .post(url)
                .header("Idempotency-Key", key)
                .json(&json!({"sku": "SKU-HTTP", "warehouse": "AMS", "quantity": quantity}))
                .send()
                .await?;
            let status = r.status().as_u16();
            let answer: Value = r.json().await?;
            ensure!(status == 200, "keyed command refused: {status} {answer}");
            ensure!(answer["command_id"] == key, "command id of {key}: {answer}");
            anyhow::Ok(answer["token"].as_str().context("a token")?.to_owned())
        }
    };
    let on_hand = |token: String| {
        let (client, url) = (client.clone(), format!("{base}/query"));
        async move {
            let rows: Value = client
                .get(url)
                .query(&[
                    (
                        "sql",
                        "SELECT on_hand FROM stock_levels WHERE sku = 'SKU-HTTP' AND warehouse = 'AMS'",
                    ),
                    ("token", token.as_str()),
                ])
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(rows)
        }
    };
    keyed("retry-1", 3).await?;
    let again = keyed("retry-1", 3).await?;
    expected += 3;
    let rows = on_hand(again).await?;
    ensure!(
        rows == json!([{ "on_hand": expected }]),
        "a retried ReceiveStock (same Idempotency-Key): stock_levels says {rows}, expected on_hand {expected}"
    );
    runner.interrupt()?;
    runner.start()?;
    let after_restart = keyed("retry-1", 3).await?;
    let rows = on_hand(after_restart).await?;
    ensure!(
        rows == json!([{ "on_hand": expected }]),
        "the retry after a restart: stock_levels says {rows}, expected on_hand {expected}"
    );
    let new_key = keyed("retry-2", 2).await?;
    expected += 2;
    let rows = on_hand(new_key).await?;
    ensure!(
        rows == json!([{ "on_hand": expected }]),
        "a new Idempotency-Key: stock_levels says {rows}, expected on_hand {expected}"
    );

    // The catalog and shipping, in this process: a product created, repriced, discontinued;
    // each write read back from the products view with its token; a rule broken is an event,
    // not a 4xx.
    let services = || {
        pipelines::saga::spawn(
            &pipelines::saga::Options::new(cluster.clone(), views.to_path_buf()),
            &tokio::runtime::Handle::current(),
            &["catalog", "shipping"],
            true,
        )
    };
    let catalog = services()?;
    let mut last = String::new();
    for (command, body, want) in [
        (
            "CreateProduct",
            json!({"sku": "SKU-HTTP", "name": "Widget", "price_cents": 250}),
            json!([{"price_cents": 250, "discontinued": false, "version": 1}]),
        ),
        (
            "ChangePrice",
            json!({"sku": "SKU-HTTP", "price_cents": 275, "expected_version": 1}),
            json!([{"price_cents": 275, "discontinued": false, "version": 2}]),
        ),
        (
            "DiscontinueProduct",
            json!({"sku": "SKU-HTTP", "reason": "end of line"}),
            json!([{"price_cents": 275, "discontinued": true, "version": 3}]),
        ),
        (
            "ChangePrice",
            json!({"sku": "SKU-HTTP", "price_cents": 1}),
            json!([{"price_cents": 275, "discontinued": true, "version": 4}]),
        ),
    ] {
        let (status, answer) =
            post(&client, format!("{base}/commands/catalog/{command}"), body).await?;
        ensure!(status == 200, "{command} refused: {answer}");
        last = answer["token"].as_str().context("a token")?.to_owned();
        let rows: Value = client
            .get(format!("{base}/query"))
            .query(&[
                (
                    "sql",
                    "SELECT price_cents, discontinued, version FROM products WHERE sku = 'SKU-HTTP'",
                ),
                ("token", last.as_str()),
            ])
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            rows == want,
            "{command}: products says {rows}, expected {want}"
        );
    }
    ensure!(last.starts_with("catalog.commands@"), "token {last}");
    // Schema-valid but against a catalog rule of form (a price of 0): refused over HTTP
    // with the rule's reason; written by another producer, dead-lettered by the catalog
    // with the same reason, and the catalog keeps going.
    let (status, answer) = post(
        &client,
        format!("{base}/commands/catalog/CreateProduct"),
        json!({"sku": "SKU-HTTP-FREE", "name": "Free lunch", "price_cents": 0}),
    )
    .await?;
    ensure!(
        status == 400
            && answer
                .to_string()
                .contains("field price_cents must be positive, got 0"),
        "a free CreateProduct over HTTP: {status} {answer}"
    );
    let free = schemas::products::CreateProduct {
        metadata: schemas::Metadata::command("free-1", "SKU-HTTP-FREE", 1),
        sku: "SKU-HTTP-FREE".into(),
        name: "Free lunch".into(),
        price_cents: 0,
    };
    crate::returns::produce(
        cluster,
        "catalog.commands",
        vec![(
            "SKU-HTTP-FREE".to_owned(),
            schemas::products::CatalogCommand::from(free),
        )],
    )
    .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let dead = crate::topic::read_all(cluster, "catalog.dlq")?;
        if let Some(r) = dead.iter().find(|r| r.key == b"SKU-HTTP-FREE") {
            let reason = r.header("dlq.reason").unwrap_or_default();
            ensure!(
                reason.contains("field price_cents must be positive, got 0"),
                "dead letter reason {reason:?}"
            );
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the invalid CreateProduct never reached catalog.dlq"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let catalog = products_resume(&client, &base, views, catalog, services).await?;
    let catalog = external_events(cluster, &client, &base, views, catalog, services).await?;
    let stopped = tokio::task::spawn_blocking(move || catalog.stop()).await?;
    stopped?;
    // The catalog's store is the fold of catalog.events.
    let (c, rt) = (cluster.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        crate::saga::stores_equal_their_event_logs(&c, &rt, &["catalog"])
    })
    .await??;

    // CSV and Arrow IPC answers; the views system table says stock_levels is caught up.
    let csv = client
        .post(format!("{base}/query"))
        .json(&json!({"sql": "SELECT sku, on_hand FROM stock_levels WHERE sku = 'SKU-HTTP'", "format": "csv"}))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        csv == format!("sku,on_hand\nSKU-HTTP,{expected}\n"),
        "csv: {csv:?}"
    );
    let arrow = client
        .post(format!("{base}/query"))
        .json(&json!({"sql": "SELECT on_hand FROM stock_levels WHERE sku = 'SKU-HTTP'", "format": "arrow"}))
        .send()
        .await?
        .bytes()
        .await?;
    let batches: Vec<_> =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow.to_vec()), None)?
            .collect::<Result<_, _>>()?;
    ensure!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>() == 1,
        "arrow stream"
    );
    let fresh: Value = client
        .get(format!("{base}/query"))
        .query(&[(
            "sql",
            "SELECT view, sum(lag) AS lag FROM views GROUP BY view",
        )])
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        fresh
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["view"] == "stock_levels")),
        "views table: {fresh}"
    );

    // Bad input: named, 4xx, nothing written.
    let before = crate::topic::read_all(cluster, pipelines::topics::inventory::COMMANDS)?.len();
    let (status, e) = post(
        &client,
        format!("{base}/commands/inventory/ReceiveStock"),
        json!({"sku": "SKU-HTTP", "warehouse": "AMS", "quantity": "lots"}),
    )
    .await?;
    ensure!(
        status == 400 && e["field"] == "quantity",
        "bad field: {status} {e}"
    );
    let (status, e) = post(
        &client,
        format!("{base}/commands/orders/PlaceOrder"),
        json!({"order_id": "O-HTTP", "customer_id": "C", "payment_method": "visa",
               "ship_to_country": "NL", "ship_to_postcode": "1",
               "lines": [{"sku": "S", "warehouse": "AMS", "quantity": 1}]}),
    )
    .await?;
    ensure!(
        status == 400
            && e["field"] == "lines[0]"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("unit_price_cents")),
        "missing nested field: {status} {e}"
    );
    // Well-formed but impossible: refused with the rule's reason, never written to be
    // dead-lettered later (a quantity of 0 used to be answered 200 with a token).
    for (quantity, says) in [
        (json!(0), "must be positive"),
        (json!(i64::MAX), "more than the limit of 1000000000"),
    ] {
        let (status, e) = post(
            &client,
            format!("{base}/commands/inventory/ReceiveStock"),
            json!({"sku": "SKU-HTTP", "warehouse": "AMS", "quantity": quantity}),
        )
        .await?;
        ensure!(
            status == 400
                && e["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("field quantity") && m.contains(says)),
            "an impossible quantity {quantity}: {status} {e}"
        );
    }
    let (status, e) = post(
        &client,
        format!("{base}/commands/orders/PlaceOrder"),
        json!({"order_id": "O-HTTP", "customer_id": "C", "payment_method": "visa",
               "ship_to_country": "NL", "ship_to_postcode": "1",
               "lines": [{"sku": "S", "warehouse": "AMS", "quantity": 1_000_000_000,
                          "unit_price_cents": 1_000_000_000_000i64}]}),
    )
    .await?;
    ensure!(
        status == 400 && e.to_string().contains("the order's total"),
        "an order whose total overflows: {status} {e}"
    );
    let (status, e) = post(
        &client,
        format!("{base}/commands/inventory/StealStock"),
        json!({}),
    )
    .await?;
    ensure!(status == 404, "unknown command: {status} {e}");
    // A record of the topic that only the inventory saga may send is not a caller's command.
    let (status, e) = post(
        &client,
        format!("{base}/commands/inventory/DispatchStock"),
        json!({"sku": "SKU-1", "warehouse": "AMS", "reservation_id": "R-1"}),
    )
    .await?;
    let listed = e["error"]
        .as_str()
        .and_then(|m| m.split("(commands:").nth(1));
    ensure!(
        status == 404 && listed.is_some_and(|l| !l.contains("DispatchStock")),
        "the saga's command from outside: {status} {e}"
    );
    let (status, e) = post(
        &client,
        format!("{base}/commands/payments/Charge"),
        json!({}),
    )
    .await?;
    ensure!(status == 404, "unknown service: {status} {e}");
    let r = client
        .get(format!("{base}/query"))
        .query(&[("sql", "SELECT nope FROM stock_levels")])
        .send()
        .await?;
    ensure!(r.status().as_u16() == 400, "bad SQL: {}", r.status());
    // The query side only reads: a COPY that would write into a view's directory is
    // refused as the caller's fault, and writes nothing.
    let target = views.join("stock_levels").join("copied.parquet");
    let r = client
        .post(format!("{base}/query"))
        .json(&json!({ "sql": format!("COPY stock_levels TO '{}'", target.display()) }))
        .send()
        .await?;
    let status = r.status().as_u16();
    let e: Value = r.json().await?;
    ensure!(
        status == 400 && e.to_string().contains("read-only"),
        "COPY over HTTP: {status} {e}"
    );
    ensure!(
        !target.exists(),
        "a refused COPY wrote {}",
        target.display()
    );
    let after = crate::topic::read_all(cluster, pipelines::topics::inventory::COMMANDS)?.len();
    ensure!(
        after == before,
        "a refused command was written ({before} → {after})"
    );

    server.abort();
    runner.stop()?;
    Ok(())
}

/// The `products` view resumes from its table: stopped, its SKU-HTTP row marked in the
/// table (as if an earlier run had written it so), restarted; a product created afterwards
/// is read back with its token, and the mark is still there (a rebuild from
/// `catalog.events` would have replaced it).
async fn products_resume(
    client: &reqwest::Client,
    base: &str,
    views: &Path,
    running: pipelines::saga::Running,
    restart: impl Fn() -> anyhow::Result<pipelines::saga::Running>,
) -> anyhow::Result<pipelines::saga::Running> {
    use sinks::products;
    tokio::task::spawn_blocking(move || running.stop()).await??;
    let table = sinks::SnapshotTable::open(views, products::VIEW)?;
    let (batches, checkpoint) = table.load()?.context("no products table")?;
    let mut rows = products::from_batches(&batches)?;
    let row = rows
        .iter_mut()
        .find(|r| r.sku == "SKU-HTTP")
        .context("no SKU-HTTP row")?;
    row.name = "kept-by-resume".into();
    table.replace(&products::to_batch(&rows)?, &checkpoint)?;
    let running = restart()?;
    let (status, answer) = post(
        client,
        format!("{base}/commands/catalog/CreateProduct"),
        json!({"sku": "SKU-HTTP-2", "name": "Gadget", "price_cents": 120}),
    )
    .await?;
    ensure!(
        status == 200,
        "CreateProduct refused after restart: {answer}"
    );
    let token = answer["token"].as_str().context("a token")?;
    let rows: Value = client
        .get(format!("{base}/query"))
        .query(&[
            (
                "sql",
                "SELECT sku, name, version FROM products WHERE sku LIKE 'SKU-HTTP%' AND sku <> 'SKU-HTTP-FREE' ORDER BY sku",
            ),
            ("token", token),
        ])
        .send()
        .await?
        .json()
        .await?;
    let want = json!([
        {"sku": "SKU-HTTP", "name": "kept-by-resume", "version": 4},
        {"sku": "SKU-HTTP-2", "name": "Gadget", "version": 1},
    ]);
    ensure!(
        rows == want,
        "after a restart products says {rows}, expected {want} (a rebuild loses the mark)"
    );
    Ok(running)
}

/// A carrier's events posted to `POST /events/shipping.tracking` (an external events topic),
/// read back from the `shipments` view with their tokens on the first try; a retried scan
/// counts once; bad input is a 4xx naming what was wrong and writes nothing; a malformed
/// record that a producer writes to the topic directly is dead-lettered to `shipping.dlq` with
/// its reason, once, even after the view restarts. The view resumes from its table: a row
/// marked while it is stopped keeps the mark, and a scan retried after the restart still
/// counts once (the table keeps the event ids).
async fn external_events(
    cluster: &Cluster,
    client: &reqwest::Client,
    base: &str,
    views: &Path,
    running: pipelines::saga::Running,
    restart: impl Fn() -> anyhow::Result<pipelines::saga::Running>,
) -> anyhow::Result<pipelines::saga::Running> {
    use pipelines::kafka::Output;
    use pipelines::{Guarantee, topics::dlq_headers};

    const TOPIC: &str = "shipping.tracking";
    let url = format!("{base}/events/{TOPIC}");
    let shipment = |sql: &str, token: &str| {
        let (client, sql, token) = (client.clone(), sql.to_owned(), token.to_owned());
        let base = base.to_owned();
        async move {
            let r = client
                .get(format!("{base}/query"))
                .query(&[("sql", sql.as_str()), ("token", token.as_str())])
                .send()
                .await?;
            anyhow::Ok(r.json::<Value>().await?)
        }
    };
    let t0 = 1_790_000_000_000_i64;
    let scan = |record: &str, id: &str, minutes: i64, extra: Value| {
        let mut body = json!({
            "record": record, "shipment_id": "SHP-HTTP", "carrier": "PostNL",
            "location": "Utrecht", "event_id": id, "occurred_at": t0 + minutes * 60_000,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    };
    let sql = "SELECT status, scans, failed_attempts, received_by, transit_ms FROM shipments \
               WHERE shipment_id = 'SHP-HTTP'";
    let (status, answer) = post(
        client,
        url.clone(),
        scan("ParcelPickedUp", "scan-1", 0, json!({})),
    )
    .await?;
    ensure!(status == 200, "ParcelPickedUp refused: {answer}");
    ensure!(answer["event_id"] == "scan-1", "event id: {answer}");
    let token = answer["token"].as_str().context("a token")?.to_owned();
    ensure!(token.starts_with("shipping.tracking@"), "token {token}");
    let rows = shipment(sql, &token).await?;
    ensure!(
        rows == json!([{"status": "in_transit", "scans": 1, "failed_attempts": 0}]),
        "after the pick-up, shipments says {rows}"
    );
    let mut last = String::new();
    for body in [
        scan(
            "DeliveryAttemptFailed",
            "scan-2",
            600,
            json!({"location": "Amsterdam", "reason": "nobody home"}),
        ),
        scan(
            "ParcelDelivered",
            "scan-3",
            1500,
            json!({"location": "Amsterdam", "received_by": "neighbour"}),
        ),
        // The carrier retries the last one: the same scan.
        scan(
            "ParcelDelivered",
            "scan-3",
            1500,
            json!({"location": "Amsterdam", "received_by": "neighbour"}),
        ),
    ] {
        let (status, answer) = post(client, url.clone(), body).await?;
        ensure!(status == 200, "refused: {answer}");
        last = answer["token"].as_str().context("a token")?.to_owned();
    }
    let rows = shipment(sql, &last).await?;
    let want = json!([{"status": "delivered", "scans": 3, "failed_attempts": 1,
                       "received_by": "neighbour", "transit_ms": 1500 * 60_000}]);
    ensure!(rows == want, "shipments says {rows}, expected {want}");
    let rows = shipment(
        "SELECT delivered, failed_attempts FROM carrier_performance WHERE carrier = 'PostNL'",
        &last,
    )
    .await?;
    ensure!(
        rows.as_array()
            .and_then(|r| r.first())
            .is_some_and(|r| r["delivered"].as_i64() >= Some(1)),
        "carrier_performance says {rows}"
    );

    // Bad input: named, 4xx, nothing written.
    let before = crate::topic::read_all(cluster, TOPIC)?.len();
    let (status, e) = post(
        client,
        url.clone(),
        scan("ParcelPickedUp", "scan-x", 0, json!({"location": 5})),
    )
    .await?;
    ensure!(
        status == 400 && e["field"] == "location",
        "bad field: {status} {e}"
    );
    let (status, e) = post(
        client,
        url.clone(),
        scan("ParcelLost", "scan-x", 0, json!({})),
    )
    .await?;
    ensure!(
        status == 400
            && e["field"] == "record"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("ParcelDelivered")),
        "unknown record: {status} {e}"
    );
    let mut no_record = scan("ParcelPickedUp", "scan-x", 0, json!({}));
    no_record
        .as_object_mut()
        .context("an object")?
        .remove("record");
    let (status, e) = post(client, url.clone(), no_record).await?;
    ensure!(
        status == 400 && e["field"] == "record",
        "no record: {status} {e}"
    );
    let (status, e) = post(
        client,
        url.clone(),
        scan("ParcelPickedUp", "scan-x", 0, json!({"shipment_id": ""})),
    )
    .await?;
    ensure!(
        status == 400 && e["field"] == "shipment_id",
        "empty key: {status} {e}"
    );
    let (status, e) = post(
        client,
        format!("{base}/events/orders.events"),
        scan("ParcelPickedUp", "scan-x", 0, json!({})),
    )
    .await?;
    ensure!(
        status == 403
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("belongs to orders")),
        "another service's event log: {status} {e}"
    );
    let (status, e) = post(client, format!("{base}/events/no.such.topic"), json!({})).await?;
    ensure!(status == 404, "unknown topic: {status} {e}");
    let after = crate::topic::read_all(cluster, TOPIC)?.len();
    ensure!(
        after == before,
        "a refused event was written ({before} → {after})"
    );

    // A producer that bypasses the API and writes garbage: dead-lettered with its reason.
    let bad: [(&[u8], &[u8]); 2] = [
        (b"SHP-BAD-0", b"{\"this\": \"is JSON, not Avro\"}"),
        (b"SHP-BAD-1", &[0, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6]),
    ];
    let raw = Output::new(
        &Cluster {
            guarantee: Guarantee::AtLeastOnce,
            ..cluster.clone()
        },
        "test",
        "carrier",
    )?;
    for (key, payload) in bad {
        raw.send(TOPIC, None, key, payload, None)?;
    }
    raw.flush()?;
    let dead_letters = || -> anyhow::Result<Vec<crate::topic::Record>> {
        Ok(crate::topic::read_all(cluster, "shipping.dlq")?
            .into_iter()
            .filter(|r| r.key.starts_with(b"SHP-BAD-"))
            .collect())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dead_letters()?.len() < bad.len() {
        ensure!(
            std::time::Instant::now() < deadline,
            "the malformed tracking records never reached shipping.dlq"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for r in dead_letters()? {
        let reason = r.header(dlq_headers::REASON).unwrap_or_default();
        ensure!(
            !reason.is_empty() && r.header(dlq_headers::SOURCE_TOPIC) == Some(TOPIC),
            "dead letter without its reason or source: {:?}",
            r.headers
        );
    }
    // The view restarts, resuming from its table: SHP-HTTP's row is marked while it is
    // stopped (a rebuild from the topic would replace the mark), the bad records are not
    // dead-lettered again, and a retry of a scan from before the restart counts once.
    tokio::task::spawn_blocking(move || running.stop()).await??;
    let table = sinks::SnapshotTable::open(views, sinks::shipments::VIEW)?;
    let (batches, checkpoint) = table.load()?.context("no shipments table")?;
    let mut rows = sinks::shipments::from_batches(&batches)?;
    rows.iter_mut()
        .find(|r| r.shipment_id == "SHP-HTTP")
        .context("no SHP-HTTP row")?
        .last_location = "kept-by-resume".into();
    table.replace(&sinks::shipments::to_batch(&rows)?, &checkpoint)?;
    let running = restart()?;
    for body in [
        scan(
            "DeliveryAttemptFailed",
            "scan-2",
            600,
            json!({"location": "Amsterdam", "reason": "nobody home"}),
        ),
        scan(
            "ParcelPickedUp",
            "scan-4",
            2000,
            json!({"shipment_id": "SHP-HTTP-2"}),
        ),
    ] {
        let (status, answer) = post(client, url.clone(), body).await?;
        ensure!(status == 200, "refused after restart: {answer}");
        last = answer["token"].as_str().context("a token")?.to_owned();
    }
    let rows = shipment("SELECT shipment_id, status, scans, failed_attempts, last_location FROM shipments WHERE shipment_id LIKE 'SHP-HTTP%' ORDER BY shipment_id", &last).await?;
    let want = json!([
        {"shipment_id": "SHP-HTTP", "status": "delivered", "scans": 3, "failed_attempts": 1,
         "last_location": "kept-by-resume"},
        {"shipment_id": "SHP-HTTP-2", "status": "in_transit", "scans": 1, "failed_attempts": 0,
         "last_location": "Utrecht"},
    ]);
    ensure!(
        rows == want,
        "after a restart shipments says {rows}, expected {want} (a rebuild loses the mark; \
         a resume without the scans' ids counts the retry)"
    );
    // A table of the layout before `scan_ids` (as an upgrade finds it), its checkpoint
    // kept: the view cannot take it back and rebuilds from the topic, and the bad records
    // below that checkpoint are still not dead-lettered again.
    tokio::task::spawn_blocking(move || running.stop()).await??;
    let (batches, checkpoint) = table.load()?.context("no shipments table")?;
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
    let old = batch.project(&(0..batch.num_columns() - 1).collect::<Vec<_>>())?;
    ensure!(
        old.schema().fields().iter().all(|f| f.name() != "scan_ids"),
        "the old layout still has scan_ids"
    );
    table.replace(&old, &checkpoint)?;
    let running = restart()?;
    let (status, answer) = post(
        client,
        url.clone(),
        scan(
            "ParcelPickedUp",
            "scan-5",
            2100,
            json!({"shipment_id": "SHP-HTTP-3"}),
        ),
    )
    .await?;
    ensure!(status == 200, "refused after the rebuild: {answer}");
    let token = answer["token"].as_str().context("a token")?.to_owned();
    let rows = shipment("SELECT shipment_id, scans, last_location FROM shipments WHERE shipment_id LIKE 'SHP-HTTP%' ORDER BY shipment_id", &token).await?;
    let want = json!([
        {"shipment_id": "SHP-HTTP", "scans": 3, "last_location": "Amsterdam"},
        {"shipment_id": "SHP-HTTP-2", "scans": 1, "last_location": "Utrecht"},
        {"shipment_id": "SHP-HTTP-3", "scans": 1, "last_location": "Utrecht"},
    ]);
    ensure!(
        rows == want,
        "rebuilt from an old layout, shipments says {rows}, expected {want}"
    );
    let again = dead_letters()?.len();
    ensure!(
        again == bad.len(),
        "{again} dead letters for {} bad records after two restarts",
        bad.len()
    );
    Ok(running)
}
