//! Database per service, enforced. The pipeline definitions (`pipelines/definitions/*.toml`,
//! one file per service) declare the topics each service owns, the views it claims and, per
//! pipeline, what it reads and writes. They are checked twice at start-up:
//!
//! 1. as a whole: a topic or a view claimed by two services, or a pipeline that writes a
//!    topic its service does not own, is refused with an error naming both sides;
//! 2. against the code about to run: a processor that would read or write a topic its
//!    definition does not declare, or whose definition declares what it does not do, is
//!    refused before it touches anything: the map is the code's, exactly.
//!
//! `supplystream services` prints the map (text, or `--format dot` for Graphviz). The map
//! of the code itself (the service registry) and the check against it live in
//! `pipelines::ownership`; this is the model and its parsing, free of Kafka, so the fuzz
//! targets reach it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One service's definition file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub service: String,
    #[serde(default)]
    pub description: String,
    /// Topics only this service writes (its commands, events, replies, changelogs, DLQ).
    pub owns: Vec<String>,
    /// Topics it owns that only outside producers write (`POST /events/<topic>`), events of
    /// the world outside (a carrier's scans): no pipeline writes them, so no store of the
    /// service is a fold that an outside write could contradict.
    #[serde(default)]
    pub external_events: Vec<String>,
    /// Views (Parquet tables) only this service materializes.
    #[serde(default)]
    pub views: Vec<String>,
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineDef>,
    /// The file it came from (for errors).
    #[serde(skip)]
    pub source: String,
}

/// One processor of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDef {
    pub name: String,
    #[serde(default)]
    pub reads: Vec<String>,
    #[serde(default)]
    pub writes: Vec<String>,
    #[serde(default)]
    pub views: Vec<String>,
}

/// What a processor of the code reads and writes: what a definition must declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePipeline {
    pub name: &'static str,
    pub service: &'static str,
    pub reads: Vec<&'static str>,
    pub writes: Vec<&'static str>,
    pub views: Vec<&'static str>,
}

/// The validated ownership map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipMap {
    services: Vec<ServiceDef>,
}

impl OwnershipMap {
    /// A map of `services`, unchecked (see [`OwnershipMap::problems`]).
    pub fn new(services: Vec<ServiceDef>) -> Self {
        OwnershipMap { services }
    }

    /// The registry as definition files (`<service>.toml`), the starting point of an
    /// operator's own definitions (`--definitions DIR`; `supplystream services --format toml`).
    pub fn to_toml(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .map(|s| {
                let text = toml::to_string(s).expect("a definition serializes");
                (format!("{}.toml", s.service), text)
            })
            .collect()
    }

