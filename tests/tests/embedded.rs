//! The inventory scenario on the embedded broker and registry (fast tier, no installs).

use integration::scenario::{InProcess, inventory_end_to_end};
use pipelines::embedded::Embedded;
use pipelines::inventory::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_walking_skeleton_on_the_embedded_broker() -> anyhow::Result<()> {
    let embedded = Embedded::start().await?;
    let cluster = embedded.cluster();
    embedded.create_topics(&inventory::topics(3))?;
    let views = tempfile::tempdir()?;
    let mut runner = InProcess::new(
        Options::new(cluster.clone(), views.path().to_path_buf()),
        tokio::runtime::Handle::current(),
    );
    inventory_end_to_end(&cluster, views.path(), &mut runner, 1).await
}
