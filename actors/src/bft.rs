//! BftValidator: attests to every entry Raft commits, makes entries final
//! with quorum certificates, and keeps the hash-chained ledger.
//!
//! - Raft orders; the validator attests. Each committed entry is judged by
//!   [`crate::ledger::admit`] on the facility's replica (proposer signature,
//!   chain anchor, timestamp, schedule rules). An admitted entry has a
//!   height and a link to the entry before it.
//! - The validator signs a vote over (height, entry hash, previous hash),
//!   stores it durably, then sends it to every peer. It never signs two
//!   entries at one height, across restarts too.
//! - ⌈(n+f+1)/2⌉ distinct valid votes (f = ⌊(n−1)/3⌋) make a certificate;
//!   the entry and its certificate are appended to the ledger table, in
//!   height order.
//! - A certificate's votes are verified with one ed25519 batch
//!   verification when they reach a quorum (the same rule as every other
//!   certificate check); if the batch fails, the unchecked votes are checked
//!   one by one and the bad ones dropped and blamed. Votes off the common
//!   path (conflicts, late votes, relays) are checked strictly at once.
//! - Evidence: equivocation (two votes by one signer at one height, with
//!   both votes), a forged vote (bad signature, received from the
//!   offender), a committed proposal that breaks the chain or the rules,
//!   a vote for an entry the replica refused, votes replayed for final
//!   heights, and withholding (a heuristic). Trust scores and the pattern
//!   detectors (favoritism, duty-hour evasion, timestamp manipulation)
//!   come from it.
//! - Catch-up: validators announce their final height; one that is behind
//!   fetches final entries with certificates and verifies each (link,
//!   certificate, proposal signature) before appending it.
//!
//! Disk faults ([`bulwark_storage::DiskFaults`] on the facility's store):
//! - Latency: a Flush whose batch writes (own votes, final entries,
//!   evidence) first awaits the injected latency, so a vote leaves that
//!   much later; with no latency set there is no extra await.
//! - A refused write ([`bulwark_storage::StorageError::Injected`]) fails
//!   the batch before any of its sends: no vote leaves that is not on
//!   disk. The core has already counted those votes as cast, so it is
//!   rebuilt at once from redb (a read: the store is intact), as a restart
//!   would, and reads the applied-entry feed again from the next tick (not
//!   at once, so a disk that refuses every write costs one try per tick,
//!   not a busy loop). The same entry then gets the same vote; votes and
//!   evidence gathered in memory are gathered again or fetched as final
//!   entries. Any other storage error stops the actor, as before.
//!
//! Durable writes (group commit with the Raft peer): a batch's writes (own
//! votes, final entries, evidence) are staged on the store
//! ([`bulwark_storage::Store::stage`]) and written inside its next durable
//! commit, which is usually the Raft peer's next persist of log entries:
//! one transaction and one fsync for both, and the rows become visible
//! only as they become durable. A batch that staged an own vote holds its
//! sends, and every send after them, in order, until its ticket is
//! durable: a vote is on disk before it leaves. Final entries count as
//! final here (status, waiters, what is served) once written. The Raft
//! peer's durable commits wake the validator (`Synced`); if none has
//! covered the oldest staged write still waiting within [`VOTE_SYNC_WAIT`] (an idle
//! cluster), the validator makes one itself. Under a steady load the Raft
//! peer persists well within it, so a vote costs no fsync of its own; an
//! idle cluster's last votes leave within it. A crash loses only staged writes whose votes never
//! left: the same applied entries get the same votes again after the
//! restart, and final entries are finalized again (from the peers' votes,
//! or fetched).
//!
//! What it does not do: a lying Raft leader can stall or censor (it decides
//! what enters the log), but cannot make an entry final without a quorum of
//! honest votes. With 3 facilities f = 0: a lying facility cannot finalize
//! alone, but a lying leader that also votes could get two conflicting
//! entries certified by the two honest sites; that is detected (its double
//! vote is evidence), not prevented. 4 facilities tolerate one liar, 7 two.

mod core;
pub mod evidence;
mod store;
pub mod wire;

pub use self::core::{BftStatus, Core, Output, Restored};
pub use self::store::{verify_file, LedgerStore, VerifyError, EVIDENCE_ROWS_MAX};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use bulwark_runtime::{Address, ChildDef, Delivery, Node, NodeCtx, Zone};
use bulwark_storage::codec;
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::flow::breaker::{BreakerConfig, Outcome as BreakerOutcome, Permit, Window};
use crate::flow::mesh::Breakers;
use crate::keys::Keyring;
use crate::raft::{AppliedEntry, AppliedTap};
use evidence::Evidence;
use wire::BftWire;

/// Most bytes of final entries in one catch-up answer (the codec's limit
/// is 4 MiB).
const FINALS_BYTES_MAX: usize = 3 * 1024 * 1024;

/// The BftValidator's registered name.
pub const BFT: &str = "bft";

