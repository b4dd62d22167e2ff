//! What the benches share.

/// `BENCH_KAFKA="fetch.queue.backoff.ms=1000 …"`: librdkafka properties for every client,
/// applied after supplystream's own (to measure a setting against its alternative).
pub fn kafka_properties() -> anyhow::Result<Vec<(String, String)>> {
    std::env::var("BENCH_KAFKA")
        .unwrap_or_default()
        .split_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("BENCH_KAFKA: {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

/// The cluster `scripts/bench.sh` started for `bench` (`SUPPLYSTREAM_BROKERS`,
/// `SUPPLYSTREAM_REGISTRY`), exactly-once, with `BENCH_KAFKA`'s properties; `None`, after
/// saying how to run it, when they are not set (`cargo bench` alone).
pub fn cluster(bench: &str, command: &str) -> anyhow::Result<Option<pipelines::Cluster>> {
    let (Ok(brokers), Ok(registry)) = (
        std::env::var("SUPPLYSTREAM_BROKERS"),
        std::env::var("SUPPLYSTREAM_REGISTRY"),
    ) else {
        println!(
            "{bench} not run: use {command} (needs SUPPLYSTREAM_BROKERS and SUPPLYSTREAM_REGISTRY)"
        );
        return Ok(None);
    };
    Ok(Some(pipelines::Cluster {
        brokers,
        registry,
        guarantee: pipelines::Guarantee::ExactlyOnce,
        kafka: kafka_properties()?,
    }))
}

/// A count from environment variable `name` (`_` separators allowed), else `default`.
pub fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}
