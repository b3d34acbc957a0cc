//! The Router: delivers [`Envelope`]s to named actors, here or on a peer.
//!
//! Local actors register under a name with a `wrap` function that turns a
//! [`Delivery`] into the actor's own message type. Remote traffic arrives
//! through [`Router::on_inbound`], which decodes (bounded), checks that the
//! envelope's `from` is the facility the transport authenticated, drops what
//! is past its deadline, and either completes a pending request or delivers.
//!
//! Backpressure: each registered actor has a budget of remote deliveries in
//! its mailbox (`remote_pending_max`). A [`Delivery`] holds a permit that is
//! returned when the actor drops it. Past the budget, a request is refused
//! with [`Refusal::Overloaded`] and a one-way message is dropped and counted,
//! so the network can never grow an actor's (unbounded) ractor mailbox. Open
//! outgoing requests are bounded by `pending_requests_max`.

use crate::envelope::{Address, Envelope, Kind, Refusal, ACTOR_NAME_LEN_MAX};
use crate::Clock;
use bulwark_storage::codec;
use bulwark_transport::{FacilityId, Inbound, SendErrorKind, TrafficClass, Transport};
use ractor::{ActorRef, Message};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Limits of one Router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Remote deliveries one actor may hold unprocessed; bounds what the
    /// network can queue in a ractor mailbox.
    pub remote_pending_max: usize,
    /// Outgoing requests awaiting a reply; bounds the reply table.
    pub pending_requests_max: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            remote_pending_max: 1_024,
            pending_requests_max: 4_096,
        }
    }
}

/// Why the Router could not deliver or complete a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The destination refused (or its Router did on its behalf).
    #[error("refused by {to}: {reason}")]
    Refused {
        /// The destination.
        to: Address,
        /// Why.
        reason: Refusal,
    },
    /// The transport would not take it.
    #[error("transport refused send to {to}: {kind}")]
    Transport {
        /// The destination.
        to: Address,
        /// The transport's reason.
        kind: SendErrorKind,
    },
    /// No reply within the timeout.
    #[error("no reply from {to} within {timeout:?}")]
    TimedOut {
        /// The destination.
        to: Address,
        /// The timeout given.
        timeout: Duration,
    },
    /// Too many requests already await replies.
    #[error("too many open requests ({0})")]
    TooManyPending(usize),
    /// The envelope could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] bulwark_storage::CodecError),
    /// The actor name is longer than [`ACTOR_NAME_LEN_MAX`].
    #[error("actor name too long")]
    BadName,
}

/// A message handed to a registered actor. Dropping it frees the actor's
/// remote budget.
#[derive(Debug)]
pub struct Delivery {
    /// The envelope as it arrived.
    pub envelope: Envelope,
    _permit: Permit,
}

#[derive(Debug)]
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type DeliverFn = Box<dyn Fn(Delivery) -> Result<(), ()> + Send + Sync>;

struct Mailbox {
    deliver: DeliverFn,
    pending: Arc<AtomicUsize>,
    actor_id: ractor::ActorId,
}

