use super::rules::{check, Interval, Rule, DUTY_WINDOW_MIN, SHIFT_MIN_MAX};
use super::*;
use proptest::prelude::*;

fn fac() -> FacilityId {
    "alpha".parse().unwrap()
}

pub(crate) fn cmd(n: u64, op: Op) -> Command {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_le_bytes());
    Command {
        key: IdempotencyKey(key),
        issued_by: fac(),
        at_unix_ms: 1_700_000_000_000 + n,
        hlc: crate::hlc::Hlc::ZERO,
        op,
    }
}

fn pid(s: &str) -> PersonId {
    s.parse().unwrap()
}

fn bid(s: &str) -> BlockId {
    s.parse().unwrap()
}

fn person(id: &str) -> Op {
    Op::AddPerson(Person {
        id: pid(id),
        name: format!("Dr {id}"),
        role: Role::Resident { pgy: 2 },
    })
}

fn block(id: &str, day: u32, start_min: u16, duration_min: u16, required: u8) -> Op {
    Op::AddBlock(Block {
        id: bid(id),
        day,
        start_min,
        duration_min,
        pool: Pool::Icu,
        required,
    })
}

fn assign(p: &str, b: &str) -> Op {
    Op::Assign {
        person: pid(p),
        block: bid(b),
    }
}

/// Applies ops in order at indices 1.., returning the outcomes.
struct Run {
    st: ScheduleState,
    n: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            st: ScheduleState::new(),
            n: 0,
        }
    }

    fn apply(&mut self, op: Op) -> Outcome {
        self.n += 1;
        match self.st.apply(self.n, &cmd(self.n, op)) {
            Applied::Fresh(o) => o,
            Applied::Duplicate { .. } => panic!("fresh key came back duplicate"),
        }
    }

    fn ok(&mut self, op: Op) {
        let o = self.apply(op.clone());
        assert!(matches!(o, Outcome::Applied(_)), "{op:?} -> {o:?}");
        self.st.check_invariants().unwrap();
    }

    /// Applies `op`, expects `rule`, and checks nothing but the rejection
    /// record changed.
    fn rejected(&mut self, op: Op, rule: Rule) {
        let before = self.st.clone();
        let o = self.apply(op.clone());
        match o {
            Outcome::Rejected(r) => assert_eq!(r.rule, rule, "{op:?}: {r}"),
            other => panic!("{op:?} should break {rule:?}, got {other:?}"),
        }
        let mut after = self.st.clone();
        assert_eq!(after.t.rejected_total, before.t.rejected_total + 1);
        let rec = after.t.rejections.pop_back().unwrap();
        assert_eq!(rec.rejection.rule, rule);
        after.t.rejected_total -= 1;
        after.t.rejections = before.t.rejections.clone();
        after.t.keys = before.t.keys.clone();
        after.t.key_order = before.t.key_order.clone();
        after.t.last_index = before.t.last_index;
        assert_eq!(after, before, "a rejected command changed the schedule");
    }
}

/// A person and one 12 h day block per day `0..days`, each needing one.
fn days_of_12h(r: &mut Run, who: &str, days: u32) {
    r.ok(person(who));
    for d in 0..days {
        r.ok(block(&format!("d{d}"), d, 7 * 60, 12 * 60, 1));
    }
}

#[test]
fn assigns_and_refuses_a_double_booking() {
    let mut r = Run::new();
    r.ok(person("ann"));
    r.ok(block("icu-am", 0, 7 * 60, 12 * 60, 2));
    r.ok(block("clinic", 0, 9 * 60, 4 * 60, 1));
    r.ok(assign("ann", "icu-am"));
    r.rejected(assign("ann", "icu-am"), Rule::DoubleBooking);
    r.rejected(assign("ann", "clinic"), Rule::DoubleBooking);
    assert_eq!(r.st.duty_of(&pid("ann")), vec![bid("icu-am")]);
}

#[test]
fn eighty_hours_pass_and_one_minute_more_does_not() {
    let mut r = Run::new();
    r.ok(person("ann"));
    // 6 days x 13h20m = 80 h exactly, in 7 days.
    for d in 0..6u32 {
        r.ok(block(&format!("d{d}"), d, 6 * 60, 800, 1));
        r.ok(assign("ann", &format!("d{d}")));
    }
    r.ok(block("extra", 6, 0, 1, 1));
    r.rejected(assign("ann", "extra"), Rule::DutyHours80);
    // Outside the 7-day window it is fine... but day 7 would make 7 days on.
    r.ok(block("later", 13, 0, 60, 1));
    r.ok(assign("ann", "later"));
}

