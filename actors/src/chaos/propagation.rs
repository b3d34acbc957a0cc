//! Failure propagation: how one component's failure spreads along the
//! dependency graph, which circuit breakers it opens, and the causal
//! timeline that explains every step (seed 003 ch. 23).
//!
//! Sans-IO: the caller observes each component's [`Health`] and hands it to
//! [`Engine::step`] with the time; the engine answers with [`Event`]s.
//!
//! # The graph
//! [`DependencyGraph`]: components (`"alpha/raft"`) and edges "`a` depends
//! on `b`", each [`Criticality::Critical`] (a cannot work without b) or
//! [`Criticality::Optional`] (a works worse without b). Cycles are allowed
//! (peers' RaftPeers depend on each other); every walk is bounded by the
//! component count. [`bulwark_graph`] is a real facility, read from the
//! actors and the HTTP layer (`src/http/`); `f` is each facility, `g` each
//! other one:
//!
//! | component | depends on | criticality | why |
//! |---|---|---|---|
//! | `f/api` (HTTP API; the Scheduler role: input checks, then the gate) | `f/backpressure` | critical | every `/v1` request asks admission first; no answer is a 429 |
//! | | `f/gate` | critical | every schedule write and read goes through it; absent, 503 |
//! | | `f/store` | critical | the idempotency store; a failing lookup is a 503 |
//! | | `f/bulkhead` | optional | a pool that does not answer lets the request through, unisolated |
//! | | `f/raft`, `f/bft`, `f/breakers`, `f/detector` | optional | the cluster view shows what answers |
//! | `f/gate` (CapGate) | `f/raft` | critical | writes are proposed to it, reads inspect its schedule |
//! | | `f/detector` | optional | the partition state; a dead detector leaves the last view, stale |
//! | | `f/store` | optional | provisional changes, only for AP writes in a partition |
//! | `f/healer` | `f/raft` | critical | it replays provisional changes through consensus |
//! | | `f/store` | critical | the provisional changes and its reports |
//! | | `f/detector` | optional | it heals when the view shows a quorum again |
//! | `f/bft` (BftValidator) | `f/raft` | critical | it validates what Raft applied (the applied feed) |
//! | | `f/store` | critical | votes, certificates and evidence are written before they leave |
//! | | `g/bft` | optional | votes; see quorum below |
//! | `f/raft` (RaftPeer) | `f/store` | critical | the log and hard state |
//! | | `g/raft` | optional | replication; see quorum below |
//! | `f/breakers` (breaker mesh) | `f/detector` | optional | a Down peer trips its breakers early |
//! | | `f/backpressure` | optional | the capacity buffer it raises for peers' open breakers |
//! | `f/backpressure`, `f/bulkhead`, `f/detector`, `f/store` | — | | leaves (links and disks are not components here) |
//!
//! **Quorum is a separate concern.** Each peer's RaftPeer and validator is
//! an optional dependency on its own: one lost peer degrades a facility, it
//! does not fail it. Losing a majority does stop commits, but that is a
//! k-of-n property no single edge expresses; the CAP gate
//! ([`crate::cap::partition_state`]) and the experiments judge it, not this
//! graph.
//!
//! # The rules
//! A [`Rule`] (data, serde) has a trigger, a direction, an effect and a
//! delay. Triggers are judged on a *source* component; the effect lands on
//! its neighbours in the rule's direction (its dependents, or its
//! dependencies). [`Trigger::DependencyFailure`] holds while the source is
//! Failed, observed or by propagation, so failures cascade. The metric
//! triggers hold while the source's *observed* metric is strictly above the
//! threshold and the source is not Failed (a failed component is judged by
//! its status alone). A rule fires once its trigger has held for `delay_ms`.
//! **Over an optional edge an effect is at most Degrade**, in either
//! direction: that is what optional means. Propagated statuses are
//! recomputed every step from the observations, so they clear when their
//! cause does; a degradation does not spread further (what it does to the
//! next component up shows in that component's own observed metrics).
//! [`default_rules`]: a failed dependency fails its critical dependents
//! and degrades its optional ones; error rate above 0.5, latency above
//! 2,000 ms, queue depth above 1,000 or timeout rate above 0.2 degrade the
//! dependents.
//!
//! # The breakers
//! Every edge has a real [`Breaker`] (the flow kit's core) guarding the
//! dependent's calls to the dependency. Each step records
//! [`EngineConfig::calls_per_step`] calls on it: all fail when the
//! dependency is Failed; otherwise the failed share is its observed error
//! or timeout rate (the larger), spread evenly through the step; every call
//! took its observed latency (slow calls count against the breaker's
//! slow-call rate). The breaker opens, probes half-open and closes by its
//! own thresholds and open duration; each of its transitions is an event.
//! Breakers report; they do not change statuses.
//!
//! # The timeline
//! Every [`Event`] has an id, a time, a component, what happened and the
//! id of the event that caused it (`None` for an observation). An
//! observation is a root; [`Engine::root_causes`] lists them and
//! [`Engine::blast_radius`] the components one root reached.
//! [`Engine::timeline_text`] prints the trees; [`Engine::chain_text`] one
//! chain, like `t=1200ms alpha/raft FAILED (observed) -> t=1200ms
//! alpha/gate FAILED (critical dependency alpha/raft, rule
//! dependency_failure) -> t=1250ms breaker alpha/api->alpha/gate OPEN`.
//! [`Engine::check`] verifies the timeline against the graph and the rules.
//!
//! Limits: [`COMPONENTS_MAX`] components, [`EDGES_MAX`] edges, [`RULES_MAX`]
//! rules, [`EngineConfig::events_max`] events kept (the oldest go first,
//! counted in [`Engine::dropped`]). Observations of components not in the
//! graph are ignored; a component not observed in a step keeps its last
//! observation; a NaN metric never crosses a threshold.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::flow::breaker::{Breaker, BreakerConfig, Outcome, Window};

