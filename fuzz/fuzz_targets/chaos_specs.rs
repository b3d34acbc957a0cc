//! The specs chaos runs carry: a link's physics (`LinkSpec`), a disk fault
//! (`DiskFaultSpec`), a fault schedule (`ScheduledFault<FaultRule>`s), a
//! trigger `Condition` and propagation `Rule`s. The first byte picks the
//! type and the format (bulwark's codec or JSON); the rest is decoded, then
//! validated as its user does (`Physics::new`, `DiskFaults::set`,
//! `Injector::new` and `FaultRule::validate`, `Condition::validate`,
//! `Engine::new`). It never panics, and:
//!
//! - any value that decodes re-encodes to bytes that decode to the same
//!   bytes again (codec), or to a value that encodes the same (JSON);
//! - an accepted value decodes from its encoding to an equal value that is
//!   accepted again;
//! - an accepted value in use keeps its limits: every part of a link's
//!   delay within `COMPONENT_MS_MAX` (hops within their caps), a disk's
//!   latency within `DISK_LATENCY_MS_MAX`, a schedule that ends with
//!   nothing active after a rollback, conditions that judge any metrics,
//!   and a propagation timeline that passes `Engine::check` with at most
//!   `events_max` events.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use bulwark_actors::chaos::inject::{Condition, Injector, ScheduledFault, METRIC_LEN_MAX};
use bulwark_actors::chaos::propagation::{
    Criticality, DependencyGraph, Edge, Engine, EngineConfig, Health, Rule, Status,
};
use bulwark_storage::codec::{self, MESSAGE_LEN_MAX};
use bulwark_storage::{DiskFaultSpec, DiskFaults, DISK_LATENCY_MS_MAX};
use bulwark_transport::simnet::physics::{COMPONENT_MS_MAX, HOPS_MAX, PROCESSING_PER_HOP_US_MAX};
use bulwark_transport::simnet::{LinkCtx, LinkModel, LinkParams, LinkSpec, Physics};
use bulwark_transport::{FacilityId, FaultRule};
use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as bulwark's codec or as JSON; any value that decodes
/// comes back from its own encoding (compared as encodings: a refused value
/// may hold NaN, which equals nothing).
fn decode<T>(data: &[u8], json: bool) -> Option<T>
where
    T: Serialize + DeserializeOwned,
{
    if json {
        let value: T = serde_json::from_slice(data).ok()?;
        let text = serde_json::to_vec(&value).expect("a decoded value encodes");
        let back: T = serde_json::from_slice(&text).expect("an encoding decodes");
        let again = serde_json::to_vec(&back).expect("encodes");
        assert_eq!(again, text, "JSON encoding is not stable");
        Some(value)
    } else {
        let value: T = codec::decode_limited(data, MESSAGE_LEN_MAX).ok()?;
        let bytes = codec::encode(&value).expect("a decoded value encodes");
        assert!(bytes.len() <= data.len(), "re-encoding grew");
        let back: T = codec::decode(&bytes).expect("an encoding decodes");
        assert_eq!(codec::encode(&back).expect("encodes"), bytes);
        Some(value)
    }
}

/// An accepted value: its encoding decodes to an equal value, accepted
/// again.
fn accepted_again<T>(value: &T, json: bool, accept: impl Fn(&T) -> bool)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let back: T = if json {
        serde_json::from_slice(&serde_json::to_vec(value).expect("encodes")).expect("decodes")
    } else {
        codec::decode(&codec::encode(value).expect("encodes")).expect("decodes")
    };
    assert_eq!(&back, value, "an accepted value changed on the way back");
    assert!(accept(&back), "accepted once, refused after a round trip");
}

fn id(s: &str) -> FacilityId {
    s.parse().expect("facility id")
}

fn link_spec(spec: LinkSpec, json: bool) {
    let Ok(mut physics) = Physics::new(spec.clone()) else {
        return;
    };
    accepted_again(&spec, json, |s| s.validate().is_ok());
    let (a, b) = (id("alpha"), id("bravo"));
    let params = LinkParams::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let part_max = Duration::from_millis(COMPONENT_MS_MAX as u64);
    let hops_max =
        Duration::from_micros(u64::from(HOPS_MAX) * u64::from(PROCESSING_PER_HOP_US_MAX));
    for (i, bytes) in [0, 64, 1_500, 65_536, MESSAGE_LEN_MAX, 1_500]
        .into_iter()
        .enumerate()
    {
        let ctx = LinkCtx {
            from: &a,
            to: &b,
            params: &params,
            bytes,
            elapsed: Duration::from_millis(i as u64 * 7),
        };
        let Some(d) = physics.transit(&ctx, &mut rng) else {
            continue;
        };
        for part in [d.propagation, d.transmission, d.queuing, d.jitter] {
            assert!(part <= part_max, "{d:?} from {spec:?}");
        }
        assert!(d.processing <= hops_max, "{d:?}");
        assert_eq!(d.fault, Duration::ZERO);
    }
    let rho = physics.utilization(&a, &b, Duration::from_millis(40));
    assert!(!rho.is_nan() && rho >= 0.0, "utilization {rho}");
    let loss = spec.loss_probability(rho);
    assert!((0.0..=1.0).contains(&loss), "loss {loss}");
}

