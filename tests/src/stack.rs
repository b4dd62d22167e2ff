//! The real Apache Kafka + Apicurio stack, started and stopped through `scripts/stack.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use pipelines::{Cluster, Guarantee};

/// A running stack; stopped when dropped.
pub struct Stack {
    /// `None` once stopped and kept.
    dir: Option<tempfile::TempDir>,
    pub cluster: Cluster,
}

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

impl Stack {
    /// Starts one Kafka broker and Apicurio on free loopback ports (downloads cached jars on
    /// first use).
    pub fn up() -> anyhow::Result<Self> {
        Self::with_brokers(1)
    }

    /// Starts `brokers` Kafka brokers (more than one: a dedicated controller beside them,
    /// replication factor 3 and `min.insync.replicas=2`) and Apicurio.
    pub fn with_brokers(brokers: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("supplystream-stack-")
            .tempdir()?;
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("up")
            .arg(dir.path())
            .args(["--brokers", &brokers.to_string()])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "scripts/stack.sh up failed; logs in {}",
            dir.path().display()
        );
        let env = std::fs::read_to_string(dir.path().join("env"))?;
        let var = |name: &str| {
            env.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("export {name}="))
                        .map(str::to_owned)
                })
                .ok_or_else(|| anyhow::anyhow!("{name} missing from stack env"))
        };
        let cluster = Cluster {
            brokers: var("SUPPLYSTREAM_BROKERS")?,
            registry: var("SUPPLYSTREAM_REGISTRY")?,
            guarantee: Guarantee::ExactlyOnce,
            kafka: Vec::new(),
        };
        Ok(Stack {
            dir: Some(dir),
            cluster,
        })
    }

    /// Directory holding the stack's logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("running").path()
    }

    /// The brokers' node names (`kafka`, or `kafka-1` … `kafka-N`), in order.
    fn nodes(&self) -> anyhow::Result<Vec<String>> {
        Ok(std::fs::read_to_string(self.dir().join("brokers"))?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// How many brokers the cluster has.
    pub fn brokers(&self) -> anyhow::Result<usize> {
        Ok(self.nodes()?.len())
    }

    /// Every broker's log (group coordinators log their rebalances there; a group's
    /// coordinator moves when its broker bounces).
    pub fn kafka_logs(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self
            .nodes()?
            .iter()
            .map(|n| self.dir().join(format!("{n}.log")))
            .collect())
    }

    /// The pid of broker `i` (1-based) as it runs now.
    pub fn broker_pid(&self, i: usize) -> anyhow::Result<String> {
        let nodes = self.nodes()?;
        let node = nodes
            .get(i.wrapping_sub(1))
            .ok_or_else(|| anyhow::anyhow!("no broker {i} of {}", nodes.len()))?;
        Ok(
            std::fs::read_to_string(self.dir().join(format!("{node}.pid")))?
                .trim()
                .to_owned(),
        )
    }
}

/// Stops broker `i` (1-based) of the stack in `dir` (SIGTERM, or SIGKILL when `hard`),
/// starts it again and waits until it has started (`scripts/stack.sh bounce`).
pub fn bounce(dir: &Path, i: usize, hard: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/stack.sh"))
        .arg("bounce")
        .arg(dir)
        .arg(i.to_string());
    if hard {
        cmd.arg("--hard");
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/stack.sh bounce {i} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Stack {
    /// Stops the stack and keeps its directory (logs and the brokers' data, for
    /// `kafka-dump-log.sh`); returns where it is.
    pub fn stop_and_keep(mut self) -> PathBuf {
        self.stop();
        self.dir.take().expect("not stopped yet").keep()
    }

    fn stop(&self) {
        if let Some(dir) = &self.dir {
            let _status = Command::new("bash")
                .arg(repo_root().join("scripts/stack.sh"))
                .arg("down")
                .arg(dir.path())
                .status();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}