#[test]
fn a_day_off_in_seven() {
    let mut r = Run::new();
    r.ok(person("ann"));
    for d in 0..7u32 {
        r.ok(block(&format!("d{d}"), d, 8 * 60, 8 * 60, 1));
    }
    for d in 0..6u32 {
        r.ok(assign("ann", &format!("d{d}")));
    }
    r.rejected(assign("ann", "d6"), Rule::DayOffIn7);
}

#[test]
fn no_shift_over_28_hours_even_across_blocks() {
    let mut r = Run::new();
    r.ok(person("ann"));
    r.ok(block("long", 0, 0, 1680, 1));
    r.ok(block("tail", 1, 1680 - 1440, 1, 1));
    r.rejected(block("too-long", 2, 0, 1681, 1), Rule::InvalidInput);
    r.ok(assign("ann", "long"));
    // Touching the end of the 28 h block makes it one longer shift.
    r.rejected(assign("ann", "tail"), Rule::ShiftTooLong);
}

#[test]
fn capacity_unassign_and_swap() {
    let mut r = Run::new();
    r.ok(person("ann"));
    r.ok(person("bob"));
    r.ok(person("cy"));
    r.ok(block("a", 0, 0, 600, 1));
    r.ok(block("b", 2, 0, 600, 1));
    r.ok(assign("ann", "a"));
    r.rejected(assign("bob", "a"), Rule::BlockFull);
    r.ok(assign("bob", "b"));
    r.rejected(
        Op::Unassign {
            person: pid("cy"),
            block: bid("a"),
        },
        Rule::NotAssigned,
    );
    r.ok(Op::Swap {
        a: pid("ann"),
        a_block: bid("a"),
        b: pid("bob"),
        b_block: bid("b"),
    });
    assert_eq!(r.st.assignees(&bid("a")), vec![pid("bob")]);
    assert_eq!(r.st.assignees(&bid("b")), vec![pid("ann")]);
    r.ok(Op::Unassign {
        person: pid("ann"),
        block: bid("b"),
    });
    assert!(r.st.assignees(&bid("b")).is_empty());
    r.rejected(assign("zed", "b"), Rule::UnknownPerson);
    r.rejected(assign("ann", "nope"), Rule::UnknownBlock);
    r.rejected(person("ann"), Rule::AlreadyExists);
}

#[test]
fn a_swap_that_breaks_a_rule_changes_nothing() {
    let mut r = Run::new();
    r.ok(person("ann"));
    for d in 0..7 {
        r.ok(block(&format!("d{d}"), d, 8 * 60, 8 * 60, 1));
    }
    r.ok(person("bob"));
    r.ok(block("x", 20, 0, 60, 1));
    for d in 0..6 {
        r.ok(assign("ann", &format!("d{d}")));
    }
    r.ok(assign("ann", "x"));
    r.ok(assign("bob", "d6"));
    // Ann would take day 6 for day 20, and work 7 days in a row.
    r.rejected(
        Op::Swap {
            a: pid("ann"),
            a_block: bid("x"),
            b: pid("bob"),
            b_block: bid("d6"),
        },
        Rule::DayOffIn7,
    );
    assert_eq!(r.st.assignees(&bid("d6")), vec![pid("bob")]);
}

#[test]
fn leave_vacates_and_blocks_assignment() {
    let mut r = Run::new();
    days_of_12h(&mut r, "ann", 4);
    r.ok(assign("ann", "d0"));
    r.ok(assign("ann", "d2"));
    let o = r.apply(Op::Leave {
        person: pid("ann"),
        from_day: 1,
        to_day: 2,
    });
    assert_eq!(
        o,
        Outcome::Applied(Effect::LeaveGranted {
            vacated: vec![bid("d2")]
        })
    );
    r.rejected(assign("ann", "d1"), Rule::OnLeave);
    r.ok(assign("ann", "d3"));
    r.rejected(
        Op::Leave {
            person: pid("ann"),
            from_day: 5,
            to_day: 4,
        },
        Rule::InvalidInput,
    );
}

