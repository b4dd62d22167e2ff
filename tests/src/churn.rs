//! Scale-out under churn: several instances of a service in one consumer group while members
//! join and leave (fresh instance ids, clean stops and SIGKILL), so that partitions move
//! between instances while batches are in flight.
//!
//! Static membership hides rebalances (a member back under the same `group.instance.id`
//! within the session timeout gets its partitions back silently), so every member started
//! here has an instance id never used before, and a killed one is left to expire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::scenario::Runner;

/// What a [`Fleet`]'s churn did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Churned {
    pub joined: usize,
    pub stopped: usize,
    pub killed: usize,
}

/// Makes the child process of instance `id` (its own views and state directory under
/// `views`), `stable` for the one member that is never churned and keeps the views checked.
pub type Make = dyn Fn(&str, &Path) -> Member + Send + Sync;

/// A member of a [`Fleet`]: a child process, or the service on threads of the test process.
pub type Member = Box<dyn Runner + Send>;

/// One stable member plus up to `size - 1` churned ones of the same service.
pub struct Fleet {
    name: String,
    views: PathBuf,
    make: Arc<Make>,
    size: usize,
    period: Duration,
    stable: Option<Member>,
    members: Arc<Mutex<Vec<Member>>>,
    churn: Option<(Arc<AtomicBool>, JoinHandle<anyhow::Result<Churned>>)>,
    /// Totals of every churn run so far.
    pub churned: Arc<Mutex<Churned>>,
    /// Actions of the churn running now.
    live: Arc<std::sync::atomic::AtomicUsize>,
    /// One leave in this many is a SIGKILL, the others clean stops (4 by default).
    pub kill_one_in: usize,
}

impl Fleet {
    /// `make(id, views_dir)`: the process of instance `id` writing its views under `views_dir`.
    pub fn new(
        name: &str,
        views: &Path,
        size: usize,
        period: Duration,
        make: impl Fn(&str, &Path) -> Member + Send + Sync + 'static,
    ) -> Self {
        Fleet {
            name: name.to_owned(),
            views: views.to_path_buf(),
            make: Arc::new(make),
            size: size.max(1),
            period,
            stable: None,
            members: Arc::default(),
            churn: None,
            churned: Arc::default(),
            live: Arc::default(),
            kill_one_in: 4,
        }
    }

    /// Joins and leaves so far (of the churn running now, and those before).
    pub fn actions(&self) -> usize {
        let c = *self.churned.lock().expect("not poisoned");
        c.joined + c.stopped + c.killed + self.live.load(Ordering::Relaxed)
    }

    fn stop_churn(&mut self) -> anyhow::Result<()> {
        if let Some((stop, handle)) = self.churn.take() {
            stop.store(true, Ordering::Relaxed);
            let done = handle
                .join()
                .map_err(|_| anyhow::anyhow!("churn thread of {} panicked", self.name))??;
            self.live.store(0, Ordering::Relaxed);
            let mut total = self.churned.lock().expect("not poisoned");
            total.joined += done.joined;
            total.stopped += done.stopped;
            total.killed += done.killed;
        }
        Ok(())
    }
}

impl Runner for Fleet {
    fn start(&mut self) -> anyhow::Result<()> {
        let mut stable = (self.make)(&format!("{}-stable", self.name), &self.views);
        stable.start()?;
        self.stable = Some(stable);
        let stop = Arc::new(AtomicBool::new(false));
        let live = self.live.clone();
        let (make, members, views, name, size, period, kill_one_in) = (
            self.make.clone(),
            self.members.clone(),
            self.views.clone(),
            self.name.clone(),
            self.size,
            self.period,
            self.kill_one_in.max(1),
        );
        let seed = self.churned.lock().expect("not poisoned").joined as u64 + 1;
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("churn-{name}"))
            .spawn(move || {
                churn(
                    &flag,
                    &live,
                    &*make,
                    &members,
                    &views,
                    &name,
                    (size, period, kill_one_in),
                    seed,
                )
            })?;
        self.churn = Some((stop, handle));
        Ok(())
    }

    /// SIGKILLs the stable member and starts it again (same instance id and directory: it
    /// keeps the views), besides the churn.
    fn interrupt(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stable.as_mut() {
            s.interrupt()?;
            s.start()?;
        }
        Ok(())
    }

    /// Ends the churn, then stops every member cleanly.
    fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_churn()?;
        let mut members = std::mem::take(&mut *self.members.lock().expect("not poisoned"));
        for m in &mut members {
            m.stop()?;
        }
        if let Some(mut s) = self.stable.take() {
            s.stop()?;
        }
        Ok(())
    }
}

