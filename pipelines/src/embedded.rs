//! The zero-install mode: librdkafka's in-process mock cluster plus the in-process schema
//! registry. Same clients, same wire format, same code paths as a real deployment; what
//! differs is the guarantee: the mock accepts transactions but does not isolate aborted
//! records, so services run at-least-once here (see [`crate::Guarantee`]).

// The mock cluster's rebalance-delay knob is only reachable through the C API; this module is
// the one place that calls it.
#![allow(unsafe_code)]

use std::ffi::CStr;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka_sys as rdsys;
use schemas::registry::embedded::EmbeddedRegistry;

use crate::{Cluster, Guarantee};

/// A running mock Kafka cluster. Stops when dropped.
pub struct MockBroker {
    // Owns the handle the mock cluster lives in; must outlive `cluster`.
    _host: BaseProducer,
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    bootstrap: String,
}

// SAFETY: the mock cluster runs its own thread; the handle is only used in `new` and `drop`.
unsafe impl Send for MockBroker {}
unsafe impl Sync for MockBroker {}

impl MockBroker {
    /// Starts a one-broker mock cluster whose groups rebalance without the default 3 s delay.
    pub fn start() -> anyhow::Result<Self> {
        let host: BaseProducer = ClientConfig::new().set("log_level", "3").create()?;
        // SAFETY: `host` is a valid client for the lifetime of the cluster (field order below).
        let cluster = unsafe { rdsys::rd_kafka_mock_cluster_new(host.client().native_ptr(), 1) };
        anyhow::ensure!(
            !cluster.is_null(),
            "librdkafka could not create a mock cluster"
        );
        // SAFETY: `cluster` is non-null and owned by us until drop.
        let bootstrap = unsafe {
            rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster))
                .to_string_lossy()
                .into_owned()
        };
        Ok(MockBroker {
            _host: host,
            cluster,
            bootstrap,
        })
    }

    /// Creates a topic (the mock does not implement the CreateTopics admin API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let topic = std::ffi::CString::new(name)?;
        // SAFETY: `cluster` is live; librdkafka copies the name.
        let err = unsafe {
            rdsys::rd_kafka_mock_topic_create(self.cluster, topic.as_ptr(), partitions, 1)
        };
        anyhow::ensure!(
            err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "mock cluster could not create topic {name}: {err:?}"
        );
        Ok(())
    }

    /// Bootstrap servers of the mock cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        // SAFETY: created in `start`, destroyed once, before `_host` is dropped.
        unsafe { rdsys::rd_kafka_mock_cluster_destroy(self.cluster) };
    }
}

/// Broker and registry of the embedded mode.
pub struct Embedded {
    pub broker: MockBroker,
    pub registry: EmbeddedRegistry,
}

impl Embedded {
    /// Starts both.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Embedded {
            broker: MockBroker::start()?,
            registry: EmbeddedRegistry::start().await?,
        })
    }

    /// Creates the topics of `specs` on the mock broker.
    pub fn create_topics(&self, specs: &[crate::kafka::TopicSpec]) -> anyhow::Result<()> {
        specs
            .iter()
            .try_for_each(|s| self.broker.create_topic(s.name, s.partitions))
    }

    /// How clients reach it.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            brokers: self.broker.bootstrap_servers().to_owned(),
            registry: self.registry.url().to_owned(),
            guarantee: Guarantee::AtLeastOnce,
            kafka: Vec::new(),
        }
    }
}
