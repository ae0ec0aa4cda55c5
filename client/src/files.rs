//! Files, end to end: the sender reads a file twice in chunks (once to hash it, once to
//! send it) and never holds it whole; each chunk is sealed with a key made for that file
//! and travels as one message of the conversation, after a `file_start` message that
//! carries the key, the name, the size and the SHA-256. The receiver writes the chunks
//! to `HOME/downloads/NAME.part`, checks size and hash at the last one, and only then
//! gives the file its (safe, unused) name.

use crate::error::ClientError;
use fastchat_common::e2e::{open_chunk, seal_chunk, FileKey, SymmetricKey, FILE_CHUNK_BYTES};
use fastchat_common::ids::hex;
use fastchat_common::protocol::UnixMillis;
use fastchat_common::{Blob, ErrorCode};
use openssl::sha::Sha256;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Plaintext bytes per chunk this client sends: sealed, framed in binary
/// (`chunk_payload`), then sealed again in the message envelope, a chunk stays under
/// the server's message limit.
pub const CHUNK_BYTES: usize = FILE_CHUNK_BYTES;

/// The chunk size of a `file_start` that does not say: what clients sent before they
/// said it.
fn legacy_chunk_bytes() -> u64 {
    40 * 1024
}

/// Files that may be arriving at once, from everyone together.
const MAX_TRANSFERS: usize = 16;

/// A transfer whose last chunk was sent this long before the next file's start will
/// not finish (its sender stopped midway): it is dropped then, with its `.part` file.
/// Measured in the server's `sent_at`, not the receiver's clock: chunks that waited in
/// storage while the receiver was offline are not late. Also the age at which a run's
/// first file start removes `.part` files left by earlier runs.
const STALE_TRANSFER: Duration = Duration::from_secs(10 * 60);

/// What announces a file (inside an end-to-end sealed message).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileHeader {
    /// Random hex naming this transfer.
    pub file_id: String,
    /// The file's name as the sender had it (made safe by the receiver).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Hex SHA-256 of its contents.
    pub sha256: String,
    /// The key its chunks are sealed with.
    pub key: Blob,
    /// How many chunks follow.
    pub chunks: u64,
    /// Plaintext bytes in every chunk but the last (40 KiB when absent).
    #[serde(default = "legacy_chunk_bytes")]
    pub chunk_bytes: u64,
}

/// One chunk, sealed with the file's key. It travels as a binary payload
/// (`chunk_payload`); the JSON form, with `data` in base64, is what earlier clients
/// sent and is still understood.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileChunk {
    /// The transfer.
    pub file_id: String,
    /// Its position, from 0.
    pub index: u64,
    /// Whether it is the last.
    pub last: bool,
    /// `seal_chunk` output (base64 in the JSON form).
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// `Vec<u8>` as base64 text, for the JSON form of a chunk.
mod base64_bytes {
    use fastchat_common::Blob;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        Blob::from_bytes(bytes).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Blob::deserialize(d)?
            .to_bytes()
            .ok_or_else(|| serde::de::Error::custom("a chunk is not base64"))
    }
}

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::new(ErrorCode::LocalError, e.to_string())
}

/// Reads a file in chunks: its header (hash computed on a first pass) and then an
/// iterator over its sealed chunks (a second pass).
pub struct OutgoingFile {
    /// The announcement.
    pub header: FileHeader,
    key: FileKey,
    file: File,
    next: u64,
}

