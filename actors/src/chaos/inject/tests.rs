use super::*;
use rand::SeedableRng;

/// The payload the tests schedule: which component to crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Fault {
    Crash(String),
    Slow { extra_ms: u64 },
}

fn crash(target: &str) -> Fault {
    Fault::Crash(target.into())
}

fn fault(id: &str, timing: Timing, duration: Lifetime) -> ScheduledFault<Fault> {
    ScheduledFault {
        id: id.into(),
        fault: crash(id),
        timing,
        duration,
    }
}

fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Steps every `dt` ms through `until` with no metrics; the transitions.
fn run(inj: &mut Injector<Fault>, dt: u64, until: u64, seed: u64) -> Vec<Transition<Fault>> {
    let mut r = rng(seed);
    let none = BTreeMap::new();
    let mut out = Vec::new();
    let mut now = 0;
    while now <= until {
        out.extend(inj.step(now, &none, &mut r));
        now += dt;
    }
    out
}

fn summary(ts: &[Transition<Fault>]) -> Vec<(String, u64, Change)> {
    ts.iter()
        .map(|t| (t.id.clone(), t.at_ms, t.change))
        .collect()
}

#[test]
fn at_starts_at_its_time_and_fixed_stops_after_its_ms() {
    let mut inj = Injector::new(vec![fault(
        "raft-crash",
        Timing::At { ms: 1_000 },
        Lifetime::Fixed { ms: 500 },
    )])
    .unwrap();
    let ts = run(&mut inj, 100, 3_000, 1);
    assert_eq!(
        summary(&ts),
        vec![
            ("raft-crash".into(), 1_000, Change::Activated),
            (
                "raft-crash".into(),
                1_500,
                Change::Deactivated(EndReason::Expired)
            ),
        ]
    );
    assert_eq!(ts[0].fault, crash("raft-crash"));
    assert_eq!(
        inj.phase("raft-crash"),
        Some(Phase::Done {
            since_ms: 1_000,
            until_ms: 1_500
        })
    );
    assert!(inj.is_finished());
}

#[test]
fn a_coarse_step_dates_the_transition_at_the_step_that_saw_it() {
    let mut inj = Injector::new(vec![fault(
        "f",
        Timing::At { ms: 1_050 },
        Lifetime::Fixed { ms: 1 },
    )])
    .unwrap();
    let ts = run(&mut inj, 1_000, 3_000, 1);
    assert_eq!(
        summary(&ts),
        vec![
            ("f".into(), 2_000, Change::Activated),
            ("f".into(), 3_000, Change::Deactivated(EndReason::Expired)),
        ]
    );
}

/// Seed 003 §22.3 draws a probabilistic fault's chance at every check call,
/// however often the caller checks; here chance falls at multiples of
/// `every_ms` only.
#[test]
fn chance_is_checked_only_at_multiples_of_every_ms() {
    let sure = Timing::Chance {
        probability: 1.0,
        every_ms: 1_000,
    };
    let mut inj = Injector::new(vec![fault("f", sure, Lifetime::Permanent)]).unwrap();
    let ts = run(&mut inj, 10, 2_000, 7);
    assert_eq!(summary(&ts), vec![("f".into(), 1_000, Change::Activated)]);
}

#[test]
fn chance_of_zero_never_fires() {
    let never = Timing::Chance {
        probability: 0.0,
        every_ms: 10,
    };
    let mut inj = Injector::new(vec![fault("f", never, Lifetime::Permanent)]).unwrap();
    assert!(run(&mut inj, 10, 100_000, 3).is_empty());
    assert_eq!(inj.phase("f"), Some(Phase::Pending { checks: 10_000 }));
}

fn coin_faults(n: usize) -> Vec<ScheduledFault<Fault>> {
    (0..n)
        .map(|i| {
            fault(
                &format!("f{i}"),
                Timing::Chance {
                    probability: 0.1,
                    every_ms: 100,
                },
                Lifetime::Fixed { ms: 300 },
            )
        })
        .collect()
}

