//! The dependency graph and the graph of a real facility (see the
//! parent module's docs for the table and the quorum choice).

use std::collections::{BTreeMap, BTreeSet};

use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};

use super::Direction;

/// Components one graph holds at most.
pub const COMPONENTS_MAX: usize = 4_096;
/// Edges one graph holds at most.
pub const EDGES_MAX: usize = 65_536;
/// Longest component id, in bytes.
pub const COMPONENT_LEN_MAX: usize = 128;

/// How much a dependent needs a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    /// It works worse without it.
    Optional,
    /// It cannot work without it.
    Critical,
}

impl Criticality {
    /// The name, for the timeline.
    pub fn name(self) -> &'static str {
        match self {
            Criticality::Optional => "optional",
            Criticality::Critical => "critical",
        }
    }
}

/// One edge: `dependent` depends on `dependency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The component that calls.
    pub dependent: String,
    /// The component it calls.
    pub dependency: String,
    /// How much it needs it.
    pub criticality: Criticality,
}

/// Why a graph is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// An id is empty or longer than [`COMPONENT_LEN_MAX`].
    #[error("component id {0:?} must be 1-{COMPONENT_LEN_MAX} bytes")]
    ComponentId(String),
    /// A component depends on itself.
    #[error("{0} depends on itself")]
    SelfDependency(String),
    /// More than [`COMPONENTS_MAX`] components.
    #[error("more than {COMPONENTS_MAX} components")]
    TooManyComponents,
    /// More than [`EDGES_MAX`] edges.
    #[error("more than {EDGES_MAX} edges")]
    TooManyEdges,
}

/// Components and who depends on whom. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencyGraph {
    /// component -> its dependencies.
    deps: BTreeMap<String, BTreeMap<String, Criticality>>,
    /// component -> its dependents.
    dependents: BTreeMap<String, BTreeMap<String, Criticality>>,
    edges: usize,
}

impl DependencyGraph {
    /// An empty graph.
    pub fn new() -> DependencyGraph {
        DependencyGraph::default()
    }

    /// A graph of these edges (their components included).
    pub fn from_edges(edges: &[Edge]) -> Result<DependencyGraph, GraphError> {
        let mut g = DependencyGraph::new();
        for e in edges {
            g.depends_on(&e.dependent, &e.dependency, e.criticality)?;
        }
        Ok(g)
    }

    /// Adds a component with no edges (nothing if it exists).
    pub fn add_component(&mut self, id: &str) -> Result<(), GraphError> {
        if id.is_empty() || id.len() > COMPONENT_LEN_MAX {
            return Err(GraphError::ComponentId(
                id.chars().take(COMPONENT_LEN_MAX).collect(),
            ));
        }
        if self.deps.contains_key(id) {
            return Ok(());
        }
        if self.deps.len() >= COMPONENTS_MAX {
            return Err(GraphError::TooManyComponents);
        }
        self.deps.insert(id.to_string(), BTreeMap::new());
        self.dependents.insert(id.to_string(), BTreeMap::new());
        Ok(())
    }

    /// Records that `dependent` depends on `dependency` (both added if
    /// new); an existing edge takes the new criticality.
    pub fn depends_on(
        &mut self,
        dependent: &str,
        dependency: &str,
        criticality: Criticality,
    ) -> Result<(), GraphError> {
        if dependent == dependency {
            return Err(GraphError::SelfDependency(dependent.to_string()));
        }
        let new = self.criticality(dependent, dependency).is_none();
        if new && self.edges >= EDGES_MAX {
            return Err(GraphError::TooManyEdges);
        }
        self.add_component(dependent)?;
        self.add_component(dependency)?;
        self.deps
            .entry(dependent.to_string())
            .or_default()
            .insert(dependency.to_string(), criticality);
        self.dependents
            .entry(dependency.to_string())
            .or_default()
            .insert(dependent.to_string(), criticality);
        self.edges += usize::from(new);
        Ok(())
    }

    /// Whether `id` is a component.
    pub fn contains(&self, id: &str) -> bool {
        self.deps.contains_key(id)
    }

