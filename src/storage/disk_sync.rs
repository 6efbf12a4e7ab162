//! What sled 0.34's `flush` leaves out of durability. On Linux sled writes its log with
//! `sync_file_range`, which neither flushes the drive's write cache nor commits the file's
//! metadata (its length, the blocks a write allocated); only its background thread's
//! `fsync`, every 500 ms, does. And it writes pages too large for a log segment (over
//! ~128 KiB: a large document's snapshot) to files under `blobs/`, which it never syncs
//! at all. A process crash loses nothing either way (the kernel still holds the pages),
//! but a power cut or a kernel crash could lose writes the server had acknowledged.
//!
//! Order matters as much as the syncs. The log record that points to a blob must not be
//! durable before the blob: reopened without the blob, sled quietly resolves the record
//! to the key's previous value, while the rest of its batch stands. A snapshot's batch
//! deleted the log the snapshot covered, so a snapshot whose blob was lost took
//! acknowledged updates with it (a store reopened without its newest blob file showed
//! exactly that; the store now deletes one snapshot behind as well). So the store's
//! flusher calls [`DiskSync::before_flush`], which `fsync`s every blob file written since
//! the last call and the `blobs` directory that names them, before sled's flush writes
//! the log records that point to them; then [`DiskSync::after_flush`], which does the
//! same for blobs written while the flush ran and `fdatasync`s the log.
//!
//! Which blobs are new it learns from inotify: sled writes a blob with one open, write and
//! close, in the thread that writes the page, before the page's log record is queued, so
//! a blob of any write made before a flush was requested is reported before the flush
//! begins. Where inotify is unavailable (another OS, or the user's inotify instances used
//! up), or its queue overflowed, it syncs every blob file there is instead: slower, as
//! safe.
//!
//! It knows sled's file layout (`db`, `blobs/<n>`) and nothing else of sled; the store
//! calls it from its flusher thread.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

/// The files of one sled directory that a flush must make durable.
pub struct DiskSync {
    log: File,
    blobs: PathBuf,
    /// Reports each blob file closed after writing; `None` where inotify is unavailable
    /// (not Linux, or out of inotify instances): then every blob is synced each time.
    written: Option<Watch>,
}

/// An inotify watch on the blob directory and the buffer its events are read into.
struct Watch {
    fd: std::os::fd::OwnedFd,
    buffer: Vec<std::mem::MaybeUninit<u8>>,
}

impl DiskSync {
    /// Starts watching the sled database in `dir` (opened already, so its files exist) and
    /// makes its directory entries durable. Blob files that an earlier run wrote are
    /// synced here once: that run may have ended before it could.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let log = File::open(dir.join("db"))?;
        let blobs = dir.join("blobs");
        let written = match Watch::start(&blobs) {
            Ok(watch) => Some(watch),
            Err(e) => {
                warn!(dir = %blobs.display(), error = %e,
                    "cannot watch sled's blob files; every flush will sync all of them");
                None
            }
        };
        let this = Self {
            log,
            blobs,
            written,
        };
        // After the watch starts: a blob written from now on is reported, any before is
        // in this listing.
        this.sync_every_blob()?;
        sync_dir(dir)?;
        Ok(this)
    }

    /// Called before sled's flush: makes the blob files written since the last call (and
    /// their names) durable, so that no log record the flush writes points to a blob the
    /// disk may not have. Returns how many blob files it synced (a blob deleted before its
    /// turn needs none).
    pub fn before_flush(&mut self) -> io::Result<usize> {
        let closed = match &mut self.written {
            Some(watch) => watch.closed()?,
            None => None,
        };
        match closed {
            Some(names) => self.sync_blobs(&names),
            // No watch, or the kernel dropped events: which blobs are new is unknown.
            None => self.sync_every_blob(),
        }
    }

    /// Called after sled's flush: the blobs written while it ran, then the log's data and
    /// length. Returns how many blob files it synced.
    pub fn after_flush(&mut self) -> io::Result<usize> {
        let blobs = self.before_flush()?;
        self.log.sync_data()?;
        Ok(blobs)
    }

    /// Syncs the named blob files, then the directory if any of them was still there.
    fn sync_blobs(&self, names: &[OsString]) -> io::Result<usize> {
        let mut synced = 0;
        for name in names {
            synced += usize::from(sync_file(&self.blobs.join(name))?);
        }
        if synced > 0 {
            sync_dir(&self.blobs)?;
        }
        Ok(synced)
    }

    /// Syncs every blob file there is, and the directory.
    fn sync_every_blob(&self) -> io::Result<usize> {
        let mut synced = 0;
        for entry in std::fs::read_dir(&self.blobs)? {
            synced += usize::from(sync_file(&entry?.path())?);
        }
        sync_dir(&self.blobs)?;
        Ok(synced)
    }
}