mod graph;
mod timeline;

pub use graph::{
    bulwark_graph, component, Criticality, DependencyGraph, Edge, GraphError, API, BACKPRESSURE,
    BFT, BREAKERS, BULKHEAD, COMPONENTS_MAX, COMPONENT_LEN_MAX, DETECTOR, EDGES_MAX, GATE, HEALER,
    RAFT, STORE,
};
pub use timeline::Violation;

/// Rules one engine holds at most.
pub const RULES_MAX: usize = 64;
/// Longest rule name, in bytes.
pub const RULE_NAME_LEN_MAX: usize = 64;
/// Longest rule delay: one hour.
pub const DELAY_MS_MAX: u64 = 3_600_000;
/// Most calls recorded per edge per step.
pub const CALLS_PER_STEP_MAX: u32 = 1_000;

/// A component's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Working.
    Up,
    /// Working worse.
    Degraded,
    /// Not working.
    Failed,
}

impl Status {
    /// The name, upper case, for the timeline.
    pub fn name(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Degraded => "DEGRADED",
            Status::Failed => "FAILED",
        }
    }
}

/// One component's observed health in one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Its own status.
    pub status: Status,
    /// Share of its calls that failed, 0 to 1.
    pub error_rate: f64,
    /// Its typical latency (the caller picks the percentile).
    pub latency_ms: u64,
    /// Requests waiting.
    pub queue_depth: u64,
    /// Share of its calls that timed out, 0 to 1.
    pub timeout_rate: f64,
}

impl Health {
    /// Up, no errors, no latency, no queue.
    pub fn up() -> Health {
        Health {
            status: Status::Up,
            error_rate: 0.0,
            latency_ms: 0,
            queue_depth: 0,
            timeout_rate: 0.0,
        }
    }

