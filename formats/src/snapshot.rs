//! The local snapshot file of one changelog partition (`pipelines::state` keeps them in each
//! service's state directory): its format, written atomically and read back whole or not at
//! all. Free of Kafka, so the fuzz targets reach the reader.
//!
//! Layout (little-endian): the magic `SSSNAP02`; cluster id and topic (each a u32 length and
//! bytes); partition (i32); position, written_at (i64); a record count (u64); per record its
//! key and payload (length-prefixed) and timestamp (i64); then a SHA-256 of all that.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// What a snapshot file starts with: format 02 keeps each record's timestamp.
const MAGIC: &[u8; 8] = b"SSSNAP02";
/// An older format's: refused (a full restore from the changelog), with a clear reason.
const MAGIC_01: &[u8; 8] = b"SSSNAP01";

/// A changelog record as the cache keeps it: its payload and its timestamp (ms since the
/// epoch; the record's Kafka timestamp, or when this instance wrote it). Like Kafka
/// Streams' timestamped stores, it lets a processor tell how long ago a key last changed,
/// across restores (e.g. to evict ended sagas after a retention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub payload: Vec<u8>,
    pub at: i64,
}

/// One partition's snapshot: the latest payload per key, known up to `position`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub cluster_id: String,
    pub topic: String,
    pub partition: i32,
    /// The changelog offset the records are complete up to (exclusive).
    pub position: i64,
    /// When it was written (ms since the epoch).
    pub written_at: i64,
    pub records: HashMap<Vec<u8>, Kept>,
}

fn put(w: &mut Vec<u8>, bytes: &[u8]) {
    w.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    w.extend_from_slice(bytes);
}

/// Appends the SHA-256 of `body` to it, as a snapshot file ends.
pub fn seal(body: &mut Vec<u8>) {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    body.extend_from_slice(digest.as_ref());
}

/// The next length-prefixed field of `r`. A length past what is left is refused before
/// anything is allocated: the checksum only catches damage, and a crafted file (which can
/// carry a right checksum) claimed up to 4 GiB per field.
fn take(r: &mut &[u8]) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > r.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a field claims {len} bytes, {} are left", r.len()),
        ));
    }
    let (field, rest) = r.split_at(len);
    *r = rest;
    Ok(field.to_vec())
}

