//! A redb storage backend that crashes at every sync, after redb's own
//! `tests/crash_consistency.rs`: it keeps the bytes written so far (`live`)
//! and the bytes the last completed sync made durable (`durable`), and at
//! each sync it takes the image a crash at that moment would leave.
//!
//! The kind of crash is drawn per sync from the seed:
//! - power loss: only `durable` survives (nothing since the last sync);
//! - power loss with reordering: `durable` plus a random subset of the
//!   writes and length changes issued since the last sync, each whole or not
//!   at all, in their order (the page cache wrote some pages back and not
//!   others);
//! - process crash: `live` survives (every write reached the page cache).
//!
//! The image is taken instead of the sync; the run then goes on as if the
//! sync had completed. An image depends only on what happened before it, so
//! one run yields exactly the images that stopping at each of its syncs
//! would, at the cost of one run.
//!
//! The stores under test run their real code over this backend
//! (`Store::open_backend`); clones of a `CrashBackend` share its file, so a
//! test restarts a store by dropping it and opening a clone again.
//!
//! Shared by `storage/tests` and `actors/tests` (included by `#[path]`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redb::StorageBackend;

/// What survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Nothing written since the last sync.
    PowerLoss,
    /// Some of what was written since the last sync, whole writes only.
    Reordered,
    /// Everything written (the process died, the kernel did not).
    ProcessKill,
}

/// The file a crash at one sync leaves behind.
#[derive(Debug)]
pub struct Image {
    /// The sync it replaces, counted from 1 over the backend's life.
    pub sync: u64,
    /// What the crash kept.
    pub crash: Crash,
    /// Operations acknowledged (returned `Ok`) before the crash: the one in
    /// flight, if any, is the next.
    pub acked: usize,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    syncs: u64,
    acked: usize,
    capture: bool,
    rng: ChaCha8Rng,
    images: Vec<Image>,
}

/// An in-memory file that records a crash image at every sync. Clones share
/// the file (a reopen sees what the last handle wrote).
#[derive(Debug, Clone)]
pub struct CrashBackend {
    state: Arc<Mutex<State>>,
}

impl CrashBackend {
    /// An empty file; `seed` draws the kind of every crash.
    pub fn new(seed: u64) -> CrashBackend {
        CrashBackend {
            state: Arc::new(Mutex::new(State {
                live: Vec::new(),
                durable: Vec::new(),
                pending: Vec::new(),
                syncs: 0,
                acked: 0,
                capture: true,
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0xC4A5_11ED),
                images: Vec::new(),
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("crash backend lock")
    }

    /// One more operation returned `Ok`: it is acknowledged as durable.
    pub fn acknowledge(&self) {
        self.state().acked += 1;
    }

    /// Operations acknowledged so far.
    pub fn acked(&self) -> usize {
        self.state().acked
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// Whether syncs record images (off while a test sets a file up).
    pub fn set_capture(&self, on: bool) {
        self.state().capture = on;
    }

    /// The images recorded since the last call.
    pub fn take_images(&self) -> Vec<Image> {
        std::mem::take(&mut self.state().images)
    }

    /// The file as it is now (what a clean shutdown leaves).
    pub fn live(&self) -> Vec<u8> {
        self.state().live.clone()
    }
}

impl State {
    fn crash_image(&mut self) -> Image {
        let crash = match self.rng.random_range(0..4u8) {
            0 => Crash::PowerLoss,
            1 => Crash::ProcessKill,
            _ => Crash::Reordered,
        };
        let bytes = match crash {
            Crash::PowerLoss => self.durable.clone(),
            Crash::ProcessKill => self.live.clone(),
            Crash::Reordered => {
                let mut image = self.durable.clone();
                for p in &self.pending {
                    if !self.rng.random_bool(0.5) {
                        continue;
                    }
                    match p {
                        Pending::Write { offset, data } => {
                            let end = offset + data.len();
                            if end > image.len() {
                                image.resize(end, 0);
                            }
                            image[*offset..end].copy_from_slice(data);
                        }
                        Pending::SetLen(len) => image.resize(*len, 0),
                    }
                }
                image
            }
        };
        Image {
            sync: self.syncs,
            crash,
            acked: self.acked,
            bytes,
        }
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let state = self.state();
        let offset = usize::try_from(offset).expect("offset fits");
        let Some(src) = state.live.get(offset..offset + out.len()) else {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        };
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut state = self.state();
        let len = usize::try_from(len).expect("length fits");
        state.live.resize(len, 0);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut state = self.state();
        state.syncs += 1;
        if state.capture {
            let image = state.crash_image();
            state.images.push(image);
        }
        state.durable = state.live.clone();
        state.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.state();
        let offset = usize::try_from(offset).expect("offset fits");
        let end = offset + data.len();
        if end > state.live.len() {
            state.live.resize(end, 0);
        }
        state.live[offset..end].copy_from_slice(data);
        state.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// A directory for reopened images: tmpfs when there is one (a reopen
/// repairs the file and syncs it; the disk adds time and tests nothing).
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

/// Writes `bytes` as a file in `dir`, replacing the previous image.
pub fn write_image(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("crashed.redb");
    std::fs::write(&path, bytes).expect("write image");
    path
}

/// Seeds for a crash test: `CRASH_SEEDS=a..b` overrides `default`.
pub fn seeds(default: std::ops::Range<u64>) -> std::ops::Range<u64> {
    let Ok(text) = std::env::var("CRASH_SEEDS") else {
        return default;
    };
    let (a, b) = text.split_once("..").expect("CRASH_SEEDS=a..b");
    a.parse().expect("seed")..b.parse().expect("seed")
}

/// What the store on a crash backend is called in its errors.
pub const LABEL: &str = "crash-backend";

/// The real `Store::open_backend` for `facility` over (a clone of)
/// `backend`: a new store when the backend is empty, else the store it
/// holds. Clones share the file, so this is how a test restarts a store.
pub fn open_backend(backend: &CrashBackend, facility: &str) -> bulwark_storage::Opened {
    bulwark_storage::Store::open_backend(backend.clone(), Path::new(LABEL), facility)
        .unwrap_or_else(|e| panic!("open_backend: {e}"))
}
