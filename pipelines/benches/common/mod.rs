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

/// CPU time this process has used so far (user + system, from `/proc/self/stat`).
#[allow(dead_code)]
pub fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // The kernel's USER_HZ is 100 on Linux.
    std::time::Duration::from_millis(ticks * 10)
}

/// One run of the Kafka Streams peer (`bench/kafka-streams`).
#[allow(dead_code)]
pub struct Peer {
    pub threads: usize,
    pub records: u64,
    /// From `KafkaStreams::start` until its committed offsets reached the input's ends.
    pub elapsed: std::time::Duration,
    /// The JVM's CPU time over the same span.
    pub cpu: std::time::Duration,
}

/// Runs the Kafka Streams peer of the inventory fold on `input` with `threads` stream
/// threads until it has caught up; `None` (saying why) when it was not built
/// (`scripts/bench.sh` builds it with Maven).
#[allow(dead_code)]
pub fn kafka_streams_peer(
    cluster: &pipelines::Cluster,
    input: &str,
    threads: usize,
) -> anyhow::Result<Option<Peer>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/kafka-streams");
    let classes = dir.join("target/classes");
    if !classes.is_dir() {
        println!(
            "Kafka Streams peer not run: build it with \
             `mvn -q -B -f bench/kafka-streams/pom.xml clean package dependency:copy-dependencies` \
             (scripts/bench.sh does)"
        );
        return Ok(None);
    }
    let classpath = format!(
        "{}:{}",
        classes.display(),
        dir.join("target/lib/*").display()
    );
    let out = std::process::Command::new("java")
        .args(["-cp", &classpath, "io.supplystream.bench.InventoryStreams"])
        .args([input, "bench.streams.outcomes", &threads.to_string()])
        .env("SUPPLYSTREAM_BROKERS", &cluster.brokers)
        .env("SUPPLYSTREAM_REGISTRY", &cluster.registry)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the Kafka Streams peer failed ({}): {text}",
        out.status
    );
    // `peer threads=N records=R elapsed_ms=E cpu_ms=C`
    let line = text
        .lines()
        .find(|l| l.starts_with("peer "))
        .ok_or_else(|| anyhow::anyhow!("no result line from the peer: {text}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in {line:?}"))
    };
    Ok(Some(Peer {
        threads,
        records: field("records")?,
        elapsed: std::time::Duration::from_millis(field("elapsed_ms")?),
        cpu: std::time::Duration::from_millis(field("cpu_ms")?),
    }))
}
