//! The causal timeline's queries (roots, chains, blast radius, text) and
//! its checker.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{
    effect_over, Criticality, DependencyGraph, Direction, Engine, Event, EventId, Rule, Status,
    Trigger, What,
};

/// What [`Engine::check`] found wrong in a timeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// Ids not increasing, or time going back.
    #[error("event {id} is out of order")]
    Order {
        /// The event.
        id: EventId,
    },
    /// A cause that is not an earlier event.
    #[error("event {id} is caused by {cause}, which is not earlier")]
    CauseNotEarlier {
        /// The event.
        id: EventId,
        /// Its cause.
        cause: EventId,
    },
    /// An observation with a cause, or a consequence without one.
    #[error("event {id}: an observation has no cause, a consequence has one")]
    Cause {
        /// The event.
        id: EventId,
    },
    /// A propagation across a pair that is no edge in the rule's direction,
    /// or with another criticality than the edge's.
    #[error("event {id}: no {criticality:?} edge carries {from} to its component")]
    NoSuchEdge {
        /// The event.
        id: EventId,
        /// Where it claims to come from.
        from: String,
        /// The criticality it claims.
        criticality: Criticality,
    },
    /// A propagation naming a rule the engine does not have.
    #[error("event {id}: no rule {rule}")]
    UnknownRule {
        /// The event.
        id: EventId,
        /// The rule named.
        rule: String,
    },
    /// A propagated status stronger than the rule allows over the edge.
    #[error(
        "event {id}: {status:?} is stronger than {allowed:?}, all the rule allows over this edge"
    )]
    TooStrong {
        /// The event.
        id: EventId,
        /// The status it claims.
        status: Status,
        /// The most the rule allows there.
        allowed: Status,
    },
    /// A propagation whose cause is not its source's triggering event.
    #[error("event {id}: its cause {cause} is not {from} triggering the rule")]
    CauseMismatch {
        /// The event.
        id: EventId,
        /// Its cause.
        cause: EventId,
        /// Its claimed source.
        from: String,
    },
}

