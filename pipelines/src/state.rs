//! Each service's local state directory: `<state-dir>/<service>/<pipeline>/`.
//!
//! A processor's store lives in memory and its truth is its changelog topic (compacted, owned
//! by the service like its other topics). The directory holds a *snapshot* of each changelog
//! partition the processor owns — the latest record per key, and the offset up to which they
//! are known — so a restart restores from the snapshot and reads only the changelog's tail
//! instead of the whole partition. It is a cache: deleting it costs a full restore, never
//! correctness.
//!
//! Database per service, locally too: a pipeline opens only the directory of the service its
//! code belongs to (checked against the ownership map before it starts), under its own name,
//! and holds a lock on it, so two instances never share one (give each its own
//! `--state-dir`).
//!
//! When a snapshot is right:
//! - its offset is this instance's own: the end it restored to, or past the last changelog
//!   record it delivered in a *committed* transaction, never the partition's end at some
//!   later moment (another instance may have written there meanwhile);
//! - snapshots are written only after a commit, so they never hold an aborted write;
//! - its offset must follow on from what it covers: a changelog write of another instance
//!   in between (a zombie) freezes it, and the restore replays the gap;
//! - a snapshot is dropped when it cannot be trusted: another cluster (its id is in the file),
//!   an offset beyond the partition's end or below its start (the topic was recreated or
//!   truncated), a file whose SHA-256 does not match, or one older than [`MAX_AGE`] (past
//!   it, the changelog's compaction may have removed tombstones the snapshot does not know
//!   of).
//!
//! Not detected: a changelog deleted and rebuilt (`replay <store>`) past the snapshot's
//! offset on the same cluster looks like the old one; delete the service's directories after
//! a rebuild (the command says so). The mock broker's cluster id may repeat between runs;
//! the demo and the tests start from empty directories.

use std::collections::HashMap;
use std::fs::File;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tracing::{info, warn};

use crate::{Cluster, kafka};

pub use formats::snapshot::{Kept, Snapshot};

/// A snapshot older than this is not used (Kafka's default `delete.retention.ms`, one day,
/// is how long a tombstone is kept after compaction).
pub const MAX_AGE: Duration = Duration::from_secs(20 * 3600);

/// A pipeline's directory under `<root>/<service>/`, locked while open.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Opens (creating) `<root>/<service>/<pipeline>/` and locks it.
    pub fn open(root: &Path, service: &str, pipeline: &str) -> anyhow::Result<Self> {
        let dir = root.join(service).join(pipeline);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let lock = File::create(dir.join("LOCK"))
            .with_context(|| format!("opening {}/LOCK", dir.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "state directory {} is in use by another instance of {pipeline}: give each instance its own --state-dir",
                dir.display()
            );
        }
        Ok(StateDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, topic: &str, p: i32) -> PathBuf {
        self.dir.join(format!("{topic}-{p}.snapshot"))
    }
}

/// Why a snapshot is not used (`None`: it is).
fn distrust(
    s: &Snapshot,
    cluster_id: &str,
    topic: &str,
    p: i32,
    low: i64,
    high: i64,
    now: i64,
) -> Option<String> {
    if s.cluster_id != cluster_id {
        return Some(format!(
            "written against cluster {:?}, this is {cluster_id:?}",
            s.cluster_id
        ));
    }
    if s.topic != topic || s.partition != p {
        return Some(format!("it is of {}/{}", s.topic, s.partition));
    }
    if s.position > high || s.position < low {
        return Some(format!(
            "its offset {} is outside the partition ({low}..{high}): the topic was recreated or truncated",
            s.position
        ));
    }
    if now - s.written_at > MAX_AGE.as_millis() as i64 {
        return Some(format!("it is older than {MAX_AGE:?}"));
    }
    None
}

/// The state of partitions a rebalance revoked, kept with what the [`ChangelogCache`] knows of
/// them, until the next assignment says whether they came back untouched (see
/// [`ChangelogCache::resume`]). Both processor loops keep their per-partition state in one.
pub struct Suspended<S> {
    states: HashMap<i32, S>,
}

impl<S> Default for Suspended<S> {
    fn default() -> Self {
        Suspended {
            states: HashMap::new(),
        }
    }
}

impl<S> Suspended<S> {
    /// Partition `p` was revoked: keeps its `state` (if the caller had any).
    pub fn revoke(&mut self, p: i32, state: Option<S>, cache: &mut ChangelogCache) {
        if let Some(state) = state {
            self.states.insert(p, state);
        }
        cache.suspend(p);
    }