#[test]
fn chance_replays_exactly_from_its_seed_and_differs_between_seeds() {
    let play = |seed| {
        let mut inj = Injector::new(coin_faults(40)).unwrap();
        summary(&run(&mut inj, 50, 5_000, seed))
    };
    let a = play(42);
    assert!(!a.is_empty());
    assert_eq!(a, play(42), "same seed, same steps: same transitions");
    assert_ne!(a, play(43), "another seed, another run");
}

#[test]
fn chance_fires_at_its_rate() {
    let mut inj = Injector::new(
        (0..FAULTS_MAX)
            .map(|i| {
                fault(
                    &format!("f{i}"),
                    Timing::Chance {
                        probability: 0.5,
                        every_ms: 100,
                    },
                    Lifetime::Permanent,
                )
            })
            .collect(),
    )
    .unwrap();
    let fired = inj.step(100, &BTreeMap::new(), &mut rng(9)).len();
    // 256 fair coins: 3.5 standard deviations either side of 128.
    assert!((100..=156).contains(&fired), "{fired} of {FAULTS_MAX}");
}

#[test]
fn a_long_step_takes_every_check_it_skipped_in_one_draw() {
    // 1,000 checks at 0.5 skipped at once: it fires (1 - 0.5^1000).
    let t = Timing::Chance {
        probability: 0.5,
        every_ms: 10,
    };
    for seed in 0..20 {
        let mut inj = Injector::new(vec![fault("f", t.clone(), Lifetime::Permanent)]).unwrap();
        let mut r = rng(seed);
        assert_eq!(inj.step(10_000, &BTreeMap::new(), &mut r).len(), 1);
    }
}

#[test]
fn when_starts_on_a_metric_and_until_stops_on_one() {
    let mut inj = Injector::new(vec![ScheduledFault {
        id: "slow-disk".into(),
        fault: Fault::Slow { extra_ms: 200 },
        timing: Timing::When(Condition::Above {
            metric: "queue_depth".into(),
            value: 100.0,
        }),
        duration: Lifetime::Until(Condition::Below {
            metric: "queue_depth".into(),
            value: 10.0,
        }),
    }])
    .unwrap();
    let mut r = rng(0);
    assert!(inj
        .step(0, &metrics(&[("queue_depth", 100.0)]), &mut r)
        .is_empty());
    let on = inj.step(100, &metrics(&[("queue_depth", 101.0)]), &mut r);
    assert_eq!(
        summary(&on),
        vec![("slow-disk".into(), 100, Change::Activated)]
    );
    assert_eq!(on[0].fault, Fault::Slow { extra_ms: 200 });
    assert!(inj
        .step(200, &metrics(&[("queue_depth", 50.0)]), &mut r)
        .is_empty());
    assert_eq!(inj.active().len(), 1);
    let off = inj.step(300, &metrics(&[("queue_depth", 9.0)]), &mut r);
    assert_eq!(
        summary(&off),
        vec![(
            "slow-disk".into(),
            300,
            Change::Deactivated(EndReason::ConditionMet)
        )]
    );
    assert!(inj.active().is_empty());
}

#[test]
fn a_missing_metric_is_neither_above_nor_below() {
    let c = Condition::Any(vec![
        Condition::Above {
            metric: "x".into(),
            value: 0.0,
        },
        Condition::Below {
            metric: "x".into(),
            value: 0.0,
        },
    ]);
    assert!(!c.holds(0, &BTreeMap::new()));
    assert!(c.holds(0, &metrics(&[("x", 1.0)])));
    assert_eq!(c.metrics().into_iter().collect::<Vec<_>>(), vec!["x"]);
}

#[test]
fn all_any_and_the_clock_combine() {
    let c = Condition::All(vec![
        Condition::AtLeastMs { ms: 1_000 },
        Condition::Any(vec![
            Condition::Above {
                metric: "errors".into(),
                value: 0.5,
            },
            Condition::Above {
                metric: "latency_ms".into(),
                value: 2_000.0,
            },
        ]),
    ]);
    let m = metrics(&[("errors", 0.6)]);
    assert!(!c.holds(999, &m));
    assert!(c.holds(1_000, &m));
    assert!(!c.holds(1_000, &metrics(&[("errors", 0.4), ("latency_ms", 10.0)])));
    assert!(c.holds(5_000, &metrics(&[("latency_ms", 2_001.0)])));
}