fn disk_spec(spec: DiskFaultSpec, json: bool) {
    let faults = DiskFaults::default();
    if faults.set(spec).is_err() {
        assert!(spec.validate().is_err());
        assert!(faults.spec().is_clear(), "a refused spec was put in force");
        return;
    }
    accepted_again(&spec, json, |s| s.validate().is_ok());
    assert!(faults.latency() <= Duration::from_millis(DISK_LATENCY_MS_MAX));
    assert!((0.0..=1.0).contains(&faults.spec().write_failure));
}

fn metrics(step: u64) -> BTreeMap<String, f64> {
    let v = [0.0, 0.5, 1.0, 1e9, -1.0, f64::NAN][step as usize % 6];
    ["error_rate", "latency_ms", "queue", ""]
        .into_iter()
        .map(|m| (m.to_string(), v))
        .collect()
}

fn schedule(faults: Vec<ScheduledFault<FaultRule>>, json: bool) {
    let rules_ok =
        |f: &Vec<ScheduledFault<FaultRule>>| f.iter().all(|f| f.fault.validate().is_ok());
    if !rules_ok(&faults) {
        return;
    }
    let Ok(mut inj) = Injector::new(faults.clone()) else {
        return;
    };
    accepted_again(&faults, json, |f| {
        rules_ok(f) && Injector::new(f.clone()).is_ok()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut on = 0usize;
    for (step, now_ms) in [0, 1, 50, 49, 1_000, 60_000, u64::MAX / 2, u64::MAX]
        .into_iter()
        .enumerate()
    {
        for t in inj.step(now_ms, &metrics(step as u64), &mut rng) {
            match t.change {
                bulwark_actors::chaos::inject::Change::Activated => on += 1,
                bulwark_actors::chaos::inject::Change::Deactivated(_) => on -= 1,
            }
        }
        assert_eq!(inj.active().len(), on);
    }
    let off = inj.rollback(u64::MAX).len();
    assert_eq!(off, on, "rollback stops every active fault");
    assert!(inj.active().is_empty() && inj.is_finished());
    assert!(inj.step(u64::MAX, &metrics(0), &mut rng).is_empty());
}

fn condition(c: Condition, json: bool) {
    if c.validate().is_err() {
        return;
    }
    accepted_again(&c, json, |c| c.validate().is_ok());
    assert!(c
        .metrics()
        .iter()
        .all(|m| !m.is_empty() && m.len() <= METRIC_LEN_MAX));
    for step in 0..6 {
        let _ = c.holds(step * 1_000, &metrics(step));
    }
}

fn graph() -> DependencyGraph {
    let edge = |a: &str, b: &str, c| Edge {
        dependent: a.into(),
        dependency: b.into(),
        criticality: c,
    };
    DependencyGraph::from_edges(&[
        edge("api", "gate", Criticality::Critical),
        edge("gate", "store", Criticality::Critical),
        edge("api", "store", Criticality::Optional),
        edge("store", "api", Criticality::Optional),
    ])
    .expect("graph")
}

fn rules(rules: Vec<Rule>, json: bool) {
    let config = EngineConfig {
        events_max: 64,
        ..EngineConfig::test()
    };
    let Ok(mut engine) = Engine::new(graph(), rules.clone(), config.clone()) else {
        return;
    };
    accepted_again(&rules, json, |r| {
        Engine::new(graph(), r.clone(), config.clone()).is_ok()
    });
    let slow = Health {
        status: Status::Degraded,
        error_rate: 0.7,
        latency_ms: 5_000,
        queue_depth: 5_000,
        timeout_rate: 0.5,
    };
    let steps = [
        (0, Health::failed()),
        (100, slow),
        (3_600_000, slow),
        (3_600_100, Health::up()),
        (7_300_000, Health::failed()),
        (7_300_001, Health::up()),
    ];
    for (now_ms, h) in steps {
        let obs = BTreeMap::from([("store".to_string(), h)]);
        let _ = engine.step(now_ms, &obs);
    }
    engine
        .check()
        .expect("the timeline checks against the graph and rules");
    assert!(engine.events().count() <= config.events_max);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let json = pick & 1 == 1;
    match (pick >> 1) % 5 {
        0 => decode(rest, json).map(|v| link_spec(v, json)),
        1 => decode(rest, json).map(|v| disk_spec(v, json)),
        2 => decode(rest, json).map(|v| schedule(v, json)),
        3 => decode(rest, json).map(|v| condition(v, json)),
        _ => decode(rest, json).map(|v| rules(v, json)),
    };
});
