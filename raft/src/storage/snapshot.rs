//! The snapshot file: the whole key space at one applied log position.
//!
//! Layout: `BERTHSNP`, a u32 format version, a length-prefixed header
//! (snapshot metadata and store revision), records of length-prefixed key
//! and stored value, an end marker with the record count, and a CRC-32 of
//! everything before it. A file is written under a temporary name and
//! renamed when complete, and read back only after its CRC checks out.

use std::fs;
use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::codec::io_error;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"BERTHSNP";
const FORMAT_VERSION: u32 = 1;
const END_MARKER: u32 = u32::MAX;
/// Snapshot files kept besides the newest, so that a transfer that opened
/// an older one can finish.
const KEEP_OLD: usize = 1;

/// One key and its stored value, as read from RocksDB.
pub type Record = io::Result<(Box<[u8]>, Box<[u8]>)>;

/// A snapshot on disk, as openraft hands it between the state machine and
/// the network.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Header {
    pub meta: SnapshotMeta,
    pub revision: u64,
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

pub fn file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("{:020}-{}.snap", id.index(), id.committed_leader_id()),
        None => "00000000000000000000-none.snap".to_string(),
    }
}

/// Writes a snapshot of `records` into `dir` and returns its path.
pub fn write<I>(dir: &Path, header: &Header, records: I) -> io::Result<PathBuf>
where
    I: IntoIterator<Item = Record>,
{
    let final_path = dir.join(file_name(&header.meta));
    let tmp_path = dir.join(format!("{}.tmp", file_name(&header.meta)));
    let file = File::create(&tmp_path)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    write_chunk(&mut w, &codec::encode(header))?;
    let mut count: u64 = 0;
    for record in records {
        let (key, value) = record?;
        write_chunk(&mut w, &key)?;
        write_chunk(&mut w, &value)?;
        count += 1;
    }
    w.write_all(&END_MARKER.to_le_bytes())?;
    w.write_all(&count.to_le_bytes())?;
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp_path, &final_path)?;
    sync_dir(dir)?;
    Ok(final_path)
}

fn write_chunk(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(io_error)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a snapshot file, handing each record to `on_record`; the caller
/// must discard what it did with the records if this returns an error.
pub fn read(path: &Path, mut on_record: impl FnMut(&[u8], &[u8])) -> io::Result<Header> {
    let file = File::open(path)?;
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let header = read_header(&mut r)?;
    let mut count: u64 = 0;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let len = read_u32(&mut r)?;
        if len == END_MARKER {
            break;
        }
        read_exact_vec(&mut r, len, &mut key)?;
        let vlen = read_u32(&mut r)?;
        read_exact_vec(&mut r, vlen, &mut value)?;
        on_record(&key, &value);
        count += 1;
    }
    let mut buf8 = [0u8; 8];
    r.read_exact(&mut buf8)?;
    let expected_count = u64::from_le_bytes(buf8);
    let crc = r.crc.clone().finalize();
    let mut buf4 = [0u8; 4];
    r.inner.read_exact(&mut buf4)?;
    if u32::from_le_bytes(buf4) != crc || expected_count != count {
        return Err(corrupt(path, "checksum or record count mismatch"));
    }
    Ok(header)
}

/// Reads only the header, to describe a snapshot without loading it.
pub fn read_meta(path: &Path) -> io::Result<Header> {
    let file = File::open(path)?;
    let mut r = BufReader::new(file);
    read_header(&mut r)
}

fn read_header(r: &mut impl Read) -> io::Result<Header> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io_error("not a Berth snapshot file"));
    }
    let version = read_u32(r)?;
    if version != FORMAT_VERSION {
        return Err(io_error(format!(
            "snapshot format {version} is not supported (this build reads {FORMAT_VERSION})"
        )));
    }
    let len = read_u32(r)?;
    let mut buf = Vec::new();
    read_exact_vec(r, len, &mut buf)?;
    codec::decode("snapshot header", &buf).map_err(io_error)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

fn read_exact_vec(r: &mut impl Read, len: u32, buf: &mut Vec<u8>) -> io::Result<()> {
    // Keys and values are bounded by the store's limits; a larger length
    // means a damaged file, not a reason to allocate gigabytes.
    if len as usize > 64 << 20 {
        return Err(io_error("snapshot record length is implausible"));
    }
    buf.resize(len as usize, 0);
    r.read_exact(buf)
}

fn corrupt(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {} is damaged: {what}", path.display()),
    )
}

/// The newest complete snapshot file in `dir`.
pub fn latest(dir: &Path) -> io::Result<Option<PathBuf>> {
    Ok(list(dir)?.pop())
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    files.sort();
    Ok(files)
}

/// Removes all but the newest snapshots and any leftover partial files.
pub fn prune(dir: &Path) -> io::Result<()> {
    let files = list(dir)?;
    let keep_from = files.len().saturating_sub(KEEP_OLD + 1);
    for old in &files[..keep_from] {
        fs::remove_file(old)?;
    }
    Ok(())
}

/// Removes temporary files a crash may have left behind.
pub fn remove_partials(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp" || e == "part") {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            meta: SnapshotMeta::default(),
            revision: 42,
        }
    }

    #[test]
    fn round_trips_records() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = (0..100u32)
            .map(|i| Ok((i.to_be_bytes().into(), vec![i as u8; 10].into())))
            .collect();
        let path = write(dir.path(), &header(), records).unwrap();
        let mut seen = Vec::new();
        let h = read(&path, |k, v| seen.push((k.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(h.revision, 42);
        assert_eq!(seen.len(), 100);
        assert_eq!(seen[7].1, vec![7u8; 10]);
        assert_eq!(latest(dir.path()).unwrap(), Some(path));
    }

    #[test]
    fn refuses_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![Ok((b"k".to_vec().into(), b"v".to_vec().into()))];
        let path = write(dir.path(), &header(), records).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(read(&path, |_, _| {}).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 64,
            failure_persistence: None,
            ..Default::default()
        })]

        /// A snapshot as it arrives (chunks of a file another controller
        /// sent) cut short or with any byte changed is refused whole,
        /// never half-read into the store and never a panic.
        #[test]
        fn any_damage_to_a_snapshot_is_refused(
            records in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 1..16),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
                0..20,
            ),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
            cut in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let items = records
                .iter()
                .map(|(k, v)| Ok((k.clone().into_boxed_slice(), v.clone().into_boxed_slice())));
            let path = write(dir.path(), &header(), items).unwrap();
            let mut bytes = fs::read(&path).unwrap();
            let i = at.index(bytes.len());
            if cut {
                bytes.truncate(i);
            } else {
                bytes[i] ^= flip;
            }
            fs::write(&path, &bytes).unwrap();
            let refused = read(&path, |_, _| {}).is_err();
            proptest::prop_assert!(refused);
        }

        /// Any bytes at all, as a snapshot file.
        #[test]
        fn any_file_is_a_snapshot_or_an_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            magic in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snap");
            let mut file = Vec::new();
            if magic {
                file.extend_from_slice(MAGIC);
                file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            }
            file.extend_from_slice(&bytes);
            fs::write(&path, &file).unwrap();
            let refused = read(&path, |_, _| {}).is_err();
            proptest::prop_assert!(refused);
            let _ = read_meta(&path);
        }
    }
}