    /// Every component, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.deps.keys().map(String::as_str)
    }

    /// Every edge, by dependent then dependency.
    pub fn edges(&self) -> Vec<Edge> {
        self.deps
            .iter()
            .flat_map(|(a, m)| {
                m.iter().map(move |(b, c)| Edge {
                    dependent: a.clone(),
                    dependency: b.clone(),
                    criticality: *c,
                })
            })
            .collect()
    }

    /// How much `dependent` needs `dependency`; `None` without an edge.
    pub fn criticality(&self, dependent: &str, dependency: &str) -> Option<Criticality> {
        self.deps.get(dependent)?.get(dependency).copied()
    }

    /// What `id` depends on directly.
    pub fn dependencies(&self, id: &str) -> impl Iterator<Item = (&str, Criticality)> {
        self.deps
            .get(id)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, c)| (k.as_str(), *c)))
    }

    /// What depends on `id` directly.
    pub fn dependents(&self, id: &str) -> impl Iterator<Item = (&str, Criticality)> {
        self.dependents
            .get(id)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, c)| (k.as_str(), *c)))
    }

    /// Everything that depends on `id`, directly or not (without `id`).
    pub fn upstream(&self, id: &str) -> BTreeSet<String> {
        self.reach(id, &self.dependents, false)
    }

    /// Everything `id` depends on, directly or not (without `id`).
    pub fn downstream(&self, id: &str) -> BTreeSet<String> {
        self.reach(id, &self.deps, false)
    }

    /// Everything that cannot work without `id`: its dependents through
    /// critical edges only (without `id`).
    pub fn fails_with(&self, id: &str) -> BTreeSet<String> {
        self.reach(id, &self.dependents, true)
    }

    fn reach(
        &self,
        id: &str,
        adj: &BTreeMap<String, BTreeMap<String, Criticality>>,
        critical_only: bool,
    ) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id];
        while let Some(c) = todo.pop() {
            for (n, crit) in adj.get(c).into_iter().flatten() {
                if (!critical_only || *crit == Criticality::Critical)
                    && n != id
                    && seen.insert(n.clone())
                {
                    todo.push(n);
                }
            }
        }
        seen
    }

    /// The neighbours a rule in `direction` reaches from `id`.
    pub(super) fn neighbours(&self, id: &str, direction: Direction) -> Vec<(&str, Criticality)> {
        match direction {
            Direction::ToDependents => self.dependents(id).collect(),
            Direction::ToDependencies => self.dependencies(id).collect(),
        }
    }
}

/// The HTTP API (the Scheduler role).
pub const API: &str = "api";
/// The BackpressureController.
pub const BACKPRESSURE: &str = "backpressure";
/// The BulkheadPool.
pub const BULKHEAD: &str = "bulkhead";
/// The CapGate.
pub const GATE: &str = "gate";
/// The RaftPeer.
pub const RAFT: &str = "raft";
/// The BftValidator.
pub const BFT: &str = "bft";
/// The FailureDetector.
pub const DETECTOR: &str = "detector";
/// The Healer.
pub const HEALER: &str = "healer";
/// The CircuitBreaker actor and its mesh.
pub const BREAKERS: &str = "breakers";
/// The facility's redb store.
pub const STORE: &str = "store";

/// The component id of `actor` at `facility`: `"alpha/raft"`.
pub fn component(facility: &FacilityId, actor: &str) -> String {
    format!("{facility}/{actor}")
}

/// The real actors of these facilities and their dependencies (the table
/// in the module docs). Repeated facilities count once.
pub fn bulwark_graph(facilities: &[FacilityId]) -> Result<DependencyGraph, GraphError> {
    use Criticality::{Critical, Optional};
    let all: BTreeSet<&FacilityId> = facilities.iter().collect();
    let local: [(&str, &str, Criticality); 19] = [
        (API, BACKPRESSURE, Critical),
        (API, GATE, Critical),
        (API, STORE, Critical),
        (API, BULKHEAD, Optional),
        (API, RAFT, Optional),
        (API, BFT, Optional),
        (API, BREAKERS, Optional),
        (API, DETECTOR, Optional),
        (GATE, RAFT, Critical),
        (GATE, DETECTOR, Optional),
        (GATE, STORE, Optional),
        (HEALER, RAFT, Critical),
        (HEALER, STORE, Critical),
        (HEALER, DETECTOR, Optional),
        (BFT, RAFT, Critical),
        (BFT, STORE, Critical),
        (RAFT, STORE, Critical),
        (BREAKERS, DETECTOR, Optional),
        (BREAKERS, BACKPRESSURE, Optional),
    ];
    let mut g = DependencyGraph::new();
    for f in &all {
        for (a, b, c) in local {
            g.depends_on(&component(f, a), &component(f, b), c)?;
        }
        for peer in all.iter().filter(|p| *p != f) {
            for actor in [RAFT, BFT] {
                g.depends_on(&component(f, actor), &component(peer, actor), Optional)?;
            }
        }
    }
    Ok(g)
}