    /// Partition `p` was assigned: its state as it was revoked, if no one wrote its
    /// changelog since; `None`: restore it.
    pub fn resume(&mut self, p: i32, cache: &mut ChangelogCache) -> Option<S> {
        let state = self.states.remove(&p)?;
        cache.resume(p).then_some(state)
    }

    /// After an assignment: the partitions it did not give back went to other members.
    pub fn assigned(&mut self, cache: &mut ChangelogCache) {
        self.states.clear();
        cache.drop_suspended();
    }

    /// Forgets everything (after a failed batch).
    pub fn clear(&mut self) {
        self.states.clear();
    }
}

/// How one partition was restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records taken from the local snapshot.
    pub from_snapshot: usize,
    /// Records read from the changelog topic (its tail, or all of it).
    pub from_topic: usize,
}

struct Part {
    records: HashMap<Vec<u8>, Kept>,
    /// Offset the records are known up to (exclusive).
    position: i64,
    /// Changed since the last snapshot.
    dirty: bool,
    /// Another writer's records follow `position` (reported once).
    gap: bool,
    /// No snapshots until the next restore ([`ChangelogCache::hold`]).
    held: bool,
}

/// The changelog partitions a pipeline owns, as the latest record per key, kept beside its
/// store and snapshotted to its [`StateDir`] now and then. Without a directory it only reads
/// whole partitions (and keeps nothing).
pub struct ChangelogCache {
    dir: Option<StateDir>,
    cluster: Cluster,
    cluster_id: String,
    topic: &'static str,
    group: String,
    parts: HashMap<i32, Part>,
    /// The changelog's end per owned partition as of this instance's last restore or
    /// commit there: if the partition's high watermark has not moved past it (but for a
    /// commit marker), no one else wrote it since.
    ends: HashMap<i32, i64>,
    /// Partitions revoked by a rebalance, kept in case the next one gives them back.
    suspended: HashMap<i32, (Option<Part>, i64)>,
    probe: Option<kafka::Probe>,
    every: Duration,
    last: Instant,
    /// Whose open transactions a stalled restore may abort ([`kafka::abort_departed`]).
    writers: Option<kafka::Writers>,
}

impl ChangelogCache {
    /// For changelog `topic` of `pipeline` (of `service`); snapshots under `root` if given,
    /// every `every`.
    pub fn open(
        root: Option<&Path>,
        service: &str,
        pipeline: &str,
        topic: &'static str,
        cluster: &Cluster,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let dir = root
            .map(|r| StateDir::open(r, service, pipeline))
            .transpose()?;
        let cluster_id = if dir.is_some() {
            let probe: BaseConsumer = kafka::client_config(cluster).create()?;
            probe
                .client()
                .fetch_cluster_id(kafka::TX_TIMEOUT)
                .context("fetching the cluster id")?
        } else {
            String::new()
        };
        if let Some(d) = &dir {
            info!(dir = %d.path().display(), "State directory opened.");
        }
        Ok(ChangelogCache {
            dir,
            cluster: cluster.clone(),
            cluster_id,
            topic,
            group: format!("{pipeline}.restore"),
            parts: HashMap::new(),
            ends: HashMap::new(),
            suspended: HashMap::new(),
            probe: None,
            every,
            last: Instant::now(),
            writers: None,
        })
    }

    /// Lets a stalled restore abort the open transaction of a departed writer (exactly-once
    /// only: without transactions nothing holds a restore).
    pub fn abort_departed(&mut self, writers: kafka::Writers) {
        self.writers = Some(writers);
    }

    /// Keeps what is known of partition `p` aside: a rebalance revoked it, and eager
    /// rebalancing revokes every partition, most of which come straight back.
    fn suspend(&mut self, p: i32) {
        if let Some(end) = self.ends.remove(&p) {
            self.suspended.insert(p, (self.parts.remove(&p), end));
        } else {
            self.parts.remove(&p);
        }
    }