#[test]
fn approval_needs_full_staff_then_freezes_but_allows_emergency_cover() {
    let mut r = Run::new();
    days_of_12h(&mut r, "ann", 3);
    r.ok(person("bob"));
    r.ok(assign("ann", "d0"));
    r.rejected(Op::Approve { through_day: 1 }, Rule::Understaffed);
    r.ok(assign("ann", "d1"));
    r.ok(Op::Approve { through_day: 1 });
    r.rejected(Op::Approve { through_day: 0 }, Rule::AlreadyApproved);
    r.rejected(
        Op::Unassign {
            person: pid("ann"),
            block: bid("d1"),
        },
        Rule::Frozen,
    );
    // Leave still applies to approved days, and the hole is covered by an
    // emergency assignment.
    r.ok(Op::Leave {
        person: pid("ann"),
        from_day: 1,
        to_day: 1,
    });
    r.rejected(assign("bob", "d1"), Rule::Frozen);
    r.ok(Op::EmergencyCoverage {
        block: bid("d1"),
        person: pid("bob"),
    });
    let (_, _, a) =
        r.st.assignments()
            .find(|(b, _, _)| **b == bid("d1"))
            .unwrap();
    assert!(a.emergency);
    r.ok(assign("bob", "d2"));
}

#[test]
fn reconcile_replaces_the_losers_all_or_nothing() {
    let mut r = Run::new();
    days_of_12h(&mut r, "ann", 2);
    r.ok(person("bob"));
    r.ok(person("cy"));
    r.ok(assign("ann", "d0"));
    r.ok(Op::Approve { through_day: 0 });
    let rec = |remove: &[&str], cover: &str| Op::Reconcile {
        block: bid("d0"),
        remove: remove.iter().map(|p| pid(p)).collect(),
        cover: pid(cover),
    };
    // The block keeps its one person unless she is removed.
    r.rejected(rec(&[], "bob"), Rule::BlockFull);
    r.rejected(rec(&["cy"], "bob"), Rule::NotAssigned);
    r.rejected(rec(&["ann"], "ann"), Rule::InvalidInput);
    r.rejected(rec(&["ann", "ann"], "bob"), Rule::InvalidInput);
    r.rejected(rec(&["ann"], "nobody"), Rule::UnknownPerson);
    // Even on an approved day, the winner takes the block.
    r.ok(rec(&["ann"], "bob"));
    assert_eq!(r.st.assignees(&bid("d0")), vec![pid("bob")]);
    let on = r.st.assignments_on(&bid("d0"));
    assert!(on[0].1.emergency);
    assert_eq!(on[0].1.stamp.wall_ms, 1_700_000_000_000 + r.n);
    // The winner's own rules still bind: bob on d1 as well is fine, but
    // not twice in one place.
    r.ok(assign("bob", "d1"));
    r.rejected(
        Op::Reconcile {
            block: bid("d1"),
            remove: vec![],
            cover: pid("bob"),
        },
        Rule::DoubleBooking,
    );
}

#[test]
fn a_retry_applies_once_and_a_reused_key_is_refused() {
    let mut st = ScheduleState::new();
    let add = cmd(1, person("ann"));
    assert_eq!(
        st.apply(1, &add),
        Applied::Fresh(Outcome::Applied(Effect::PersonAdded))
    );
    let again = st.apply(2, &add);
    assert_eq!(
        again,
        Applied::Duplicate {
            first_index: 1,
            outcome: Outcome::Applied(Effect::PersonAdded)
        }
    );
    let other = Command {
        op: person("bob"),
        ..add.clone()
    };
    match st.apply(3, &other) {
        Applied::Fresh(Outcome::Rejected(r)) => assert_eq!(r.rule, Rule::KeyReused),
        o => panic!("{o:?}"),
    }
    assert_eq!(st.people().count(), 1);
    assert_eq!(st.rejected_total(), 1);
}

#[test]
fn idempotency_keys_are_bounded_oldest_first() {
    let mut st = ScheduleState::new();
    let n = IDEMPOTENCY_KEYS_MAX as u64 + 10;
    for i in 1..=n {
        st.apply(
            i,
            &cmd(
                i,
                Op::Approve {
                    through_day: i as u32,
                },
            ),
        );
    }
    assert_eq!(st.t.keys.len(), IDEMPOTENCY_KEYS_MAX);
    assert!(st.outcome_of(&cmd(1, person("x")).key).is_none());
    assert!(st.outcome_of(&cmd(n, person("x")).key).is_some());
    st.check_invariants().unwrap();
}