/// Settings of a BftValidator. [`Default`] gives the embedded defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BftConfig {
    /// Length of one validator tick, in ms.
    pub tick_ms: u64,
    /// Ticks between re-sends of own votes for entries not yet final (votes
    /// lost on the way are sent again).
    pub rebroadcast_ticks: u64,
    /// Ticks between announcements of the final height (and fetches when
    /// behind).
    pub head_ticks: u64,
    /// A validator this many heights behind a peer fetches, even if it has
    /// the next entry.
    pub fetch_lag_heights: u64,
    /// Final entries asked for per fetch.
    pub fetch_max: u32,
    /// The allowed clock skew, in ms: a proposal further ahead of this
    /// validator's clock is evidence against its proposer (the vote is not
    /// withheld: finality must not depend on one facility's clock).
    pub clock_skew_max_ms: u64,
    /// Votes for heights further above the final one are dropped (bounds
    /// memory).
    pub pending_heights_max: u64,
    /// Evidence kept in memory.
    pub evidence_kept: usize,
    /// Final heights in a row without a reachable signer's vote before it
    /// is suspected of withholding.
    pub withhold_heights: u64,
    /// Votes a signer may send for a height it has itself announced final
    /// (a late re-send in flight) before more count as stale replays. A
    /// signer that has not announced the height final is behind: it is sent
    /// the final entries it lacks instead.
    pub stale_repeats: u32,
    /// Final heights whose votes are kept (to catch equivocation after
    /// finality).
    pub final_votes_kept: u64,
    /// Applied entries the feed keeps for a validator that is restarting.
    pub feed_len_max: usize,
}

impl Default for BftConfig {
    fn default() -> Self {
        BftConfig {
            tick_ms: 100,
            rebroadcast_ticks: 5,
            head_ticks: 10,
            fetch_lag_heights: 64,
            fetch_max: 256,
            clock_skew_max_ms: 10_000,
            pending_heights_max: 65_536,
            evidence_kept: 10_000,
            withhold_heights: 16,
            stale_repeats: 3,
            final_votes_kept: 1024,
            feed_len_max: 16_384,
        }
    }
}

impl BftConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.tick_ms == 0
            || self.rebroadcast_ticks == 0
            || self.head_ticks == 0
            || self.withhold_heights == 0
            || self.fetch_max == 0
            || self.final_votes_kept == 0
            || self.feed_len_max == 0
        {
            return Err("bft tick_ms, rebroadcast_ticks, head_ticks, withhold_heights, fetch_max, final_votes_kept and feed_len_max must be > 0".into());
        }
        Ok(())
    }
}

/// How a validator behaves. Everything but [`Behaviour::Honest`] is a lie,
/// for tests that put a Byzantine facility in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Follows the protocol.
    #[default]
    Honest,
    /// Signs a second, different vote at every height and sends each vote
    /// to half of the peers.
    Equivocate,
    /// Also sends votes in another facility's name, signed with its own key.
    ForgeVotes,
    /// Votes for entries its replica refused (a double booking, a duty-hour
    /// violation) at their would-be heights.
    VoteForInvalid,
    /// Keeps re-sending its votes for heights that are already final.
    ReplayStale,
    /// Never sends its votes.
    Withhold,
}

/// Applied entries from the RaftPeer to the validator: a bounded buffer
/// that outlives restarts of either actor, so a restarting validator picks
/// up where it left off (or, past the buffer, catches up from peers).
#[derive(Clone, Default)]
pub struct AppliedFeed {
    inner: Arc<Mutex<FeedInner>>,
}

#[derive(Default)]
struct FeedInner {
    entries: VecDeque<AppliedEntry>,
    cap: usize,
    /// Estimated memory of `entries` ([`feed_cost`]).
    bytes: usize,
    subscriber: Option<ActorRef<BftMsg>>,
    wake_queued: bool,
}

impl AppliedFeed {
    /// A feed that keeps the last `cap` entries.
    pub fn new(cap: usize) -> AppliedFeed {
        AppliedFeed {
            inner: Arc::new(Mutex::new(FeedInner {
                cap: cap.max(1),
                ..FeedInner::default()
            })),
        }
    }

    /// The tap to give the RaftPeer ([`crate::raft::RaftSetup::tap`]).
    /// `also` sees every entry too (tests).
    pub fn tap(&self, also: Option<AppliedTap>) -> AppliedTap {
        let feed = self.clone();
        Arc::new(move |f: &FacilityId, e: &AppliedEntry| {
            if let Some(t) = &also {
                t(f, e);
            }
            feed.push(e);
        })
    }

    fn push(&self, e: &AppliedEntry) {
        let mut g = self.inner.lock().expect("feed lock");
        // A restarted RaftPeer applies entries past its snapshot again:
        // they are the same entries, already here.
        if g.entries.back().is_some_and(|last| e.index <= last.index) {
            return;
        }
        g.bytes += feed_cost(e);
        g.entries.push_back(e.clone());
        // Bounded by count and by memory: a batch entry decodes to a few
        // hundred KiB (found by the growth benchmark: 16,384 batch entries
        // held ~75 MiB per 100,000 assignments).
        while g.entries.len() > g.cap || (g.bytes > FEED_BYTES_MAX && g.entries.len() > 1) {
            if let Some(old) = g.entries.pop_front() {
                g.bytes = g.bytes.saturating_sub(feed_cost(&old));
            }
        }
        if !g.wake_queued {
            if let Some(s) = &g.subscriber {
                if s.cast(BftMsg::Wake).is_ok() {
                    g.wake_queued = true;
                }
            }
        }
    }