    /// Whether partition `p`, suspended by [`ChangelogCache::suspend`], is as this instance
    /// left it: its changelog's high watermark is where this instance's last restore or
    /// commit left it (or one commit marker further). Then the caller's state of `p` is
    /// still the fold of its changelog and needs no restore (Kafka Streams resumes a
    /// suspended task the same way); else `p` is forgotten and must be restored.
    fn resume(&mut self, p: i32) -> bool {
        let Some((part, end)) = self.suspended.remove(&p) else {
            return false;
        };
        let high = match self.high_watermark(p) {
            Ok(high) => high,
            Err(e) => {
                warn!(topic = self.topic, partition = p, error = %format!("{e:#}"), "Cannot tell whether the changelog moved; restoring.");
                return false;
            }
        };
        // A high watermark below the end means the topic was recreated or truncated.
        if high < end || high > end + self.marker_slack() {
            return false;
        }
        self.ends.insert(p, end);
        if let Some(part) = part {
            self.parts.insert(p, part);
        }
        true
    }

    fn high_watermark(&mut self, p: i32) -> anyhow::Result<i64> {
        if self.probe.is_none() {
            self.probe = Some(kafka::Probe::new(&self.cluster)?);
        }
        let probe = self.probe.as_ref().expect("just created");
        Ok(kafka::watermarks(probe, self.topic, p)?.1)
    }

    /// Offsets a transaction adds after its last record: its commit marker. Without
    /// transactions there is none, and one more offset is another writer's record.
    fn marker_slack(&self) -> i64 {
        match self.cluster.guarantee {
            crate::Guarantee::ExactlyOnce => 1,
            crate::Guarantee::AtLeastOnce => 0,
        }
    }

    /// Drops every suspended partition (the rebalance that followed gave them elsewhere).
    fn drop_suspended(&mut self) {
        self.suspended.clear();
    }

    /// Restores partition `p`: the records of a trusted local snapshot, then the changelog
    /// from the snapshot's offset (or from its beginning) to its end; `f` gets each record's
    /// key, its payload (`None`: a tombstone), the offset it was read at (`None`: from the
    /// snapshot) and its timestamp, in order.
    pub fn restore(
        &mut self,
        p: i32,
        mut f: impl FnMut(&[u8], Option<&[u8]>, Option<i64>, i64) -> anyhow::Result<()>,
    ) -> anyhow::Result<Restored> {
        let mut restored = Restored::default();
        let mut records = HashMap::new();
        let mut from = None;
        if let Some(dir) = &self.dir {
            let path = dir.file(self.topic, p);
            match Snapshot::read(&path) {
                Ok(None) => {}
                Err(e) => {
                    warn!(file = %path.display(), error = %format!("{e:#}"), "Snapshot unreadable; restoring from the changelog.")
                }
                Ok(Some(s)) => {
                    let probe = kafka::Probe::new(&self.cluster)?;
                    let (low, high) = kafka::watermarks(&probe, self.topic, p)?;
                    let now = crate::wire::now_ms();
                    match distrust(&s, &self.cluster_id, self.topic, p, low, high, now) {
                        Some(why) => {
                            warn!(file = %path.display(), why, "Snapshot not used; restoring from the changelog.")
                        }
                        None => {
                            for (k, v) in &s.records {
                                f(k, Some(&v.payload), None, v.at)?;
                            }
                            restored.from_snapshot = s.records.len();
                            from = Some(s.position);
                            records = s.records;
                        }
                    }
                }
            }
        }
        self.suspended.remove(&p);
        let keep = self.dir.is_some();
        let (cluster, topic) = (&self.cluster, self.topic);
        let mut unstick = self.writers.as_ref().map(|writers| {
            move || -> anyhow::Result<()> {
                let started = Instant::now();
                match kafka::abort_departed(cluster, writers, topic, p) {
                    Ok(Some(instance)) => warn!(
                        topic,
                        partition = p,
                        instance,
                        took = ?started.elapsed(),
                        "Aborted the open transaction of a departed instance: it held this restore."
                    ),
                    Ok(None) => {}
                    // The coordinator's timeout aborts it anyway: only slower.
                    Err(e) => warn!(topic, partition = p, error = %format!("{e:#}"), "Could not abort a departed instance's open transaction; waiting for its timeout."),
                }
                Ok(())
            }
        });
        let end = kafka::read_partition_from(
            &self.cluster,
            &self.group,
            self.topic,
            p,
            from,
            unstick
                .as_mut()
                .map(|u| u as &mut dyn FnMut() -> anyhow::Result<()>),
            |m| {
                restored.from_topic += 1;
                let key = m.key().unwrap_or_default();
                // A record without a timestamp (none of ours) counts as written now.
                let at = m
                    .timestamp()
                    .to_millis()
                    .unwrap_or_else(crate::wire::now_ms);
                match m.payload() {
                    None => {
                        f(key, None, Some(m.offset()), at)?;
                        if keep {
                            records.remove(key);
                        }
                    }
                    Some(v) => {
                        f(key, Some(v), Some(m.offset()), at)?;
                        if keep {
                            records.insert(
                                key.to_vec(),
                                Kept {
                                    payload: v.to_vec(),
                                    at,
                                },
                            );
                        }
                    }
                }
                Ok(())
            },
        )?;
        self.ends.insert(p, end.max(from.unwrap_or(0)));
        if keep {
            self.parts.insert(
                p,
                Part {
                    records,
                    position: end.max(from.unwrap_or(0)),
                    dirty: restored.from_topic > 0,
                    gap: false,
                    held: false,
                },
            );
        }
        Ok(restored)
    }

