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
    /// Starts Kafka and Apicurio on free loopback ports (downloads cached jars on first use).
    pub fn up() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("supplystream-stack-")
            .tempdir()?;
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("up")
            .arg(dir.path())
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
