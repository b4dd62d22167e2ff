//! The local file system as DataFusion sees it, with every listed file pinned open.
//!
//! Views are replaced by renaming a new file over the old one, so a reader that opens a file
//! once sees the old table or the new one, whole. DataFusion does not open a file once: it
//! lists the directory (taking each file's size), then reads the footer at `size - 8` and
//! the pages at the offsets the footer gives, each read opening the path again. A file
//! replaced between the listing and a read is read at the old file's offsets in the new
//! file: "Invalid Parquet file. Corrupt footer", or worse, pages of one file decoded with the
//! footer of the other. Measured: 11 of 300 queries failed while a view was rewritten in a
//! loop (`query::tests::queries_see_a_replaced_view_whole`), and the demo failed once in 17
//! runs.
//!
//! [`PinnedFs`] closes that window: `list` opens each Parquet file it lists and keeps the
//! open file, with the size of what it opened; every read of that path reads that open file
//! (`pread`), so a query reads each file as it was when it was listed, whatever is renamed
//! over it meanwhile. The first listing of a path wins for the engine's life: DataFusion
//! lists a table once per engine anyway (at registration, then from its listing cache), and
//! a second listing must not swap a file under a scan that planned with the first. A file
//! that vanishes between a listing and its opening (a compaction's deletes) makes it list
//! again rather than skip it, which could leave out rows. Writes and everything else go to
//! the [`LocalFileSystem`] underneath.
//!
//! It also leaves out of a listing the audit trail's parts that a merged part beside them
//! covers ([`is_covered`](crate::audit::is_covered)): between a compaction's merge and its
//! deletes, a plain listing would show those rows twice.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    self, Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

const STORE: &str = "PinnedFs";
/// Listings of one directory before giving up on it changing under each.
const LISTINGS: usize = 5;

/// One listed file, held open.
#[derive(Debug, Clone)]
struct Pin {
    file: Arc<File>,
    meta: ObjectMeta,
}

/// See the [module](self) documentation.
#[derive(Debug, Default)]
pub struct PinnedFs {
    fs: LocalFileSystem,
    pins: Arc<Mutex<HashMap<Path, Pin>>>,
}

impl fmt::Display for PinnedFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE}({})", self.fs)
    }
}

fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(source),
    }
}

/// The error when every one of [`LISTINGS`] listings of `prefix` lost a file under it.
fn kept_vanishing(prefix: Option<&Path>) -> object_store::Error {
    generic(std::io::Error::other(format!(
        "files kept vanishing under {LISTINGS} listings of {prefix:?}"
    )))
}

impl PinnedFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the Parquet file `meta` names and pins it, unless it is pinned already (the
    /// first listing wins for the engine's life, as DataFusion's listing cache does); `None`
    /// if it is gone (deleted since listed). Other files are listed as they are, unpinned.
    fn pin(
        fs: &LocalFileSystem,
        pins: &Mutex<HashMap<Path, Pin>>,
        meta: ObjectMeta,
    ) -> object_store::Result<Option<ObjectMeta>> {
        if !meta.location.as_ref().ends_with(".parquet") {
            return Ok(Some(meta));
        }
        if let Some(pin) = pins
            .lock()
            .expect("pins are never poisoned")
            .get(&meta.location)
        {
            return Ok(Some(pin.meta.clone()));
        }
        let path = fs.path_to_filesystem(&meta.location)?;
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(generic(e)),
        };
        let stat = file.metadata().map_err(generic)?;
        let meta = ObjectMeta {
            size: stat.len(),
            last_modified: stat.modified().map_err(generic)?.into(),
            // What the listing saw may be another file: no tag that could be matched to it.
            e_tag: None,
            version: None,
            location: meta.location,
        };
        let pin = Pin {
            file: Arc::new(file),
            meta: meta.clone(),
        };
        let mut pins = pins.lock().expect("pins are never poisoned");
        Ok(Some(
            pins.entry(meta.location.clone())
                .or_insert(pin)
                .meta
                .clone(),
        ))
    }

    /// Pins the files of one listing, leaving out the audit trail's parts that a merged part
    /// beside them covers (left by a compaction between its merge and its deletes). `None`
    /// if a listed file is gone: the directory changed under the listing (a compaction's
    /// deletes), and skipping the file could leave out rows its merged part holds; list again.
    fn pin_all(
        fs: &LocalFileSystem,
        pins: &Mutex<HashMap<Path, Pin>>,
        listed: Vec<ObjectMeta>,
    ) -> object_store::Result<Option<Vec<ObjectMeta>>> {
        fn split(m: &ObjectMeta) -> (&str, &str) {
            let path: &str = m.location.as_ref();
            path.rsplit_once('/').unwrap_or(("", path))
        }
        let mut names: HashMap<&str, Vec<&str>> = HashMap::new();
        for (dir, name) in listed.iter().map(split) {
            names.entry(dir).or_default().push(name);
        }
        let covered: Vec<bool> = listed
            .iter()
            .map(|m| {
                let (dir, name) = split(m);
                crate::audit::is_covered(name, &names[dir])
            })
            .collect();
        let mut pinned = Vec::with_capacity(listed.len());
        for (meta, covered) in listed.into_iter().zip(covered) {
            if covered {
                continue;
            }
            match Self::pin(fs, pins, meta)? {
                Some(meta) => pinned.push(meta),
                None => return Ok(None),
            }
        }
        Ok(Some(pinned))
    }

    /// Lists `prefix` and pins what it lists, listing again while files vanish under it.
    async fn list_pinned(
        fs: &LocalFileSystem,
        pins: &Mutex<HashMap<Path, Pin>>,
        prefix: Option<&Path>,
    ) -> object_store::Result<Vec<ObjectMeta>> {
        for _ in 0..LISTINGS {
            let listed = fs.list(prefix).try_collect::<Vec<_>>().await?;
            if let Some(pinned) = Self::pin_all(fs, pins, listed)? {
                return Ok(pinned);
            }
        }
        Err(kept_vanishing(prefix))
    }

    fn pinned(&self, location: &Path) -> Option<Pin> {
        self.pins
            .lock()
            .expect("pins are never poisoned")
            .get(location)
            .cloned()
    }
}

#[async_trait]
impl ObjectStore for PinnedFs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.fs.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.fs.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let Some(pin) = self.pinned(location) else {
            return self.fs.get_opts(location, options).await;
        };
        let size = pin.meta.size;
        let range: Range<u64> = match &options.range {
            Some(r) => r.as_range(size).map_err(generic)?,
            None => 0..size,
        };
        let bytes = if options.head {
            Bytes::new()
        } else {
            let file = pin.file.clone();
            let len = usize::try_from(range.end - range.start).map_err(generic)?;
            let start = range.start;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, start)
                    .map(|()| Bytes::from(buf))
            })
            .await
            .map_err(generic)?
            .map_err(generic)?
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta: pin.meta,
            range,
            attributes: Attributes::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.fs.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (fs, pins, prefix) = (self.fs.clone(), self.pins.clone(), prefix.cloned());
        futures::stream::once(async move { Self::list_pinned(&fs, &pins, prefix.as_ref()).await })
            .map(|pinned| match pinned {
                Ok(metas) => metas.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            })
            .flat_map(futures::stream::iter)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        for _ in 0..LISTINGS {
            let mut listed = self.fs.list_with_delimiter(prefix).await?;
            if let Some(pinned) = Self::pin_all(&self.fs, &self.pins, listed.objects)? {
                listed.objects = pinned;
                return Ok(listed);
            }
        }
        Err(kept_vanishing(prefix))
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.fs.copy_opts(from, to, options).await
    }
}
