//! Database per service, enforced: the pipeline definitions' model and parsing are
//! [`formats::definitions`] (re-exported here); this adds the map of the code (the service
//! registry, [`crate::registry::SERVICES`]) and the check of what is about to run against a
//! map ([`Registered::enforce`]).

use std::path::Path;

pub use formats::definitions::*;

/// The ownership map as the code knows it.
pub trait Registered: Sized {
    /// The map of the code: the service registry ([`crate::registry::SERVICES`]).
    fn from_registry() -> Self;
    /// An operator's definitions in `dir` if given (checked as a whole, and against the
    /// code by [`Registered::enforce`]), else the registry's.
    fn load(dir: Option<&Path>) -> anyhow::Result<Self>;
    /// Checks every pipeline in `names` (all the code's when empty) against the map.
    fn enforce(&self, names: &[&str]) -> anyhow::Result<()>;
}

impl Registered for OwnershipMap {
    /// The map of the code: the service registry ([`crate::registry::SERVICES`]).
    fn from_registry() -> Self {
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
        OwnershipMap::new(services)
    }

    /// An operator's definitions in `dir` if given (checked as a whole, and against the
    /// code by [`OwnershipMap::enforce`]), else the registry's.
    fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        match dir {
            Some(d) => OwnershipMap::load_dir(d),
            None => Self::from_registry().checked("the service registry"),
        }
    }

    /// Checks every pipeline in `names` (all the code's when empty) against the map.
    fn enforce(&self, names: &[&str]) -> anyhow::Result<()> {
        for code in code_pipelines() {
            if names.is_empty() || names.contains(&code.name) {
                self.check(&code)?;
            }
        }
        Ok(())
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
