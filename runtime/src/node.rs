//! Node: one facility's supervision tree, built from config.
//!
//! `Node::start` opens the facility's redb store, builds a [`Router`] over
//! the given transport, and spawns root -> zone supervisors -> actors. Each
//! actor is described by a [`ChildDef`]: a name and a function that makes a
//! fresh actor and its arguments from the [`NodeCtx`], so a restart rebuilds
//! the actor from durable state, never from the old one's memory.
//!
//! Shutdown: [`Node::stop`] stops the root, which stops every zone and actor,
//! and waits for it; the store is closed when the last handle drops.

use crate::builtin::{inbox_child, link_children, probe_child};
use crate::router::{Router, RouterConfig};
use crate::supervision::{SpawnLedger, SupervisionConfig, Zone, ZoneConfig};
use crate::Clock;
use bulwark_storage::Store;
use bulwark_transport::{FacilityId, Inbound, Transport};
use ractor::concurrency::Duration;
use ractor::{Actor, ActorCell, ActorRef, SpawnErr};
use ractor_supervisor::{
    ChildSpec, Restart, SpawnFn, Supervisor, SupervisorArguments, SupervisorMsg, SupervisorOptions,
};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What every actor of a facility can reach.
#[derive(Clone)]
pub struct NodeCtx {
    /// This facility.
    pub facility: FacilityId,
    /// Delivery to actors here and on peers.
    pub router: Router,
    /// Time, real or virtual.
    pub clock: Arc<dyn Clock>,
    /// The facility's durable store.
    pub store: Store,
    /// Spawn counts of every supervised actor.
    pub spawns: SpawnLedger,
    /// True if the store was created by this node start (no earlier state
    /// on disk). Consensus bootstraps a new cluster only from a fresh store.
    pub fresh_store: bool,
    /// Prefix of every registry name of this node: the facility and a
    /// process-wide start counter (`alpha.3`), because ractor's registry is
    /// global to the process and a test process runs many nodes.
    scope: Arc<str>,
}

/// Counts node starts in this process, for [`NodeCtx`] scopes.
static NODE_STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl NodeCtx {
    /// The process-unique registry name of `actor` in `zone`.
    pub fn actor_name(&self, zone: Zone, actor: &str) -> String {
        format!("{}/{}/{}", self.scope, zone.as_str(), actor)
    }

    /// The running actor `actor` of `zone` on this node, if any (its
    /// current incarnation: a restarted actor is found again).
    pub fn find<M: ractor::Message>(&self, zone: Zone, actor: &str) -> Option<ractor::ActorRef<M>> {
        ractor::registry::where_is(self.actor_name(zone, actor)).map(Into::into)
    }

    /// Kills the actor `actor` of `zone` as a crash would (its supervisor
    /// decides what follows). False if no such actor runs.
    pub fn kill_actor(&self, zone: Zone, actor: &str) -> bool {
        match ractor::registry::where_is(self.actor_name(zone, actor)) {
            Some(cell) => {
                cell.kill();
                true
            }
            None => false,
        }
    }
}

type Make = Arc<dyn Fn(NodeCtx, ActorCell, String) -> ractor_supervisor::SpawnFuture + Send + Sync>;

/// One supervised actor: a name and how to make it afresh.
#[derive(Clone)]
pub struct ChildDef {
    name: String,
    make: Make,
}

impl ChildDef {
    /// `make` builds the actor and its arguments for each (re)spawn.
    pub fn new<A, F>(name: impl Into<String>, make: F) -> Self
    where
        A: Actor,
        F: Fn(&NodeCtx) -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let make: Make = Arc::new(move |ctx, cell, id| {
            let (actor, args) = make(&ctx);
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(Some(id), actor, args, cell).await?;
                Ok(r.get_cell())
            })
        });
        ChildDef {
            name: name.into(),
            make,
        }
    }

    /// The actor's name within its zone.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The store's file name in a facility's data directory.
pub const STORE_FILE: &str = "bulwark.redb";

/// Everything a node needs besides its transport.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This facility.
    pub facility: FacilityId,
    /// Where the redb file lives (`<data_dir>/bulwark.redb`).
    pub data_dir: PathBuf,
    /// Strategies and restart intensities.
    pub supervision: SupervisionConfig,
    /// Router limits.
    pub router: RouterConfig,
    /// The cluster the store must belong to (stamped into a store that
    /// names none); `None`: not checked (in-process harnesses).
    pub cluster: Option<[u8; 16]>,
}