#[test]
fn ids_and_names_are_validated_on_decode() {
    assert!("ok.id-1:x_y".parse::<PersonId>().is_ok());
    for bad in ["", "a b", "é", &"x".repeat(65)] {
        assert!(bad.parse::<BlockId>().is_err(), "{bad:?}");
    }
    let bytes = codec::encode(&"not valid".to_string()).unwrap();
    assert!(codec::decode::<PersonId>(&bytes).is_err());
    let mut r = Run::new();
    r.rejected(
        Op::AddPerson(Person {
            id: pid("p"),
            name: "bad\nname".into(),
            role: Role::Faculty,
        }),
        Rule::InvalidInput,
    );
    r.rejected(
        Op::AddPerson(Person {
            id: pid("p"),
            name: "P".into(),
            role: Role::Resident { pgy: 0 },
        }),
        Rule::InvalidInput,
    );
}

#[test]
fn restore_refuses_garbage_and_states_that_break_invariants() {
    assert!(matches!(
        ScheduleState::restore(b"\x07garbage"),
        Err(SnapshotError::Codec(_))
    ));
    let mut r = Run::new();
    r.ok(person("ann"));
    r.ok(block("a", 0, 0, 600, 1));
    r.ok(block("b", 0, 300, 600, 1));
    r.ok(assign("ann", "a"));
    // Forge a double booking behind the rules' back.
    let mut forged = r.st.clone();
    forged.t.assignments.entry(bid("b")).or_default().insert(
        pid("ann"),
        Assignment {
            index: 9,
            emergency: false,
            stamp: crate::hlc::Hlc::ZERO,
        },
    );
    let bytes = forged.snapshot().unwrap();
    match ScheduleState::restore(&bytes) {
        Err(SnapshotError::Invalid(why)) => assert!(why.contains("DOUBLE_BOOKING"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// Reference for [`check`]: marks every minute, then looks for each rule.
/// Returns every broken rule.
fn reference(duty: &[Interval]) -> BTreeSet<Rule> {
    let horizon = duty.iter().map(|iv| iv.end).max().unwrap_or(0) as usize;
    let mut count = vec![0u8; horizon];
    for iv in duty {
        for m in iv.start..iv.end {
            count[m as usize] += 1;
        }
    }
    let mut broken = BTreeSet::new();
    if count.iter().any(|c| *c > 1) {
        broken.insert(Rule::DoubleBooking);
    }
    let mut run = 0u64;
    for c in &count {
        run = if *c > 0 { run + 1 } else { 0 };
        if run > SHIFT_MIN_MAX {
            broken.insert(Rule::ShiftTooLong);
        }
    }
    let w = DUTY_WINDOW_MIN as usize;
    let mut prefix = vec![0u64; horizon + 1];
    for (m, c) in count.iter().enumerate() {
        prefix[m + 1] = prefix[m] + u64::from(*c > 0);
    }
    if (0..horizon).any(|t| prefix[(t + w).min(horizon)] - prefix[t] > rules::DUTY_MIN_MAX) {
        broken.insert(Rule::DutyHours80);
    }
    let days = horizon.div_ceil(DAY_MIN as usize);
    let busy_day: Vec<bool> = (0..days)
        .map(|d| {
            count[d * 1440..((d + 1) * 1440).min(horizon)]
                .iter()
                .any(|c| *c > 0)
        })
        .collect();
    if busy_day.windows(7).any(|w| w.iter().all(|b| *b)) {
        broken.insert(Rule::DayOffIn7);
    }
    broken
}

fn arb_duty() -> impl Strategy<Value = Vec<Interval>> {
    prop::collection::vec((-120i64..1500, 30u64..1700), 0..14).prop_map(|steps| {
        let mut t = 0i64;
        let mut duty = Vec::new();
        for (gap, len) in steps {
            let start = (t + gap).max(0) as u64;
            duty.push(Interval {
                start,
                end: start + len,
            });
            t = (start + len) as i64;
        }
        duty.sort_unstable();
        duty
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The fast checker agrees with the minute-by-minute reference: it
    /// fails exactly when some rule is broken, naming the first in the
    /// order it checks them.
    #[test]
    fn rules_agree_with_the_minute_reference(duty in arb_duty()) {
        let broken = reference(&duty);
        let order = [Rule::DoubleBooking, Rule::ShiftTooLong, Rule::DutyHours80, Rule::DayOffIn7];
        match check(&duty) {
            Ok(()) => prop_assert!(broken.is_empty(), "missed {:?} in {:?}", broken, duty),
            Err((rule, _)) => {
                let first = order.iter().find(|r| broken.contains(r)).copied();
                prop_assert_eq!(Some(rule), first, "{:?}", duty);
            }
        }
    }
}

/// Person `i`: the schedule's own for 0..5, then two of chaos namespaces.
fn person_id(i: u8) -> String {
    match i {
        0..5 => format!("p{i}"),
        5 => "chaos:x:p5".into(),
        _ => format!("chaos:y:p{i}"),
    }
}

/// Block `i`: the schedule's own for 0..12, then two of namespace `x`.
fn block_id(i: u8) -> String {
    match i {
        0..12 => format!("b{i}"),
        _ => format!("chaos:x:b{i}"),
    }
}

pub(crate) fn arb_op() -> impl Strategy<Value = Op> {
    let p = (0u8..7).prop_map(|i| pid(&person_id(i)));
    let b = (0u8..14).prop_map(|i| bid(&block_id(i)));
    prop_oneof![
        prop_oneof![Just(""), Just("x"), Just("y"), Just("no:colons")].prop_map(|ns| {
            Op::DropNamespace {
                namespace: ns.into(),
            }
        }),
        (
            0u8..7,
            prop_oneof![
                Just(Role::Faculty),
                (1u8..4).prop_map(|pgy| Role::Resident { pgy })
            ]
        )
            .prop_map(|(i, role)| Op::AddPerson(Person {
                id: pid(&person_id(i)),
                name: format!("P{i}"),
                role
            })),
        (0u8..14, 0u32..10, 0u16..1440, 60u16..1000, 1u8..3).prop_map(|(i, day, s, d, req)| {
            Op::AddBlock(Block {
                id: bid(&block_id(i)),
                day,
                start_min: s,
                duration_min: d,
                pool: Pool::Clinic,
                required: req,
            })
        }),
        (p.clone(), b.clone()).prop_map(|(person, block)| Op::Assign { person, block }),
        (p.clone(), b.clone()).prop_map(|(person, block)| Op::Assign { person, block }),
        (p.clone(), b.clone()).prop_map(|(person, block)| Op::Assign { person, block }),
        (p.clone(), b.clone()).prop_map(|(person, block)| Op::Unassign { person, block }),
        (p.clone(), b.clone(), p.clone(), b.clone()).prop_map(|(a, a_block, bb, b_block)| {
            Op::Swap {
                a,
                a_block,
                b: bb,
                b_block,
            }
        }),
        (p.clone(), 0u32..10, 0u32..3).prop_map(|(person, from_day, len)| Op::Leave {
            person,
            from_day,
            to_day: from_day + len
        }),
        (b.clone(), p.clone()).prop_map(|(block, person)| Op::EmergencyCoverage { block, person }),
        (0u32..10).prop_map(|through_day| Op::Approve { through_day }),
        (b.clone(), prop::collection::vec(p.clone(), 0..3), p.clone()).prop_map(
            |(block, remove, cover)| {
                Op::Reconcile {
                    block,
                    remove,
                    cover,
                }
            }
        ),
        (p, 0u32..12).prop_map(|(person, from_day)| Op::RetirePerson { person, from_day }),
        b.prop_map(|block| Op::RetireBlock { block }),
        (0u32..10).prop_map(|through_day| Op::Archive { through_day }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any command sequence keeps every invariant, every rejection changes
    /// nothing but the record, and the snapshot round-trips exactly.
    #[test]
    fn invariants_hold_and_snapshots_round_trip(ops in prop::collection::vec((arb_op(), 0u8..8), 1..80)) {
        let mut st = ScheduleState::new();
        for (i, (op, retry)) in ops.into_iter().enumerate() {
            let index = i as u64 + 1;
            // One in eight repeats the previous command's key.
            let n = if retry == 0 && index > 1 { index - 1 } else { index };
            let c = cmd(n, op);
            let before = st.clone();
            match st.apply(index, &c) {
                Applied::Fresh(Outcome::Rejected(_)) => {
                    prop_assert_eq!(&st.t.people, &before.t.people);
                    prop_assert_eq!(&st.t.assignments, &before.t.assignments);
                    prop_assert_eq!(&st.t.leave, &before.t.leave);
                    prop_assert_eq!(st.t.approved_through, before.t.approved_through);
                }
                Applied::Duplicate { .. } => {
                    prop_assert_eq!(&st.t.assignments, &before.t.assignments);
                    prop_assert_eq!(&st.t.keys, &before.t.keys);
                }
                Applied::Fresh(Outcome::Applied(_)) => {}
            }
            if let Err(e) = st.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
        }
        let bytes = st.snapshot().unwrap();
        let back = ScheduleState::restore(&bytes).unwrap();
        prop_assert_eq!(&back, &st);
        prop_assert_eq!(back.snapshot().unwrap(), bytes);
    }
}

#[test]
fn the_same_commands_give_the_same_digest() {
    let build = || {
        let mut r = Run::new();
        days_of_12h(&mut r, "ann", 5);
        r.ok(assign("ann", "d1"));
        r.ok(assign("ann", "d3"));
        r.st
    };
    assert_eq!(build().digest().unwrap(), build().digest().unwrap());
    let mut other = build();
    other.apply(99, &cmd(99, assign("ann", "d4")));
    assert_ne!(build().digest().unwrap(), other.digest().unwrap());
}

pub(crate) fn person_op(id: &str) -> Op {
    person(id)
}

/// A 10-hour block on `day`, in the morning (`half` 0) or the evening.
pub(crate) fn block_op(id: &str, day: u32, half: u32) -> Op {
    block(id, day, if half == 0 { 6 * 60 } else { 17 * 60 }, 600, 1)
}

/// Found by the property below: a block the base holds understaffed on
/// day 0, retired and added again on day 5 in the trial, is not
/// understaffed through day 0 there (the overlay judged it by the base's
/// day and refused the approval).
#[test]
fn an_overlay_judges_a_re_added_block_on_its_new_day() {
    let mut base = ScheduleState::new();
    base.apply(1, &cmd(1, block("b2", 0, 0, 60, 1)));
    let mut copy = base.clone();
    let mut trial = Schedule::over(Overlay::new(base.tables()));
    let ops = [
        Op::RetireBlock {
            block: "b2".parse().unwrap(),
        },
        block("b2", 5, 0, 60, 1),
        Op::Approve { through_day: 0 },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let n = 1000 + i as u64;
        let c = cmd(n, op);
        assert_eq!(trial.apply(n, &c), copy.apply(n, &c), "command {i}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A trial over an overlay gives the verdicts of the same commands on a
    /// copy, and leaves its base untouched.
    #[test]
    fn an_overlay_trial_agrees_with_a_copy_and_leaves_the_base(
        base_ops in prop::collection::vec(arb_op(), 1..60),
        trial_ops in prop::collection::vec(arb_op(), 1..30),
    ) {
        let mut base = ScheduleState::new();
        for (i, op) in base_ops.into_iter().enumerate() {
            base.apply(i as u64 + 1, &cmd(i as u64 + 1, op));
        }
        let before = base.clone();
        let mut copy = base.clone();
        let mut trial = Schedule::over(Overlay::new(base.tables()));
        for (i, op) in trial_ops.into_iter().enumerate() {
            let n = 1000 + i as u64;
            let c = cmd(n, op);
            prop_assert_eq!(trial.apply(n, &c), copy.apply(n, &c));
            prop_assert_eq!(
                trial.tables().understaffed(u32::MAX, 8),
                copy.tables().understaffed(u32::MAX, 8)
            );
        }
        drop(trial);
        prop_assert_eq!(base, before);
    }
}

#[test]
fn a_batch_runs_each_command_with_its_own_outcome_and_applies_once() {
    let mut r = Run::new();
    r.ok(person("ann"));
    r.ok(block("a", 0, 0, 600, 1));
    let batch = Op::Batch(vec![
        person("bob"),
        block("b", 1, 0, 600, 1),
        assign("ann", "a"),
        assign("bob", "a"), // full: refused, the rest still applies
        assign("bob", "b"),
    ]);
    let c = cmd(100, batch.clone());
    let first = r.st.apply(100, &c);
    let Applied::Fresh(Outcome::Applied(Effect::Batch { outcomes })) = &first else {
        panic!("{first:?}");
    };
    let rules: Vec<Option<Rule>> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Applied(_) => None,
            Outcome::Rejected(r) => Some(r.rule),
        })
        .collect();
    assert_eq!(rules, [None, None, None, Some(Rule::BlockFull), None]);
    assert_eq!(r.st.assignees(&bid("a")), [pid("ann")]);
    assert_eq!(r.st.assignees(&bid("b")), [pid("bob")]);
    r.st.check_invariants().unwrap();
    // A retry answers the first outcome and changes nothing.
    let before = r.st.clone();
    match r.st.apply(101, &c) {
        Applied::Duplicate {
            first_index,
            outcome,
        } => {
            assert_eq!(first_index, 100);
            assert_eq!(Applied::Fresh(outcome), first);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.st.tables().people, before.tables().people);
    // Shapes refused whole: empty, too long, nested, emergency inside.
    r.rejected(Op::Batch(vec![]), Rule::InvalidInput);
    r.rejected(
        Op::Batch(vec![person("x"); BATCH_OPS_MAX + 1]),
        Rule::InvalidInput,
    );
    r.rejected(
        Op::Batch(vec![Op::Batch(vec![person("y")])]),
        Rule::InvalidInput,
    );
    r.rejected(
        Op::Batch(vec![Op::EmergencyCoverage {
            block: bid("b"),
            person: pid("ann"),
        }]),
        Rule::InvalidInput,
    );
}

#[test]
fn a_person_retires_only_without_blocks_from_that_day() {
    let mut r = Run::new();
    days_of_12h(&mut r, "ann", 4);
    r.ok(assign("ann", "d0"));
    r.ok(assign("ann", "d2"));
    let retire = |from_day| Op::RetirePerson {
        person: pid("ann"),
        from_day,
    };
    r.rejected(retire(2), Rule::HoldsAssignments);
    r.rejected(retire(1), Rule::HoldsAssignments);
    r.ok(Op::Unassign {
        person: pid("ann"),
        block: bid("d2"),
    });
    // Her past block stays hers; from day 1 on she takes nothing.
    r.ok(retire(1));
    r.rejected(retire(3), Rule::Retired);
    r.rejected(assign("ann", "d3"), Rule::Retired);
    r.rejected(person("ann"), Rule::AlreadyExists);
    assert_eq!(r.st.duty_of(&pid("ann")), vec![bid("d0")]);
    r.rejected(
        Op::RetirePerson {
            person: pid("nobody"),
            from_day: 0,
        },
        Rule::UnknownPerson,
    );
}

#[test]
fn a_block_is_removed_only_when_empty_and_not_final() {
    let mut r = Run::new();
    days_of_12h(&mut r, "ann", 3);
    r.ok(assign("ann", "d0"));
    let retire = |b: &str| Op::RetireBlock { block: bid(b) };
    r.rejected(retire("d0"), Rule::HoldsAssignments);
    r.ok(retire("d1"));
    r.rejected(retire("d1"), Rule::UnknownBlock);
    r.rejected(assign("ann", "d1"), Rule::UnknownBlock);
    // Approval no longer waits on the removed block.
    r.ok(Op::Approve { through_day: 1 });
    r.rejected(
        Op::Unassign {
            person: pid("ann"),
            block: bid("d0"),
        },
        Rule::Frozen,
    );
    r.ok(block("d1", 5, 7 * 60, 12 * 60, 1));
    r.ok(assign("ann", "d1"));
}

#[test]
fn archiving_moves_final_days_out_and_quiets_the_days_after() {
    let mut r = Run::new();
    days_of_12h(&mut r, "ann", 20);
    r.ok(person("cy"));
    for d in 0..20 {
        let who = if d % 7 == 6 { "cy" } else { "ann" };
        r.ok(assign(who, &format!("d{d}")));
    }
    let archive = |through_day| Op::Archive { through_day };
    r.rejected(archive(2), Rule::NotFinal);
    r.ok(Op::Approve { through_day: 5 });
    r.rejected(archive(6), Rule::NotFinal);
    r.rejected(archive(ARCHIVE_DAYS_MAX), Rule::NotFinal);
    r.ok(Op::Approve { through_day: 19 });
    r.rejected(archive(ARCHIVE_DAYS_MAX), Rule::InvalidInput);
    let o = r.apply(archive(3));
    assert_eq!(
        o,
        Outcome::Applied(Effect::Archived {
            through_day: 3,
            blocks: 4
        })
    );
    r.st.check_invariants().unwrap();
    r.rejected(archive(3), Rule::Archived);
    // The archived blocks left the hot tables, with their duty.
    assert!(r.st.block_of(&bid("d0")).is_none());
    assert_eq!(r.st.duty_of(&pid("ann")).first(), Some(&bid("d4")));
    let old = r.st.tables().archived_blocks(0, None, 100, 100);
    let ids: Vec<String> = old.iter().map(|a| a.block.id.to_string()).collect();
    assert_eq!(ids, ["d0", "d1", "d2", "d3"]);
    assert!(old.iter().all(|a| a.assigned.len() == 1));
    assert_eq!(
        r.st.tables()
            .archived_blocks(1, Some(&bid("d1")), 2, 10)
            .len(),
        1
    );
    // Days within the margin take no change that adds duty or leave; the
    // days after it do.
    let margin = 3 + ARCHIVE_MARGIN_DAYS;
    r.rejected(block("late", margin, 0, 60, 1), Rule::Archived);
    r.rejected(
        Op::Leave {
            person: pid("ann"),
            from_day: margin,
            to_day: margin + 1,
        },
        Rule::Archived,
    );
    r.rejected(
        Op::RetirePerson {
            person: pid("ann"),
            from_day: margin,
        },
        Rule::Archived,
    );
    r.ok(person("bob"));
    r.ok(Op::Leave {
        person: pid("ann"),
        from_day: 12,
        to_day: 12,
    });
    r.ok(Op::EmergencyCoverage {
        block: bid("d12"),
        person: pid("bob"),
    });
    r.ok(block("fresh", margin + 1, 0, 60, 1));
    r.ok(archive(10));
    r.rejected(
        Op::EmergencyCoverage {
            block: bid("d6"),
            person: pid("bob"),
        },
        Rule::Archived,
    );
    // An archived id is not used again.
    r.rejected(block("d6", 30, 0, 60, 1), Rule::AlreadyExists);
    // The archive stays 8 days behind the last approved day.
    r.rejected(archive(12), Rule::NotFinal);
    // A batch carries no archive.
    r.rejected(Op::Batch(vec![archive(11)]), Rule::InvalidInput);
}

/// A chaos namespace is closed (its people work its blocks only) and
/// dropping it leaves the schedule's own people, blocks, assignments, leave
/// and retirements exactly as they were; a big namespace goes in bounded
/// steps, blocks first.
#[test]
fn a_namespace_is_closed_and_drops_without_a_trace() {
    let mut r = Run::new();
    r.ok(person("p1"));
    r.ok(block("b1", 3, 0, 60, 2));
    r.ok(assign("p1", "b1"));
    let own = r.st.t.clone();
    r.ok(person("chaos:run1:p"));
    r.ok(person("chaos:run2:p"));
    r.ok(block("chaos:run1:b", 3, 120, 60, 2));
    r.rejected(assign("chaos:run1:p", "b1"), Rule::Namespace);
    r.rejected(assign("p1", "chaos:run1:b"), Rule::Namespace);
    r.rejected(assign("chaos:run2:p", "chaos:run1:b"), Rule::Namespace);
    r.ok(assign("chaos:run1:p", "chaos:run1:b"));
    r.ok(Op::Leave {
        person: pid("chaos:run1:p"),
        from_day: 9,
        to_day: 10,
    });
    r.ok(Op::RetirePerson {
        person: pid("chaos:run1:p"),
        from_day: 20,
    });
    for i in 0..300 {
        r.ok(block(&format!("chaos:run1:x{i:03}"), 40 + i / 10, 0, 60, 1));
    }
    let drop = |ns: &str| Op::DropNamespace {
        namespace: ns.into(),
    };
    r.rejected(drop("run:1"), Rule::InvalidInput);
    let step = |r: &mut Run, ns: &str| match r.apply(drop(ns)) {
        Outcome::Applied(Effect::NamespaceDropped {
            blocks,
            people,
            more,
        }) => (blocks, people, more),
        other => panic!("{other:?}"),
    };
    assert_eq!(step(&mut r, "run1"), (256, 0, true));
    r.st.check_invariants().unwrap();
    assert_eq!(step(&mut r, "run1"), (45, 1, false));
    r.st.check_invariants().unwrap();
    // run2's person is still there; the empty name takes every namespace.
    assert!(r.st.t.people.contains_key(&pid("chaos:run2:p")));
    assert_eq!(step(&mut r, ""), (0, 1, false));
    assert_eq!(step(&mut r, ""), (0, 0, false));
    let t = &r.st.t;
    assert_eq!(
        (&t.people, &t.blocks, &t.assignments, &t.leave, &t.retired),
        (
            &own.people,
            &own.blocks,
            &own.assignments,
            &own.leave,
            &own.retired
        )
    );
    assert_eq!(r.st.check_invariants(), Ok(()));
    // The derived indexes went too: a rebuilt copy is the same state.
    let back = ScheduleState::restore(&r.st.snapshot().unwrap()).unwrap();
    assert_eq!(back, r.st);
}

/// A drill is declared by another facility than the one it names, for 1 ms
/// to a day.
#[test]
fn a_drill_is_declared_by_another_facility_only() {
    let mut r = Run::new();
    let drill = |f: &str, for_ms| Op::Drill {
        facility: f.parse().unwrap(),
        for_ms,
    };
    r.ok(drill("bravo", 60_000));
    r.rejected(drill("alpha", 60_000), Rule::InvalidInput);
    r.rejected(drill("bravo", 0), Rule::InvalidInput);
    r.rejected(drill("bravo", DRILL_MS_MAX + 1), Rule::InvalidInput);
}