    /// Failed, every call failing.
    pub fn failed() -> Health {
        Health {
            status: Status::Failed,
            error_rate: 1.0,
            ..Health::up()
        }
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::up()
    }
}

/// What makes a rule fire, judged on its source component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The source is Failed (observed, or propagated to it), which its
    /// dependents see as a dependency failure.
    DependencyFailure,
    /// Observed error rate strictly above `above` (0 to 1).
    ErrorRate {
        /// Threshold.
        above: f64,
    },
    /// Observed latency strictly above `above_ms`.
    Latency {
        /// Threshold.
        above_ms: u64,
    },
    /// Observed queue depth strictly above `above`.
    QueueDepth {
        /// Threshold.
        above: u64,
    },
    /// Observed timeout rate strictly above `above` (0 to 1).
    TimeoutRate {
        /// Threshold.
        above: f64,
    },
}

impl Trigger {
    /// For a metric trigger, the observed value and whether it is over the
    /// threshold; `None` for [`Trigger::DependencyFailure`].
    fn crossed(self, h: &Health) -> Option<(f64, f64, bool)> {
        let (value, above) = match self {
            Trigger::DependencyFailure => return None,
            Trigger::ErrorRate { above } => (h.error_rate, above),
            Trigger::Latency { above_ms } => (h.latency_ms as f64, above_ms as f64),
            Trigger::QueueDepth { above } => (h.queue_depth as f64, above as f64),
            Trigger::TimeoutRate { above } => (h.timeout_rate, above),
        };
        let over = match self {
            Trigger::Latency { above_ms } => h.latency_ms > above_ms,
            Trigger::QueueDepth { above } => h.queue_depth > above,
            _ => value > above,
        };
        Some((value, above, over))
    }

    /// The metric's name, for the timeline.
    pub fn metric(self) -> &'static str {
        match self {
            Trigger::DependencyFailure => "status",
            Trigger::ErrorRate { .. } => "error_rate",
            Trigger::Latency { .. } => "latency_ms",
            Trigger::QueueDepth { .. } => "queue_depth",
            Trigger::TimeoutRate { .. } => "timeout_rate",
        }
    }
}

/// Which neighbours a rule reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The components that depend on the source (upstream).
    ToDependents,
    /// The components the source depends on (downstream: load, retries).
    ToDependencies,
}

/// What a rule does to the neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// They work worse.
    Degrade,
    /// They stop working.
    Fail,
}

impl Effect {
    /// The status it leaves.
    pub fn status(self) -> Status {
        match self {
            Effect::Degrade => Status::Degraded,
            Effect::Fail => Status::Failed,
        }
    }
}

/// The effect a rule has over an edge: an optional edge carries at most
/// [`Effect::Degrade`].
pub fn effect_over(effect: Effect, criticality: Criticality) -> Effect {
    match criticality {
        Criticality::Critical => effect,
        Criticality::Optional => effect.min(Effect::Degrade),
    }
}

/// A propagation rule. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique name, 1 to [`RULE_NAME_LEN_MAX`] bytes, for the timeline.
    pub name: String,
    /// When it fires.
    pub trigger: Trigger,
    /// Where its effect lands.
    pub direction: Direction,
    /// The effect (at most Degrade over an optional edge).
    pub effect: Effect,
    /// How long the trigger must hold before it fires, at most
    /// [`DELAY_MS_MAX`].
    #[serde(default)]
    pub delay_ms: u64,
}

