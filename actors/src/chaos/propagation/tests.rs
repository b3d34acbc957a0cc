use super::*;
use crate::flow::breaker::State;
use bulwark_transport::FacilityId;
use Criticality::{Critical, Optional};

fn graph(edges: &[(&str, &str, Criticality)]) -> DependencyGraph {
    let edges: Vec<Edge> = edges
        .iter()
        .map(|(a, b, c)| Edge {
            dependent: a.to_string(),
            dependency: b.to_string(),
            criticality: *c,
        })
        .collect();
    DependencyGraph::from_edges(&edges).unwrap()
}

fn engine(g: DependencyGraph) -> Engine {
    Engine::new(g, default_rules(), EngineConfig::test()).unwrap()
}

fn obs(pairs: &[(&str, Health)]) -> BTreeMap<String, Health> {
    pairs.iter().map(|(c, h)| (c.to_string(), *h)).collect()
}

fn slow(latency_ms: u64) -> Health {
    Health {
        latency_ms,
        ..Health::up()
    }
}

/// Each event as the timeline prints it, for compact asserts.
fn lines(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.to_string()).collect()
}

/// api -> gate -> raft, each critical (`a -> b`: a depends on b).
fn chain3() -> DependencyGraph {
    graph(&[
        ("alpha/api", "alpha/gate", Critical),
        ("alpha/gate", "alpha/raft", Critical),
    ])
}

/// Seed 003 §23.1: the initial failure spreads up the chain, each step
/// caused by the one below it.
#[test]
fn a_chain_fails_in_order_each_caused_by_the_one_below() {
    let mut e = engine(chain3());
    assert!(e.step(0, &BTreeMap::new()).is_empty());
    let ev = e.step(1_200, &obs(&[("alpha/raft", Health::failed())]));
    let status: Vec<&Event> = ev
        .iter()
        .filter(|x| !matches!(x.what, What::Crossed { .. }))
        .collect();
    assert_eq!(
        status.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
        vec![
            "t=1200ms alpha/raft FAILED (observed)",
            "t=1200ms alpha/gate FAILED (critical dependency alpha/raft, rule dependency_failure)",
            "t=1200ms alpha/api FAILED (critical dependency alpha/gate, rule dependency_failure)",
        ]
    );
    assert_eq!(status[0].cause, None);
    assert_eq!(status[1].cause, Some(status[0].id));
    assert_eq!(status[2].cause, Some(status[1].id));
    assert_eq!(
        e.chain_text(status[2].id),
        "t=1200ms alpha/raft FAILED (observed) -> \
         t=1200ms alpha/gate FAILED (critical dependency alpha/raft, rule dependency_failure) -> \
         t=1200ms alpha/api FAILED (critical dependency alpha/gate, rule dependency_failure)"
    );
    let root = status[0].id;
    let all: BTreeSet<String> = ["alpha/api", "alpha/gate", "alpha/raft"]
        .map(String::from)
        .into();
    assert_eq!(e.blast_radius(root), all);
    e.check().unwrap();
    // Recovery clears what was propagated; each recovery names its failure.
    let back = e.step(1_300, &obs(&[("alpha/raft", Health::up())]));
    let rec: Vec<&Event> = back.iter().filter(|x| x.what == What::Recovered).collect();
    assert_eq!(rec.len(), 3);
    assert!(rec
        .iter()
        .all(|r| e.event_by_id(r.cause.unwrap()).unwrap().component == r.component));
    assert!(e.troubled().is_empty());
    e.check().unwrap();
}

#[test]
fn a_delay_spreads_the_chain_over_time() {
    let mut rules = default_rules();
    rules[0].delay_ms = 50;
    let mut e = Engine::new(chain3(), rules, EngineConfig::test()).unwrap();
    let down = obs(&[("alpha/raft", Health::failed())]);
    let mut seen = Vec::new();
    for t in (1_200..=1_400).step_by(50) {
        for x in e.step(t, &down) {
            if let What::Observed { .. } | What::Propagated { .. } = x.what {
                seen.push((x.at_ms, x.component));
            }
        }
    }
    assert_eq!(
        seen,
        vec![
            (1_200, "alpha/raft".to_string()),
            (1_250, "alpha/gate".to_string()),
            (1_300, "alpha/api".to_string()),
        ]
    );
    e.check().unwrap();
}

/// What a component that optionally needs the failed one, and one that
/// critically needs that, end up as.
fn optional_scenario(e: &mut Engine) -> Vec<Event> {
    e.step(100, &obs(&[("alpha/detector", Health::failed())]))
}