    /// Every `*.toml` under `dir`.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut sources = Vec::new();
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("reading pipeline definitions in {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                sources.push((path.display().to_string(), text));
            }
        }
        sources.sort();
        if sources.is_empty() {
            bail!("no pipeline definitions (*.toml) in {}", dir.display());
        }
        Self::parse(sources)
    }

    /// Parses (file name, text) pairs and validates the whole.
    pub fn parse(sources: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut services = Vec::new();
        for (source, text) in sources {
            let mut def: ServiceDef =
                toml::from_str(&text).with_context(|| format!("pipeline definition {source}"))?;
            def.source = source;
            services.push(def);
        }
        OwnershipMap { services }.checked("the pipeline definitions")
    }

    /// The map, if it holds as a whole; else an error naming `what` and every problem.
    pub fn checked(self, what: &str) -> anyhow::Result<Self> {
        let problems = self.problems();
        if !problems.is_empty() {
            bail!(
                "database-per-service is broken by {what}:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(self)
    }

    /// Everything wrong with the definitions as a whole.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut services: BTreeMap<&str, &ServiceDef> = BTreeMap::new();
        let mut topics: BTreeMap<&str, &ServiceDef> = BTreeMap::new();
        let mut views: BTreeMap<&str, &ServiceDef> = BTreeMap::new();
        let mut pipelines: BTreeMap<&str, &ServiceDef> = BTreeMap::new();
        for s in &self.services {
            if let Some(other) = services.insert(&s.service, s) {
                out.push(format!(
                    "service {} is defined twice ({} and {})",
                    s.service, other.source, s.source
                ));
            }
            for t in &s.owns {
                if let Some(other) = topics.insert(t, s)
                    && other.service != s.service
                {
                    out.push(format!(
                        "topic {t} is claimed by both {} ({}) and {} ({})",
                        other.service, other.source, s.service, s.source
                    ));
                }
            }
            for t in &s.external_events {
                if !s.owns.contains(t) {
                    out.push(format!(
                        "service {} ({}) declares external events on {t}, which it does not own",
                        s.service, s.source
                    ));
                }
            }
            for v in &s.views {
                if let Some(other) = views.insert(v, s)
                    && other.service != s.service
                {
                    out.push(format!(
                        "view {v} is claimed by both {} ({}) and {} ({})",
                        other.service, other.source, s.service, s.source
                    ));
                }
            }
            for p in &s.pipelines {
                if let Some(other) = pipelines.insert(&p.name, s) {
                    out.push(format!(
                        "pipeline {} is defined by both {} and {}",
                        p.name, other.service, s.service
                    ));
                }
            }
        }
        for s in &self.services {
            for p in &s.pipelines {
                for t in &p.writes {
                    match topics.get(t.as_str()) {
                        Some(owner) if owner.external_events.contains(t) => out.push(format!(
                            "pipeline {} of {} ({}) writes {t}, which {} ({}) declares external events: only outside producers write it",
                            p.name, s.service, s.source, owner.service, owner.source
                        )),
                        Some(owner) if owner.service == s.service => {}
                        Some(owner) => out.push(format!(
                            "pipeline {} of {} ({}) writes {t}, which belongs to {} ({}): a service writes only its own topics",
                            p.name, s.service, s.source, owner.service, owner.source
                        )),
                        None => out.push(format!(
                            "pipeline {} of {} ({}) writes {t}, which no service owns",
                            p.name, s.service, s.source
                        )),
                    }
                }
                for t in &p.reads {
                    if !topics.contains_key(t.as_str()) {
                        out.push(format!(
                            "pipeline {} of {} ({}) reads {t}, which no service owns",
                            p.name, s.service, s.source
                        ));
                    }
                }
                for v in &p.views {
                    match views.get(v.as_str()) {
                        Some(owner) if owner.service == s.service => {}
                        Some(owner) => out.push(format!(
                            "pipeline {} of {} ({}) materializes view {v}, which belongs to {} ({})",
                            p.name, s.service, s.source, owner.service, owner.source
                        )),
                        None => out.push(format!(
                            "pipeline {} of {} ({}) materializes view {v}, which {} does not claim",
                            p.name, s.service, s.source, s.service
                        )),
                    }
                }
            }
        }
        out
    }

    /// The service that owns `topic`.
    pub fn owner_of(&self, topic: &str) -> Option<&str> {
        self.services
            .iter()
            .find(|s| s.owns.iter().any(|t| t == topic))
            .map(|s| s.service.as_str())
    }

    /// The pipeline (= consumer group) of `topic`'s owner that processes it: who turns a
    /// command written there into events. Pipelines that only materialize views are not
    /// processors (their positions are in their views' checkpoints, not in a group).
    pub fn consumer_of(&self, topic: &str) -> Option<&str> {
        let owner = self
            .services
            .iter()
            .find(|s| s.owns.iter().any(|t| t == topic))?;
        owner
            .pipelines
            .iter()
            .find(|p| p.views.is_empty() && p.reads.iter().any(|t| t == topic))
            .map(|p| p.name.as_str())
    }

    /// Whether any view of `topic`'s owner folds it directly.
    pub fn viewed_directly(&self, topic: &str) -> bool {
        self.services
            .iter()
            .filter(|s| s.owns.iter().any(|t| t == topic))
            .flat_map(|s| &s.pipelines)
            .any(|p| !p.views.is_empty() && p.reads.iter().any(|t| t == topic))
    }

    /// Every topic declared as external events, with its service.
    pub fn external_events(&self) -> impl Iterator<Item = (&str, &str)> {
        self.services.iter().flat_map(|s| {
            s.external_events
                .iter()
                .map(move |t| (t.as_str(), s.service.as_str()))
        })
    }

    /// Refuses `code` unless its definition declares everything it reads, writes and
    /// materializes, under the same service.
    pub fn check(&self, code: &CodePipeline) -> anyhow::Result<()> {
        let Some((service, def)) = self.services.iter().find_map(|s| {
            s.pipelines
                .iter()
                .find(|p| p.name == code.name)
                .map(|p| (s, p))
        }) else {
            bail!(
                "no pipeline definition declares pipeline {} (of service {}): add it to {}.toml",
                code.name,
                code.service,
                code.service
            );
        };
        let mut problems = Vec::new();
        if service.service != code.service {
            problems.push(format!(
                "it is defined under service {} ({}), but the code runs it as {}",
                service.service, service.source, code.service
            ));
        }
        let undeclared = |used: &[&'static str], declared: &[String]| -> Vec<&'static str> {
            used.iter()
                .copied()
                .filter(|t| !declared.iter().any(|d| d == t))
                .collect()
        };
        for t in undeclared(&code.writes, &def.writes) {
            let owner = self.owner_of(t).unwrap_or("no service");
            problems.push(format!(
                "it writes {t} (owned by {owner}), which its definition does not declare"
            ));
        }
        for t in undeclared(&code.reads, &def.reads) {
            problems.push(format!(
                "it reads {t}, which its definition does not declare"
            ));
        }
        for v in undeclared(&code.views, &def.views) {
            problems.push(format!(
                "it materializes view {v}, which its definition does not declare"
            ));
        }
        // And the converse: a definition that claims more than the code does is a map that
        // lies (it once hid that compliance did not audit billing.events).
        let unused = |declared: &[String], used: &[&'static str]| -> Vec<String> {
            declared
                .iter()
                .filter(|d| !used.contains(&d.as_str()))
                .cloned()
                .collect()
        };
        for t in unused(&def.reads, &code.reads) {
            problems.push(format!(
                "its definition declares it reads {t}, which the code does not read"
            ));
        }
        for t in unused(&def.writes, &code.writes) {
            problems.push(format!(
                "its definition declares it writes {t}, which the code does not write"
            ));
        }
        for v in unused(&def.views, &code.views) {
            problems.push(format!(
                "its definition declares view {v}, which the code does not materialize"
            ));
        }
        if !problems.is_empty() {
            bail!(
                "pipeline {} refused ({}): {}",
                code.name,
                service.source,
                problems.join("; ")
            );
        }
        Ok(())
    }

    /// The map as text: per service, what it owns, claims and runs, and where each stateful
    /// pipeline (one that writes a changelog) keeps its local state under `state_dir`
    /// (see `pipelines::state`).
    pub fn render_text(&self, state_dir: &Path) -> String {
        let mut out = String::new();
        for s in &self.services {
            line(&mut out, format!("{}  {}", s.service, s.description));
            line(&mut out, format!("  owns   {}", list(&s.owns)));
            if !s.external_events.is_empty() {
                line(
                    &mut out,
                    format!("  external events  {}", list(&s.external_events)),
                );
            }
            line(&mut out, format!("  views  {}", list(&s.views)));
            for p in &s.pipelines {
                line(&mut out, format!("  pipeline {}", p.name));
                line(&mut out, format!("    reads   {}", list(&p.reads)));
                line(&mut out, format!("    writes  {}", list(&p.writes)));
                if !p.views.is_empty() {
                    line(&mut out, format!("    views   {}", list(&p.views)));
                }
                if p.writes.iter().any(|t| t.ends_with("changelog")) {
                    let dir = state_dir.join(&s.service).join(&p.name);
                    line(&mut out, format!("    state   {}/", dir.display()));
                }
            }
        }
        out
    }

    /// The map as a Graphviz digraph: services own topics (clusters), pipelines read and
    /// write them, views hang off the pipelines that materialize them.
    pub fn render_dot(&self) -> String {
        let mut out = String::from(
            "digraph supplystream {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n",
        );
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
        for s in &self.services {
            line(
                &mut out,
                format!("  subgraph {} {{", q(&format!("cluster_{}", s.service))),
            );
            line(&mut out, format!("    label={};", q(&s.service)));
            for t in &s.owns {
                let style = if s.external_events.contains(t) {
                    ", style=dashed"
                } else {
                    ""
                };
                line(&mut out, format!("    {} [shape=cylinder{style}];", q(t)));
            }
            for p in &s.pipelines {
                line(
                    &mut out,
                    format!("    {} [shape=box, style=rounded];", q(&p.name)),
                );
            }
            for v in &s.views {
                line(
                    &mut out,
                    format!("    {} [shape=note];", q(&format!("view {v}"))),
                );
            }
            out.push_str("  }\n");
        }
        let mut edges = BTreeSet::new();
        for s in &self.services {
            for p in &s.pipelines {
                for t in &p.reads {
                    edges.insert((q(t), q(&p.name)));
                }
                for t in &p.writes {
                    edges.insert((q(&p.name), q(t)));
                }
                for v in &p.views {
                    edges.insert((q(&p.name), q(&format!("view {v}"))));
                }
            }
        }
        for (a, b) in edges {
            line(&mut out, format!("  {a} -> {b};"));
        }
        out.push_str("}\n");
        out
    }

    pub fn services(&self) -> &[ServiceDef] {
        &self.services
    }
}

fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}
