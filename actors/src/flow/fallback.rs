//! Fallback chains: ordered handlers; the first that succeeds answers, and
//! the answer says which level served it and whether that is degraded
//! (the API's `fallback=stale` reads).

use std::future::Future;
use std::pin::Pin;

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
}