/// The default rules. See the module docs.
pub fn default_rules() -> Vec<Rule> {
    let to_dependents = |name: &str, trigger, effect| Rule {
        name: name.to_string(),
        trigger,
        direction: Direction::ToDependents,
        effect,
        delay_ms: 0,
    };
    vec![
        to_dependents(
            "dependency_failure",
            Trigger::DependencyFailure,
            Effect::Fail,
        ),
        to_dependents(
            "error_rate",
            Trigger::ErrorRate { above: 0.5 },
            Effect::Degrade,
        ),
        to_dependents(
            "latency",
            Trigger::Latency { above_ms: 2_000 },
            Effect::Degrade,
        ),
        to_dependents(
            "queue_depth",
            Trigger::QueueDepth { above: 1_000 },
            Effect::Degrade,
        ),
        to_dependents(
            "timeout_rate",
            Trigger::TimeoutRate { above: 0.2 },
            Effect::Degrade,
        ),
    ]
}

/// Why an engine is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PropagationError {
    /// The graph is refused.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A rule's name is empty or longer than [`RULE_NAME_LEN_MAX`].
    #[error("rule name {0:?} must be 1-{RULE_NAME_LEN_MAX} bytes")]
    RuleName(String),
    /// Two rules share a name.
    #[error("rule {0} is defined twice")]
    DuplicateRule(String),
    /// More than [`RULES_MAX`] rules.
    #[error("more than {RULES_MAX} rules")]
    TooManyRules,
    /// A rate threshold is not in 0..=1.
    #[error("rule {rule}: threshold {above} is not in 0..=1")]
    Threshold {
        /// The rule.
        rule: String,
        /// The threshold given.
        above: f64,
    },
    /// A delay over [`DELAY_MS_MAX`].
    #[error("rule {rule}: delay {delay_ms} ms is over {DELAY_MS_MAX}")]
    Delay {
        /// The rule.
        rule: String,
        /// The delay given.
        delay_ms: u64,
    },
    /// The breaker settings are refused.
    #[error("breaker config: {0}")]
    Breaker(String),
    /// `calls_per_step` not in 1..=[`CALLS_PER_STEP_MAX`].
    #[error("calls_per_step {0} is not in 1..={CALLS_PER_STEP_MAX}")]
    CallsPerStep(u32),
    /// `events_max` is 0.
    #[error("events_max must be at least 1")]
    EventsMax,
}

impl Rule {
    /// Checks the name, the thresholds and the delay.
    pub fn validate(&self) -> Result<(), PropagationError> {
        if self.name.is_empty() || self.name.len() > RULE_NAME_LEN_MAX {
            return Err(PropagationError::RuleName(
                self.name.chars().take(RULE_NAME_LEN_MAX).collect(),
            ));
        }
        if let Trigger::ErrorRate { above } | Trigger::TimeoutRate { above } = self.trigger {
            if !(0.0..=1.0).contains(&above) {
                return Err(PropagationError::Threshold {
                    rule: self.name.clone(),
                    above,
                });
            }
        }
        if self.delay_ms > DELAY_MS_MAX {
            return Err(PropagationError::Delay {
                rule: self.name.clone(),
                delay_ms: self.delay_ms,
            });
        }
        Ok(())
    }
}

/// Settings of an [`Engine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The breaker on every edge.
    pub breaker: BreakerConfig,
    /// Calls recorded per edge per step: the resolution of the error rate
    /// the breakers see (10 calls: steps of 10%).
    pub calls_per_step: u32,
    /// Events kept in the timeline; beyond, the oldest are dropped.
    pub events_max: usize,
}

impl Default for EngineConfig {
    /// The flow kit's default breaker, 10 calls a step, 100,000 events.
    fn default() -> EngineConfig {
        EngineConfig {
            breaker: BreakerConfig::default(),
            calls_per_step: 10,
            events_max: 100_000,
        }
    }
}