impl NodeConfig {
    /// The store's path.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store could not be opened.
    #[error(transparent)]
    Storage(#[from] bulwark_storage::StorageError),
    /// The config is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// The supervision tree could not be spawned.
    #[error("spawn failed: {0}")]
    Spawn(#[from] SpawnErr),
    /// The tree did not come up.
    #[error("supervision tree did not come up: {0}")]
    NotReady(String),
    /// The transport's id differs from the config's facility.
    #[error("transport is {transport}, config says {config}")]
    WrongTransport {
        /// The transport's id.
        transport: FacilityId,
        /// The config's facility.
        config: FacilityId,
    },
}

/// A running facility.
pub struct Node {
    ctx: NodeCtx,
    root: ActorRef<SupervisorMsg>,
    /// The root's task; `None` once it has been seen to end.
    done: Option<ractor::concurrency::JoinHandle<()>>,
    tree: Vec<(Zone, ZoneConfig, Vec<String>)>,
    fresh_store: bool,
}

impl Node {
    /// Starts the tree with the built-in actors plus `extra`.
    pub async fn start(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
        clock: Arc<dyn Clock>,
        extra: Vec<(Zone, ChildDef)>,
    ) -> Result<Node, NodeError> {
        Self::start_in(config, transport, inbound, clock, extra, None).await
    }

    /// [`Node::start`] with the store on `disk` instead of the file under
    /// `data_dir` (the harness's power-loss runs).
    pub async fn start_on(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
        clock: Arc<dyn Clock>,
        extra: Vec<(Zone, ChildDef)>,
        disk: crate::disk::SimDisk,
    ) -> Result<Node, NodeError> {
        Self::start_in(config, transport, inbound, clock, extra, Some(disk)).await
    }

    async fn start_in(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Inbound>,
        clock: Arc<dyn Clock>,
        extra: Vec<(Zone, ChildDef)>,
        disk: Option<crate::disk::SimDisk>,
    ) -> Result<Node, NodeError> {
        config.supervision.validate().map_err(NodeError::Config)?;
        if transport.local_id() != &config.facility {
            return Err(NodeError::WrongTransport {
                transport: transport.local_id().clone(),
                config: config.facility.clone(),
            });
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Config(format!("data_dir {}: {e}", config.data_dir.display()))
        })?;
        let opened = match disk {
            Some(d) => Store::open_backend(d, &config.db_path(), config.facility.as_str())?,
            None => Store::open(&config.db_path(), config.facility.as_str())?,
        };
        if let Some(cluster) = &config.cluster {
            opened.store.claim_cluster(cluster)?;
        }
        let router = Router::new(transport.clone(), clock.clone(), config.router.clone());
        let ctx = NodeCtx {
            facility: config.facility.clone(),
            router,
            clock,
            store: opened.store,
            spawns: SpawnLedger::default(),
            fresh_store: opened.fresh,
            scope: format!(
                "{}.{}",
                config.facility,
                NODE_STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
            .into(),
        };
        let mut children = builtin_children(&*transport, inbound);
        children.extend(extra);
        let tree = Self::layout(&config.supervision, &children);
        let root_args = root_arguments(&ctx, &config.supervision, &children);
        let (root, done) = Supervisor::spawn(format!("{}/root", ctx.scope), root_args).await?;
        // Supervisors spawn their children in post_start; a call returns only
        // after it, so answering root then every zone means the whole tree is
        // up (each child's pre_start has run) when start returns.
        let ask = |r: ActorRef<SupervisorMsg>| async move {
            ractor::call!(r, SupervisorMsg::InspectState)
                .map(|_| ())
                .map_err(|e| NodeError::NotReady(e.to_string()))
        };
        ask(root.clone()).await?;
        for zone in Zone::ALL {
            if let Some(cell) =
                ractor::registry::where_is(format!("{}/{}", ctx.scope, zone.as_str()))
            {
                ask(cell.into()).await?;
            }
        }
        Ok(Node {
            ctx,
            root,
            done: Some(done),
            tree,
            fresh_store: opened.fresh,
        })
    }

    fn layout(
        sup: &SupervisionConfig,
        children: &[(Zone, ChildDef)],
    ) -> Vec<(Zone, ZoneConfig, Vec<String>)> {
        Zone::ALL
            .iter()
            .map(|&z| {
                let names = children
                    .iter()
                    .filter(|(cz, _)| *cz == z)
                    .map(|(_, c)| c.name.clone())
                    .collect();
                (z, sup.zone(z), names)
            })
            .collect()
    }

    /// What every actor can reach.
    pub fn ctx(&self) -> &NodeCtx {
        &self.ctx
    }

    /// This facility.
    pub fn facility(&self) -> &FacilityId {
        &self.ctx.facility
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.ctx.router
    }

    /// True if the store was created by this start (no earlier state).
    pub fn fresh_store(&self) -> bool {
        self.fresh_store
    }

    /// True while the root supervisor runs.
    pub fn is_running(&self) -> bool {
        self.done.as_ref().is_some_and(|d| !d.is_finished())
    }

    /// The supervision tree, one line per supervisor or actor.
    pub fn tree(&self) -> String {
        let mut out = format!("{}/root (one-for-one)\n", self.ctx.facility);
        for (zone, zc, names) in &self.tree {
            let strategy = serde_plain(zc.strategy);
            out += &format!(
                "  {} ({strategy}, max {} restarts in {} ms)\n",
                zone.as_str(),
                zc.max_restarts,
                zc.window_ms
            );
            for n in names {
                out += &format!("    {n}\n");
            }
        }
        out
    }

    /// Waits until the root supervisor has stopped by itself (escalation
    /// past the root's intensity) or `timeout` passes.
    pub async fn wait_stopped(&mut self, timeout: Duration) -> bool {
        let Some(done) = self.done.as_mut() else {
            return true;
        };
        let ended = tokio::time::timeout(timeout, done).await.is_ok();
        if ended {
            self.done = None;
        }
        ended
    }

    /// Stops every actor and waits for the tree to end.
    pub async fn stop(self) {
        self.root.stop(None);
        if let Some(done) = self.done {
            let _ = done.await;
        }
    }
}

fn serde_plain(s: crate::supervision::Strategy) -> &'static str {
    use crate::supervision::Strategy::*;
    match s {
        OneForOne => "one-for-one",
        OneForAll => "one-for-all",
        RestForOne => "rest-for-one",
    }
}

fn builtin_children(
    transport: &dyn Transport,
    inbound: mpsc::Receiver<Inbound>,
) -> Vec<(Zone, ChildDef)> {
    let mut children = vec![(Zone::Transport, inbox_child(inbound))];
    children.extend(
        link_children(transport)
            .into_iter()
            .map(|c| (Zone::Transport, c)),
    );
    children.push((Zone::Service, probe_child()));
    children
}

fn options(zc: ZoneConfig) -> SupervisorOptions {
    SupervisorOptions {
        strategy: zc.strategy.to_lib(),
        max_restarts: zc.max_restarts,
        max_window: Duration::from_millis(zc.window_ms),
        reset_after: None,
    }
}

fn child_spec(ctx: &NodeCtx, zone: Zone, def: &ChildDef) -> ChildSpec {
    let ctx = ctx.clone();
    let make = def.make.clone();
    let key = format!("{}/{}", zone.as_str(), def.name);
    ChildSpec {
        id: ctx.actor_name(zone, &def.name),
        restart: Restart::Permanent,
        spawn_fn: SpawnFn::new(move |cell, id| {
            spawn_counted(ctx.clone(), make.clone(), key.clone(), cell, id)
        }),
        backoff_fn: None,
        reset_after: None,
    }
}

async fn spawn_counted(
    ctx: NodeCtx,
    make: Make,
    key: String,
    cell: ActorCell,
    id: String,
) -> Result<ActorCell, SpawnErr> {
    let n = ctx.spawns.record(&key);
    if n > 1 {
        let (zone, actor) = key.split_once('/').unwrap_or((&key, ""));
        metrics::counter!("bulwark_supervisor_restarts_total",
            "facility" => ctx.facility.to_string(), "zone" => zone.to_string(), "actor" => actor.to_string())
        .increment(1);
        tracing::warn!(facility = %ctx.facility, actor = %key, spawns = n, "supervised restart");
    }
    make(ctx, cell, id).await
}

fn zone_spec(ctx: &NodeCtx, zone: Zone, zc: ZoneConfig, specs: Vec<ChildSpec>) -> ChildSpec {
    let name = format!("{}/{}", ctx.scope, zone.as_str());
    let key = format!("root/{}", zone.as_str());
    let ctx2 = ctx.clone();
    ChildSpec {
        id: name,
        restart: Restart::Permanent,
        spawn_fn: SpawnFn::new(move |cell, id| {
            let args = SupervisorArguments {
                child_specs: specs.clone(),
                options: options(zc),
            };
            let (ctx, key) = (ctx2.clone(), key.clone());
            async move {
                if ctx.spawns.record(&key) > 1 {
                    metrics::counter!("bulwark_supervisor_restarts_total",
                        "facility" => ctx.facility.to_string(), "zone" => "root", "actor" => key.clone())
                    .increment(1);
                    tracing::warn!(facility = %ctx.facility, zone = %key, "zone escalated and was restarted");
                }
                let (r, _) = Supervisor::spawn_linked(id, Supervisor, args, cell).await?;
                Ok(r.get_cell())
            }
        }),
        backoff_fn: None,
        reset_after: None,
    }
}

fn root_arguments(
    ctx: &NodeCtx,
    sup: &SupervisionConfig,
    children: &[(Zone, ChildDef)],
) -> SupervisorArguments {
    let zones = Zone::ALL
        .iter()
        .map(|&zone| {
            let specs = children
                .iter()
                .filter(|(z, _)| *z == zone)
                .map(|(_, def)| child_spec(ctx, zone, def))
                .collect();
            zone_spec(ctx, zone, sup.zone(zone), specs)
        })
        .collect();
    SupervisorArguments {
        child_specs: zones,
        options: options(sup.root),
    }
}
