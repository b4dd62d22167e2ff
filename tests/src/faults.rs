//! Faults injected beside a running scenario, the way Kafka's own system tests inject them
//! (`tests/kafkatest/tests/core/transactions_test.py` bounces brokers cleanly and hard while
//! a copier runs): broker bounces, registry outages, and a `read_committed` reader that
//! watches the output topics while all of it happens.

use std::collections::{BTreeMap, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pipelines::{Cluster, kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::scenario::Runner;

/// One fault.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Broker `broker` (1-based) stopped and started again: `hard` is SIGKILL (its log is
    /// recovered on start), otherwise SIGTERM (a controlled shutdown that moves its
    /// leaderships first). The next fault waits until every partition is fully replicated
    /// again.
    Bounce { broker: usize, hard: bool },
    /// The registry frozen (SIGSTOP) for this long, then resumed: connections hang, the way
    /// a stalled server or a network partition makes them, rather than being refused.
    RegistryOutage(Duration),
}

/// What a [`Faults`] runner did.
#[derive(Debug, Default, Clone)]
pub struct Injected {
    pub clean_bounces: usize,
    pub hard_bounces: usize,
    pub outages: Vec<Duration>,
}

/// The faults issue 13 asks the soak to survive: three clean and three hard bounces spread
/// over the brokers, a registry outage of 5 s and one of 90 s.
pub fn issue_13_plan(brokers: usize) -> Vec<Fault> {
    let b = |i: usize| 1 + i % brokers.max(1);
    vec![
        Fault::Bounce {
            broker: b(0),
            hard: false,
        },
        Fault::RegistryOutage(Duration::from_secs(5)),
        Fault::Bounce {
            broker: b(1),
            hard: true,
        },
        Fault::Bounce {
            broker: b(2),
            hard: false,
        },
        Fault::RegistryOutage(Duration::from_secs(90)),
        Fault::Bounce {
            broker: b(0),
            hard: true,
        },
        Fault::Bounce {
            broker: b(1),
            hard: false,
        },
        Fault::Bounce {
            broker: b(2),
            hard: true,
        },
    ]
}

/// Runs `inner` while a thread works through a plan of faults, `gap` apart. A stop first
/// waits for the whole plan (so a run injects every fault it names), then stops `inner`.
pub struct Faults<R> {
    pub inner: R,
    stack_dir: PathBuf,
    cluster: Cluster,
    plan: Vec<Fault>,
    gap: Duration,
    thread: Option<JoinHandle<anyhow::Result<Injected>>>,
    /// What the plan did, once the runner has stopped.
    pub injected: Injected,
}

impl<R: Runner> Faults<R> {
    pub fn new(
        inner: R,
        stack: &crate::stack::Stack,
        cluster: &Cluster,
        plan: Vec<Fault>,
        gap: Duration,
    ) -> Self {
        Faults {
            inner,
            stack_dir: stack.dir().to_path_buf(),
            cluster: cluster.clone(),
            plan,
            gap,
            thread: None,
            injected: Injected::default(),
        }
    }
}

impl<R: Runner> Runner for Faults<R> {
    fn start(&mut self) -> anyhow::Result<()> {
        self.inner.start()?;
        if self.thread.is_none() && !self.plan.is_empty() {
            let (dir, cluster, gap) = (self.stack_dir.clone(), self.cluster.clone(), self.gap);
            let plan = std::mem::take(&mut self.plan);
            self.thread = Some(
                std::thread::Builder::new()
                    .name("faults".into())
                    .spawn(move || inject(&dir, &cluster, &plan, gap))?,
            );
        }
        Ok(())
    }
    fn interrupt(&mut self) -> anyhow::Result<()> {
        self.inner.interrupt()
    }
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(t) = self.thread.take() {
            self.injected = t
                .join()
                .map_err(|_| anyhow::anyhow!("the fault thread panicked"))??;
            eprintln!("faults injected: {:?}", self.injected);
        }
        self.inner.stop()
    }
    fn doubles_outputs(&self) -> bool {
        self.inner.doubles_outputs()
    }
}

fn inject(
    dir: &std::path::Path,
    cluster: &Cluster,
    plan: &[Fault],
    gap: Duration,
) -> anyhow::Result<Injected> {
    let started = Instant::now();
    let mut done = Injected::default();
    for fault in plan {
        std::thread::sleep(gap);
        eprintln!("{:>6.1?} fault: {fault:?}", started.elapsed());
        match *fault {
            Fault::Bounce { broker, hard } => {
                crate::stack::bounce(dir, broker, hard)?;
                let took = fully_replicated(cluster, Duration::from_secs(180))?;
                eprintln!(
                    "{:>6.1?} broker {broker} back, every partition in sync after {took:.1?}",
                    started.elapsed()
                );
                if hard {
                    done.hard_bounces += 1;
                } else {
                    done.clean_bounces += 1;
                }
            }
            Fault::RegistryOutage(d) => {
                let pid = std::fs::read_to_string(dir.join("apicurio.pid"))?
                    .trim()
                    .to_owned();
                signal("-STOP", &pid)?;
                std::thread::sleep(d);
                signal("-CONT", &pid)?;
                done.outages.push(d);
            }
        }
    }
    Ok(done)
}

