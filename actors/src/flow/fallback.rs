//! Fallback chains and hedged requests (the two async helpers of the
//! kit; time is tokio's, so the harness's virtual clock drives them).
//!
//! - [`Fallback`]: ordered handlers; the first that succeeds answers, and
//!   the answer says which level served it and whether that is degraded.
//! - [`hedged`]: for idempotent reads against peers: if the first try has
//!   not answered after a delay (the P95 of [`super::timeout`]), a second
//!   try starts, if the retry budget allows; the first answer wins.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future of one handler.
pub type HandlerFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

type Handler<T, E> = Box<dyn Fn() -> HandlerFuture<T, E> + Send + Sync>;

/// What a fallback chain answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served<T> {
    /// The value.
    pub value: T,
    /// The level that served it (0: the primary).
    pub level: usize,
    /// Its name.
    pub name: &'static str,
    /// Served by a fallback, not the primary.
    pub degraded: bool,
}

/// Ordered handlers. See the module docs.
pub struct Fallback<T, E> {
    levels: Vec<(&'static str, Handler<T, E>)>,
}

impl<T, E> Default for Fallback<T, E> {
    fn default() -> Self {
        Fallback { levels: Vec::new() }
    }
}

impl<T, E> Fallback<T, E> {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next level.
    pub fn then(
        mut self,
        name: &'static str,
        f: impl Fn() -> HandlerFuture<T, E> + Send + Sync + 'static,
    ) -> Self {
        self.levels.push((name, Box::new(f)));
        self
    }

    /// Tries each level in order; the first success answers. `Err` holds
    /// every level's error, in order.
    pub async fn run(&self) -> Result<Served<T>, Vec<(&'static str, E)>> {
        let mut errors = Vec::new();
        for (level, (name, f)) in self.levels.iter().enumerate() {
            match f().await {
                Ok(value) => {
                    if level > 0 {
                        metrics::counter!("bulwark_flow_fallback_total", "level" => *name)
                            .increment(1);
                    }
                    return Ok(Served {
                        value,
                        level,
                        name,
                        degraded: level > 0,
                    });
                }
                Err(e) => errors.push((*name, e)),
            }
        }
        Err(errors)
    }
}

/// Runs `first`; if it has not answered after `delay`, and `allow()` says
/// the budget has room, starts `second` too. Returns the first answer and
/// whether a hedge was sent. Only for idempotent requests.
pub async fn hedged<T, F1, F2>(
    first: F1,
    second: impl FnOnce() -> F2,
    delay: Duration,
    allow: impl FnOnce() -> bool,
) -> (T, bool)
where
    F1: Future<Output = T>,
    F2: Future<Output = T>,
{
    tokio::pin!(first);
    tokio::select! {
        v = &mut first => return (v, false),
        _ = tokio::time::sleep(delay) => {}
    }
    if !allow() {
        return (first.await, false);
    }
    metrics::counter!("bulwark_flow_hedged_total").increment(1);
    let second = second();
    tokio::pin!(second);
    tokio::select! {
        v = &mut first => (v, true),
        v = &mut second => (v, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_first_level_that_works_answers_and_says_so() {
        let chain: Fallback<u32, String> = Fallback::new()
            .then("leader", || {
                Box::pin(async { Err("no leader".to_string()) })
            })
            .then("local_replica", || Box::pin(async { Ok(7) }))
            .then("cache", || Box::pin(async { Ok(1) }));
        let s = chain.run().await.unwrap();
        assert_eq!(
            (s.value, s.level, s.name, s.degraded),
            (7, 1, "local_replica", true)
        );
        let none: Fallback<u32, &str> = Fallback::new().then("a", || Box::pin(async { Err("x") }));
        assert_eq!(none.run().await, Err(vec![("a", "x")]));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_slow_first_try_is_hedged_when_the_budget_allows() {
        let slow = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "first"
        };
        let (v, h) = hedged(
            slow,
            || async { "second" },
            Duration::from_millis(50),
            || true,
        )
        .await;
        assert_eq!((v, h), ("second", true));
        let slow = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "first"
        };
        let (v, h) = hedged(
            slow,
            || async { "second" },
            Duration::from_millis(50),
            || false,
        )
        .await;
        assert_eq!((v, h), ("first", false), "no budget: no hedge");
        let fast = async { "first" };
        let (v, h) = hedged(
            fast,
            || async { "second" },
            Duration::from_millis(50),
            || true,
        )
        .await;
        assert_eq!((v, h), ("first", false));
    }
}