/// xorshift64: reproducible choices of whom to stop and how.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[allow(clippy::too_many_arguments)]
fn churn(
    stop: &AtomicBool,
    live: &std::sync::atomic::AtomicUsize,
    make: &Make,
    members: &Mutex<Vec<Member>>,
    views: &Path,
    name: &str,
    (size, period, kill_one_in): (usize, Duration, usize),
    seed: u64,
) -> anyhow::Result<Churned> {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut done = Churned::default();
    let mut started = 0usize;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(period);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        live.fetch_add(1, Ordering::Relaxed);
        let mut members = members.lock().expect("not poisoned");
        if members.len() + 1 < size {
            started += 1;
            let id = format!("{name}-s{seed}-{started}");
            let dir = views.join(".members").join(&id);
            std::fs::create_dir_all(&dir)?;
            let mut m = make(&id, &dir);
            m.start()?;
            members.push(m);
            done.joined += 1;
            continue;
        }
        let i = (next(&mut rng) % members.len() as u64) as usize;
        let mut m = members.swap_remove(i);
        // One leave in four (by default) is a SIGKILL: its transaction in flight is aborted,
        // and the group waits out its session at the next rebalance, so kills are kept rarer
        // than clean stops, which rebalance at once.
        if (done.stopped + done.killed) % kill_one_in == kill_one_in - 1 {
            m.interrupt()?;
            done.killed += 1;
        } else {
            m.stop()?;
            done.stopped += 1;
        }
    }
    Ok(done)
}

/// Generations the broker's group coordinator completed for `group`, from its log
/// (`Stabilized group <group> generation <n>`): how many rebalances the group went through.
pub fn rebalances(kafka_logs: &[PathBuf], group: &str) -> anyhow::Result<usize> {
    let n = generations(kafka_logs, group)?;
    let preparing = count_lines(
        kafka_logs,
        &format!("Preparing to rebalance group {group} "),
    )?;
    eprintln!("{group}: {n} generations, {preparing} rebalances begun");
    Ok(n)
}

/// Like [`rebalances`], without a word.
pub fn generations(kafka_logs: &[PathBuf], group: &str) -> anyhow::Result<usize> {
    count_lines(kafka_logs, &format!("Stabilized group {group} generation "))
}

/// Lines containing `needle` over every broker's log (each rebalance is logged once, by the
/// group's coordinator of the moment).
fn count_lines(kafka_logs: &[PathBuf], needle: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for path in kafka_logs {
        let log =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        n += log.lines().filter(|l| l.contains(needle)).count();
    }
    Ok(n)
}

/// Checks that every aggregate's events on a topic carry versions 1, 2, 3, … in order, and
/// that no event id appears twice: `(aggregate, version, event id)` in topic order.
pub fn versions_consecutive(
    topic: &str,
    events: impl IntoIterator<Item = (String, i64, String)>,
) -> anyhow::Result<usize> {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut broken: Vec<String> = Vec::new();
    let mut n = 0;
    for (aggregate, version, id) in events {
        n += 1;
        ensure!(ids.insert(id.clone()), "{topic}: event {id} appears twice");
        let prev = last.insert(aggregate.clone(), version).unwrap_or(0);
        if version != prev + 1 && broken.len() < 10 {
            broken.push(format!("{aggregate}: {prev} then {version}"));
        }
    }
    ensure!(
        broken.is_empty(),
        "{topic}: versions not consecutive from 1 (first cases: {broken:?})"
    );
    Ok(n)
}

impl Fleet {
    /// Ends the churn (the members still running keep running).
    pub fn calm(&mut self) -> anyhow::Result<Churned> {
        self.stop_churn()?;
        Ok(*self.churned.lock().expect("not poisoned"))
    }
}