    /// Notes a record written to the changelog at `at` (in the transaction under way);
    /// `None`: a tombstone.
    pub fn record(&mut self, p: i32, key: &[u8], payload: Option<&[u8]>, at: i64) {
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        let Some(payload) = payload else {
            part.records.remove(key);
            part.dirty = true;
            return;
        };
        // A key written again (the common case: a sku's snapshot per batch) reuses its buffer.
        match part.records.get_mut(key) {
            Some(v) => {
                v.payload.clear();
                v.payload.extend_from_slice(payload);
                v.at = at;
            }
            None => {
                part.records.insert(
                    key.to_vec(),
                    Kept {
                        payload: payload.to_vec(),
                        at,
                    },
                );
            }
        }
        part.dirty = true;
    }

    /// Forgets partition `p` (revoked); its snapshot stays for when it comes back.
    pub fn forget(&mut self, p: i32) {
        self.parts.remove(&p);
        self.ends.remove(&p);
        self.suspended.remove(&p);
    }

    /// Forgets everything (after a failed batch: the next restore starts over).
    pub fn clear(&mut self) {
        self.parts.clear();
        self.ends.clear();
        self.suspended.clear();
    }

    /// After a committed unit of work: `delivered` is the first and last changelog offset it
    /// wrote per partition ([`crate::kafka::Output::delivered`]). Writes the snapshots of
    /// changed partitions when due (or `now`). A snapshot that cannot be written is reported
    /// and tried again later: it is a cache, not a reason to stop.
    pub fn committed(
        &mut self,
        delivered: &HashMap<i32, (i64, i64)>,
        now: bool,
    ) -> anyhow::Result<()> {
        let slack = self.marker_slack();
        for (p, (first, last)) in delivered {
            // This instance's writes must follow on from the end it knew (one commit marker
            // between two transactions at most); else another writer came in between, and
            // the partition is restored, not resumed, at its next assignment.
            if let Some(end) = self.ends.get(p).copied() {
                if *first <= end + slack {
                    self.ends.insert(*p, end.max(last + 1));
                } else {
                    self.ends.remove(p);
                }
            }
            let Some(part) = self.parts.get_mut(p) else {
                continue;
            };
            // The position moves only over records that are all this instance's: its writes
            // must follow on from what the part covers (one commit marker may lie between two
            // transactions). A gap means another writer came in between (a zombie of a lost
            // assignment): the position stays, and a restore replays the gap from the topic.
            if *first <= part.position + 1 {
                part.position = part.position.max(last + 1);
            } else if !part.gap {
                part.gap = true;
                warn!(
                    topic = self.topic,
                    partition = p,
                    covered = part.position,
                    first,
                    "Another writer wrote this changelog partition since it was restored; its snapshots keep the older offset."
                );
            }
        }
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if !now && self.last.elapsed() < self.every {
            return Ok(());
        }
        self.last = Instant::now();
        let written_at = crate::wire::now_ms();
        for (p, part) in self
            .parts
            .iter_mut()
            .filter(|(_, part)| part.dirty && !part.held)
        {
            let snapshot = Snapshot {
                cluster_id: self.cluster_id.clone(),
                topic: self.topic.to_owned(),
                partition: *p,
                position: part.position,
                written_at,
                records: std::mem::take(&mut part.records),
            };
            let path = dir.file(self.topic, *p);
            let written = snapshot.write(&path);
            part.records = snapshot.records;
            match written {
                Ok(()) => part.dirty = false,
                Err(e) => {
                    warn!(file = %path.display(), error = %format!("{e:#}"), "Snapshot not written; will try again.")
                }
            }
        }
        Ok(())
    }

