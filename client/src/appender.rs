//! Buffered appending to the history files: lines wait in memory for at most
//! [`FLUSH_AFTER`], then one thread per process writes them out. A busy client writes a
//! line per message sent or received, and a `write` each (or worse, an `open`) cost more
//! than the message itself. The price: a process killed outright (SIGKILL, a crash)
//! loses the lines of its last 50 ms from its history, although those messages were
//! acknowledged. Exiting normally, closing the client, or the terminal's Ctrl-C, SIGTERM
//! or SIGHUP write them out first.
//!
//! Files stay open between writes, the least recently written closed first: a client
//! talking with many peers would otherwise open and close a file for nearly every line.
//! One appender keeps at most [`OPEN_FILES`], and all appenders of a process together
//! about a quarter of its descriptor limit (an appender with none open still opens one,
//! so the total may pass it by one per appender), so that the history does not take
//! the descriptors its connections need.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// How long a line may wait in memory before it is written to its file.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// How many files one appender keeps open, the least recently written closed first.
const OPEN_FILES: usize = 128;

/// Files open in all appenders of the process.
static OPEN_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// How many files all appenders of the process keep open together: a quarter of the
/// process's descriptor limit, read once. An appender over it closes one of its own
/// before opening another.
fn open_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        if read {
            usize::try_from(limit.rlim_cur / 4).unwrap_or(usize::MAX)
        } else {
            256
        }
    })
}

/// Appends lines to files, buffered. Readers of the files call [`Appender::flush`]
/// first; [`flush_all`] writes out every appender of the process (before exiting).
#[derive(Default)]
pub struct Appender {
    open: Arc<Mutex<OpenFiles>>,
}

#[derive(Default)]
struct OpenFiles {
    files: HashMap<PathBuf, OpenFile>,
    clock: u64,
    /// Some line is buffered and a flush is scheduled.
    dirty: bool,
}

struct OpenFile {
    out: BufWriter<File>,
    used: u64,
}

impl Appender {
    /// Buffers `line` for `path` (opened, with its folders, on first use).
    pub fn append(&self, path: &Path, line: &[u8]) -> std::io::Result<()> {
        let mut open = self.open.lock();
        open.clock += 1;
        let clock = open.clock;
        if !open.files.contains_key(path) {
            if open.files.len() >= OPEN_FILES || OPEN_TOTAL.load(Ordering::Relaxed) >= open_budget()
            {
                open.close_oldest();
            }
            let file = match open_for_append(path) {
                // Out of descriptors: give back ours and try once more.
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    open.close_all();
                    open_for_append(path)?
                }
                other => other?,
            };
            OPEN_TOTAL.fetch_add(1, Ordering::Relaxed);
            open.files.insert(
                path.to_path_buf(),
                OpenFile {
                    out: BufWriter::with_capacity(8 * 1024, file),
                    used: clock,
                },
            );
        }
        let file = open.files.get_mut(path).expect("inserted above");
        file.used = clock;
        file.out.write_all(line)?;
        if !open.dirty {
            open.dirty = true;
            if !schedule(Arc::downgrade(&self.open)) {
                // No flusher thread: write through.
                open.flush();
            }
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        self.open.lock().flush();
    }
}

impl OpenFiles {
    /// Writes out every file's buffered lines. A failure is logged; the lines stay
    /// buffered and the next append tries again.
    fn flush(&mut self) {
        for (path, file) in &mut self.files {
            if let Err(e) = file.write_out(path) {
                log::warn!("history not written to {}: {e}", path.display());
            }
        }
        self.dirty = false;
    }

    /// Writes out and closes every file.
    fn close_all(&mut self) {
        self.flush();
        OPEN_TOTAL.fetch_sub(self.files.len(), Ordering::Relaxed);
        self.files.clear();
    }

    fn close_oldest(&mut self) {
        let Some(oldest) = self
            .files
            .iter()
            .min_by_key(|(_, f)| f.used)
            .map(|(p, _)| p.clone())
        else {
            return;
        };
        if let Some(mut file) = self.files.remove(&oldest) {
            OPEN_TOTAL.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = file.write_out(&oldest) {
                log::warn!("history not written to {}: {e}", oldest.display());
            }
        }
    }
}