/// Inventory scaled out under churn: `spec`'s commands produced at `rate` per second while
/// `fleet` churns (until the backlog has drained and it joined or left `min_actions` times,
/// or for `churn_for` at most once it has);
/// then, once the churn has ended and everything is processed, every sku of
/// the run must have the events an independent model computes, in order, with versions
/// 1, 2, 3, … and no event id twice, and `stock_levels` (kept by the fleet's stable member)
/// must equal the model's positions.
pub async fn inventory_under_churn(
    cluster: &pipelines::Cluster,
    fleet: &mut Fleet,
    views: &Path,
    spec: &pipelines::load::LoadSpec,
    rate: f64,
    min_actions: usize,
    churn_for: Duration,
) -> anyhow::Result<Churned> {
    use pipelines::inventory;
    use pipelines::load;

    let commands = load::generate(spec);
    let expected = crate::model::expect(&commands);
    let started = Instant::now();
    fleet.start()?;
    produce_at(cluster, &commands, rate).await?;
    eprintln!(
        "{:>6.1?} produced {} commands",
        started.elapsed(),
        commands.len()
    );
    // Churn on while the backlog drains: rebalances land while batches are in flight.
    let opts = inventory::Options::new(cluster.clone(), views.to_path_buf());
    let probe = inventory::ProgressProbe::new(&opts)?;
    let churning = Instant::now();
    let deadline = churning + Duration::from_secs(300);
    while (probe.progress()?.command_lag > 2_000 || fleet.actions() < min_actions)
        && Instant::now() < deadline
        && !(fleet.actions() >= min_actions && churning.elapsed() >= churn_for)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let churned = fleet.calm()?;
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&opts, Duration::from_secs(240)))
        .await??;
    eprintln!("{:>6.1?} caught up after {churned:?}", started.elapsed());
    fleet.stop()?;
    check_inventory(cluster, views, &expected).await?;
    Ok(churned)
}

/// Inventory through a fault: `spec`'s commands produced (at `rate` per second) to the
/// service `runner` starts; once it has processed a fifth of them and not four fifths,
/// `fault` runs (it returns when the fault is over); then, with no one's help, the service
/// must catch up, and every sku of the run must have the model's events in order with
/// versions 1, 2, 3, … and no event id twice, and `stock_levels` the model's positions.
pub async fn inventory_through_fault(
    cluster: &pipelines::Cluster,
    runner: &mut dyn Runner,
    views: &Path,
    spec: &pipelines::load::LoadSpec,
    rate: f64,
    fault: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use pipelines::inventory;
    use pipelines::load;

    let commands = load::generate(spec);
    let expected = crate::model::expect(&commands);
    let total = commands.len() as i64;
    let started = Instant::now();
    runner.start()?;
    produce_at(cluster, &commands, rate).await?;
    eprintln!("{:>6.1?} produced {total} commands", started.elapsed());
    let opts = inventory::Options::new(cluster.clone(), views.to_path_buf());
    let probe = inventory::ProgressProbe::new(&opts)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lag = probe.progress()?.command_lag;
        ensure!(
            lag > total / 5,
            "the backlog drained before the fault ({lag} left): nothing was in flight"
        );
        if lag < total * 4 / 5 {
            eprintln!(
                "{:>6.1?} the fault, with {lag} commands left",
                started.elapsed()
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the service processed too little in 120 s ({lag} of {total} left)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fault()?;
    eprintln!("{:>6.1?} the fault is over", started.elapsed());
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&opts, Duration::from_secs(240)))
        .await??;
    eprintln!("{:>6.1?} caught up", started.elapsed());
    runner.stop()?;
    check_inventory(cluster, views, &expected).await
}

/// How long a killed instance's partitions wait before another instance processes them.
#[derive(Debug, Clone, Copy)]
pub struct Takeover {
    /// Until every partition had committed new input again after the kill: the slowest,
    /// which is one the killed member owned (the others' resume at the rebalance).
    pub slowest: Duration,
    /// Until the first partition did.
    pub fastest: Duration,
    /// The longest the partitions that stayed with live members went without committing
    /// over the 15 s after the kill: the pause the rebalance cost them.
    pub pause: Duration,
}