impl EngineConfig {
    /// Small and fast for tests: one call a step; a breaker over the last
    /// 4 calls that opens at 50% failed after 3 calls, for 1 s, and closes
    /// after 2 good probes.
    pub fn test() -> EngineConfig {
        EngineConfig {
            breaker: BreakerConfig {
                window: Window::Count(4),
                failure_rate_pct: 50,
                slow_call_rate_pct: 100,
                slow_call_ms: 5_000,
                min_calls: 3,
                open_ms: 1_000,
                half_open_probes: 2,
            },
            calls_per_step: 1,
            events_max: 10_000,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), PropagationError> {
        self.breaker.validate().map_err(PropagationError::Breaker)?;
        if self.calls_per_step == 0 || self.calls_per_step > CALLS_PER_STEP_MAX {
            return Err(PropagationError::CallsPerStep(self.calls_per_step));
        }
        if self.events_max == 0 {
            return Err(PropagationError::EventsMax);
        }
        Ok(())
    }
}

/// An event's id: its place in the engine's sequence, from 0.
pub type EventId = u64;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// The component's own observation put it in `status` (a root).
    Observed {
        /// Its status now.
        status: Status,
    },
    /// An observed metric went over a rule's threshold (a root).
    Crossed {
        /// The rule.
        rule: String,
        /// The metric.
        metric: String,
        /// Its value.
        value: f64,
        /// The threshold.
        above: f64,
    },
    /// A rule carried a failure or degradation here from `from`.
    Propagated {
        /// Its status now.
        status: Status,
        /// The neighbour it came from.
        from: String,
        /// The edge's criticality.
        criticality: Criticality,
        /// The rule.
        rule: String,
        /// The rule's direction: `ToDependents` when `from` is a dependency
        /// of this component, `ToDependencies` when it is a dependent.
        direction: Direction,
    },
    /// Back to Up (the cause is what it recovered from).
    Recovered,
    /// The breaker on the edge from this component to `dependency` changed.
    Breaker {
        /// The dependency it guards.
        dependency: String,
        /// The state it left ([`crate::flow::breaker::State::name`]).
        from: String,
        /// The state it entered.
        to: String,
    },
}

/// One step of the causal timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its id.
    pub id: EventId,
    /// When.
    pub at_ms: u64,
    /// Where (for a breaker, the dependent that holds it).
    pub component: String,
    /// What.
    pub what: What,
    /// The event that led to it; `None` for an observation.
    pub cause: Option<EventId>,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, c) = (self.at_ms, &self.component);
        match &self.what {
            What::Observed { status } => write!(f, "t={t}ms {c} {} (observed)", status.name()),
            What::Crossed {
                rule,
                metric,
                value,
                above,
            } => write!(
                f,
                "t={t}ms {c} {metric} {value} > {above} (observed, rule {rule})"
            ),
            What::Propagated {
                status,
                from,
                criticality,
                rule,
                direction,
            } => write!(
                f,
                "t={t}ms {c} {} ({} {} {from}, rule {rule})",
                status.name(),
                criticality.name(),
                match direction {
                    Direction::ToDependents => "dependency",
                    Direction::ToDependencies => "dependent",
                },
            ),
            What::Recovered => write!(f, "t={t}ms {c} RECOVERED"),
            What::Breaker { dependency, to, .. } => {
                write!(f, "t={t}ms breaker {c}->{dependency} {}", to.to_uppercase())
            }
        }
    }
}

/// Why a component is in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    /// Its own observation.
    Observed,
    /// A rule from a neighbour.
    Propagated {
        from: String,
        rule: usize,
        criticality: Criticality,
    },
}

/// A component's status as the engine holds it between steps.
#[derive(Debug, Clone)]
struct Standing {
    status: Status,
    reason: Reason,
    /// The event that put it there (`None` before its first change).
    event: Option<EventId>,
    /// Since when it has had this status.
    since_ms: u64,
}

/// A metric rule's trigger holding on one component.
#[derive(Debug, Clone, Copy)]
struct Crossing {
    since_ms: u64,
    event: EventId,
}

#[derive(Debug, Clone)]
struct EdgeBreaker {
    breaker: Breaker,
    /// Its last transition's event.
    last_event: Option<EventId>,
}

