//! Hostile input (issue 14): records no rule of ours wrote, on topics the views fold.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use pipelines::kafka::Output;
use pipelines::topics::dlq_headers;
use pipelines::{Cluster, Guarantee};

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
    let raw = Output::new(
        &Cluster {
            guarantee: Guarantee::AtLeastOnce,
            ..cluster.clone()
        },
        "test",
        "hostile",
    )?;
    for (topic, _, _) in expected {
        let key = format!("HOSTILE-{topic}");
        raw.send(topic, None, key.as_bytes(), b"not Avro at all", None)?;
    }
    raw.flush()?;
    let deadline = Instant::now() + Duration::from_secs(60);
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