    /// Writes no snapshot of partition `p` until it is restored again: its restore found
    /// records a snapshot must not fold away (see the inventory service's orphaned
    /// reservations).
    pub fn hold(&mut self, p: i32) {
        if let Some(part) = self.parts.get_mut(&p) {
            part.held = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot's header: what `distrust` judges (its records are not read).
    fn snapshot() -> Snapshot {
        Snapshot {
            cluster_id: "c1".into(),
            topic: "orders.changelog".into(),
            partition: 2,
            position: 40,
            written_at: 1_000,
            records: HashMap::new(),
        }
    }

    #[test]
    fn the_covered_offset_moves_only_over_this_instances_own_writes() {
        let root = tempfile::tempdir().unwrap();
        let mut cache = ChangelogCache {
            dir: Some(StateDir::open(root.path(), "orders", "orders").unwrap()),
            cluster: Cluster {
                brokers: String::new(),
                registry: String::new(),
                guarantee: crate::Guarantee::ExactlyOnce,
                kafka: Vec::new(),
            },
            cluster_id: "c1".into(),
            topic: "orders.changelog",
            group: String::new(),
            parts: HashMap::new(),
            ends: HashMap::new(),
            suspended: HashMap::new(),
            probe: None,
            every: Duration::ZERO,
            last: Instant::now(),
            writers: None,
        };
        // Restored to the end, 100.
        cache.parts.insert(
            0,
            Part {
                records: HashMap::new(),
                position: 100,
                dirty: false,
                gap: false,
                held: false,
            },
        );
        let path = root
            .path()
            .join("orders/orders/orders.changelog-0.snapshot");
        let written = || Snapshot::read(&path).unwrap().unwrap().position;
        // Its first transaction starts at the end it restored to.
        cache.record(0, b"O-1", Some(b"v1"), 1);
        cache
            .committed(&HashMap::from([(0, (100, 104))]), false)
            .unwrap();
        assert_eq!(written(), 105);
        // The next one after its commit marker (105).
        cache.record(0, b"O-1", Some(b"v2"), 2);
        cache
            .committed(&HashMap::from([(0, (106, 110))]), false)
            .unwrap();
        assert_eq!(written(), 111);
        // Someone else wrote 111..119: the snapshot keeps naming 111 (the restore replays
        // from there, theirs included).
        cache.record(0, b"O-2", Some(b"v1"), 3);
        cache
            .committed(&HashMap::from([(0, (120, 125))]), false)
            .unwrap();
        assert_eq!(written(), 111);
        assert_eq!(Snapshot::read(&path).unwrap().unwrap().records.len(), 2);
        // A held partition is not written.
        cache.hold(0);
        cache.record(0, b"O-3", Some(b"v1"), 4);
        cache.committed(&HashMap::new(), true).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap().unwrap().records.len(), 2);
    }

    #[test]
    fn a_snapshot_is_trusted_only_for_its_cluster_partition_and_offsets() {
        let s = snapshot();
        let check = |cluster: &str, p: i32, low: i64, high: i64, now: i64| {
            distrust(&s, cluster, "orders.changelog", p, low, high, now)
        };
        assert_eq!(check("c1", 2, 0, 40, 2_000), None);
        assert_eq!(check("c1", 2, 0, 90, 2_000), None);
        assert!(check("c2", 2, 0, 90, 2_000).unwrap().contains("cluster"));
        assert!(
            check("c1", 1, 0, 90, 2_000)
                .unwrap()
                .contains("orders.changelog/2")
        );
        assert!(check("c1", 2, 0, 39, 2_000).unwrap().contains("recreated"));
        assert!(check("c1", 2, 41, 90, 2_000).unwrap().contains("recreated"));
        let old = 1_000 + MAX_AGE.as_millis() as i64 + 1;
        assert!(check("c1", 2, 0, 90, old).unwrap().contains("older"));
    }

    #[test]
    fn a_state_directory_is_one_instances() {
        let root = tempfile::tempdir().unwrap();
        let a = StateDir::open(root.path(), "orders", "orders").unwrap();
        assert!(a.path().ends_with("orders/orders"));
        let err = StateDir::open(root.path(), "orders", "orders").unwrap_err();
        assert!(
            err.to_string()
                .contains("in use by another instance of orders"),
            "{err}"
        );
        // Another pipeline of the service has its own.
        StateDir::open(root.path(), "orders", "saga-views").unwrap();
        drop(a);
        StateDir::open(root.path(), "orders", "orders").unwrap();
    }
}
