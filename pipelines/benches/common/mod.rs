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