/// `members` of inventory (the first writes the views) process `spec`'s commands arriving
/// at a steady `rate`; once each partition has committed input, the second member is
/// SIGKILLed (and stays dead) and the committed offsets of the group are sampled every
/// 100 ms until every partition has moved past where it was at the kill. Then the others
/// drain the rest, and the run is checked as every inventory run is (events in order,
/// versions consecutive, nothing twice, `stock_levels` as the model says).
pub async fn takeover_after_kill(
    cluster: &pipelines::Cluster,
    members: &mut [Member],
    views: &Path,
    spec: &pipelines::load::LoadSpec,
    rate: f64,
) -> anyhow::Result<Takeover> {
    use pipelines::inventory;
    use pipelines::load;
    use pipelines::topics::inventory::COMMANDS;
    use rdkafka::consumer::BaseConsumer;

    ensure!(members.len() >= 2, "a takeover needs two members");
    let commands = load::generate(spec);
    let expected = crate::model::expect(&commands);
    let opts = inventory::Options::new(cluster.clone(), views.to_path_buf());
    for m in members.iter_mut() {
        m.start()?;
    }
    let producing = {
        let (cluster, commands) = (cluster.clone(), commands.clone());
        tokio::spawn(async move { produce_at(&cluster, &commands, rate).await })
    };
    let group: BaseConsumer = pipelines::kafka::consumer_config(cluster, &opts.group).create()?;
    let partitions = pipelines::kafka::partition_count(&group, COMMANDS)?;
    let committed = move || pipelines::kafka::committed_by(&group, COMMANDS);
    let (killed_at, before, committed) = tokio::task::spawn_blocking(move || {
        // Every partition committing (the members have restored and share the work), twice
        // over a few seconds apart: the group is settled.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut first: Option<(Instant, BTreeMap<i32, i64>)> = None;
        loop {
            ensure!(
                Instant::now() < deadline,
                "the members did not all commit within 120 s"
            );
            // A new group's coordinator answers `NotCoordinator` for a moment: sample again.
            let Ok(now) = committed() else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            if now.len() == partitions {
                match &first {
                    None => first = Some((Instant::now(), now)),
                    Some((at, then))
                        if at.elapsed() > Duration::from_secs(5)
                            && now.iter().all(|(p, o)| *o > then[p]) =>
                    {
                        return Ok::<_, anyhow::Error>((Instant::now(), now, committed));
                    }
                    Some((at, _)) if at.elapsed() > Duration::from_secs(20) => first = None,
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await??;
    members[1].interrupt()?;
    let killed = Instant::now();
    eprintln!(
        "killed a member after {:.1?} of load, committed {before:?}",
        killed_at.elapsed()
    );
    let takeover = tokio::task::spawn_blocking(move || {
        let mut moved: BTreeMap<i32, Duration> = BTreeMap::new();
        // Per partition: its last committed offset and when it moved there, and the longest
        // it stood still (sampled every 100 ms).
        let mut last: BTreeMap<i32, (i64, Instant)> =
            before.iter().map(|(p, o)| (*p, (*o, killed))).collect();
        let mut still: BTreeMap<i32, Duration> = BTreeMap::new();
        while moved.len() < before.len() || killed.elapsed() < Duration::from_secs(15) {
            ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "partitions {:?} processed nothing for 120 s after the kill",
                before
                    .keys()
                    .filter(|p| !moved.contains_key(p))
                    .collect::<Vec<_>>()
            );
            // A rebalance answers offset fetches with errors for a moment: sample again.
            if let Ok(now) = committed() {
                for (p, o) in now {
                    if o > before[&p] {
                        moved.entry(p).or_insert_with(|| killed.elapsed());
                    }
                    if let Some((at, since)) = last.get_mut(&p)
                        && o > *at
                    {
                        let stood = since.elapsed();
                        let longest = still.entry(p).or_default();
                        *longest = (*longest).max(stood);
                        *at = o;
                        *since = Instant::now();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "after the kill, partitions committed again after {moved:?}; the longest each \
             stood still: {still:?}"
        );
        let slowest = moved.values().copied().max().unwrap_or_default();
        let taken_over: Vec<i32> = moved
            .iter()
            .filter(|(_, t)| **t == slowest)
            .map(|(p, _)| *p)
            .collect();
        Ok::<_, anyhow::Error>(Takeover {
            slowest,
            fastest: moved.values().copied().min().unwrap_or_default(),
            pause: still
                .iter()
                .filter(|(p, _)| !taken_over.contains(p))
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default(),
        })
    })
    .await??;
    producing.await??;
    tokio::task::spawn_blocking(move || inventory::wait_caught_up(&opts, Duration::from_secs(240)))
        .await??;
    for (i, m) in members.iter_mut().enumerate() {
        if i != 1 {
            m.stop()?;
        }
    }
    check_inventory(cluster, views, &expected).await?;
    Ok(takeover)
}

/// Produces `commands` (keyed by sku) at `rate` per second with one producer.
async fn produce_at(
    cluster: &pipelines::Cluster,
    commands: &[schemas::inventory::InventoryCommand],
    rate: f64,
) -> anyhow::Result<()> {
    use pipelines::topics::inventory::COMMANDS;
    use schemas::codec::Encoder;

    let registry = schemas::Registry::new(&cluster.registry);
    let encoder =
        Encoder::<schemas::inventory::InventoryCommand>::register(&registry, COMMANDS).await?;
    let plain = pipelines::Cluster {
        guarantee: pipelines::Guarantee::AtLeastOnce,
        ..cluster.clone()
    };
    let commands = commands.to_vec();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let output = pipelines::kafka::Output::new(&plain, "producer", "churn")?;
        let mut buf = Vec::with_capacity(256);
        let started = Instant::now();
        let chunk = ((rate / 20.0).ceil() as usize).max(1);
        for (i, part) in commands.chunks(chunk).enumerate() {
            for c in part {
                encoder.encode_into(c, &mut buf)?;
                output.send(COMMANDS, None, c.sku().as_bytes(), &buf, None)?;
            }
            output.flush()?;
            let due = started + Duration::from_secs_f64(((i + 1) * chunk) as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    })
    .await?
}

/// The run's skus (those of `expected`) on inventory.events and in `stock_levels`.
async fn check_inventory(
    cluster: &pipelines::Cluster,
    views: &Path,
    expected: &crate::model::Expected,
) -> anyhow::Result<()> {
    use pipelines::topics::inventory::EVENTS;
    use schemas::codec::Decoder;
    use schemas::inventory::InventoryEvent;
    use schemas::record::RecordUnion;

    let records = crate::topic::read_all(cluster, EVENTS)?;
    let mut decoder = Decoder::<InventoryEvent>::new(schemas::Registry::new(&cluster.registry));
    let mut events = Vec::new();
    let mut names: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    // Commands that produced an event (for the report when some did not).
    let mut causes = std::collections::HashSet::new();
    for r in &records {
        let event = decoder.decode_learning(&r.payload).await?;
        if let Some(c) = &event.metadata().causation_id {
            causes.insert(c.clone());
        }
        if !expected.events.contains_key(event.sku()) {
            continue;
        }
        let m = event.metadata();
        events.push((
            event.sku().to_owned(),
            m.aggregate_version,
            m.event_id.clone(),
        ));
        let name = event.record_name().rsplit('.').next().expect("named");
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.entry(event.sku().to_owned()).or_default().push(name);
    }
    let n = versions_consecutive(EVENTS, events)?;
    if n != expected.event_count() {
        // Which commands have no event: runs of (partition, offsets) on inventory.commands.
        let mut commands = Decoder::<schemas::inventory::InventoryCommand>::new(
            schemas::Registry::new(&cluster.registry),
        );
        let mut missing: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
        for r in crate::topic::read_all(cluster, pipelines::topics::inventory::COMMANDS)? {
            let Ok(c) = commands.decode_learning(&r.payload).await else {
                continue;
            };
            if !expected.events.contains_key(c.sku()) || causes.contains(&c.metadata().event_id) {
                continue;
            }
            let runs = missing.entry(r.partition).or_default();
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == r.offset => *end = r.offset,
                _ => runs.push((r.offset, r.offset)),
            }
        }
        // A command dead-lettered commits its offset with no event: count the run's.
        let mut dead: BTreeMap<String, usize> = BTreeMap::new();
        for r in crate::topic::read_all(cluster, pipelines::topics::inventory::DLQ)? {
            if expected
                .events
                .contains_key(String::from_utf8_lossy(&r.key).as_ref())
            {
                let kind = r
                    .header(pipelines::topics::dlq_headers::KIND)
                    .unwrap_or("?");
                *dead.entry(kind.to_owned()).or_default() += 1;
            }
        }
        anyhow::bail!(
            "{n} events of the run's skus, the model expects {}; dead letters of the run by kind: {dead:?}; commands without an event, by partition: {:?}",
            expected.event_count(),
            missing
                .iter()
                .map(|(p, runs)| (p, runs.iter().take(8).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        );
    }
    for (sku, want) in &expected.events {
        ensure!(
            names.get(sku) == Some(want),
            "events of {sku} differ from the model:\n actual {:?}\n expected {want:?}",
            names.get(sku)
        );
    }
    let engine = sinks::QueryEngine::open(views).await?;
    let batches = engine
        .sql("SELECT sku, warehouse, on_hand, reserved FROM stock_levels ORDER BY sku, warehouse")
        .await?;
    let csv = sinks::OutputFormat::Csv.render(&batches)?;
    let mut actual = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if !expected.events.contains_key(f[0]) {
            continue;
        }
        actual.insert(
            (f[0].to_owned(), f[1].to_owned()),
            (f[2].parse()?, f[3].parse()?),
        );
    }
    let want: BTreeMap<(String, String), (i64, i64)> = expected
        .positions
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    ensure!(
        actual == want,
        "stock_levels differs from the model on the run's skus: {} rows vs {}",
        actual.len(),
        want.len()
    );
    Ok(())
}