impl Snapshot {
    /// Writes it to `path` atomically (temporary file, fsync, rename), with a SHA-256 of
    /// its contents at the end: a damaged snapshot is refused whole (a full restore), never
    /// decoded half-right.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = self.to_bytes();
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(())
    }

    /// The file's bytes: the body, then its SHA-256.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(
            96 + self
                .records
                .iter()
                .map(|(k, v)| 16 + k.len() + v.payload.len())
                .sum::<usize>(),
        );
        body.extend_from_slice(MAGIC);
        put(&mut body, self.cluster_id.as_bytes());
        put(&mut body, self.topic.as_bytes());
        body.extend_from_slice(&self.partition.to_le_bytes());
        body.extend_from_slice(&self.position.to_le_bytes());
        body.extend_from_slice(&self.written_at.to_le_bytes());
        body.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        for (k, v) in &self.records {
            put(&mut body, k);
            put(&mut body, &v.payload);
            body.extend_from_slice(&v.at.to_le_bytes());
        }
        seal(&mut body);
        body
    }

    /// Reads the snapshot at `path` (`None`: there is none).
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut bytes = Vec::new();
        BufReader::new(file).read_to_end(&mut bytes)?;
        Self::from_bytes(&bytes, &path.display().to_string()).map(Some)
    }

    /// Reads a snapshot from its bytes, `name` being what errors call it: refused whole
    /// unless its checksum, layout and every length in it hold.
    pub fn from_bytes(bytes: &[u8], name: &str) -> anyhow::Result<Self> {
        let Some(body_len) = bytes.len().checked_sub(32) else {
            bail!("{} is too short to be a snapshot", name);
        };
        let (body, digest) = bytes.split_at(body_len);
        if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != digest {
            bail!("{} is damaged (its checksum does not match)", name);
        }
        let mut r = body;
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic == MAGIC_01 {
            bail!(
                "{} is of an older format (01, without record timestamps)",
                name
            );
        }
        if &magic != MAGIC {
            bail!("{} is not a supplystream snapshot", name);
        }
        let text = |b: Vec<u8>| String::from_utf8(b).context("not UTF-8");
        let cluster_id = text(take(&mut r)?)?;
        let topic = text(take(&mut r)?)?;
        let mut i4 = [0u8; 4];
        let mut i8 = [0u8; 8];
        r.read_exact(&mut i4)?;
        let partition = i32::from_le_bytes(i4);
        r.read_exact(&mut i8)?;
        let position = i64::from_le_bytes(i8);
        r.read_exact(&mut i8)?;
        let written_at = i64::from_le_bytes(i8);
        r.read_exact(&mut i8)?;
        let n = u64::from_le_bytes(i8);
        // Each record takes at least 16 bytes: a count past that is a crafted file.
        if n > (r.len() / 16) as u64 {
            bail!("{} claims {n} records in {} bytes", name, r.len());
        }
        let mut records = HashMap::with_capacity(n as usize);
        for _ in 0..n {
            let k = take(&mut r)?;
            let payload = take(&mut r)?;
            r.read_exact(&mut i8)?;
            records.insert(
                k,
                Kept {
                    payload,
                    at: i64::from_le_bytes(i8),
                },
            );
        }
        let mut rest = [0u8; 1];
        if r.read(&mut rest)? != 0 {
            bail!("{} has trailing bytes", name);
        }
        Ok(Snapshot {
            cluster_id,
            topic,
            partition,
            position,
            written_at,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            cluster_id: "c1".into(),
            topic: "orders.changelog".into(),
            partition: 2,
            position: 40,
            written_at: 1_000,
            records: HashMap::from([
                (
                    b"O-1".to_vec(),
                    Kept {
                        payload: vec![0, 0, 0, 0, 7, 1, 2],
                        at: 900,
                    },
                ),
                (b"O-2".to_vec(), Kept::default()),
            ]),
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.changelog-2.snapshot");
        assert_eq!(Snapshot::read(&path).unwrap(), None);
        snapshot().write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), Some(snapshot()));
        // Cut short (a crash mid-write cannot do this: the rename is atomic; a disk can).
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(Snapshot::read(&path).is_err());
        std::fs::write(&path, b"not a snapshot at all").unwrap();
        assert!(Snapshot::read(&path).is_err());
        // One flipped bit in a payload: the checksum refuses it (it would parse).
        snapshot().write(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 40;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Snapshot::read(&path).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn a_crafted_snapshot_with_a_right_checksum_allocates_nothing_it_claims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crafted.snapshot");
        let seal = |body: &[u8]| {
            let digest = ring::digest::digest(&ring::digest::SHA256, body);
            std::fs::write(&path, [body, digest.as_ref()].concat()).unwrap();
        };
        // A cluster id that claims 4 GiB: refused by its length, before any allocation.
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        seal(&body);
        let err = format!("{:#}", Snapshot::read(&path).unwrap_err());
        assert!(err.contains("claims 4294967295 bytes"), "{err}");
        // A record count of u64::MAX over no records.
        let mut body = MAGIC.to_vec();
        for text in ["cluster", "topic"] {
            put(&mut body, text.as_bytes());
        }
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        seal(&body);
        let err = format!("{:#}", Snapshot::read(&path).unwrap_err());
        assert!(err.contains("claims 18446744073709551615 records"), "{err}");
        // A snapshot of the format before record timestamps: refused by name.
        let mut body = MAGIC_01.to_vec();
        put(&mut body, b"cluster");
        seal(&body);
        let err = format!("{:#}", Snapshot::read(&path).unwrap_err());
        assert!(err.contains("older format (01"), "{err}");
    }
}
