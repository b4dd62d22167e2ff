//! The audit trail after a run: one row per event of every event log (nothing lost, nothing
//! twice), every chain intact; then one changed value in one row of a Parquet part, and one
//! flipped byte in a part file, must each fail verification naming where.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use pipelines::Cluster;
use pipelines::compliance::EVENT_TOPICS;
use sinks::audit::{AuditTable, verify};

use crate::topic;

/// Waits for the trail to hold exactly the committed records of every event log, verifies it,
/// then tampers with copies of it.
pub fn audit_trail_is_complete_and_tamper_evident(
    cluster: &Cluster,
    views: &Path,
) -> anyhow::Result<()> {
    let mut expected = BTreeSet::new();
    for topic in EVENT_TOPICS {
        for r in topic::read_all(cluster, topic)? {
            expected.insert((topic.to_string(), r.partition, r.offset));
        }
    }
    let table = AuditTable::open(views)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut rows = Vec::new();
        for part in table.parts()? {
            rows.extend(table.read(&part)?.0);
        }
        let seen: BTreeSet<(String, i32, i64)> = rows
            .iter()
            .map(|r| (r.topic.clone(), r.partition, r.offset))
            .collect();
        if seen == expected {
            ensure!(
                rows.len() == expected.len(),
                "{} rows for {} records: duplicates",
                rows.len(),
                expected.len()
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the audit trail has {} of {} records ({} missing, {} extra)",
            seen.len(),
            expected.len(),
            expected.difference(&seen).count(),
            seen.difference(&expected).count()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let verified = verify(views)?;
    ensure!(verified.records == expected.len(), "verified {verified:?}");
    eprintln!(
        "audit trail: {} records in {} partitions ({} parts) verified",
        verified.records, verified.partitions, verified.parts
    );

    // One byte of one value of one row: the row is named.
    let copy = tempfile::tempdir()?;
    copy_trail(views, copy.path())?;
    let tampered = AuditTable::open(copy.path())?;
    let parts = tampered.parts()?;
    let part = &parts[parts.len() / 2];
    let (mut rows, checkpoint) = tampered.read(part)?;
    // A row from the middle with an aggregate id to change (an undecodable record has none).
    let victim = (rows.len() / 2..rows.len())
        .chain(0..rows.len() / 2)
        .find(|&i| !rows[i].aggregate_id.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no row of {} has an aggregate id", part.display()))?;
    let mut bytes = rows[victim].aggregate_id.clone().into_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    rows[victim].aggregate_id = String::from_utf8(bytes)?;
    tampered.write_part(part, &rows, &checkpoint)?;
    let named = format!(
        "{}/{}@{}",
        rows[victim].topic, rows[victim].partition, rows[victim].offset
    );
    match verify(copy.path()) {
        Err(t) if t.at == named && t.reason.contains("altered") => eprintln!("detected: {t}"),
        other => anyhow::bail!("a changed row ({named}) was not detected: {other:?}"),
    }

    // One flipped byte anywhere in a part file, even where no row is decoded from: the part
    // is named (its digest).
    let copy = tempfile::tempdir()?;
    copy_trail(views, copy.path())?;
    let part = &AuditTable::open(copy.path())?.parts()?[0];
    let mut file = std::fs::read(part)?;
    let middle = file.len() / 2;
    file[middle] ^= 0x20;
    std::fs::write(part, file)?;
    match verify(copy.path()) {
        Err(t) if t.at == part.display().to_string() => eprintln!("detected: {t}"),
        Err(t) => anyhow::bail!(
            "a flipped byte in {} was reported elsewhere: {t}",
            part.display()
        ),
        Ok(v) => anyhow::bail!(
            "a flipped byte in {} passed verification: {v:?}",
            part.display()
        ),
    }
    Ok(())
}

fn copy_trail(views: &Path, to: &Path) -> anyhow::Result<()> {
    let from = views.join(sinks::audit::VIEW);
    let to = to.join(sinks::audit::VIEW);
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        std::fs::copy(&path, to.join(path.file_name().expect("named")))?;
    }
    Ok(())
}