impl Engine {
    /// The graph.
    pub fn graph(&self) -> &DependencyGraph {
        &self.graph
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A component's status after the last step.
    pub fn status(&self, component: &str) -> Option<Status> {
        self.standing.get(component).map(|s| s.status)
    }

    /// Every component that is not Up, with its status.
    pub fn troubled(&self) -> BTreeMap<&str, Status> {
        self.standing
            .iter()
            .filter(|(_, s)| s.status != Status::Up)
            .map(|(c, s)| (c.as_str(), s.status))
            .collect()
    }

    /// The state of the breaker `dependent` holds on `dependency`.
    pub fn breaker_state(
        &self,
        dependent: &str,
        dependency: &str,
    ) -> Option<crate::flow::breaker::State> {
        self.breakers
            .get(&(dependent.to_string(), dependency.to_string()))
            .map(|b| b.breaker.state())
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.history.iter()
    }

    /// Events dropped from the front of the timeline.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The event `id`, if it is kept.
    pub fn event_by_id(&self, id: EventId) -> Option<&Event> {
        let first = self.history.front()?.id;
        let e = self
            .history
            .get(usize::try_from(id.checked_sub(first)?).ok()?)?;
        debug_assert_eq!(e.id, id);
        Some(e)
    }

    /// The observations (events without a cause), oldest first.
    pub fn root_causes(&self) -> Vec<&Event> {
        self.history.iter().filter(|e| e.cause.is_none()).collect()
    }

    /// The events each kept event caused.
    fn children(&self) -> BTreeMap<EventId, Vec<EventId>> {
        let mut out: BTreeMap<EventId, Vec<EventId>> = BTreeMap::new();
        for e in &self.history {
            if let Some(c) = e.cause {
                out.entry(c).or_default().push(e.id);
            }
        }
        out
    }

    /// Every component the event `root` led to, its own included.
    pub fn blast_radius(&self, root: EventId) -> BTreeSet<String> {
        let children = self.children();
        let mut out = BTreeSet::new();
        let mut todo = vec![root];
        while let Some(id) = todo.pop() {
            if let Some(e) = self.event_by_id(id) {
                out.insert(e.component.clone());
                todo.extend(children.get(&id).into_iter().flatten());
            }
        }
        out
    }

    /// The chain of causes from a root to `id`, root first (it starts at
    /// the oldest cause still kept).
    pub fn chain(&self, id: EventId) -> Vec<&Event> {
        let mut out = Vec::new();
        let mut at = self.event_by_id(id);
        while let Some(e) = at {
            out.push(e);
            // Causes are earlier events, so this walks back and ends.
            at = e
                .cause
                .filter(|c| *c < e.id)
                .and_then(|c| self.event_by_id(c));
        }
        out.reverse();
        out
    }

    /// [`Engine::chain`] on one line: `a -> b -> c`.
    pub fn chain_text(&self, id: EventId) -> String {
        let parts: Vec<String> = self.chain(id).iter().map(|e| e.to_string()).collect();
        parts.join(" -> ")
    }

    /// The whole timeline as causal trees: each root, then what it led to,
    /// indented, one event a line.
    pub fn timeline_text(&self) -> String {
        let children = self.children();
        let mut s = String::new();
        if self.dropped > 0 {
            let _ = writeln!(s, "({} earlier events dropped)", self.dropped);
        }
        let kept = |c: &Option<EventId>| c.is_some_and(|c| self.event_by_id(c).is_some());
        for root in self.history.iter().filter(|e| !kept(&e.cause)) {
            let mut todo = vec![(root.id, 0usize)];
            while let Some((id, depth)) = todo.pop() {
                let Some(e) = self.event_by_id(id) else {
                    continue;
                };
                let arrow = if depth == 0 { "" } else { "-> " };
                let _ = writeln!(s, "{}{arrow}{e}", "   ".repeat(depth));
                let kids = children.get(&id).into_iter().flatten().rev();
                todo.extend(kids.map(|k| (*k, depth + 1)));
            }
        }
        s
    }

    /// Checks the kept timeline against the graph and the rules: ids and
    /// times in order; causes earlier; observations without a cause and
    /// consequences with one; every propagation along a real edge of its
    /// criticality, in its rule's direction, no stronger than the rule
    /// allows over that edge, caused by its source triggering the rule.
    pub fn check(&self) -> Result<(), Violation> {
        let mut prev: Option<&Event> = None;
        for e in &self.history {
            if prev.is_some_and(|p| p.id >= e.id || p.at_ms > e.at_ms) {
                return Err(Violation::Order { id: e.id });
            }
            prev = Some(e);
            if let Some(cause) = e.cause {
                if cause >= e.id {
                    return Err(Violation::CauseNotEarlier { id: e.id, cause });
                }
            }
            let root = matches!(e.what, What::Observed { .. } | What::Crossed { .. });
            let needs_cause = matches!(e.what, What::Propagated { .. } | What::Recovered);
            if (root && e.cause.is_some()) || (needs_cause && e.cause.is_none()) {
                return Err(Violation::Cause { id: e.id });
            }
            if let What::Propagated { .. } = e.what {
                self.check_propagation(e)?;
            }
        }
        Ok(())
    }

    fn check_propagation(&self, e: &Event) -> Result<(), Violation> {
        let What::Propagated {
            status,
            from,
            criticality,
            rule,
            direction,
        } = &e.what
        else {
            return Ok(());
        };
        let Some(r) = self.rules.iter().find(|r| r.name == *rule) else {
            return Err(Violation::UnknownRule {
                id: e.id,
                rule: rule.clone(),
            });
        };
        let edge = match r.direction {
            Direction::ToDependents => self.graph.criticality(&e.component, from),
            Direction::ToDependencies => self.graph.criticality(from, &e.component),
        };
        if edge != Some(*criticality) || *direction != r.direction {
            return Err(Violation::NoSuchEdge {
                id: e.id,
                from: from.clone(),
                criticality: *criticality,
            });
        }
        let allowed = effect_over(r.effect, *criticality).status();
        if *status > allowed {
            return Err(Violation::TooStrong {
                id: e.id,
                status: *status,
                allowed,
            });
        }
        let cause = e.cause.expect("checked: a propagation has a cause");
        let Some(c) = self.event_by_id(cause) else {
            return Ok(()); // dropped: nothing left to compare
        };
        let triggers = match (&c.what, r.trigger) {
            (What::Observed { status }, Trigger::DependencyFailure)
            | (What::Propagated { status, .. }, Trigger::DependencyFailure) => {
                *status == Status::Failed
            }
            (What::Crossed { rule: cr, .. }, t) if t != Trigger::DependencyFailure => cr == rule,
            _ => false,
        };
        if c.component != *from || !triggers {
            return Err(Violation::CauseMismatch {
                id: e.id,
                cause,
                from: from.clone(),
            });
        }
        Ok(())
    }
}