/// The propagation engine. See the module docs.
#[derive(Debug, Clone)]
pub struct Engine {
    graph: DependencyGraph,
    rules: Vec<Rule>,
    config: EngineConfig,
    observed: BTreeMap<String, Health>,
    standing: BTreeMap<String, Standing>,
    crossings: BTreeMap<(usize, String), Crossing>,
    breakers: BTreeMap<(String, String), EdgeBreaker>,
    history: VecDeque<Event>,
    next_id: EventId,
    dropped: u64,
    last_ms: u64,
    /// What an effect becomes over an edge: [`effect_over`] (tests plant
    /// a wrong one to show [`Engine::check`] catching it).
    clamp: fn(Effect, Criticality) -> Effect,
}

impl Engine {
    /// An engine over `graph` with `rules`, every component Up, every
    /// breaker closed.
    pub fn new(
        graph: DependencyGraph,
        rules: Vec<Rule>,
        config: EngineConfig,
    ) -> Result<Engine, PropagationError> {
        config.validate()?;
        if rules.len() > RULES_MAX {
            return Err(PropagationError::TooManyRules);
        }
        let mut names = BTreeSet::new();
        for r in &rules {
            r.validate()?;
            if !names.insert(r.name.as_str()) {
                return Err(PropagationError::DuplicateRule(r.name.clone()));
            }
        }
        let up = Standing {
            status: Status::Up,
            reason: Reason::Observed,
            event: None,
            since_ms: 0,
        };
        let breakers = graph
            .edges()
            .into_iter()
            .map(|e| {
                let b = EdgeBreaker {
                    breaker: Breaker::new(config.breaker.clone()),
                    last_event: None,
                };
                ((e.dependent, e.dependency), b)
            })
            .collect();
        Ok(Engine {
            observed: graph
                .components()
                .map(|c| (c.into(), Health::up()))
                .collect(),
            standing: graph.components().map(|c| (c.into(), up.clone())).collect(),
            graph,
            rules,
            config,
            crossings: BTreeMap::new(),
            breakers,
            history: VecDeque::new(),
            next_id: 0,
            dropped: 0,
            last_ms: 0,
            clamp: effect_over,
        })
    }

    /// An engine whose effects ignore criticality: the planted bug that
    /// [`Engine::check`] must catch.
    #[cfg(test)]
    fn ignoring_criticality(mut self) -> Engine {
        self.clamp = |effect, _| effect;
        self
    }

    /// Takes this step's observations at `now_ms` (a time before the last
    /// step's is taken as the last step's) and answers with what happened,
    /// in causal order: metric crossings, status changes (observations
    /// first, then propagations, each after its cause), breaker changes.
    pub fn step(&mut self, now_ms: u64, observations: &BTreeMap<String, Health>) -> Vec<Event> {
        let now = now_ms.max(self.last_ms);
        self.last_ms = now;
        for (c, h) in observations {
            if let Some(o) = self.observed.get_mut(c) {
                *o = *h;
            }
        }
        let mut out = Vec::new();
        self.update_crossings(now, &mut out);
        let (next, order) = self.settle(now);
        self.apply_statuses(now, &next, &order, &mut out);
        self.step_breakers(now, &mut out);
        for e in &out {
            if self.history.len() >= self.config.events_max {
                self.history.pop_front();
                self.dropped += 1;
            }
            self.history.push_back(e.clone());
        }
        out
    }

    fn event(
        &mut self,
        out: &mut Vec<Event>,
        at_ms: u64,
        component: &str,
        what: What,
        cause: Option<EventId>,
    ) -> EventId {
        let id = self.next_id;
        self.next_id += 1;
        out.push(Event {
            id,
            at_ms,
            component: component.to_string(),
            what,
            cause,
        });
        id
    }