impl OutgoingFile {
    /// Opens `path` and hashes it; refuses files over `max` bytes.
    pub fn open(path: &Path, max: u64) -> Result<OutgoingFile, ClientError> {
        let mut file = File::open(path).map_err(|e| local(format!("{}: {e}", path.display())))?;
        let size = file.metadata().map_err(local)?.len();
        if !file.metadata().map_err(local)?.is_file() {
            return Err(local(format!("{} is not a file", path.display())));
        }
        if size > max {
            return Err(ClientError::new(
                ErrorCode::TooLarge,
                format!("the file is {size} bytes; the limit is {max}"),
            ));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = file.read(&mut buf).map_err(local)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        drop(file);
        let file = File::open(path).map_err(local)?;
        let key = FileKey::generate();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let chunks = size.div_ceil(CHUNK_BYTES as u64).max(1);
        Ok(OutgoingFile {
            header: FileHeader {
                file_id: key.file_id.clone(),
                name,
                size,
                sha256: hex(&hasher.finish()),
                key: Blob::from_bytes(key.key.as_bytes()),
                chunks,
                chunk_bytes: CHUNK_BYTES as u64,
            },
            key,
            file,
            next: 0,
        })
    }

    /// The next sealed chunk, or `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<FileChunk>, ClientError> {
        if self.next >= self.header.chunks {
            return Ok(None);
        }
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        while filled < CHUNK_BYTES {
            let n = self.file.read(&mut buf[filled..]).map_err(local)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let index = self.next;
        let last = index + 1 == self.header.chunks;
        self.next += 1;
        let sealed = seal_chunk(
            &self.key.key,
            &self.key.file_id,
            index,
            last,
            &buf[..filled],
        );
        Ok(Some(FileChunk {
            file_id: self.key.file_id.clone(),
            index,
            last,
            data: sealed,
        }))
    }
}

/// A file that arrived whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// The name it was sent under.
    pub name: String,
    /// Where it was saved.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its hex SHA-256 (checked).
    pub sha256: String,
}

struct Incoming {
    header: FileHeader,
    key: SymmetricKey,
    part: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
    next: u64,
    /// When the server accepted its `file_start` or its last chunk.
    last_sent_at: UnixMillis,
}

/// The transfers in progress, by (sender, file id).
pub(crate) struct Downloads {
    dir: Option<PathBuf>,
    open: HashMap<(String, String), Incoming>,
    /// Whether the `.part` files left by earlier runs have been looked at.
    swept: bool,
}

/// What a chunk did.
pub(crate) enum ChunkOutcome {
    /// More to come.
    Progress,
    /// The file is complete, checked and saved.
    Done(ReceivedFile),
}

/// Makes a file name safe to create in the downloads folder: the last path component
/// only, no separators or control characters, no leading dots, at most 200 bytes.
pub fn safe_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim_start_matches('.')
        .trim()
        .to_string();
    let mut cleaned = if cleaned.is_empty() {
        "file".to_string()
    } else {
        cleaned
    };
    while cleaned.len() > 200 {
        cleaned.pop();
    }
    cleaned
}

/// `dir/name`, or `dir/stem (1).ext` ... when that exists.
fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let mut candidate = dir.join(name);
    let mut n = 1;
    while candidate.exists() {
        candidate = dir.join(format!("{stem} ({n}){ext}"));
        n += 1;
    }
    candidate
}

fn damaged(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::DamagedFile, message)
}

/// A download's file while it comes in: `.ID.part`, ID a fresh message id (32
/// lowercase hex digits), which [`is_part_name`] recognizes.
fn part_name() -> String {
    format!(".{}.part", fastchat_common::ids::new_message_id())
}