    fn subscribe(&self, who: ActorRef<BftMsg>) {
        let mut g = self.inner.lock().expect("feed lock");
        g.subscriber = Some(who);
        g.wake_queued = false;
    }

    fn since(&self, cursor: u64, max: usize) -> Vec<AppliedEntry> {
        let mut g = self.inner.lock().expect("feed lock");
        g.wake_queued = false;
        g.entries
            .iter()
            .filter(|e| e.index > cursor)
            .take(max)
            .cloned()
            .collect()
    }
}

/// Most memory the applied-entry feed holds (estimated); beyond it the
/// oldest entries go (a validator that has not read them catches up by
/// final entries).
const FEED_BYTES_MAX: usize = 32 * 1024 * 1024;

/// An applied entry's memory, estimated from its encoded proposal (the
/// decoded command takes a few times its encoding).
fn feed_cost(e: &AppliedEntry) -> usize {
    let encoded = match &e.shown.verdict {
        crate::ledger::Verdict::Admitted(l) => l.bytes.len(),
        crate::ledger::Verdict::Rejected {
            shadow: Some(l), ..
        } => l.bytes.len(),
        _ => 0,
    };
    512 + 4 * encoded
}

/// How to make a facility's BftValidator.
#[derive(Clone)]
pub struct BftSetup {
    /// This facility's key and every signer's public key.
    pub keyring: Keyring,
    /// Settings.
    pub config: BftConfig,
    /// Honest, or a lie (tests).
    pub behaviour: Behaviour,
    /// Applied entries from this facility's RaftPeer.
    pub feed: AppliedFeed,
    /// The facility's breakers: fetches of final entries from a peer go
    /// under `ledger_fetch@<peer>` (`None`: unguarded).
    pub breakers: Option<Breakers>,
}

/// The dependency name of fetches of final entries from `peer`.
pub fn ledger_fetch_dependency(peer: &FacilityId) -> String {
    format!("ledger_fetch@{peer}")
}

/// The breakers' settings for fetches of final entries: judged over the
/// last 10 fetches, open at half of them failed (unanswered within two
/// head periods, or answered with entries that fail verification) once 3
/// were made, for 5 s, then one probe. An open one sends the fetch to the
/// next peer that announces a higher head instead.
pub fn ledger_fetch_breaker_config() -> BreakerConfig {
    BreakerConfig {
        window: Window::Count(10),
        failure_rate_pct: 50,
        slow_call_rate_pct: 100,
        slow_call_ms: 2_000,
        min_calls: 3,
        open_ms: 5_000,
        half_open_probes: 1,
    }
}

/// A fetch of final entries in flight under a breaker's permit.
struct FetchCall {
    peer: FacilityId,
    permit: Permit,
    at: tokio::time::Instant,
}

/// Messages of the [`BftValidator`].
pub enum BftMsg {
    /// New applied entries are in the feed.
    Wake,
    /// One validator tick.
    Tick,
    /// A message from a peer's validator, through the Router.
    Remote(Delivery),
    /// The validator's view.
    Status(RpcReplyPort<BftStatus>),
    /// Every piece of evidence recorded.
    Evidence(RpcReplyPort<Vec<Evidence>>),
    /// Every facility's trust score now.
    Trust(RpcReplyPort<BTreeMap<FacilityId, f64>>),
    /// Every piece of evidence recorded, each with whether a drill
    /// produced it.
    EvidenceMarked(RpcReplyPort<Vec<(Evidence, bool)>>),
    /// Carry out what the core asked for (self-sent behind the messages
    /// already queued, so they share one redb commit).
    Flush,
    /// The store made a durable commit: sends held behind deferred votes
    /// that it covers may leave.
    Synced,
    /// The oldest send held behind a staged vote may have waited
    /// [`VOTE_SYNC_WAIT`]: make it durable now if nobody else has.
    SyncDue,
    /// From now on behave as `behaviour` (chaos: a facility that starts
    /// lying, or stops); answers the behaviour before. A restarted
    /// validator behaves as its setup says again.
    SetBehaviour {
        /// The new behaviour.
        behaviour: Behaviour,
        /// Gets the old one.
        reply: RpcReplyPort<Behaviour>,
    },
    /// Answers when the entry at `height` is final here.
    AwaitFinal {
        /// The ledger height.
        height: u64,
        /// Gets the entry's hash and its certificate's.
        reply: RpcReplyPort<FinalNotice>,
    },
}

/// An entry became final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalNotice {
    /// Its height.
    pub height: u64,
    /// blake3 of the entry.
    pub entry_hash: crate::ledger::Hash,
    /// blake3 of the certificate this facility stored.
    pub cert_hash: crate::ledger::Hash,
}

