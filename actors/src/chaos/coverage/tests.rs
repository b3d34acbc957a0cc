use super::*;
use crate::schedule::{Block, Person};

fn pid(s: &str) -> PersonId {
    s.parse().unwrap()
}

fn bid(s: &str) -> BlockId {
    s.parse().unwrap()
}

/// Builds a schedule through the real rules; every command must apply.
struct Build {
    st: ScheduleState,
    n: u64,
}

impl Build {
    fn new() -> Build {
        Build {
            st: ScheduleState::new(),
            n: 0,
        }
    }

    fn ok(&mut self, op: Op) -> &mut Build {
        self.n += 1;
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.n.to_le_bytes());
        let cmd = Command {
            key: IdempotencyKey(key),
            issued_by: "alpha".parse().unwrap(),
            at_unix_ms: 1_700_000_000_000 + self.n,
            hlc: Hlc::ZERO,
            op: op.clone(),
        };
        let out = self.st.apply(self.n, &cmd);
        assert!(
            matches!(out, Applied::Fresh(Outcome::Applied(_))),
            "{op:?} -> {out:?}"
        );
        self
    }

    fn person(&mut self, id: &str, role: Role) -> &mut Build {
        self.ok(Op::AddPerson(Person {
            id: pid(id),
            name: format!("Dr {id}"),
            role,
        }))
    }

    fn faculty(&mut self, id: &str) -> &mut Build {
        self.person(id, Role::Faculty)
    }

    /// A block on `day` from `start_h` for `hours`, needing `required`.
    fn block(&mut self, id: &str, day: u32, start_h: u16, hours: u16, required: u8) -> &mut Build {
        self.ok(Op::AddBlock(Block {
            id: bid(id),
            day,
            start_min: start_h * 60,
            duration_min: hours * 60,
            pool: Pool::Icu,
            required,
        }))
    }

    fn assign(&mut self, person: &str, block: &str) -> &mut Build {
        self.ok(Op::Assign {
            person: pid(person),
            block: bid(block),
        })
    }

    fn state(&mut self) -> ScheduleState {
        self.st.check_invariants().unwrap();
        self.st.clone()
    }
}

/// f1 on the ICU, f2 in the clinic, at the same time on day 0; with a
/// spare, f3 is free.
fn two_blocks(spare: bool) -> ScheduleState {
    let mut b = Build::new();
    b.faculty("f1")
        .faculty("f2")
        .block("icu-d0", 0, 8, 8, 1)
        .block("clinic-d0", 0, 8, 8, 1)
        .assign("f1", "icu-d0")
        .assign("f2", "clinic-d0");
    if spare {
        b.faculty("f3");
    }
    b.state()
}

fn rules_tried(g: &Gap) -> Vec<(String, Rule)> {
    g.tried
        .iter()
        .map(|a| (a.person.to_string(), a.refused.rule))
        .collect()
}

#[test]
fn a_schedule_with_a_spare_passes_n_minus_1() {
    let st = two_blocks(true);
    let all = n_minus_1(&st, &faculty(&st)).unwrap();
    assert_eq!(all.len(), 3);
    for (who, r) in &all {
        assert!(r.covered(), "{who}: {r}");
    }
    let (_, f1) = &all[0];
    assert_eq!(f1.vacated, vec![bid("icu-d0")]);
    assert_eq!(
        f1.covers,
        vec![Cover {
            block: bid("icu-d0"),
            person: pid("f3")
        }]
    );
    assert!(all[2].1.vacated.is_empty(), "f3 works nothing");
}

#[test]
fn without_a_spare_n_minus_1_fails_naming_the_block() {
    let st = two_blocks(false);
    let all = n_minus_1(&st, &faculty(&st)).unwrap();
    let (who, r) = &all[0];
    assert_eq!(who, &pid("f1"));
    assert!(!r.covered());
    let g = &r.gaps[0];
    assert_eq!((g.block.as_str(), g.required), ("icu-d0", 1));
    assert_eq!((g.staffed_before, g.staffed_after), (1, 0));
    assert_eq!(rules_tried(g), vec![("f2".into(), Rule::DoubleBooking)]);
    assert_eq!(
        r.to_string(),
        "lost f1: 1 vacated, 0 refilled; GAP icu-d0 (day 0, Icu) 0/1 (had 1), \
         tried [f2 DOUBLE_BOOKING]"
    );
}

#[test]
fn n_minus_2_fails_where_n_minus_1_passes() {
    let st = two_blocks(true);
    assert!(n_minus_1(&st, &faculty(&st))
        .unwrap()
        .iter()
        .all(|(_, r)| r.covered()));
    let pairs = n_minus_2(&st, &faculty(&st)).unwrap();
    assert_eq!((pairs.pairs_total, pairs.skipped), (3, 0));
    let failing: Vec<_> = pairs.failing().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        failing,
        vec![
            (pid("f1"), pid("f2")),
            (pid("f1"), pid("f3")),
            (pid("f2"), pid("f3"))
        ]
    );
    // Both on duty lost: f3 takes the first block (by start, then id),
    // and is then double-booked for the other.
    let (_, r) = &pairs.results[0];
    assert_eq!(
        r.covers,
        vec![Cover {
            block: bid("clinic-d0"),
            person: pid("f3")
        }]
    );
    assert_eq!(r.gaps[0].block, bid("icu-d0"));
    assert_eq!(
        rules_tried(&r.gaps[0]),
        vec![("f3".into(), Rule::DoubleBooking)]
    );
}

