//! [`SimDisk`]: an in-memory redb storage backend that knows what a crash
//! keeps. It holds the bytes written so far (`live`, what the page cache
//! holds) and the bytes the last sync made durable (`durable`); a sync
//! makes everything written before it durable, as `fsync` does.
//!
//! [`SimDisk::crash`] takes what a crash at this moment leaves and gives a
//! new disk holding it; the old disk is detached (its later writes go
//! nowhere: the process that would make them is gone):
//! - [`Crash::PowerLoss`]: only `durable` survives;
//! - [`Crash::ProcessKill`]: `live` survives (the kernel still writes the
//!   page cache back).
//!
//! The harness runs stores on it when asked ([`crate::HarnessBuilder::power_loss`]),
//! so the simulation's crashes lose what was not synced: the fault that
//! persistence-order bugs need.

use std::io;
use std::sync::{Arc, Mutex};

/// What survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Nothing written since the last sync.
    PowerLoss,
    /// Everything written (the process died, the machine did not).
    ProcessKill,
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync: replayed onto `durable` by the next.
    pending: Vec<Pending>,
    /// Detached by a crash: writes and syncs are dropped.
    detached: bool,
    syncs: u64,
}

#[derive(Debug)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

fn apply(buf: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { offset, data } => {
            let end = offset + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*offset..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => buf.resize(*len, 0),
    }
}

/// See the module docs. Clones share one disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a crash now leaves, on a new disk; this one is detached.
    pub fn crash(&self, crash: Crash) -> SimDisk {
        let mut st = self.lock();
        st.detached = true;
        let kept = match crash {
            Crash::PowerLoss => st.durable.clone(),
            Crash::ProcessKill => st.live.clone(),
        };
        SimDisk {
            state: Arc::new(Mutex::new(State {
                live: kept.clone(),
                durable: kept,
                ..State::default()
            })),
        }
    }

    /// What a power loss now would leave, on a new disk; this one goes on
    /// (for a checker that reads what is durable without crashing).
    pub fn durable_image(&self) -> SimDisk {
        let durable = self.lock().durable.clone();
        SimDisk {
            state: Arc::new(Mutex::new(State {
                live: durable.clone(),
                durable,
                ..State::default()
            })),
        }
    }

    /// Bytes written but not yet synced.
    pub fn unsynced(&self) -> usize {
        self.lock()
            .pending
            .iter()
            .map(|p| match p {
                Pending::Write { data, .. } => data.len(),
                Pending::SetLen(_) => 0,
            })
            .sum()
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let st = self.lock();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + out.len();
        if end > st.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            ));
        }
        out.copy_from_slice(&st.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        if st.detached {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let p = Pending::SetLen(len);
        apply(&mut st.live, &p);
        st.pending.push(p);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.lock();
        if st.detached {
            return Ok(());
        }
        let pending = std::mem::take(&mut st.pending);
        for p in &pending {
            apply(&mut st.durable, p);
        }
        st.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        if st.detached {
            return Ok(());
        }
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        let p = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut st.live, &p);
        st.pending.push(p);
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend as _;

    #[test]
    fn power_loss_keeps_the_last_sync_and_a_process_kill_keeps_every_write() {
        let d = SimDisk::new();
        d.write(0, b"durable").unwrap();
        d.sync_data().unwrap();
        d.write(0, b"DUR").unwrap();
        d.set_len(10).unwrap();
        assert_eq!(d.unsynced(), 3);
        let lost = d.crash(Crash::PowerLoss);
        let mut out = vec![0; 7];
        lost.read(0, &mut out).unwrap();
        assert_eq!(&out, b"durable");
        assert_eq!(lost.len().unwrap(), 7);
        // The crashed disk is detached: its writes go nowhere.
        d.write(0, b"x").unwrap();
        let kept = SimDisk::new();
        kept.write(0, b"abc").unwrap();
        let after = kept.crash(Crash::ProcessKill);
        let mut out = vec![0; 3];
        after.read(0, &mut out).unwrap();
        assert_eq!(&out, b"abc");
    }
}