fn optional_graph() -> DependencyGraph {
    graph(&[
        ("alpha/gate", "alpha/detector", Optional),
        ("alpha/api", "alpha/gate", Critical),
    ])
}

#[test]
fn an_optional_dependency_only_degrades_and_degradation_does_not_spread() {
    let mut e = engine(optional_graph());
    let ev = optional_scenario(&mut e);
    assert!(lines(&ev).contains(
        &"t=100ms alpha/gate DEGRADED (optional dependency alpha/detector, rule dependency_failure)"
            .to_string()
    ));
    assert_eq!(e.status("alpha/gate"), Some(Status::Degraded));
    assert_eq!(e.status("alpha/api"), Some(Status::Up));
    e.check().unwrap();
}

/// The planted bug: effects that ignore criticality fail the gate through
/// an optional edge (and then the API through a critical one). The
/// checker names the first wrong event.
#[test]
fn the_checker_catches_a_planted_bug_that_ignores_criticality() {
    let mut bad = engine(optional_graph()).ignoring_criticality();
    optional_scenario(&mut bad);
    assert_eq!(bad.status("alpha/gate"), Some(Status::Failed));
    assert_eq!(bad.status("alpha/api"), Some(Status::Failed));
    let v = bad.check().unwrap_err();
    assert!(
        matches!(
            v,
            Violation::TooStrong {
                status: Status::Failed,
                allowed: Status::Degraded,
                ..
            }
        ),
        "{v:?}"
    );
}

#[test]
fn the_checker_catches_a_tampered_timeline() {
    let mut e = engine(chain3());
    e.step(100, &obs(&[("alpha/raft", Health::failed())]));
    e.check().unwrap();
    let tamper = |at: usize, f: &dyn Fn(&mut Event)| {
        let mut t = e.clone();
        f(&mut t.history[at]);
        t.check().unwrap_err()
    };
    assert!(matches!(
        tamper(1, &|x| x.cause = Some(5)),
        Violation::CauseNotEarlier { .. }
    ));
    assert!(matches!(
        tamper(1, &|x| x.cause = None),
        Violation::Cause { .. }
    ));
    assert!(matches!(
        tamper(0, &|x| x.cause = Some(0)),
        Violation::CauseNotEarlier { .. }
    ));
    assert!(matches!(
        tamper(1, &|x| x.component = "alpha/api".into()),
        Violation::NoSuchEdge { .. }
    ));
    assert!(matches!(
        tamper(1, &|x| if let What::Propagated { rule, .. } = &mut x.what {
            *rule = "no_such_rule".into()
        }),
        Violation::UnknownRule { .. }
    ));
    assert!(matches!(
        tamper(2, &|x| x.cause = Some(0)),
        Violation::CauseMismatch { .. }
    ));
    assert!(matches!(
        tamper(2, &|x| x.at_ms = 0),
        Violation::Order { .. }
    ));
}

#[test]
fn the_latency_rule_fires_above_its_threshold_only() {
    let mut e = engine(chain3());
    let ev = e.step(100, &obs(&[("alpha/raft", slow(2_000))]));
    assert!(ev.is_empty(), "at the threshold: {:?}", lines(&ev));
    let ev = e.step(200, &obs(&[("alpha/raft", slow(2_001))]));
    assert_eq!(
        lines(&ev),
        vec![
            "t=200ms alpha/raft latency_ms 2001 > 2000 (observed, rule latency)",
            "t=200ms alpha/gate DEGRADED (critical dependency alpha/raft, rule latency)",
        ]
    );
    assert_eq!(ev[1].cause, Some(ev[0].id));
    assert_eq!(e.status("alpha/api"), Some(Status::Up));
    let ev = e.step(300, &obs(&[("alpha/raft", slow(1_500))]));
    assert_eq!(lines(&ev), vec!["t=300ms alpha/gate RECOVERED"]);
    e.check().unwrap();
}

/// A rule towards the dependencies: timeouts at a dependent mean retries
/// that load what it depends on (seed 003 §23.2, retry amplification).
#[test]
fn a_rule_towards_the_dependencies_loads_them() {
    let storm = Rule {
        name: "retry_storm".into(),
        trigger: Trigger::TimeoutRate { above: 0.3 },
        direction: Direction::ToDependencies,
        effect: Effect::Degrade,
        delay_ms: 0,
    };
    let mut e = Engine::new(chain3(), vec![storm], EngineConfig::test()).unwrap();
    let timeouts = Health {
        timeout_rate: 0.5,
        ..Health::up()
    };
    let ev = e.step(10, &obs(&[("alpha/api", timeouts)]));
    assert_eq!(
        lines(&ev)[1],
        "t=10ms alpha/gate DEGRADED (critical dependent alpha/api, rule retry_storm)"
    );
    assert_eq!(e.status("alpha/raft"), Some(Status::Up));
    e.check().unwrap();
}