#[test]
fn an_until_condition_true_at_activation_stops_it_one_step_later() {
    let always = Condition::AtLeastMs { ms: 0 };
    let mut inj = Injector::new(vec![fault(
        "blip",
        Timing::At { ms: 0 },
        Lifetime::Until(always),
    )])
    .unwrap();
    let ts = run(&mut inj, 100, 1_000, 0);
    assert_eq!(
        summary(&ts),
        vec![
            ("blip".into(), 0, Change::Activated),
            (
                "blip".into(),
                100,
                Change::Deactivated(EndReason::ConditionMet)
            ),
        ]
    );
}

#[test]
fn a_fault_activates_at_most_once() {
    let hot = Condition::Above {
        metric: "load".into(),
        value: 0.9,
    };
    let mut inj = Injector::new(vec![fault(
        "f",
        Timing::When(hot),
        Lifetime::Fixed { ms: 100 },
    )])
    .unwrap();
    let mut r = rng(0);
    let high = metrics(&[("load", 1.0)]);
    let mut starts = 0;
    for now in (0..10_000).step_by(50) {
        starts += inj
            .step(now, &high, &mut r)
            .iter()
            .filter(|t| t.change == Change::Activated)
            .count();
    }
    assert_eq!(starts, 1, "the condition held all along; one activation");
    assert!(inj.is_finished());
}

#[test]
fn permanent_faults_stay_until_rollback_and_rollback_stops_everything() {
    let mut inj = Injector::new(vec![
        fault("perm", Timing::At { ms: 0 }, Lifetime::Permanent),
        fault("short", Timing::At { ms: 0 }, Lifetime::Fixed { ms: 10 }),
        fault("later", Timing::At { ms: 5_000 }, Lifetime::Permanent),
        fault(
            "maybe",
            Timing::Chance {
                probability: 1.0,
                every_ms: 3_000,
            },
            Lifetime::Permanent,
        ),
    ])
    .unwrap();
    run(&mut inj, 100, 1_000, 5);
    let ids: Vec<_> = inj.active().iter().map(|f| f.id.clone()).collect();
    assert_eq!(ids, vec!["perm"]);
    let back = inj.rollback(1_000);
    assert_eq!(
        summary(&back),
        vec![(
            "perm".into(),
            1_000,
            Change::Deactivated(EndReason::RolledBack)
        )]
    );
    assert!(inj.is_stopped() && inj.is_finished() && inj.active().is_empty());
    assert_eq!(inj.phase("later"), Some(Phase::Cancelled));
    // Steps past every start time, with metrics and chance: nothing starts.
    let mut r = rng(5);
    for now in (1_000..20_000).step_by(100) {
        assert!(inj.step(now, &metrics(&[("x", 1.0)]), &mut r).is_empty());
    }
    assert!(
        inj.rollback(30_000).is_empty(),
        "a second rollback is a no-op"
    );
    assert!(inj.active().is_empty());
}

#[test]
fn time_going_back_is_taken_as_the_last_time() {
    let mut inj = Injector::new(vec![fault(
        "f",
        Timing::At { ms: 100 },
        Lifetime::Fixed { ms: 100 },
    )])
    .unwrap();
    let mut r = rng(0);
    let none = BTreeMap::new();
    assert_eq!(inj.step(150, &none, &mut r).len(), 1);
    assert!(inj.step(20, &none, &mut r).is_empty());
    let off = inj.step(250, &none, &mut r);
    assert_eq!(off[0].at_ms, 250);
}

