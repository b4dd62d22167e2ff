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
//! `supplystream services` prints the map (text, or `--format dot` for Graphviz).

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
    /// The map of the code: the service registry ([`crate::registry::SERVICES`]).
    pub fn from_registry() -> Self {
        let services = crate::registry::SERVICES
            .iter()
            .map(|s| ServiceDef {
                service: s.name.to_owned(),
                description: s.description.to_owned(),
                owns: s.topics.iter().map(|t| t.name.to_owned()).collect(),
                external_events: s
                    .topics
                    .iter()
                    .filter(|t| t.kind == crate::registry::Kind::External)
                    .map(|t| t.name.to_owned())
                    .collect(),
                views: s.views().map(str::to_owned).collect(),
                pipelines: s
                    .pipelines
                    .iter()
                    .map(|p| PipelineDef {
                        name: p.name.to_owned(),
                        reads: p.reads.iter().map(|t| (*t).to_owned()).collect(),
                        writes: p.writes().map(str::to_owned).collect(),
                        views: p.views.iter().map(|v| (*v).to_owned()).collect(),
                    })
                    .collect(),
                source: "the service registry".to_owned(),
            })
            .collect();
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

    /// An operator's definitions in `dir` if given (checked as a whole, and against the
    /// code by [`OwnershipMap::enforce`]), else the registry's.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        match dir {
            Some(d) => Self::load_dir(d),
            None => {
                let map = Self::from_registry();
                let problems = map.problems();
                if !problems.is_empty() {
                    bail!(
                        "the service registry breaks database-per-service:\n  {}",
                        problems.join("\n  ")
                    );
                }
                Ok(map)
            }
        }
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
        let map = OwnershipMap { services };
        let problems = map.problems();
        if !problems.is_empty() {
            bail!(
                "the pipeline definitions break database-per-service:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(map)
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

    /// Checks every pipeline in `names` (all the code's when empty) against the map.
    pub fn enforce(&self, names: &[&str]) -> anyhow::Result<()> {
        for code in code_pipelines() {
            if names.is_empty() || names.contains(&code.name) {
                self.check(&code)?;
            }
        }
        Ok(())
    }

    /// The map as text: per service, what it owns, claims and runs, and where each stateful
    /// pipeline (one that writes a changelog) keeps its local state under `state_dir`
    /// (see [`crate::state`]).
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

/// Every pipeline the code can run, with the topics it actually uses: the registry's.
pub fn code_pipelines() -> Vec<CodePipeline> {
    crate::registry::pipelines()
        .map(|(s, p)| CodePipeline {
            name: p.name,
            service: s.name,
            reads: p.reads.to_vec(),
            writes: p.writes().collect(),
            views: p.views.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry as definition files, as an operator would start their own.
    fn bundled_sources() -> Vec<(String, String)> {
        OwnershipMap::from_registry().to_toml()
    }

    /// The registry's definitions with `from` replaced by `to` in `file` (which must change).
    fn edited(file: &str, from: &str, to: &str) -> Vec<(String, String)> {
        let mut sources = bundled_sources();
        let (_, text) = sources.iter_mut().find(|(n, _)| n == file).unwrap();
        let changed = text.replacen(from, to, 1);
        assert_ne!(*text, changed, "{from:?} is not in {file}");
        *text = changed;
        sources
    }

    #[test]
    fn the_bundled_definitions_hold_and_declare_every_pipeline_of_the_code() {
        let map = OwnershipMap::load(None).unwrap();
        map.enforce(&[]).unwrap();
        assert_eq!(map.owner_of("orders.events"), Some("orders"));
    }

    #[test]
    fn the_registrys_definition_files_read_back_as_the_registry() {
        let read = OwnershipMap::parse(bundled_sources()).unwrap();
        let registry = OwnershipMap::from_registry();
        assert_eq!(read.services().len(), registry.services().len());
        for (a, b) in read.services().iter().zip(registry.services()) {
            assert_eq!(
                ServiceDef {
                    source: String::new(),
                    ..a.clone()
                },
                ServiceDef {
                    source: String::new(),
                    ..b.clone()
                }
            );
        }
        read.enforce(&[]).unwrap();
    }

    #[test]
    fn a_pipeline_writing_another_services_topic_is_refused_naming_both() {
        let sources = edited(
            "payments.toml",
            r#"writes = ["payments.replies""#,
            r#"writes = ["orders.events", "payments.replies""#,
        );
        let err = OwnershipMap::parse(sources).unwrap_err().to_string();
        assert!(
            err.contains(
                "pipeline payments of payments (payments.toml) writes orders.events, which belongs to orders (orders.toml)"
            ),
            "{err}"
        );
    }

    #[test]
    fn external_events_are_written_by_no_pipeline_and_owned_by_their_service() {
        let map = OwnershipMap::load(None).unwrap();
        assert_eq!(
            map.external_events().collect::<Vec<_>>(),
            [("shipping.tracking", "shipping")]
        );
        // Its view folds it directly: a token on it waits for no consumer group.
        assert!(map.viewed_directly("shipping.tracking"));
        assert_eq!(map.consumer_of("shipping.tracking"), None);
        assert_eq!(map.consumer_of("catalog.commands"), Some("catalog"));

        let sources = edited(
            "shipping.toml",
            r#"writes = ["shipping.replies", "shipping.changelog", "shipping.dlq"]"#,
            r#"writes = ["shipping.replies", "shipping.changelog", "shipping.dlq", "shipping.tracking"]"#,
        );
        let err = OwnershipMap::parse(sources).unwrap_err().to_string();
        assert!(
            err.contains(
                "pipeline shipping of shipping (shipping.toml) writes shipping.tracking, which shipping (shipping.toml) declares external events: only outside producers write it"
            ),
            "{err}"
        );

        let mut sources = bundled_sources();
        sources.push((
            "rogue.toml".into(),
            "service = \"rogue\"\nowns = []\nexternal_events = [\"orders.events\"]\n".into(),
        ));
        let err = OwnershipMap::parse(sources).unwrap_err().to_string();
        assert!(
            err.contains(
                "service rogue (rogue.toml) declares external events on orders.events, which it does not own"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_topic_or_view_claimed_twice_is_refused_naming_both() {
        let mut sources = bundled_sources();
        sources.push((
            "rogue.toml".into(),
            r#"
service = "rogue"
owns = ["shipping.replies"]
views = ["stock_levels"]
"#
            .into(),
        ));
        let err = OwnershipMap::parse(sources).unwrap_err().to_string();
        assert!(
            err.contains(
                "topic shipping.replies is claimed by both shipping (shipping.toml) and rogue (rogue.toml)"
            ),
            "{err}"
        );
        assert!(
            err.contains(
                "view stock_levels is claimed by both inventory (inventory.toml) and rogue (rogue.toml)"
            ),
            "{err}"
        );
    }

    #[test]
    fn code_that_writes_an_undeclared_topic_does_not_start() {
        let sources = edited(
            "shipping.toml",
            r#"writes = ["shipping.replies", "shipping.changelog", "shipping.dlq"]"#,
            r#"writes = ["shipping.changelog", "shipping.dlq"]"#,
        );
        let map = OwnershipMap::parse(sources).unwrap();
        let err = map.enforce(&["shipping"]).unwrap_err().to_string();
        assert!(
            err.contains("it writes shipping.replies (owned by shipping), which its definition does not declare"),
            "{err}"
        );
        map.enforce(&["payments"]).unwrap();
    }

    #[test]
    fn a_definition_that_claims_more_than_the_code_does_is_refused() {
        let sources = edited(
            "compliance.toml",
            "reads = [",
            r#"reads = ["billing.changelog", "#,
        );
        let map = OwnershipMap::parse(sources).unwrap();
        let err = map.enforce(&["compliance"]).unwrap_err().to_string();
        assert!(
            err.contains("declares it reads billing.changelog, which the code does not read"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_not_ignored() {
        let err = OwnershipMap::parse([(
            "x.toml".to_owned(),
            "service = \"x\"\nowns = []\nown = [\"y\"]\n".to_owned(),
        )])
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `own`"),
            "{err:#}"
        );
    }

    /// The stateful pipelines are the ones that open a state directory: the inventory service
    /// and the saga participants (the demo's `data/demo/state/*/*`).
    #[test]
    fn the_text_map_names_each_stateful_pipelines_directory() {
        let text = OwnershipMap::load(None)
            .unwrap()
            .render_text(Path::new("/s"));
        let mut dirs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("state   "))
            .collect();
        dirs.sort();
        assert_eq!(
            dirs,
            [
                "/s/billing/billing/",
                "/s/catalog/catalog/",
                "/s/inventory/inventory-receiving/",
                "/s/inventory/inventory-restocking/",
                "/s/inventory/inventory-saga/",
                "/s/inventory/inventory/",
                "/s/notifications/notifications/",
                "/s/orders/orders/",
                "/s/payments/payments/",
                "/s/returns/returns-deliveries/",
                "/s/returns/returns/",
                "/s/shipping/shipping/",
                "/s/suppliers/suppliers/",
            ]
        );
    }

    #[test]
    fn the_dot_picture_has_every_topic_and_edge() {
        let dot = OwnershipMap::load(None).unwrap().render_dot();
        assert!(dot.starts_with("digraph supplystream {"));
        assert!(dot.contains("\"payments\" -> \"payments.replies\";"));
        assert!(dot.contains("\"orders.events\" -> \"shipping\";"));
    }
}