impl FinalNotice {
    fn of(height: u64, fin: &crate::ledger::FinalEntry) -> FinalNotice {
        let cert = codec::encode(&fin.cert).unwrap_or_default();
        FinalNotice {
            height,
            entry_hash: fin.cert.hash,
            cert_hash: *blake3::hash(&cert).as_bytes(),
        }
    }
}

/// Whether the validator's staged writes wait for the Raft peer's next
/// persist (the group commit, on) or are synced at once, one durable
/// commit per batch (off: the build before the group commit, kept for A/B
/// measurement, docs/BENCHMARKS.md).
pub const GROUP_COMMIT: bool = true;

/// How long a send held behind a staged vote waits for the Raft peer's
/// next durable commit before the validator makes one of its own (module
/// docs): what an idle cluster adds to the finality of its last write.
pub const VOTE_SYNC_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Waiters for finality kept at most (more are refused by dropping the
/// reply port).
pub const FINAL_WAITERS_MAX: usize = 65_536;

/// The BftValidator actor. See the module docs.
pub struct BftValidator;

/// Its state.
pub struct BftState {
    core: Core,
    store: LedgerStore,
    ctx: NodeCtx,
    feed: AppliedFeed,
    ticker: ractor::concurrency::JoinHandle<()>,
    waiters: BTreeMap<u64, Vec<RpcReplyPort<FinalNotice>>>,
    waiting: usize,
    /// Outputs waiting for the next Flush.
    outputs: Vec<Output>,
    flush_queued: bool,
    /// How the core is rebuilt after a refused write.
    setup: BftSetup,
    /// The core was rebuilt: read the feed again on the next tick.
    rewake: bool,
    /// What waits for staged writes to be durable (module docs), in order,
    /// each with the ticket it waits on (0: none, only its turn) and when
    /// it began to wait.
    behind: VecDeque<(u64, tokio::time::Instant, Behind)>,
    /// The store's staged-write drops seen: a new one means what this
    /// validator staged may be gone.
    drops_seen: u64,
    /// Set while `behind` holds anything: the store watcher wakes the
    /// validator only then.
    behind_flag: Arc<std::sync::atomic::AtomicBool>,
    /// A `SyncDue` is scheduled.
    sync_armed: bool,
    /// Casts `Synced` on the store's durable commits.
    watcher: tokio::task::JoinHandle<()>,
    /// "Now" that a step back of this facility's wall clock cannot move
    /// back: honest proposers' timestamps must not then look like the
    /// future (FUTURE_TIMESTAMP evidence).
    floor: crate::hlc::TimeFloor,
    /// Fetches of final entries in flight, by peer, each under its
    /// peer's breaker.
    fetch_calls: BTreeMap<FacilityId, FetchCall>,
}

impl BftState {
    /// How long a fetch may go unanswered before it counts as failed: two
    /// head periods.
    fn fetch_limit(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            2 * self.setup.config.head_ticks * self.setup.config.tick_ms,
        )
    }

    /// Whether a fetch may go to `to`: one to it still within its limit
    /// keeps its permit (asked again, not judged yet); one past it counts
    /// as failed; an open breaker sends nothing (and lets the core ask
    /// another peer at once).
    fn guard_fetch(&mut self, to: &FacilityId) -> bool {
        let now = self.ctx.clock.now();
        if let Some(c) = self.fetch_calls.get(to) {
            if now.saturating_duration_since(c.at) < self.fetch_limit() {
                return true;
            }
            if let Some(c) = self.fetch_calls.remove(to) {
                self.settle_fetch(c, BreakerOutcome::Failure);
            }
        }
        let Some(breakers) = self.setup.breakers.as_ref() else {
            return true;
        };
        let dependency = ledger_fetch_dependency(to);
        match breakers.acquire(&dependency, now) {
            Ok(permit) => {
                self.fetch_calls.insert(
                    to.clone(),
                    FetchCall {
                        peer: to.clone(),
                        permit,
                        at: now,
                    },
                );
                true
            }
            Err(r) if r.state == "unknown" => true,
            Err(_) => {
                metrics::counter!("bulwark_flow_breaker_refused_total", "dependency" => dependency)
                    .increment(1);
                self.core.fetch_refused(to);
                false
            }
        }
    }

    fn settle_fetch(&self, call: FetchCall, outcome: BreakerOutcome) {
        if let Some(b) = &self.setup.breakers {
            let now = self.ctx.clock.now();
            let took = now.saturating_duration_since(call.at).as_millis() as u64;
            b.record(
                &ledger_fetch_dependency(&call.peer),
                call.permit,
                outcome,
                took,
                now,
            );
        }
    }

    /// Fetches unanswered past their limit failed.
    fn expire_fetch(&mut self) {
        let (now, limit) = (self.ctx.clock.now(), self.fetch_limit());
        let late: Vec<FacilityId> = self
            .fetch_calls
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.at) >= limit)
            .map(|(p, _)| p.clone())
            .collect();
        for p in late {
            if let Some(c) = self.fetch_calls.remove(&p) {
                self.settle_fetch(c, BreakerOutcome::Failure);
            }
        }
    }
}

/// Applied entries handled per wake, at most (the rest on the next).
const FEED_BATCH_MAX: usize = 4096;