    /// Starts and ends the metric rules' crossings; a start is an event.
    fn update_crossings(&mut self, now: u64, out: &mut Vec<Event>) {
        let mut seen = Vec::new();
        for (ri, rule) in self.rules.iter().enumerate() {
            for (c, h) in &self.observed {
                if let Some((value, above, over)) = rule.trigger.crossed(h) {
                    // A failed component is judged by its status alone.
                    let over = over && h.status != Status::Failed;
                    seen.push((ri, c.clone(), (value, above, over)));
                }
            }
        }
        for (ri, c, (value, above, over)) in seen {
            let key = (ri, c);
            match (over, self.crossings.contains_key(&key)) {
                (true, false) => {
                    let what = What::Crossed {
                        rule: self.rules[ri].name.clone(),
                        metric: self.rules[ri].trigger.metric().to_string(),
                        value,
                        above,
                    };
                    let event = self.event(out, now, &key.1, what, None);
                    self.crossings.insert(
                        key,
                        Crossing {
                            since_ms: now,
                            event,
                        },
                    );
                }
                (false, true) => {
                    self.crossings.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// Every component's status this step: its observation, made worse by
    /// every rule that fires on a neighbour, to a fixed point. Statuses only
    /// get worse while it runs, at most twice per component, so it ends.
    /// Also returns the propagated components in the order they last
    /// changed (each after its source).
    fn settle(&self, now: u64) -> (BTreeMap<String, (Status, Reason)>, Vec<String>) {
        let mut next: BTreeMap<String, (Status, Reason)> = self
            .observed
            .iter()
            .map(|(c, h)| (c.clone(), (h.status, Reason::Observed)))
            .collect();
        let mut order: Vec<String> = Vec::new();
        let mut queue: VecDeque<String> = next.keys().cloned().collect();
        while let Some(s) = queue.pop_front() {
            let status = next[&s].0;
            for (ri, rule) in self.rules.iter().enumerate() {
                if !self.fires(ri, rule, &s, status, now) {
                    continue;
                }
                for (n, criticality) in self.graph.neighbours(&s, rule.direction) {
                    let to = (self.clamp)(rule.effect, criticality).status();
                    let cur = next.get_mut(n).expect("a neighbour is a component");
                    if to > cur.0 {
                        *cur = (
                            to,
                            Reason::Propagated {
                                from: s.clone(),
                                rule: ri,
                                criticality,
                            },
                        );
                        order.push(n.to_string());
                        queue.push_back(n.to_string());
                    }
                }
            }
        }
        assert!(order.len() <= 2 * next.len(), "a status got worse > twice");
        (next, order)
    }

    /// Whether rule `ri` fires on source `s`, now `status`.
    fn fires(&self, ri: usize, rule: &Rule, s: &str, status: Status, now: u64) -> bool {
        match rule.trigger {
            Trigger::DependencyFailure => {
                let since = match self.standing.get(s) {
                    Some(st) if st.status == Status::Failed => st.since_ms,
                    _ => now,
                };
                status == Status::Failed && now - since >= rule.delay_ms
            }
            _ => self
                .crossings
                .get(&(ri, s.to_string()))
                .is_some_and(|c| now - c.since_ms >= rule.delay_ms),
        }
    }

    /// Records each changed status as an event, sources before the
    /// components they reached.
    fn apply_statuses(
        &mut self,
        now: u64,
        next: &BTreeMap<String, (Status, Reason)>,
        order: &[String],
        out: &mut Vec<Event>,
    ) {
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, c) in order.iter().enumerate() {
            last.insert(c, i);
        }
        let mut propagated: Vec<(usize, &str)> = last.into_iter().map(|(c, i)| (i, c)).collect();
        propagated.sort_unstable();
        let observed = next
            .iter()
            .filter(|(_, (_, r))| *r == Reason::Observed)
            .map(|(c, _)| c.as_str());
        let seq: Vec<&str> = observed
            .chain(propagated.into_iter().map(|(_, c)| c))
            .collect();
        for c in seq {
            let (status, reason) = &next[c];
            let old = &self.standing[c];
            if old.status == *status && old.reason == *reason {
                continue;
            }
            let (what, cause) = match reason {
                _ if *status == Status::Up => (What::Recovered, old.event),
                Reason::Observed => (What::Observed { status: *status }, None),
                Reason::Propagated {
                    from,
                    rule,
                    criticality,
                } => {
                    let r = &self.rules[*rule];
                    let what = What::Propagated {
                        status: *status,
                        from: from.clone(),
                        criticality: *criticality,
                        rule: r.name.clone(),
                        direction: r.direction,
                    };
                    (what, self.trigger_event(*rule, from))
                }
            };
            let since_ms = if old.status == *status {
                old.since_ms
            } else {
                now
            };
            let id = self.event(out, now, c, what, cause);
            self.standing.insert(
                c.to_string(),
                Standing {
                    status: *status,
                    reason: reason.clone(),
                    event: Some(id),
                    since_ms,
                },
            );
        }
    }

    /// The event that makes rule `ri` fire on `source`: its Failed status
    /// event, or its crossing.
    fn trigger_event(&self, ri: usize, source: &str) -> Option<EventId> {
        match self.rules[ri].trigger {
            Trigger::DependencyFailure => self.standing.get(source).and_then(|s| s.event),
            _ => self
                .crossings
                .get(&(ri, source.to_string()))
                .map(|c| c.event),
        }
    }

    /// Why calls to `component` fail: its status event if it is not Up,
    /// else its latest crossing, else nothing known.
    fn trouble_on(&self, component: &str) -> Option<EventId> {
        let st = self.standing.get(component)?;
        if st.status != Status::Up {
            return st.event;
        }
        self.crossings
            .iter()
            .filter(|((_, c), _)| c == component)
            .map(|(_, x)| x.event)
            .max()
    }

    /// Records this step's calls on every edge's breaker; their transitions
    /// are events.
    fn step_breakers(&mut self, now: u64, out: &mut Vec<Event>) {
        let n = self.config.calls_per_step;
        let edges: Vec<(String, String)> = self.breakers.keys().cloned().collect();
        for edge in edges {
            let h = self.observed[&edge.1];
            let failed = if self.standing[&edge.1].status == Status::Failed {
                n
            } else {
                share(h.error_rate.max(h.timeout_rate), n)
            };
            let eb = self.breakers.get_mut(&edge).expect("edge has a breaker");
            for i in 0..n {
                let Ok(permit) = eb.breaker.try_acquire(now) else {
                    break;
                };
                let outcome = if fails(i, failed, n) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                eb.breaker.on_result(permit, outcome, h.latency_ms, now);
            }
            for t in eb.breaker.drain_events() {
                let cause = match t.to {
                    "open" | "forced_open" => self.trouble_on(&edge.1),
                    _ => self.breakers[&edge].last_event,
                };
                let what = What::Breaker {
                    dependency: edge.1.clone(),
                    from: t.from.to_string(),
                    to: t.to.to_string(),
                };
                let id = self.event(out, now, &edge.0, what, cause);
                if let Some(eb) = self.breakers.get_mut(&edge) {
                    eb.last_event = Some(id);
                }
            }
        }
    }
}

/// Whether call `i` of `n` is one of the `failed`: spread evenly through
/// the step (Bresenham), so a count window sees the rate, not a burst.
fn fails(i: u32, failed: u32, n: u32) -> bool {
    let (i, failed, n) = (u64::from(i), u64::from(failed), u64::from(n));
    (i + 1) * failed / n > i * failed / n
}

/// Of `n` calls, how many fail at `rate` (rounded; NaN counts as 0).
fn share(rate: f64, n: u32) -> u32 {
    if !rate.is_finite() {
        return 0;
    }
    let f = (rate.clamp(0.0, 1.0) * f64::from(n)).round();
    // In 0..=n by the clamp.
    f as u32
}

#[cfg(test)]
mod tests;