#[test]
fn the_input_state_is_never_changed() {
    let st = two_blocks(true);
    let copy = st.clone();
    let digest = st.digest().unwrap();
    n_minus_1(&st, &faculty(&st)).unwrap();
    n_minus_2(&st, &faculty(&st)).unwrap();
    coverage_with(&st, &[pid("f1"), pid("f2")], Refill::Anyone).unwrap();
    assert_eq!(st.digest().unwrap(), digest);
    assert_eq!(st, copy);
}

#[test]
fn the_refill_obeys_the_duty_hour_rule() {
    let mut b = Build::new();
    b.faculty("f1").faculty("f3");
    // f3: 16 h on each of days 0-4, 80 h: the week is full.
    for d in 0..5 {
        let id = format!("long-d{d}");
        b.block(&id, d, 0, 16, 1).assign("f3", &id);
    }
    b.block("icu-d2", 2, 18, 4, 1).assign("f1", "icu-d2");
    let st = b.state();
    let r = coverage(&st, &[pid("f1")]).unwrap();
    assert_eq!(
        rules_tried(&r.gaps[0]),
        vec![("f3".into(), Rule::DutyHours80)]
    );
}

#[test]
fn the_refill_obeys_leave() {
    let mut b = Build::new();
    b.faculty("f1")
        .faculty("f3")
        .block("icu-d0", 0, 8, 8, 1)
        .assign("f1", "icu-d0")
        .ok(Op::Leave {
            person: pid("f3"),
            from_day: 0,
            to_day: 0,
        });
    let r = coverage(&b.state(), &[pid("f1")]).unwrap();
    assert_eq!(rules_tried(&r.gaps[0]), vec![("f3".into(), Rule::OnLeave)]);
}

#[test]
fn faculty_are_refilled_by_faculty_unless_anyone_may() {
    let mut b = Build::new();
    b.faculty("f1")
        .person("r1", Role::Resident { pgy: 3 })
        .block("icu-d0", 0, 8, 8, 1)
        .assign("f1", "icu-d0");
    let st = b.state();
    let same = coverage(&st, &[pid("f1")]).unwrap();
    assert_eq!(same.gaps[0].tried_total, 0, "no faculty to try");
    let any = coverage_with(&st, &[pid("f1")], Refill::Anyone).unwrap();
    assert!(any.covered());
    assert_eq!(any.covers[0].person, pid("r1"));
}

#[test]
fn a_lost_person_leaves_every_block_even_approved_ones() {
    let mut b = Build::new();
    b.faculty("f1")
        .faculty("f2")
        .block("icu-d0", 0, 8, 8, 1)
        .block("icu-d1", 1, 8, 8, 1)
        .block("icu-d9", 9, 8, 8, 1)
        .assign("f1", "icu-d0")
        .assign("f1", "icu-d1")
        .assign("f1", "icu-d9")
        .ok(Op::Approve { through_day: 1 });
    let r = coverage(&b.state(), &[pid("f1")]).unwrap();
    assert_eq!(r.vacated, vec![bid("icu-d0"), bid("icu-d1"), bid("icu-d9")]);
    assert!(r.covered(), "{r}");
    assert!(r.covers.iter().all(|c| c.person == pid("f2")));
}

#[test]
fn the_refill_tries_the_least_loaded_first_and_fills_every_slot() {
    let mut b = Build::new();
    b.faculty("f1")
        .faculty("f2")
        .faculty("f3")
        .faculty("f4")
        .block("busy", 5, 8, 8, 1)
        .assign("f2", "busy")
        .block("icu-d1", 1, 8, 8, 2)
        .assign("f1", "icu-d1");
    // icu-d1 needed 2 and had 1: the refill fills both slots, f3 and f4
    // (no duty) before f2 (8 h).
    let r = coverage(&b.state(), &[pid("f1")]).unwrap();
    let who: Vec<&str> = r.covers.iter().map(|c| c.person.as_str()).collect();
    assert_eq!(who, vec!["f3", "f4"]);
    assert!(r.covered());
}

#[test]
fn unknown_or_too_many_lost_people_are_refused() {
    let st = two_blocks(true);
    assert_eq!(
        coverage(&st, &[pid("nobody")]).unwrap_err(),
        CoverageError::UnknownPerson(pid("nobody"))
    );
    let many: Vec<PersonId> = (0..=LOST_MAX).map(|i| pid(&format!("p{i}"))).collect();
    assert_eq!(
        coverage(&st, &many).unwrap_err(),
        CoverageError::TooManyLost(LOST_MAX + 1)
    );
    assert!(n_minus_1(&st, &[pid("f1"), pid("ghost")]).is_err());
}

#[test]
fn n_minus_2_caps_its_pairs() {
    let mut b = Build::new();
    for i in 0..46 {
        b.faculty(&format!("f{i:02}"));
    }
    let st = b.state();
    let pairs = n_minus_2(&st, &faculty(&st)).unwrap();
    assert_eq!(pairs.pairs_total, 46 * 45 / 2);
    assert_eq!(pairs.results.len(), PAIRS_MAX);
    assert_eq!(pairs.skipped, 46 * 45 / 2 - PAIRS_MAX);
    assert_eq!(pairs.results[0].0, (pid("f00"), pid("f01")));
}

#[test]
fn leave_runs_are_consecutive_days_cut_at_the_leave_limit() {
    let days: BTreeSet<u32> = [1, 2, 3, 7].into_iter().chain(100..=500).collect();
    assert_eq!(
        runs(&days),
        vec![
            (1, 3),
            (7, 7),
            (100, 100 + LEAVE_DAYS_MAX - 1),
            (100 + LEAVE_DAYS_MAX, 500)
        ]
    );
    assert_eq!(
        runs(&BTreeSet::from([u32::MAX - 1, u32::MAX])),
        vec![(u32::MAX - 1, u32::MAX)]
    );
}