/// The BftValidator as a child of the consensus zone.
pub fn bft_child(setup: BftSetup) -> (Zone, ChildDef) {
    let def = ChildDef::new(BFT, move |ctx: &NodeCtx| {
        (
            BftValidator,
            BftArgs {
                ctx: ctx.clone(),
                setup: setup.clone(),
            },
        )
    });
    (Zone::Consensus, def)
}

/// Arguments of a [`BftValidator`].
#[derive(Clone)]
pub struct BftArgs {
    /// The node's context.
    pub ctx: NodeCtx,
    /// The setup.
    pub setup: BftSetup,
}

/// The running BftValidator of `node`, if any.
pub fn validator(node: &Node) -> Option<ActorRef<BftMsg>> {
    validator_of(node.ctx())
}

/// The running BftValidator of the node `ctx` belongs to, if any.
pub fn validator_of(ctx: &NodeCtx) -> Option<ActorRef<BftMsg>> {
    ctx.find(Zone::Consensus, BFT)
}

impl Actor for BftValidator {
    type Msg = BftMsg;
    type State = BftState;
    type Arguments = BftArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BftMsg>,
        args: BftArgs,
    ) -> Result<BftState, ActorProcessingErr> {
        let setup = args.setup;
        setup.config.validate()?;
        let store = LedgerStore::new(args.ctx.store.clone());
        // What an earlier validator of this store staged and did not see
        // written (it was killed) is dropped before the ledger is read:
        // none of its votes left, and this one makes them again.
        args.ctx.store.drop_staged();
        let restored = store.restore()?;
        let core = Core::new(
            setup.keyring.clone(),
            setup.config.clone(),
            setup.behaviour,
            restored,
        );
        args.ctx
            .router
            .register(BFT, myself.clone(), BftMsg::Remote);
        setup.feed.subscribe(myself.clone());
        myself.cast(BftMsg::Wake)?;
        let tick = std::time::Duration::from_millis(setup.config.tick_ms);
        let ticker = myself.send_interval(tick, || BftMsg::Tick);
        let floor = crate::hlc::TimeFloor::new(setup.config.clock_skew_max_ms);
        let behind_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drops_seen = args.ctx.store.staged_drops();
        let watcher = {
            let mut durable = args.ctx.store.watch_staged();
            let (me, flag) = (myself.clone(), behind_flag.clone());
            tokio::spawn(async move {
                while durable.changed().await.is_ok() {
                    // Gone with the validator's state (a kill skips
                    // post_stop, which aborts this task).
                    if Arc::strong_count(&flag) == 1 {
                        break;
                    }
                    if flag.load(std::sync::atomic::Ordering::SeqCst)
                        && me.cast(BftMsg::Synced).is_err()
                    {
                        break;
                    }
                }
            })
        };
        if let Some(b) = &setup.breakers {
            let me = args.ctx.facility.clone();
            for peer in setup.keyring.public().facilities().filter(|f| **f != me) {
                let name = ledger_fetch_dependency(peer);
                // After a restart the permits the old actor held are lost.
                if b.contains(&name) {
                    b.reset(&name, args.ctx.clock.now());
                } else {
                    b.register(&name, Some(peer.clone()), ledger_fetch_breaker_config())?;
                }
            }
        }
        Ok(BftState {
            core,
            store,
            ctx: args.ctx,
            feed: setup.feed.clone(),
            ticker,
            waiters: BTreeMap::new(),
            waiting: 0,
            outputs: Vec::new(),
            flush_queued: false,
            setup,
            rewake: false,
            behind: VecDeque::new(),
            drops_seen,
            behind_flag,
            sync_armed: false,
            watcher,
            floor,
            fetch_calls: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<BftMsg>,
        msg: BftMsg,
        st: &mut BftState,
    ) -> Result<(), ActorProcessingErr> {
        let now = st
            .floor
            .reference(st.ctx.clock.unix_ms(), st.ctx.clock.now());
        let flush = matches!(msg, BftMsg::Flush);
        match msg {
            BftMsg::Flush => {}
            BftMsg::Synced => {
                if let Err(e) = release(&myself, st) {
                    if !rebuilds(&e) {
                        return Err(e.into());
                    }
                    rebuild(st, &e)?;
                }
            }
            BftMsg::SyncDue => {
                st.sync_armed = false;
                if let Err(e) = sync_behind(&myself, st).await {
                    if !rebuilds(&e) {
                        return Err(e.into());
                    }
                    rebuild(st, &e)?;
                }
            }
            BftMsg::Wake => {
                let batch = st.feed.since(st.core.cursor(), FEED_BATCH_MAX);
                let more = batch.len() == FEED_BATCH_MAX;
                for e in &batch {
                    st.core.on_applied(e, now);
                }
                if more {
                    myself.cast(BftMsg::Wake)?;
                }
            }
            BftMsg::Tick => {
                if std::mem::take(&mut st.rewake) {
                    myself.cast(BftMsg::Wake)?;
                }
                st.core.on_tick(now);
                st.expire_fetch();
            }
            BftMsg::Remote(d) => {
                let from = d.envelope.from.clone();
                match codec::decode::<BftWire>(&d.envelope.body) {
                    Ok(w) => {
                        let answers =
                            matches!(w, BftWire::Finals(_)) && st.fetch_calls.contains_key(&from);
                        let before = (st.core.final_height(), st.core.finals_refused());
                        st.core.on_wire(&from, w, now);
                        if answers {
                            let outcome = if st.core.finals_refused() > before.1 {
                                BreakerOutcome::Failure
                            } else if st.core.final_height() > before.0 {
                                BreakerOutcome::Success
                            } else {
                                // Entries it had by now from the votes.
                                BreakerOutcome::Ignored
                            };
                            if let Some(c) = st.fetch_calls.remove(&from) {
                                st.settle_fetch(c, outcome);
                            }
                        }
                    }
                    Err(e) => {
                        metrics::counter!("bulwark_bft_malformed_total").increment(1);
                        tracing::warn!(%from, error = %e, "malformed bft message dropped");
                    }
                }
            }
            BftMsg::Status(reply) => {
                let mut status = st.core.status();
                let staged = st.behind.iter().find_map(|(_, _, b)| match b {
                    Behind::Finals(f) => f.first(),
                    Behind::Send(_) | Behind::Mark => None,
                });
                if let Some((h, prev, _)) = staged {
                    // Final is what is written: staged entries are not yet.
                    status.final_height = h - 1;
                    status.final_hash = *prev;
                }
                let _ = reply.send(status);
            }
            BftMsg::Evidence(reply) => {
                let _ = reply.send(st.core.evidence().to_vec());
            }
            BftMsg::Trust(reply) => {
                let _ = reply.send(st.core.trust(now));
            }
            BftMsg::EvidenceMarked(reply) => {
                let marked = st
                    .core
                    .evidence()
                    .iter()
                    .map(|e| (e.clone(), st.core.is_drill(e)))
                    .collect();
                let _ = reply.send(marked);
            }
            BftMsg::SetBehaviour { behaviour, reply } => {
                let before = st.core.set_behaviour(behaviour);
                st.setup.behaviour = behaviour;
                tracing::warn!(facility = %st.ctx.facility, ?before, now = ?behaviour,
                    "validator behaviour switched");
                let _ = reply.send(before);
            }
            BftMsg::AwaitFinal { height, reply } => {
                // Final and already written: answer now. Final but still in
                // the outputs of the next flush, or not final yet: wait.
                let stored = if height <= st.core.status().final_height {
                    st.store.finals(height, 1)?.into_iter().next()
                } else {
                    None
                };
                if let Some(fin) = stored {
                    let _ = reply.send(FinalNotice::of(height, &fin));
                } else if st.waiting < FINAL_WAITERS_MAX {
                    st.waiters.entry(height).or_default().push(reply);
                    st.waiting += 1;
                }
            }
        }
        st.outputs.extend(st.core.drain());
        if flush {
            st.flush_queued = false;
            if writes(&st.outputs) {
                let latency = st.ctx.store.disk_faults().latency();
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
            }
            match carry_out(&myself, st) {
                Ok(()) => {}
                Err(e) if rebuilds(&e) => rebuild(st, &e)?,
                Err(e) => return Err(e.into()),
            }
        } else if !st.outputs.is_empty() && !st.flush_queued {
            st.flush_queued = true;
            myself.cast(BftMsg::Flush)?;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<BftMsg>,
        st: &mut BftState,
    ) -> Result<(), ActorProcessingErr> {
        st.ticker.abort();
        st.watcher.abort();
        st.ctx.router.unregister(BFT, myself.get_id());
        if !st.behind.is_empty() {
            // A planned stop writes what it staged (a crash would not: the
            // heights are voted and finalized again after the restart).
            if let Err(e) = bulwark_runtime::blocking(|| st.store.sync()) {
                tracing::warn!(facility = %st.ctx.facility, error = %e,
                    "staged validator writes not written at stop; they are made again after the restart");
            }
        }
        Ok(())
    }
}

/// True when carrying out `outputs` writes to the store.
fn writes(outputs: &[Output]) -> bool {
    outputs.iter().any(|o| match o {
        Output::PersistVotes(v) => !v.is_empty(),
        Output::Final(f) => !f.is_empty(),
        Output::Evidence(_) | Output::Drills(_) | Output::Epoch(_) => true,
        Output::Send { .. } | Output::ServeFinals { .. } => false,
    })
}

/// Rebuilds the core from redb after an injected fault refused a write
/// (module docs); the feed is read again from the next tick.
fn rebuild(
    st: &mut BftState,
    err: &bulwark_storage::StorageError,
) -> Result<(), ActorProcessingErr> {
    tracing::error!(facility = %st.ctx.facility, error = %err,
        "a validator write was refused: nothing of the batch was sent; rebuilding from the store");
    metrics::counter!("bulwark_bft_rebuilds_total",
        "facility" => st.ctx.facility.to_string(), "reason" => "write_refused")
    .increment(1);
    // Nothing held leaves; what was staged is dropped first (after any
    // commit that took some of it), so the rebuilt core reads every row
    // that will ever be written of it, and makes the rest again.
    st.behind.clear();
    st.ctx.store.drop_staged();
    st.drops_seen = st.ctx.store.staged_drops();
    st.behind_flag
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let restored = st.store.restore()?;
    st.core = Core::new(
        st.setup.keyring.clone(),
        st.setup.config.clone(),
        st.setup.behaviour,
        restored,
    );
    st.outputs.clear();
    // Waiters for heights written while their notice was queued: the
    // rebuilt core will not finalize those again.
    let written = st.core.status().final_height;
    let due: Vec<u64> = st.waiters.range(..=written).map(|(h, _)| *h).collect();
    for h in due {
        let Some(ws) = st.waiters.remove(&h) else {
            continue;
        };
        st.waiting -= ws.len();
        if let Some(fin) = st.store.finals(h, 1)?.into_iter().next() {
            let notice = FinalNotice::of(h, &fin);
            for w in ws {
                let _ = w.send(notice);
            }
        }
    }
    st.rewake = true;
    Ok(())
}

/// What waits for staged writes to be durable (module docs).
#[derive(Debug)]
enum Behind {
    /// A send (or a serve of final entries), in order.
    Send(Output),
    /// Final entries staged: `(height, previous hash, notice)` each, for
    /// the status and the waiters once written.
    Finals(Vec<(u64, crate::ledger::Hash, FinalNotice)>),
    /// Own votes or evidence staged: whatever is sent after waits for
    /// them (a later batch may send a vote again), and the fallback sync
    /// is armed even when their own batch sends nothing.
    Mark,
}

/// Whether a failed write is one the validator recovers from by
/// rebuilding its core from the store: an injected refusal, or staged
/// writes dropped unwritten.
fn rebuilds(e: &bulwark_storage::StorageError) -> bool {
    e.is_injected() || matches!(e, bulwark_storage::StorageError::StagedDropped { .. })
}

/// Carries out the outputs gathered since the last flush: every write
/// (own votes, final entries, evidence) staged as one batch on the store,
/// then the sends, which wait behind it until it is durable if it holds
/// an own vote (module docs). On a failed write nothing is sent; the caller
/// rebuilds the core (an injected fault) or stops the actor (its
/// supervisor restarts it from redb).
fn carry_out(
    myself: &ActorRef<BftMsg>,
    st: &mut BftState,
) -> Result<(), bulwark_storage::StorageError> {
    if st.ctx.store.staged_drops() != st.drops_seen {
        // What this batch builds on may be gone.
        return Err(bulwark_storage::StorageError::StagedDropped {
            path: st.ctx.store.path().to_path_buf(),
        });
    }
    let outputs = std::mem::take(&mut st.outputs);
    let mut votes = Vec::new();
    let mut finals = Vec::new();
    let mut evidence = Vec::new();
    let mut drills = None;
    let mut epochs = false;
    let mut sends = Vec::new();
    for out in outputs {
        match out {
            Output::Epoch(_) => epochs = true,
            Output::PersistVotes(v) => votes.extend(v),
            Output::Final(f) => finals.extend(f),
            Output::Evidence(e) => evidence.push(e),
            Output::Drills(d) => drills = Some(d),
            other => sends.push(other),
        }
    }
    // Rare (one per drill): its own durable commit, before the evidence
    // it covers is written.
    if let Some(d) = drills {
        st.store.put_drills(&d)?;
    }
    // Rare too (one per validator change): every epoch after genesis.
    if epochs {
        let all: Vec<_> = st
            .core
            .epochs()
            .iter()
            .skip(1)
            .map(|e| (**e).clone())
            .collect();
        st.store.put_epochs(&all)?;
    }
    if crate::plant::active(crate::plant::Bug::VoteNotDurable) {
        send_all(st, std::mem::take(&mut sends))?;
    }
    let ticket = st.store.stage_batch(&votes, &finals, &evidence)?;
    if ticket.is_some() && !GROUP_COMMIT && !crate::plant::active(crate::plant::Bug::VoteNotSynced)
    {
        // The batch's own durable commit, at once (module docs).
        bulwark_runtime::blocking(|| st.store.sync())?;
    }
    let now = st.ctx.clock.now();
    if let Some(t) = ticket.filter(|_| !finals.is_empty()) {
        let staged = finals
            .iter()
            .map(|(h, fin)| (*h, fin.cert.prev, FinalNotice::of(*h, fin)))
            .collect();
        st.behind.push_back((t, now, Behind::Finals(staged)));
    }
    let wait = ticket.filter(|_| {
        let needs_disk = !votes.is_empty() || !evidence.is_empty();
        needs_disk && !crate::plant::active(crate::plant::Bug::VoteNotSynced)
    });
    if let Some(t) = wait {
        st.behind.push_back((t, now, Behind::Mark));
    }
    match wait {
        Some(t) => st
            .behind
            .extend(sends.into_iter().map(|o| (t, now, Behind::Send(o)))),
        None if st.behind.is_empty() => send_all(st, sends)?,
        // Behind earlier held sends, in order: they wait for nothing more.
        None => st
            .behind
            .extend(sends.into_iter().map(|o| (0, now, Behind::Send(o)))),
    }
    release(myself, st)
}

/// Carries out what waits behind staged writes that are now durable, in
/// order; arms the fallback sync while anything still waits. If the store
/// dropped staged writes since they were staged, fails as a refused write
/// would (the caller rebuilds the core).
fn release(
    myself: &ActorRef<BftMsg>,
    st: &mut BftState,
) -> Result<(), bulwark_storage::StorageError> {
    let store = &st.ctx.store;
    if !st.behind.is_empty() {
        // Before the durability read: a commit after it wakes us.
        st.behind_flag
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let durable = st
        .behind
        .iter()
        .take_while(|(t, _, _)| *t == 0 || store.is_staged_durable(*t))
        .count();
    if store.staged_drops() != st.drops_seen {
        return Err(bulwark_storage::StorageError::StagedDropped {
            path: store.path().to_path_buf(),
        });
    }
    let mut ready = Vec::new();
    for (_, _, b) in st.behind.drain(..durable) {
        match b {
            Behind::Send(o) => ready.push(o),
            Behind::Mark => {}
            Behind::Finals(f) => {
                for (h, _, notice) in f {
                    if let Some(ws) = st.waiters.remove(&h) {
                        st.waiting -= ws.len();
                        for w in ws {
                            let _ = w.send(notice);
                        }
                    }
                }
            }
        }
    }
    let waits = !st.behind.is_empty();
    st.behind_flag
        .store(waits, std::sync::atomic::Ordering::SeqCst);
    if let Some((_, since, _)) = st.behind.front().filter(|_| !st.sync_armed) {
        st.sync_armed = true;
        let waited = st.ctx.clock.now().saturating_duration_since(*since);
        myself.send_after(VOTE_SYNC_WAIT.saturating_sub(waited), || BftMsg::SyncDue);
    }
    send_all(st, ready)
}

/// The fallback: one durable commit of what is staged (after the injected
/// disk latency) if what waits is not durable yet, then [`release`].
async fn sync_behind(
    myself: &ActorRef<BftMsg>,
    st: &mut BftState,
) -> Result<(), bulwark_storage::StorageError> {
    let now = st.ctx.clock.now();
    let waits = st.behind.front().is_some_and(|(t, since, _)| {
        *t != 0
            && !st.ctx.store.is_staged_durable(*t)
            && now.saturating_duration_since(*since) >= VOTE_SYNC_WAIT
    });
    if waits {
        let latency = st.ctx.store.disk_faults().latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        bulwark_runtime::blocking(|| st.store.sync())?;
        metrics::counter!("bulwark_bft_vote_syncs_total", "facility" => st.ctx.facility.to_string())
            .increment(1);
    }
    release(myself, st)
}

/// Carries out the sends of a batch, in order.
fn send_all(st: &mut BftState, sends: Vec<Output>) -> Result<(), bulwark_storage::StorageError> {
    for out in sends {
        match out {
            Output::Send { to, msg } => {
                if matches!(msg, BftWire::Fetch { .. }) && !st.guard_fetch(&to) {
                    continue;
                }
                send(st, to, &msg)
            }
            Output::ServeFinals { to, from, max } => {
                let mut finals = st.store.finals(from, max)?;
                // Batches make large entries: keep the message under the
                // codec's limit (at least one entry, which always fits).
                let mut total = 0usize;
                let keep = finals
                    .iter()
                    .take_while(|f| {
                        total += f.entry.len() + 2048;
                        total <= FINALS_BYTES_MAX
                    })
                    .count()
                    .max(1);
                finals.truncate(keep);
                if !finals.is_empty() {
                    send(st, to, &BftWire::Finals(finals));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn send(st: &BftState, to: FacilityId, msg: &BftWire) {
    // A peer linked at an older wire version gets the form it knows.
    let version = st.ctx.router.transport().peer_protocol(&to);
    let older;
    let msg = match msg {
        BftWire::HeadOf { .. } if version < wire::HEAD_OF_SINCE => {
            older = msg.clone().for_version(version);
            &older
        }
        _ => msg,
    };
    match codec::encode(msg) {
        Ok(body) => {
            if let Err(e) = st.ctx.router.send(Address::new(to, BFT), body, None) {
                metrics::counter!("bulwark_bft_send_failed_total").increment(1);
                tracing::debug!(error = %e, "bft send failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "bft message does not encode"),
    }
}

/// Asks `v` for its status; `None` if it is gone.
pub async fn status(v: &ActorRef<BftMsg>) -> Option<BftStatus> {
    ractor::call!(v, BftMsg::Status).ok()
}

/// Asks `v` for its evidence; `None` if it is gone.
pub async fn evidence_of(v: &ActorRef<BftMsg>) -> Option<Vec<Evidence>> {
    ractor::call!(v, BftMsg::Evidence).ok()
}

/// Asks `v` for the trust scores; `None` if it is gone.
pub async fn trust_of(v: &ActorRef<BftMsg>) -> Option<BTreeMap<FacilityId, f64>> {
    ractor::call!(v, BftMsg::Trust).ok()
}

#[cfg(test)]
mod tests;