#[test]
fn invalid_schedules_are_refused_with_their_reason() {
    let ok = || fault("f", Timing::At { ms: 0 }, Lifetime::Permanent);
    let chance = |probability, every_ms| Timing::Chance {
        probability,
        every_ms,
    };
    let refused = |f: ScheduledFault<Fault>| Injector::new(vec![f]).unwrap_err();
    for p in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            refused(fault("f", chance(p, 10), Lifetime::Permanent)),
            InjectError::Probability { .. }
        ));
    }
    assert_eq!(
        refused(fault("f", chance(0.5, 0), Lifetime::Permanent)),
        InjectError::ZeroInterval { id: "f".into() }
    );
    assert_eq!(
        refused(fault("f", Timing::At { ms: 0 }, Lifetime::Fixed { ms: 0 })),
        InjectError::ZeroLifetime { id: "f".into() }
    );
    assert!(matches!(
        refused(ScheduledFault {
            id: "".into(),
            ..ok()
        }),
        InjectError::Id { .. }
    ));
    assert!(matches!(
        refused(ScheduledFault {
            id: "x".repeat(ID_LEN_MAX + 1),
            ..ok()
        }),
        InjectError::Id { .. }
    ));
    assert_eq!(
        Injector::new(vec![ok(), ok()]).unwrap_err(),
        InjectError::DuplicateId { id: "f".into() }
    );
    let too_many = (0..=FAULTS_MAX)
        .map(|i| ScheduledFault {
            id: format!("f{i}"),
            ..ok()
        })
        .collect();
    assert_eq!(Injector::new(too_many).unwrap_err(), InjectError::TooMany);
}

#[test]
fn invalid_conditions_are_refused_with_their_reason() {
    let leaf = || Condition::AtLeastMs { ms: 1 };
    let cases = [
        (Condition::All(vec![]), ConditionError::Terms { terms: 0 }),
        (
            Condition::Any(vec![leaf(); CONDITION_TERMS_MAX + 1]),
            ConditionError::Terms {
                terms: CONDITION_TERMS_MAX + 1,
            },
        ),
        (
            Condition::All(vec![Condition::All(vec![Condition::All(vec![
                Condition::All(vec![leaf()]),
            ])])]),
            ConditionError::TooDeep,
        ),
        (
            Condition::Above {
                metric: "".into(),
                value: 1.0,
            },
            ConditionError::MetricName,
        ),
        (
            Condition::Below {
                metric: "m".into(),
                value: f64::INFINITY,
            },
            ConditionError::NotFinite { metric: "m".into() },
        ),
    ];
    for (c, want) in cases {
        let as_timing = fault("f", Timing::When(c.clone()), Lifetime::Permanent);
        let as_lifetime = fault("f", Timing::At { ms: 0 }, Lifetime::Until(c));
        for f in [as_timing, as_lifetime] {
            assert_eq!(
                Injector::new(vec![f]).unwrap_err(),
                InjectError::Condition {
                    id: "f".into(),
                    source: want.clone()
                }
            );
        }
    }
    // Three levels deep is within the limit.
    let ok = Condition::All(vec![Condition::Any(vec![Condition::All(vec![leaf()])])]);
    assert_eq!(ok.validate(), Ok(()));
}

#[test]
fn a_schedule_round_trips_through_the_codec() {
    let faults = vec![
        fault(
            "a",
            Timing::Chance {
                probability: 0.25,
                every_ms: 500,
            },
            Lifetime::Fixed { ms: 1_000 },
        ),
        ScheduledFault {
            id: "b".into(),
            fault: Fault::Slow { extra_ms: 3 },
            timing: Timing::When(Condition::All(vec![
                Condition::AtLeastMs { ms: 10 },
                Condition::Above {
                    metric: "m".into(),
                    value: 0.5,
                },
            ])),
            duration: Lifetime::Until(Condition::Below {
                metric: "m".into(),
                value: 0.1,
            }),
        },
        fault("c", Timing::At { ms: 1 }, Lifetime::Permanent),
    ];
    let bytes = bulwark_storage::codec::encode(&faults).unwrap();
    let back: Vec<ScheduledFault<Fault>> = bulwark_storage::codec::decode(&bytes).unwrap();
    assert_eq!(back, faults);
}
