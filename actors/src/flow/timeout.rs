//! Deadlines that only shrink along a call chain. Sans-IO.

/// The deadline for a call made at `now_ms` by a request whose own deadline
/// is `parent_ms` (if any), with this hop's timeout: never later than the
/// parent's, so deadlines only shrink along a chain. `None` when the parent
/// deadline has passed: drop the request instead of working on it.
pub fn child_deadline(parent_ms: Option<u64>, now_ms: u64, timeout_ms: u64) -> Option<u64> {
    let own = now_ms.saturating_add(timeout_ms);
    match parent_ms {
        Some(p) if p <= now_ms => None,
        Some(_) if crate::plant::active(crate::plant::Bug::DeadlineGrows) => Some(own),
        Some(p) => Some(p.min(own)),
        None => Some(own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Along any chain of hops, each deadline is at most the one before
        /// it, and a passed deadline stops the chain.
        #[test]
        fn deadlines_only_shrink(
            start in 0u64..1_000_000,
            hops in proptest::collection::vec((0u64..500, 1u64..5_000), 1..20),
        ) {
            let mut now = start;
            let mut deadline: Option<u64> = None;
            for (spent, timeout) in hops {
                now += spent;
                match child_deadline(deadline, now, timeout) {
                    Some(d) => {
                        if let Some(p) = deadline {
                            prop_assert!(d <= p);
                        }
                        prop_assert!(d > now);
                        deadline = Some(d);
                    }
                    None => {
                        prop_assert!(deadline.is_some_and(|p| p <= now));
                        break;
                    }
                }
            }
        }
    }
}
