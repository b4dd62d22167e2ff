//! `supplystream schemas check|register`: the bundled (or a candidate directory's) schemas
//! against the registry, subject by subject, before a deploy.

use std::path::{Path, PathBuf};

use anyhow::Context;

use schemas::Registry;
use schemas::catalog;
use schemas::record::{Schema, full_name, parse_avsc};

/// One subject to check: where its schema comes from, and the schema.
pub struct Candidate {
    pub subject: String,
    pub source: String,
    pub schema: Schema,
}

/// The bundled schemas, or those of `dir` (`<dir>/<service>/<Record>.avsc`; `*.v<N>.avsc`
/// history files and shared records without a topic are skipped).
pub fn candidates(dir: Option<&Path>) -> anyhow::Result<Vec<Candidate>> {
    let Some(dir) = dir else {
        return Ok(catalog::subjects()
            .into_iter()
            .map(|s| Candidate {
                subject: s.name(),
                source: "bundled".into(),
                schema: s.schema.clone(),
            })
            .collect());
    };
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "avsc") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem
            .rsplit_once(".v")
            .is_some_and(|(_, v)| v.parse::<u32>().is_ok())
        {
            continue; // an old version, kept for history
        }
        let text = std::fs::read_to_string(&path)?;
        let schema = std::panic::catch_unwind(|| parse_avsc(&text))
            .map_err(|_| anyhow::anyhow!("{} is not a valid Avro schema", path.display()))?;
        let Some(name) = full_name(&schema) else {
            continue;
        };
        for topic in catalog::topics_of(&name) {
            out.push(Candidate {
                subject: format!("{topic}-{name}"),
                source: path.display().to_string(),
                schema: schema.clone(),
            });
        }
    }
    Ok(out)
}

/// Checks (and with `register`, registers) every candidate; prints one line per subject.
/// Returns how many were refused.
pub async fn run(
    registry: &Registry,
    candidates: &[Candidate],
    register: bool,
) -> anyhow::Result<usize> {
    let mut refused = 0;
    for c in candidates {
        let verdict = registry
            .check(&c.subject, &c.schema)
            .await
            .with_context(|| format!("checking {}", c.subject))?;
        let level = verdict.level.name();
        match &verdict.refusal {
            Some(reason) => {
                refused += 1;
                println!(
                    "INCOMPATIBLE  {} ({level}, {} versions; {}): {reason}",
                    c.subject, verdict.versions, c.source
                );
            }
            None if register => {
                let id = registry.register(&c.subject, &c.schema).await?;
                println!("registered    {} (id {id}, {level})", c.subject);
            }
            None if verdict.versions == 0 => println!("new           {} ({level})", c.subject),
            None => println!(
                "compatible    {} ({level}, {} versions)",
                c.subject, verdict.versions
            ),
        }
    }
    Ok(refused)
}
