//! Database per service at the CLI: a definition that writes another service's topic stops
//! `run` before it connects to anything, with an error naming both services.

use std::path::Path;
use std::process::Command;

fn supplystream() -> Command {
    Command::new(env!("CARGO_BIN_EXE_supplystream"))
}

/// The registry's definitions as an operator starts their own: `services --format toml`,
/// one file per `# <service>.toml` section.
fn copy_definitions(to: &Path) {
    let out = supplystream()
        .args(["services", "--format", "toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut files = 0;
    for section in text.split("# ").filter(|s| !s.trim().is_empty()) {
        let (name, body) = section.split_once('\n').unwrap();
        assert!(name.ends_with(".toml"), "{name}");
        std::fs::write(to.join(name), body).unwrap();
        files += 1;
    }
    assert_eq!(
        files,
        pipelines::registry::SERVICES.len(),
        "one definition file per service"
    );
}

#[test]
fn a_pipeline_that_writes_another_services_topic_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    copy_definitions(dir.path());
    let payments = dir.path().join("payments.toml");
    let text = std::fs::read_to_string(&payments).unwrap().replace(
        r#"writes = ["payments.replies""#,
        r#"writes = ["shipping.replies", "payments.replies""#,
    );
    std::fs::write(&payments, text).unwrap();
    let out = supplystream()
        .arg("--definitions")
        .arg(dir.path())
        .args(["run", "saga", "--participants", "payments"])
        // Nothing listens here: the refusal must come before any connection.
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--registry",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("writes shipping.replies, which belongs to shipping"),
        "{stderr}"
    );
    assert!(stderr.contains("pipeline payments of payments"), "{stderr}");
}

#[test]
fn services_prints_the_ownership_map_as_text_and_dot() {
    let text = supplystream().arg("services").output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("payments  Charges and refunds"), "{text}");
    assert!(
        text.contains("owns   payments.replies, payments.changelog, payments.dlq"),
        "{text}"
    );
    let dot = supplystream()
        .args(["services", "--format", "dot"])
        .output()
        .unwrap();
    assert!(dot.status.success());
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.starts_with("digraph supplystream {"), "{dot}");
    assert!(dot.contains("subgraph \"cluster_orders\""), "{dot}");
}