fn breaker_events(ev: &[Event]) -> Vec<(u64, String)> {
    ev.iter()
        .filter_map(|x| match &x.what {
            What::Breaker { to, .. } => Some((x.at_ms, to.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_breaker_opens_after_enough_failed_steps_and_closes_after_half_open_probes() {
    let g = graph(&[("alpha/gate", "alpha/raft", Critical)]);
    let mut e = engine(g);
    let mut all = Vec::new();
    // Three failed steps (one call each): the third reaches min_calls.
    for t in [100, 200] {
        all.extend(e.step(t, &obs(&[("alpha/raft", Health::failed())])));
        assert_eq!(
            e.breaker_state("alpha/gate", "alpha/raft"),
            Some(State::Closed)
        );
    }
    all.extend(e.step(300, &obs(&[("alpha/raft", Health::failed())])));
    assert_eq!(
        e.breaker_state("alpha/gate", "alpha/raft"),
        Some(State::Open { until_ms: 1_300 })
    );
    // Recovered at 500; the breaker waits out its open time, then probes.
    for t in (500..=1_200).step_by(100) {
        all.extend(e.step(t, &obs(&[("alpha/raft", Health::up())])));
    }
    assert!(matches!(
        e.breaker_state("alpha/gate", "alpha/raft"),
        Some(State::Open { .. })
    ));
    all.extend(e.step(1_300, &BTreeMap::new()));
    assert_eq!(
        e.breaker_state("alpha/gate", "alpha/raft"),
        Some(State::HalfOpen)
    );
    all.extend(e.step(1_400, &BTreeMap::new()));
    assert_eq!(
        e.breaker_state("alpha/gate", "alpha/raft"),
        Some(State::Closed)
    );
    assert_eq!(
        breaker_events(&all),
        vec![
            (300, "open".into()),
            (1_300, "half_open".into()),
            (1_400, "closed".into())
        ]
    );
    let closed = all.last().unwrap();
    assert_eq!(
        e.chain_text(closed.id),
        "t=100ms alpha/raft FAILED (observed) -> t=300ms breaker alpha/gate->alpha/raft OPEN \
         -> t=1300ms breaker alpha/gate->alpha/raft HALF_OPEN \
         -> t=1400ms breaker alpha/gate->alpha/raft CLOSED"
    );
    e.check().unwrap();
}

#[test]
fn a_failed_probe_opens_the_breaker_again() {
    let g = graph(&[("alpha/gate", "alpha/raft", Critical)]);
    let mut e = engine(g);
    let down = obs(&[("alpha/raft", Health::failed())]);
    let mut all = Vec::new();
    for t in (100..=1_500).step_by(100) {
        all.extend(e.step(t, &down));
    }
    assert_eq!(
        breaker_events(&all),
        vec![
            (300, "open".into()),
            (1_300, "half_open".into()),
            (1_400, "open".into())
        ]
    );
}

/// An Up dependency with a high error rate fails its share of the calls;
/// the breaker's cause is the crossing.
#[test]
fn an_error_rate_feeds_the_breaker_its_share_of_failed_calls() {
    let g = graph(&[("alpha/gate", "alpha/raft", Critical)]);
    let config = EngineConfig {
        calls_per_step: 10,
        ..EngineConfig::test()
    };
    let mut e = Engine::new(g.clone(), default_rules(), config.clone()).unwrap();
    let erring = |error_rate| Health {
        error_rate,
        ..Health::up()
    };
    let ev = e.step(100, &obs(&[("alpha/raft", erring(0.8))]));
    let open = ev
        .iter()
        .find(|x| matches!(&x.what, What::Breaker { to, .. } if to == "open"))
        .unwrap();
    let cause = e.event_by_id(open.cause.unwrap()).unwrap();
    assert!(matches!(&cause.what, What::Crossed { rule, .. } if rule == "error_rate"));
    // 0.2 of 10 calls over the last 4 never reaches 50%.
    let mut calm = Engine::new(g, default_rules(), config).unwrap();
    for t in (100..2_000).step_by(100) {
        assert!(breaker_events(&calm.step(t, &obs(&[("alpha/raft", erring(0.2))]))).is_empty());
    }
}

#[test]
fn a_cycle_settles_and_walks_end() {
    let g = graph(&[
        ("alpha/raft", "bravo/raft", Optional),
        ("bravo/raft", "alpha/raft", Optional),
        ("alpha/x", "alpha/y", Critical),
        ("alpha/y", "alpha/x", Critical),
    ]);
    assert_eq!(
        g.upstream("alpha/x"),
        BTreeSet::from(["alpha/y".to_string()])
    );
    assert_eq!(
        g.fails_with("alpha/raft"),
        BTreeSet::new(),
        "optional edges only"
    );
    let mut e = engine(g);
    e.step(
        0,
        &obs(&[
            ("alpha/x", Health::failed()),
            ("bravo/raft", Health::failed()),
        ]),
    );
    assert_eq!(e.status("alpha/y"), Some(Status::Failed));
    assert_eq!(e.status("alpha/raft"), Some(Status::Degraded));
    e.check().unwrap();
}

#[test]
fn graph_queries_and_refusals() {
    let g = chain3();
    assert_eq!(
        g.downstream("alpha/api"),
        BTreeSet::from(["alpha/gate".to_string(), "alpha/raft".to_string()])
    );
    assert_eq!(
        g.upstream("alpha/raft"),
        BTreeSet::from(["alpha/api".to_string(), "alpha/gate".to_string()])
    );
    assert_eq!(g.criticality("alpha/api", "alpha/gate"), Some(Critical));
    assert_eq!(g.criticality("alpha/gate", "alpha/api"), None);
    assert_eq!(g.edges().len(), 2);
    let mut g = DependencyGraph::new();
    assert_eq!(
        g.depends_on("a", "a", Critical),
        Err(GraphError::SelfDependency("a".into()))
    );
    assert!(matches!(
        g.add_component(""),
        Err(GraphError::ComponentId(_))
    ));
    assert!(matches!(
        g.add_component(&"x".repeat(COMPONENT_LEN_MAX + 1)),
        Err(GraphError::ComponentId(_))
    ));
    for i in 0..COMPONENTS_MAX {
        g.add_component(&format!("c{i}")).unwrap();
    }
    assert_eq!(
        g.add_component("one-more"),
        Err(GraphError::TooManyComponents)
    );
}

fn fid(s: &str) -> FacilityId {
    s.parse().unwrap()
}

#[test]
fn the_bulwark_graph_follows_the_actors() {
    let g = bulwark_graph(&[fid("alpha"), fid("bravo"), fid("charlie"), fid("alpha")]).unwrap();
    assert_eq!(g.components().count(), 30);
    let crit = |a: &str, b: &str| g.criticality(a, b);
    assert_eq!(crit("alpha/api", "alpha/backpressure"), Some(Critical));
    assert_eq!(crit("alpha/api", "alpha/gate"), Some(Critical));
    assert_eq!(crit("alpha/api", "alpha/bulkhead"), Some(Optional));
    assert_eq!(crit("alpha/gate", "alpha/raft"), Some(Critical));
    assert_eq!(crit("alpha/gate", "alpha/detector"), Some(Optional));
    assert_eq!(crit("alpha/healer", "alpha/raft"), Some(Critical));
    assert_eq!(crit("alpha/bft", "alpha/raft"), Some(Critical));
    assert_eq!(crit("alpha/raft", "alpha/store"), Some(Critical));
    assert_eq!(crit("alpha/raft", "bravo/raft"), Some(Optional));
    assert_eq!(crit("alpha/bft", "charlie/bft"), Some(Optional));
    assert_eq!(crit("alpha/breakers", "alpha/detector"), Some(Optional));
    assert_eq!(crit("alpha/raft", "alpha/raft"), None);
    // A facility's store takes its own facility down, no other.
    let down = g.fails_with("alpha/store");
    let want: BTreeSet<String> = ["api", "bft", "gate", "healer", "raft"]
        .iter()
        .map(|a| format!("alpha/{a}"))
        .collect();
    assert_eq!(down, want);
}

#[test]
fn a_failed_store_fails_its_facility_and_degrades_the_peers() {
    let g = bulwark_graph(&[fid("alpha"), fid("bravo"), fid("charlie")]).unwrap();
    let mut e = engine(g);
    let ev = e.step(1_200, &obs(&[("alpha/store", Health::failed())]));
    let root = ev[0].id;
    assert_eq!(ev[0].to_string(), "t=1200ms alpha/store FAILED (observed)");
    let troubled = e.troubled();
    for a in ["api", "bft", "gate", "healer", "raft"] {
        assert_eq!(
            troubled[format!("alpha/{a}").as_str()],
            Status::Failed,
            "{a}"
        );
    }
    for p in ["bravo", "charlie"] {
        for a in ["raft", "bft"] {
            assert_eq!(troubled[format!("{p}/{a}").as_str()], Status::Degraded);
        }
        assert!(!troubled.contains_key(format!("{p}/api").as_str()));
    }
    assert_eq!(e.blast_radius(root).len(), troubled.len());
    e.check().unwrap();
    let text = e.timeline_text();
    assert!(
        text.starts_with("t=1200ms alpha/store FAILED (observed)\n"),
        "{text}"
    );
    assert!(text.contains(
        "\n   -> t=1200ms alpha/raft FAILED (critical dependency alpha/store, rule dependency_failure)\n"
    ), "{text}");
    assert!(text.contains(
        "\n      -> t=1200ms alpha/gate FAILED (critical dependency alpha/raft, rule dependency_failure)\n"
    ), "{text}");
}

#[test]
fn the_same_observations_give_the_same_timeline() {
    let run = || {
        let g = bulwark_graph(&[fid("alpha"), fid("bravo")]).unwrap();
        let mut e = engine(g);
        let mut out = Vec::new();
        for t in (0..3_000).step_by(100) {
            let h = if (500..1_500).contains(&t) {
                Health::failed()
            } else {
                slow(t)
            };
            out.extend(e.step(t, &obs(&[("bravo/raft", h), ("alpha/gate", slow(t / 2))])));
        }
        e.check().unwrap();
        out
    };
    assert_eq!(run(), run());
}

#[test]
fn an_unobserved_component_keeps_its_last_observation_and_strangers_are_ignored() {
    let mut e = engine(chain3());
    e.step(
        100,
        &obs(&[
            ("alpha/raft", Health::failed()),
            ("nobody", Health::failed()),
        ]),
    );
    e.step(200, &BTreeMap::new());
    assert_eq!(e.status("alpha/raft"), Some(Status::Failed));
    assert_eq!(e.status("nobody"), None);
}

#[test]
fn the_timeline_is_bounded() {
    let config = EngineConfig {
        events_max: 5,
        ..EngineConfig::test()
    };
    let mut e = Engine::new(chain3(), default_rules(), config).unwrap();
    for t in 0..20u64 {
        let h = if t % 2 == 0 {
            Health::failed()
        } else {
            Health::up()
        };
        e.step(t * 100, &obs(&[("alpha/raft", h)]));
    }
    assert_eq!(e.events().count(), 5);
    assert!(e.dropped() > 0);
    assert!(e
        .timeline_text()
        .starts_with(&format!("({} earlier", e.dropped())));
    e.check().unwrap();
}

#[test]
fn rules_round_trip_and_bad_rules_or_settings_are_refused() {
    let rules = default_rules();
    let bytes = bulwark_storage::codec::encode(&rules).unwrap();
    assert_eq!(
        bulwark_storage::codec::decode::<Vec<Rule>>(&bytes).unwrap(),
        rules
    );
    let g = chain3;
    let with = |f: &dyn Fn(&mut Vec<Rule>)| {
        let mut r = default_rules();
        f(&mut r);
        Engine::new(g(), r, EngineConfig::test()).unwrap_err()
    };
    assert!(matches!(
        with(&|r| r[1].trigger = Trigger::ErrorRate { above: 1.5 }),
        PropagationError::Threshold { .. }
    ));
    assert!(matches!(
        with(&|r| r[4].trigger = Trigger::TimeoutRate { above: f64::NAN }),
        PropagationError::Threshold { .. }
    ));
    assert!(matches!(
        with(&|r| r[2].delay_ms = DELAY_MS_MAX + 1),
        PropagationError::Delay { .. }
    ));
    assert_eq!(
        with(&|r| r[3].name = "latency".into()),
        PropagationError::DuplicateRule("latency".into())
    );
    assert!(matches!(
        with(&|r| r[0].name = String::new()),
        PropagationError::RuleName(_)
    ));
    assert_eq!(
        with(&|r| {
            let one = r[0].clone();
            r.clear();
            for i in 0..=RULES_MAX {
                r.push(Rule {
                    name: format!("r{i}"),
                    ..one.clone()
                });
            }
        }),
        PropagationError::TooManyRules
    );
    let bad = |c: EngineConfig| Engine::new(g(), default_rules(), c).unwrap_err();
    assert_eq!(
        bad(EngineConfig {
            calls_per_step: 0,
            ..EngineConfig::test()
        }),
        PropagationError::CallsPerStep(0)
    );
    assert_eq!(
        bad(EngineConfig {
            events_max: 0,
            ..EngineConfig::test()
        }),
        PropagationError::EventsMax
    );
    let mut c = EngineConfig::test();
    c.breaker.min_calls = 0;
    assert!(matches!(bad(c), PropagationError::Breaker(_)));
    EngineConfig::default().validate().unwrap();
}
