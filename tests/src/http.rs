//! The HTTP API end to end: a command posted over HTTP is answered with an offset token, and
//! a query carrying the token sees the command's effect on the first try (read-your-writes
//! across the CQRS split); bad input is a 4xx naming what was wrong, and nothing is written.

use std::path::Path;

use anyhow::{Context, ensure};
use pipelines::Cluster;
use pipelines::ownership::OwnershipMap;
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
        OwnershipMap::bundled()?,
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

    // The catalog, in this process: a product created, repriced, discontinued; each write
    // read back from the products view with its token; a rule broken is an event, not a 4xx.
    let catalog = pipelines::saga::spawn(
        &pipelines::saga::Options::new(cluster.clone(), views.to_path_buf()),
        &tokio::runtime::Handle::current(),
        &["catalog"],
        true,
    )?;
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
    // Schema-valid but against a catalog rule of form (a price of 0): accepted over HTTP,
    // then dead-lettered by the catalog with the reason, and the catalog keeps going.
    let (status, answer) = post(
        &client,
        format!("{base}/commands/catalog/CreateProduct"),
        json!({"sku": "SKU-HTTP-FREE", "name": "Free lunch", "price_cents": 0}),
    )
    .await?;
    ensure!(status == 200, "CreateProduct refused: {answer}");
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
    let (status, e) = post(
        &client,
        format!("{base}/commands/inventory/StealStock"),
        json!({}),
    )
    .await?;
    ensure!(status == 404, "unknown command: {status} {e}");
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
    let after = crate::topic::read_all(cluster, pipelines::topics::inventory::COMMANDS)?.len();
    ensure!(
        after == before,
        "a refused command was written ({before} → {after})"
    );

    server.abort();
    runner.stop()?;
    Ok(())
}