struct Inner {
    local: FacilityId,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    config: RouterConfig,
    actors: RwLock<HashMap<String, Mailbox>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Envelope>>>,
    next_id: AtomicU64,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Router {
    /// A router for `transport.local_id()`.
    pub fn new(transport: Arc<dyn Transport>, clock: Arc<dyn Clock>, config: RouterConfig) -> Self {
        Router {
            inner: Arc::new(Inner {
                local: transport.local_id().clone(),
                transport,
                clock,
                config,
                actors: RwLock::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// This facility.
    pub fn local(&self) -> &FacilityId {
        &self.inner.local
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The facility's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Registers `actor` under `name` (replacing an earlier incarnation).
    pub fn register<M: Message>(&self, name: &str, actor: ActorRef<M>, wrap: fn(Delivery) -> M) {
        let actor_id = actor.get_id();
        let deliver: DeliverFn = Box::new(move |d| actor.cast(wrap(d)).map_err(|_| ()));
        let mailbox = Mailbox {
            deliver,
            pending: Arc::new(AtomicUsize::new(0)),
            actor_id,
        };
        let mut actors = self.inner.actors.write().expect("router lock");
        actors.insert(name.to_string(), mailbox);
    }

    /// Removes `name` if it is still registered by the actor `id`.
    pub fn unregister(&self, name: &str, id: ractor::ActorId) {
        let mut actors = self.inner.actors.write().expect("router lock");
        if actors.get(name).is_some_and(|m| m.actor_id == id) {
            actors.remove(name);
        }
    }

    /// Names registered here, sorted.
    pub fn registered(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .inner
            .actors
            .read()
            .expect("router lock")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// A fresh id, for correlation and trace ids.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a one-way message.
    pub fn send(
        &self,
        to: Address,
        body: Vec<u8>,
        deadline_unix_ms: Option<u64>,
    ) -> Result<(), RouteError> {
        let env = self.envelope(to, Kind::OneWay, body, deadline_unix_ms, None)?;
        self.dispatch(env)
    }

    /// Sends a one-way message on the unreliable path (QUIC datagrams):
    /// heartbeats. It may be lost and is never queued behind bulk data; the
    /// encoded envelope must fit [`bulwark_transport::DATAGRAM_LEN_MAX`].
    pub fn send_datagram(&self, to: Address, body: Vec<u8>) -> Result<(), RouteError> {
        let env = self.envelope(to, Kind::OneWay, body, None, None)?;
        self.dispatch_class(env, TrafficClass::Heartbeat)
    }

    /// Sends a request and waits up to `timeout` for the reply's body.
    pub async fn request(
        &self,
        to: Address,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RouteError> {
        let corr = self.next_id();
        let deadline = self.inner.clock.unix_ms() + timeout.as_millis() as u64;
        let env = self.envelope(
            to.clone(),
            Kind::Request { corr },
            body,
            Some(deadline),
            None,
        )?;
        let rx = self.open_request(corr)?;
        if let Err(e) = self.dispatch(env) {
            self.inner
                .pending
                .lock()
                .expect("router lock")
                .remove(&corr);
            return Err(e);
        }
        let reply = tokio::time::timeout(timeout, rx).await;
        self.inner
            .pending
            .lock()
            .expect("router lock")
            .remove(&corr);
        match reply {
            Ok(Ok(env)) => match env.kind {
                Kind::Refused { reason, .. } => Err(RouteError::Refused { to, reason }),
                _ => Ok(env.body),
            },
            _ => Err(RouteError::TimedOut { to, timeout }),
        }
    }

    /// Replies to `request` with `body`.
    pub fn respond(&self, request: &Envelope, body: Vec<u8>) -> Result<(), RouteError> {
        let Kind::Request { corr } = request.kind else {
            return Ok(());
        };
        let to = Address::new(request.from.clone(), "");
        let env = self.envelope(
            to,
            Kind::Response { corr },
            body,
            None,
            Some(request.trace_id),
        )?;
        self.dispatch(env)
    }

    /// Handles one payload from the transport. Never panics on bad input:
    /// every rejection is counted under `bulwark_router_dropped_total`.
    pub fn on_inbound(&self, inbound: Inbound) {
        let env: Envelope = match codec::decode(&inbound.payload) {
            Ok(env) => env,
            Err(_) => return self.count_drop(&inbound.from, "malformed"),
        };
        if env.from != inbound.from {
            return self.count_drop(&inbound.from, "identity_mismatch");
        }
        if env.to.facility != self.inner.local {
            return self.count_drop(&inbound.from, "misaddressed");
        }
        self.accept(env);
    }

    fn accept(&self, env: Envelope) {
        if env.expired(self.inner.clock.unix_ms()) {
            self.count_drop(&env.from, "deadline_expired");
            return self.refuse(&env, Refusal::DeadlineExpired);
        }
        match env.kind {
            Kind::Response { corr } | Kind::Refused { corr, .. } => self.complete(corr, env),
            Kind::OneWay | Kind::Request { .. } => self.deliver_local(env),
        }
    }

    fn complete(&self, corr: u64, env: Envelope) {
        let waiter = self
            .inner
            .pending
            .lock()
            .expect("router lock")
            .remove(&corr);
        match waiter {
            Some(tx) => drop(tx.send(env)),
            None => self.count_drop(&env.from, "late_reply"),
        }
    }

    fn deliver_local(&self, env: Envelope) {
        let actors = self.inner.actors.read().expect("router lock");
        let Some(mailbox) = actors.get(&env.to.actor) else {
            drop(actors);
            self.count_drop(&env.from, "unknown_actor");
            return self.refuse(&env, Refusal::UnknownActor);
        };
        let held = mailbox.pending.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(mailbox.pending.clone());
        if held >= self.inner.config.remote_pending_max {
            drop(permit);
            drop(actors);
            self.count_drop(&env.from, "overloaded");
            return self.refuse(&env, Refusal::Overloaded);
        }
        let label = env.to.actor.clone();
        // Enough of the envelope to refuse it if the actor has gone; the
        // body is not copied.
        let refusal = Envelope {
            from: env.from.clone(),
            to: env.to.clone(),
            trace_id: env.trace_id,
            deadline_unix_ms: env.deadline_unix_ms,
            kind: env.kind,
            body: Vec::new(),
        };
        let ok = (mailbox.deliver)(Delivery {
            envelope: env,
            _permit: permit,
        })
        .is_ok();
        drop(actors);
        if ok {
            let facility = self.inner.local.to_string();
            // Remote and routed messages held by this actor, at this arrival.
            metrics::gauge!("bulwark_actor_mailbox_depth",
                "facility" => facility.clone(), "actor" => label.clone())
            .set((held + 1) as f64);
            metrics::counter!("bulwark_actor_messages_in_total",
                "facility" => facility, "actor" => label)
            .increment(1);
        } else {
            self.count_drop(&refusal.from, "actor_stopped");
            self.refuse(&refusal, Refusal::UnknownActor);
        }
    }

    fn refuse(&self, env: &Envelope, reason: Refusal) {
        if let Kind::Request { corr } = env.kind {
            let to = Address::new(env.from.clone(), "");
            let kind = Kind::Refused { corr, reason };
            if let Ok(reply) = self.envelope(to, kind, Vec::new(), None, Some(env.trace_id)) {
                let _ = self.dispatch(reply);
            }
        }
    }

    fn open_request(&self, corr: u64) -> Result<oneshot::Receiver<Envelope>, RouteError> {
        let mut pending = self.inner.pending.lock().expect("router lock");
        if pending.len() >= self.inner.config.pending_requests_max {
            return Err(RouteError::TooManyPending(pending.len()));
        }
        let (tx, rx) = oneshot::channel();
        pending.insert(corr, tx);
        Ok(rx)
    }

    fn envelope(
        &self,
        to: Address,
        kind: Kind,
        body: Vec<u8>,
        deadline_unix_ms: Option<u64>,
        trace_id: Option<u64>,
    ) -> Result<Envelope, RouteError> {
        if to.actor.len() > ACTOR_NAME_LEN_MAX {
            return Err(RouteError::BadName);
        }
        Ok(Envelope {
            from: self.inner.local.clone(),
            to,
            trace_id: trace_id.unwrap_or_else(|| self.next_id()),
            deadline_unix_ms,
            kind,
            body,
        })
    }

    fn dispatch(&self, env: Envelope) -> Result<(), RouteError> {
        self.dispatch_class(env, TrafficClass::Control)
    }

    fn dispatch_class(&self, env: Envelope, class: TrafficClass) -> Result<(), RouteError> {
        if env.to.facility == self.inner.local {
            self.accept(env);
            return Ok(());
        }
        let to = env.to.clone();
        let bytes = codec::encode(&env)?;
        self.inner
            .transport
            .send(&to.facility, class, bytes)
            .map_err(|e| RouteError::Transport { to, kind: e.kind })?;
        metrics::counter!("bulwark_actor_messages_out_total",
            "facility" => self.inner.local.to_string(), "peer" => env.to.facility.to_string())
        .increment(1);
        Ok(())
    }

    fn count_drop(&self, from: &FacilityId, reason: &'static str) {
        metrics::counter!("bulwark_router_dropped_total",
            "facility" => self.inner.local.to_string(), "peer" => from.to_string(), "reason" => reason)
        .increment(1);
    }
}