/// Whether `name` is one of ours (see [`part_name`]).
fn is_part_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".part"))
        .is_some_and(|id| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Removes the `.part` files in `dir` that nothing has written to for
/// [`STALE_TRANSFER`]: left by transfers cut off in an earlier run. (Another process
/// sharing the home, with a transfer idle that long, would lose it.) Links are left.
fn remove_stale_parts(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_part_name) {
            continue;
        }
        let stale = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .is_some_and(|m| {
                m.modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= STALE_TRANSFER)
            });
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Downloads {
    /// The downloads of a client whose home is `home` (none without one).
    pub fn new(home: Option<&Path>) -> Downloads {
        Downloads {
            dir: home.map(|h| h.join("downloads")),
            open: HashMap::new(),
            swept: false,
        }
    }

    /// A `file_start` from `from`, accepted by the server at `sent_at`: opens a `.part`
    /// file for it. The run's first one removes stale `.part` files first.
    pub fn start(
        &mut self,
        from: &str,
        header: FileHeader,
        sent_at: UnixMillis,
    ) -> Result<(), ClientError> {
        let dir = self
            .dir
            .clone()
            .ok_or_else(|| local("no home folder to save files in"))?;
        if !std::mem::replace(&mut self.swept, true) {
            remove_stale_parts(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(local)?;
        let key = header
            .key
            .to_bytes()
            .and_then(|b| SymmetricKey::from_bytes(&b).ok())
            .ok_or_else(|| damaged("the file's key is unusable"))?;
        let stale_before = sent_at.saturating_sub(STALE_TRANSFER.as_millis() as UnixMillis);
        self.open.retain(|_, t| {
            let live = t.last_sent_at >= stale_before;
            if !live {
                let _ = std::fs::remove_file(&t.part);
            }
            live
        });
        if self.open.len() >= MAX_TRANSFERS {
            return Err(local(format!(
                "{MAX_TRANSFERS} files are arriving already; this one is refused"
            )));
        }
        if header.chunk_bytes == 0
            || header.chunk_bytes > FILE_CHUNK_BYTES as u64
            || header.chunks != header.size.div_ceil(header.chunk_bytes).max(1)
        {
            return Err(damaged("the announced size and chunk count disagree"));
        }
        // A name of our own for every transfer, created new: no other transfer (nor
        // another sender reusing this file id) can ever write into it.
        let part = dir.join(part_name());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(local)?;
        if let Some(old) = self
            .open
            .remove(&(from.to_string(), header.file_id.clone()))
        {
            let _ = std::fs::remove_file(&old.part);
        }
        self.open.insert(
            (from.to_string(), header.file_id.clone()),
            Incoming {
                header,
                key,
                part,
                file,
                hasher: Sha256::new(),
                written: 0,
                next: 0,
                last_sent_at: sent_at,
            },
        );
        Ok(())
    }

    /// The name of a transfer in progress (for error reports).
    pub fn name_of(&self, from: &str, file_id: &str) -> Option<String> {
        self.open
            .get(&(from.to_string(), file_id.to_string()))
            .map(|t| t.header.name.clone())
    }

    /// A chunk from `from`. On any error the transfer is dropped and its `.part` file
    /// deleted: a damaged file is never saved as if whole.
    pub fn chunk(
        &mut self,
        from: &str,
        chunk: FileChunk,
        sent_at: UnixMillis,
    ) -> Result<ChunkOutcome, ClientError> {
        let id = (from.to_string(), chunk.file_id.clone());
        let Some(mut t) = self.open.remove(&id) else {
            return Err(damaged("a chunk of a file that was not announced"));
        };
        t.last_sent_at = t.last_sent_at.max(sent_at);
        match Self::apply(&mut t, &chunk) {
            Ok(false) => {
                self.open.insert(id, t);
                Ok(ChunkOutcome::Progress)
            }
            Ok(true) => Self::finish(t, self.dir.as_deref().expect("a start needs a dir")),
            Err(e) => {
                let _ = std::fs::remove_file(&t.part);
                Err(e)
            }
        }
    }

    /// Writes one chunk; `true` when it was the last.
    fn apply(t: &mut Incoming, chunk: &FileChunk) -> Result<bool, ClientError> {
        if chunk.index != t.next || chunk.index >= t.header.chunks {
            return Err(damaged(format!(
                "chunk {} arrived where {} was expected",
                chunk.index, t.next
            )));
        }
        let expect_last = chunk.index + 1 == t.header.chunks;
        if chunk.last != expect_last {
            return Err(damaged("the transfer was cut short or runs over"));
        }
        let plain = open_chunk(
            &t.key,
            &t.header.file_id,
            chunk.index,
            chunk.last,
            &chunk.data,
        )
        .map_err(|_| damaged(format!("chunk {} does not open", chunk.index)))?;
        if t.written + plain.len() as u64 > t.header.size {
            return Err(damaged("more bytes than announced"));
        }
        t.file.write_all(&plain).map_err(local)?;
        t.hasher.update(&plain);
        t.written += plain.len() as u64;
        t.next += 1;
        Ok(chunk.last)
    }

    fn finish(t: Incoming, dir: &Path) -> Result<ChunkOutcome, ClientError> {
        let Incoming {
            header,
            part,
            file,
            hasher,
            written,
            ..
        } = t;
        drop(file);
        let sha256 = hex(&hasher.finish());
        if written != header.size || sha256 != header.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(damaged(format!(
                "{}: {written} bytes with SHA-256 {sha256}, announced {} bytes with {}",
                header.name, header.size, header.sha256
            )));
        }
        // Never overwrite: hard-link the finished part to a free name (the link fails if
        // the name was taken meanwhile, and then the next free one is tried).
        let name = safe_name(&header.name);
        let path = loop {
            let path = unused_path(dir, &name);
            match std::fs::hard_link(&part, &path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(local(format!("cannot save {}: {e}", path.display())));
                }
            }
        };
        let _ = std::fs::remove_file(&part);
        Ok(ChunkOutcome::Done(ReceivedFile {
            name: header.name,
            path,
            bytes: written,
            sha256,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name(".hidden"), "hidden");
        assert_eq!(safe_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("photo.png"), "photo.png");
    }

    #[test]
    fn a_clash_gets_a_suffix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        assert_eq!(
            unused_path(dir.path(), "a.txt"),
            dir.path().join("a (1).txt")
        );
        assert_eq!(unused_path(dir.path(), "b"), dir.path().join("b"));
    }

    #[test]
    fn a_file_goes_through_chunk_by_chunk_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let home = tempfile::tempdir().unwrap();

        let mut out = OutgoingFile::open(&src, u64::MAX).unwrap();
        assert_eq!(out.header.chunks, 3);
        let mut downloads = Downloads::new(Some(home.path()));
        downloads.start("alice", out.header.clone(), 1).unwrap();
        let mut saved = None;
        while let Some(chunk) = out.next_chunk().unwrap() {
            if let ChunkOutcome::Done(f) = downloads.chunk("alice", chunk, 2).unwrap() {
                saved = Some(f);
            }
        }
        let saved = saved.unwrap();
        assert_eq!(std::fs::read(&saved.path).unwrap(), data);

        // A flipped byte: reported, and nothing saved.
        let mut out = OutgoingFile::open(&src, u64::MAX).unwrap();
        downloads.start("alice", out.header.clone(), 3).unwrap();
        let mut chunk = out.next_chunk().unwrap().unwrap();
        chunk.data[20] ^= 1;
        assert_eq!(
            downloads.chunk("alice", chunk, 4).err().unwrap().code,
            ErrorCode::DamagedFile
        );
        let names: Vec<_> = std::fs::read_dir(home.path().join("downloads"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "only the good copy: {names:?}");
    }

    #[test]
    fn stale_part_files_are_removed_when_the_first_file_starts() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("downloads");
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - STALE_TRANSFER - Duration::from_secs(5);
        assert!(is_part_name(&part_name()), "the names we give are ours");
        let ours = |c: char| format!(".{}.part", c.to_string().repeat(32));
        for (name, modified) in [
            (ours('a'), Some(old)),
            (ours('b'), None),
            (".other.part".to_string(), Some(old)),
            ("kept.part".to_string(), Some(old)),
        ] {
            let file = File::create(dir.join(&name)).unwrap();
            if let Some(time) = modified {
                file.set_modified(time).unwrap();
            }
        }
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let mut downloads = Downloads::new(Some(home.path()));
        assert_eq!(listing().len(), 4, "nothing removed before a file starts");
        let src = home.path().join("src.bin");
        std::fs::write(&src, b"x").unwrap();
        let out = OutgoingFile::open(&src, u64::MAX).unwrap();
        downloads.start("alice", out.header.clone(), 1).unwrap();
        let left = listing();
        assert!(!left.contains(&ours('a')), "{left:?}");
        for kept in [ours('b'), ".other.part".into(), "kept.part".into()] {
            assert!(left.contains(&kept), "{kept} kept: {left:?}");
        }
    }

    #[test]
    fn a_transfer_idle_for_ten_minutes_of_server_time_is_dropped_at_the_next_start() {
        let home = tempfile::tempdir().unwrap();
        let src = home.path().join("src.bin");
        std::fs::write(&src, vec![7u8; CHUNK_BYTES * 2]).unwrap();
        let mut downloads = Downloads::new(Some(home.path()));
        let ten_minutes = STALE_TRANSFER.as_millis() as UnixMillis;
        let mut idle = OutgoingFile::open(&src, u64::MAX).unwrap();
        downloads
            .start("alice", idle.header.clone(), 1_000)
            .unwrap();
        let first = idle.next_chunk().unwrap().unwrap();
        downloads.chunk("alice", first, 2_000).unwrap();
        // Just under ten minutes after its last chunk: kept.
        let other = OutgoingFile::open(&src, u64::MAX).unwrap();
        downloads
            .start("bob", other.header, 2_000 + ten_minutes)
            .unwrap();
        assert!(downloads.name_of("alice", &idle.header.file_id).is_some());
        // Past that: dropped, and its next chunk is refused.
        let other = OutgoingFile::open(&src, u64::MAX).unwrap();
        downloads
            .start("bob", other.header, 2_001 + ten_minutes)
            .unwrap();
        assert!(downloads.name_of("alice", &idle.header.file_id).is_none());
        let second = idle.next_chunk().unwrap().unwrap();
        assert!(downloads.chunk("alice", second, 3_000).is_err());
    }
}