impl OpenFile {
    /// Writes out the buffered lines. A file deleted while open (its folder removed,
    /// say) is made again first, so the lines go somewhere the user can read.
    fn write_out(&mut self, path: &Path) -> std::io::Result<()> {
        if self.out.buffer().is_empty() {
            return Ok(());
        }
        if !self.out.get_ref().metadata().is_ok_and(|m| m.nlink() > 0) {
            let fresh = BufWriter::with_capacity(8 * 1024, open_for_append(path)?);
            let (_, pending) = std::mem::replace(&mut self.out, fresh).into_parts();
            self.out.write_all(&pending.unwrap_or_default())?;
        }
        self.out.flush()
    }
}

impl Drop for OpenFiles {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Opens a file for appending, creating it and, when they are missing, its folders.
fn open_for_append(path: &Path) -> std::io::Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)?;
            }
            open()
        }
        other => other,
    }
}

/// The process's flusher: appenders with buffered lines, and the thread that writes
/// them out `FLUSH_AFTER` after the first of them.
struct Flusher {
    due: Mutex<Vec<Weak<Mutex<OpenFiles>>>>,
    wake: Condvar,
    flushing: Mutex<()>,
}

static FLUSHER: OnceLock<Option<&'static Flusher>> = OnceLock::new();

fn flusher() -> Option<&'static Flusher> {
    *FLUSHER.get_or_init(|| {
        let flusher: &'static Flusher = Box::leak(Box::new(Flusher {
            due: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            flushing: Mutex::new(()),
        }));
        std::thread::Builder::new()
            .name("fastchat-history".into())
            .stack_size(64 * 1024)
            .spawn(move || run_flusher(flusher))
            .ok()
            .map(|_| flusher)
    })
}

/// Asks for `open` to be flushed soon; false if there is no flusher thread.
fn schedule(open: Weak<Mutex<OpenFiles>>) -> bool {
    let Some(flusher) = flusher() else {
        return false;
    };
    flusher.due.lock().push(open);
    flusher.wake.notify_one();
    true
}

fn run_flusher(flusher: &Flusher) {
    loop {
        {
            let mut due = flusher.due.lock();
            while due.is_empty() {
                flusher.wake.wait(&mut due);
            }
        }
        std::thread::sleep(FLUSH_AFTER);
        flush_due(flusher);
    }
}

fn flush_due(flusher: &Flusher) {
    // One flush at a time: `flush_all` (before exiting) must not find the list emptied
    // by the flusher thread while that thread has not written its lines out yet.
    let _one_at_a_time = flusher.flushing.lock();
    let due = std::mem::take(&mut *flusher.due.lock());
    for open in due.iter().filter_map(Weak::upgrade) {
        open.lock().flush();
    }
}

/// Writes out every appender's buffered lines now (before the process exits).
pub fn flush_all() {
    if let Some(flusher) = FLUSHER.get().copied().flatten() {
        flush_due(flusher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lines_reach_the_file_by_themselves_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/log.jsonl");
        let appender = Appender::default();
        appender.append(&path, b"one\n").unwrap();
        appender.append(&path, b"two\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(&path).unwrap_or_default() != b"one\ntwo\n" {
            assert!(Instant::now() < deadline, "not flushed in 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Dropping the appender writes what is left.
        appender.append(&path, b"three\n").unwrap();
        drop(appender);
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\nthree\n");
    }

    #[test]
    fn a_file_closed_to_make_room_keeps_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let appender = Appender::default();
        for round in 0..2 {
            for n in 0..OPEN_FILES * 2 {
                let line = format!("{round}\n");
                appender
                    .append(&dir.path().join(format!("{n}.log")), line.as_bytes())
                    .unwrap();
            }
        }
        flush_all();
        appender.flush();
        for n in 0..OPEN_FILES * 2 {
            let got = std::fs::read(dir.path().join(format!("{n}.log"))).unwrap();
            assert_eq!(got, b"0\n1\n", "file {n}");
        }
    }
}
