//! The concurrency bulkhead: at most `max` calls at once into one
//! dependency, a bounded queue with a timeout, and priorities (a higher
//! priority is served first; equal priorities in arrival order). One
//! bulkhead per dependency: a slow dependency fills its own slots and
//! queue, never another's. Sans-IO.

use std::collections::BTreeMap;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// Calls at once.
    pub max: u32,
    /// Calls waiting at most.
    pub queue_len_max: usize,
    /// A call waits at most this long.
    pub queue_timeout_ms: u64,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Full {
    /// The queue is full.
    #[error("bulkhead full: {in_flight} running, {queued} queued")]
    QueueFull {
        /// Calls running.
        in_flight: u32,
        /// Calls waiting.
        queued: usize,
    },
    /// It waited longer than the queue timeout.
    #[error("bulkhead queue timeout after {waited_ms} ms")]
    Timeout {
        /// How long it waited.
        waited_ms: u64,
    },
}

/// What a call that arrived may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Run now; call [`Concurrency::leave`] when done.
    Run(u64),
    /// Wait under this id.
    Wait(u64),
}

/// What to tell waiting calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// This one may run now.
    Run(u64),
    /// This one timed out.
    TimedOut(u64, Full),
}

/// The bulkhead. See the module docs.
#[derive(Debug, Clone)]
pub struct Concurrency {
    config: ConcurrencyConfig,
    in_flight: u32,
    /// Waiting calls by (reverse priority, arrival): the first key runs
    /// next.
    queue: BTreeMap<(u8, u64), (u64, u64)>,
    next_id: u64,
}

impl Concurrency {
    /// An idle bulkhead.
    pub fn new(config: ConcurrencyConfig) -> Concurrency {
        Concurrency {
            config,
            in_flight: 0,
            queue: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Calls running.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Calls waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A call with `priority` (higher first) arrives.
    pub fn enter(&mut self, priority: u8, now_ms: u64) -> Result<Entry, Full> {
        let id = self.next_id;
        self.next_id += 1;
        if self.in_flight < self.config.max && self.queue.is_empty() {
            self.in_flight += 1;
            return Ok(Entry::Run(id));
        }
        if self.queue.len() >= self.config.queue_len_max {
            return Err(Full::QueueFull {
                in_flight: self.in_flight,
                queued: self.queue.len(),
            });
        }
        self.queue.insert((u8::MAX - priority, id), (id, now_ms));
        Ok(Entry::Wait(id))
    }

    /// A running call finished: the next waiting one may run.
    pub fn leave(&mut self, now_ms: u64) -> Vec<Wake> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.poll(now_ms)
    }

    /// Times out calls that waited too long and starts what may start.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Wake> {
        let mut out = Vec::new();
        let timeout = self.config.queue_timeout_ms;
        let expired: Vec<(u8, u64)> = self
            .queue
            .iter()
            .filter(|(_, (_, at))| at + timeout <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some((id, at)) = self.queue.remove(&k) {
                out.push(Wake::TimedOut(
                    id,
                    Full::Timeout {
                        waited_ms: now_ms - at,
                    },
                ));
            }
        }
        while self.in_flight < self.config.max {
            let Some((_, (id, _))) = self.queue.pop_first() else {
                break;
            };
            self.in_flight += 1;
            out.push(Wake::Run(id));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ConcurrencyConfig {
        ConcurrencyConfig {
            max: 2,
            queue_len_max: 3,
            queue_timeout_ms: 100,
        }
    }

    #[test]
    fn runs_queues_by_priority_and_refuses_when_full() {
        let mut c = Concurrency::new(cfg());
        assert!(matches!(c.enter(0, 0), Ok(Entry::Run(_))));
        assert!(matches!(c.enter(0, 0), Ok(Entry::Run(_))));
        let Ok(Entry::Wait(low)) = c.enter(1, 0) else {
            panic!()
        };
        let Ok(Entry::Wait(high)) = c.enter(9, 0) else {
            panic!()
        };
        let Ok(Entry::Wait(_)) = c.enter(1, 0) else {
            panic!()
        };
        assert!(matches!(c.enter(5, 0), Err(Full::QueueFull { .. })));
        assert_eq!(c.leave(10), vec![Wake::Run(high)]);
        assert_eq!(c.leave(20), vec![Wake::Run(low)]);
        let woken = c.poll(200);
        assert!(matches!(
            woken[..],
            [Wake::TimedOut(_, Full::Timeout { waited_ms: 200 })]
        ));
    }

    /// One slow dependency fills its own bulkhead; another dependency's
    /// calls still run at once.
    #[test]
    fn a_slow_dependency_keeps_to_its_own_slots() {
        let mut slow = Concurrency::new(cfg());
        let mut fast = Concurrency::new(cfg());
        for t in 0..10 {
            let _ = slow.enter(0, t); // never leaves: a hung dependency
        }
        assert_eq!(slow.in_flight(), 2);
        for t in 0..100 {
            let Ok(Entry::Run(_)) = fast.enter(0, t) else {
                panic!("fast call waited")
            };
            fast.leave(t);
        }
    }
}