/// `kill <sig> <pid>`.
pub fn signal(sig: &str, pid: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()?
        .success();
    ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

/// Waits until every partition of the cluster has all its replicas in sync; returns how
/// long that took.
pub fn fully_replicated(cluster: &Cluster, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let consumer: BaseConsumer = kafka::consumer_config(cluster, "integration-faults").create()?;
    let mut last = String::new();
    while started.elapsed() < timeout {
        match consumer.fetch_metadata(None, Duration::from_secs(10)) {
            Ok(md) => {
                let lagging: Vec<String> = md
                    .topics()
                    .iter()
                    .flat_map(|t| {
                        t.partitions()
                            .iter()
                            .filter(|p| p.isr().len() < p.replicas().len() || p.leader() < 0)
                            .map(move |p| format!("{}/{}", t.name(), p.id()))
                    })
                    .collect();
                if lagging.is_empty() {
                    return Ok(started.elapsed());
                }
                last = format!(
                    "{} partitions out of sync, e.g. {}",
                    lagging.len(),
                    lagging[0]
                );
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    anyhow::bail!("the cluster was not fully replicated after {timeout:?}: {last}")
}

/// A `read_committed` consumer reading `topics` while a scenario runs, from their ends at
/// its start: what a downstream service sees live, through rebalances, kills and bounces.
/// [`Watcher::finish`] compares it with the topics read afterwards: a record seen live that
/// the committed log lacks (an aborted transaction's records surfacing), or one missing
/// from what was seen live, fails.
/// The end of every watched partition, and until when the watcher may take to read to it.
type Ends = Arc<Mutex<Option<(BTreeMap<(String, i32), i64>, Instant)>>>;

/// What the watcher read: (topic, partition, offset) → the payload's digest.
type Seen = BTreeMap<(String, i32, i64), u64>;

pub struct Watcher {
    /// Set by [`Watcher::finish`]: the end of every partition, and until when to read to it.
    ends: Ends,
    from: BTreeMap<(String, i32), i64>,
    thread: JoinHandle<anyhow::Result<Seen>>,
}

fn digest(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// Whether `consumer` has read every partition of `ends` to its end.
fn read_to(consumer: &BaseConsumer, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let Ok(positions) = consumer.position() else {
        return false;
    };
    ends.iter().all(|((topic, p), end)| {
        positions
            .find_partition(topic, *p)
            .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *end))
    })
}

impl Watcher {
    pub fn start(cluster: &Cluster, topics: &[&str]) -> anyhow::Result<Self> {
        let consumer: BaseConsumer =
            kafka::consumer_config(cluster, "integration-watcher").create()?;
        let probe = kafka::Probe::new(cluster)?;
        let mut from = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for (p, high) in kafka::high_watermarks(&probe, topic)? {
                from.insert((topic.to_string(), p), high);
                tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
            }
        }
        consumer.assign(&tpl)?;
        let ends: Ends = Arc::default();
        let told = ends.clone();
        let thread = std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || {
                let mut seen = BTreeMap::new();
                let mut errors = 0usize;
                loop {
                    if let Some((ends, deadline)) = &*told.lock().expect("not poisoned") {
                        if read_to(&consumer, ends) {
                            break;
                        }
                        ensure!(
                            Instant::now() < *deadline,
                            "the watcher did not reach the topics' ends in time \
                             ({} records read)",
                            seen.len()
                        );
                    }
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            let key = (m.topic().to_owned(), m.partition(), m.offset());
                            let d = digest(m.payload().unwrap_or_default());
                            ensure!(
                                seen.insert(key.clone(), d).is_none(),
                                "the watcher read {key:?} twice"
                            );
                        }
                        // Bounces and leader moves surface as transient errors here.
                        Some(Err(_)) => errors += 1,
                        None => {}
                    }
                }
                eprintln!(
                    "watcher: {} records read live ({errors} transient errors)",
                    seen.len()
                );
                Ok(seen)
            })?;
        Ok(Watcher { ends, from, thread })
    }

    /// Once the writers have stopped: lets the watcher read to the end, then compares.
    /// Returns how many records it saw live.
    pub fn finish(self, cluster: &Cluster) -> anyhow::Result<usize> {
        // The writers are done: the log's end no longer moves. Read it, then let the watcher
        // read as far (its read stops at each partition's last stable offset, which reaches
        // the end once open transactions are resolved).
        let mut expected: BTreeMap<(String, i32, i64), u64> = BTreeMap::new();
        let mut ends = BTreeMap::new();
        let probe = kafka::Probe::new(cluster)?;
        for (topic, p) in self.from.keys() {
            ends.insert((topic.clone(), *p), kafka::watermarks(&probe, topic, *p)?.1);
        }
        let topics: std::collections::BTreeSet<&String> =
            self.from.keys().map(|(t, _)| t).collect();
        for topic in topics {
            for r in crate::topic::read_all(cluster, topic)? {
                if r.offset >= self.from[&(topic.clone(), r.partition)] {
                    expected.insert((topic.clone(), r.partition, r.offset), digest(&r.payload));
                }
            }
        }
        *self.ends.lock().expect("not poisoned") =
            Some((ends, Instant::now() + Duration::from_secs(120)));
        let seen = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the watcher thread panicked"))?
            .context("the watcher")?;
        let surfaced: Vec<_> = seen.keys().filter(|k| !expected.contains_key(*k)).collect();
        ensure!(
            surfaced.is_empty(),
            "{} records read live are not in the committed log (aborted records surfacing?), \
             e.g. {:?}",
            surfaced.len(),
            surfaced.first()
        );
        let changed: Vec<_> = seen
            .iter()
            .filter(|(k, d)| expected.get(*k).is_some_and(|e| e != *d))
            .map(|(k, _)| k)
            .collect();
        ensure!(
            changed.is_empty(),
            "{} records read live differ from the log's, e.g. {:?}",
            changed.len(),
            changed.first()
        );
        let missed: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
        ensure!(
            missed.is_empty(),
            "{} committed records were never read live, e.g. {:?}",
            missed.len(),
            missed.first()
        );
        Ok(seen.len())
    }
}