impl Watch {
    #[cfg(target_os = "linux")]
    fn start(dir: &Path) -> io::Result<Self> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        // A blob is written with one open, write and close; moved in, it is whole too.
        inotify::add_watch(&fd, dir, WatchFlags::CLOSE_WRITE | WatchFlags::MOVED_TO)?;
        Ok(Self {
            fd,
            buffer: vec![std::mem::MaybeUninit::uninit(); 16 * 1024],
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn start(_dir: &Path) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "inotify is Linux only",
        ))
    }

    /// The names of the files closed after writing since the last call (sorted, each
    /// once), or `None` if the kernel's event queue overflowed and some were lost.
    #[cfg(target_os = "linux")]
    fn closed(&mut self) -> io::Result<Option<Vec<OsString>>> {
        use rustix::fs::inotify::{ReadFlags, Reader};
        use std::os::unix::ffi::OsStrExt;
        let mut names = Vec::new();
        let mut overflowed = false;
        let mut events = Reader::new(&self.fd, &mut self.buffer);
        loop {
            match events.next() {
                Ok(event) => {
                    overflowed |= event.events().contains(ReadFlags::QUEUE_OVERFLOW);
                    if let Some(name) = event.file_name() {
                        names.push(std::ffi::OsStr::from_bytes(name.to_bytes()).to_owned());
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if overflowed {
            return Ok(None);
        }
        names.sort_unstable();
        names.dedup();
        Ok(Some(names))
    }

    #[cfg(not(target_os = "linux"))]
    fn closed(&mut self) -> io::Result<Option<Vec<OsString>>> {
        Ok(None)
    }
}

/// `fsync`s one file; false if it is gone (sled deletes blobs it no longer needs).
fn sync_file(path: &Path) -> io::Result<bool> {
    match File::open(path) {
        Ok(file) => file.sync_all().map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `fsync`s a directory, which makes the names of the files created in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(dir: &Path, name: &str, bytes: usize) {
        std::fs::write(dir.join("blobs").join(name), vec![7u8; bytes]).unwrap();
    }

    fn store_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"log").unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        dir
    }

    #[test]
    fn each_new_blob_is_synced_once_and_a_deleted_one_is_skipped() {
        let dir = store_dir();
        let mut sync = DiskSync::open(dir.path()).unwrap();
        assert_eq!(sync.after_flush().unwrap(), 0);
        blob(dir.path(), "100", 10);
        blob(dir.path(), "200", 10);
        assert_eq!(sync.after_flush().unwrap(), 2);
        assert_eq!(sync.after_flush().unwrap(), 0, "nothing new");
        blob(dir.path(), "300", 10);
        std::fs::remove_file(dir.path().join("blobs/300")).unwrap();
        blob(dir.path(), "400", 10);
        assert_eq!(sync.after_flush().unwrap(), 1, "300 is gone");
    }

    #[test]
    fn blobs_from_before_the_watch_are_synced_at_open_not_at_each_flush() {
        let dir = store_dir();
        blob(dir.path(), "1", 10);
        let mut sync = DiskSync::open(dir.path()).unwrap();
        assert_eq!(sync.after_flush().unwrap(), 0);
        blob(dir.path(), "2", 10);
        assert_eq!(sync.after_flush().unwrap(), 1, "only the new one");
    }

    #[test]
    fn a_blob_still_open_for_writing_is_synced_once_it_is_closed() {
        use std::io::Write;
        let dir = store_dir();
        let mut sync = DiskSync::open(dir.path()).unwrap();
        let mut file = File::create(dir.path().join("blobs/5")).unwrap();
        file.write_all(b"half").unwrap();
        assert_eq!(sync.after_flush().unwrap(), 0, "not closed yet");
        file.write_all(b" and the rest").unwrap();
        drop(file);
        assert_eq!(sync.after_flush().unwrap(), 1);
    }

    #[test]
    fn blobs_written_before_a_flush_are_synced_before_it() {
        let dir = store_dir();
        let mut sync = DiskSync::open(dir.path()).unwrap();
        blob(dir.path(), "7", 10);
        assert_eq!(
            sync.before_flush().unwrap(),
            1,
            "synced before the log is written"
        );
        blob(dir.path(), "8", 10); // written while the flush runs
        assert_eq!(
            sync.after_flush().unwrap(),
            1,
            "only the one written meanwhile"
        );
    }
}
