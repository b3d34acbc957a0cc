//! Evidence of misbehaviour, trust scores and the pattern detectors.
//!
//! Evidence names the offending facility and carries its proof: the signed
//! votes or the committed proposal, so another facility (or an auditor)
//! can check it. Where the only proof is "this arrived over the offender's
//! authenticated connection" (a forged vote, a replayed vote), the proof
//! says so: that kind of proof convinces this facility, not a third party.

use std::collections::{BTreeMap, BTreeSet};

use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};

use crate::ledger::{Hash, Vote};

/// How bad a finding is; each costs trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// −0.05.
    Warning,
    /// −0.15.
    Suspicious,
    /// −0.40.
    Malicious,
}

impl Severity {
    /// The trust it costs.
    pub fn penalty(self) -> f64 {
        match self {
            Severity::Warning => 0.05,
            Severity::Suspicious => 0.15,
            Severity::Malicious => 0.40,
        }
    }
}

/// What was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Two different votes by one signer for one height.
    Equivocation {
        /// The height.
        height: u64,
        /// The first vote seen.
        first: Vote,
        /// The conflicting one.
        second: Vote,
    },
    /// A vote whose signature does not verify for the signer it names,
    /// received over the offender's authenticated connection.
    BadVoteSignature {
        /// The facility the vote claims as signer.
        claimed: FacilityId,
        /// The vote as received.
        vote: Vote,
    },
    /// A committed proposal that breaks the chain or the rules (or whose
    /// signature does not verify; then the offender is the term's leader,
    /// which put it in the log).
    BadProposal {
        /// The reason's code (FORGED_SIGNATURE, CHAIN_BREAK, TIME_TRAVEL,
        /// DOUBLE_ASSIGN, ACGME_VIOLATION).
        reason: String,
        /// Raft index of the entry.
        raft_index: u64,
        /// The committed bytes (a signed proposal).
        proposal: Vec<u8>,
    },
    /// A signed vote for an entry the validator's replica refused.
    VoteForInvalid {
        /// The refused entry's reason code.
        reason: String,
        /// The vote.
        vote: Vote,
    },
    /// A signed vote for a height already final here, repeated after the
    /// voter was sent the certificate.
    StaleVote {
        /// The height.
        height: u64,
        /// How often it came after the certificate was sent.
        repeats: u32,
        /// The vote.
        vote: Vote,
    },
    /// A signer that stays in touch but whose votes are missing from many
    /// final entries in a row. Not a proof: a heuristic.
    Withholding {
        /// The first final height of the streak without its vote.
        since: u64,
        /// Final heights in a row without its vote, when recorded.
        missed: u64,
    },
    /// A proposal whose timestamp is ahead of this validator's clock by more
    /// than the allowed skew.
    FutureTimestamp {
        /// Raft index.
        raft_index: u64,
        /// How far ahead, in ms.
        ahead_ms: u64,
    },
    /// One proposer gives one person more than 3× the average assignments.
    Favoritism {
        /// The person.
        person: String,
        /// Their assignments by this proposer.
        count: u64,
        /// The proposer's average per person.
        average_milli: u64,
    },
    /// More than 30% of a proposer's proposals break the duty rules.
    DutyHourEvasion {
        /// Violating proposals.
        violations: u64,
        /// All proposals.
        proposals: u64,
    },
    /// A proposer's timestamps step back.
    TimestampManipulation {
        /// Raft index of the proposal that stepped back.
        raft_index: u64,
    },
}

impl Kind {
    /// The stable name.
    pub fn code(&self) -> &'static str {
        match self {
            Kind::Equivocation { .. } => "EQUIVOCATION",
            Kind::BadVoteSignature { .. } => "BAD_VOTE_SIGNATURE",
            Kind::BadProposal { .. } => "BAD_PROPOSAL",
            Kind::VoteForInvalid { .. } => "VOTE_FOR_INVALID",
            Kind::StaleVote { .. } => "STALE_VOTE",
            Kind::Withholding { .. } => "WITHHOLDING",
            Kind::FutureTimestamp { .. } => "FUTURE_TIMESTAMP",
            Kind::Favoritism { .. } => "FAVORITISM",
            Kind::DutyHourEvasion { .. } => "ACGME_EVASION",
            Kind::TimestampManipulation { .. } => "TIME_MANIPULATION",
        }
    }

    /// How bad it is.
    pub fn severity(&self) -> Severity {
        match self {
            Kind::Equivocation { .. }
            | Kind::BadVoteSignature { .. }
            | Kind::VoteForInvalid { .. }
            | Kind::DutyHourEvasion { .. }
            | Kind::TimestampManipulation { .. } => Severity::Malicious,
            Kind::Favoritism { .. } | Kind::Withholding { .. } => Severity::Suspicious,
            Kind::BadProposal { reason, .. }
                if reason == "FORGED_SIGNATURE" || reason == "CHAIN_BREAK" =>
            {
                Severity::Malicious
            }
            Kind::BadProposal { .. } | Kind::StaleVote { .. } | Kind::FutureTimestamp { .. } => {
                Severity::Warning
            }
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Who misbehaved.
    pub offender: FacilityId,
    /// When it was recorded (this facility's clock).
    pub at_unix_ms: u64,
    /// What, with the proof.
    pub kind: Kind,
}

impl Evidence {
    /// A key that makes one finding count once (re-deliveries and restarts
    /// do not inflate the score).
    pub fn dedup_key(&self) -> (FacilityId, &'static str, u64, Hash) {
        let (n, extra): (u64, Hash) = match &self.kind {
            Kind::Equivocation { height, .. } => (*height, [0; 32]),
            Kind::BadVoteSignature { vote, .. } => (0, *blake3::hash(&vote.body).as_bytes()),
            Kind::BadProposal { raft_index, .. } => (*raft_index, [0; 32]),
            Kind::VoteForInvalid { vote, .. } => (0, *blake3::hash(&vote.body).as_bytes()),
            Kind::StaleVote { height, .. } => (*height, [0; 32]),
            Kind::Withholding { since, .. } => (*since, [0; 32]),
            Kind::FutureTimestamp { raft_index, .. } => (*raft_index, [0; 32]),
            Kind::Favoritism { person, .. } => (0, *blake3::hash(person.as_bytes()).as_bytes()),
            Kind::DutyHourEvasion { proposals, .. } => (*proposals / 100, [0; 32]),
            Kind::TimestampManipulation { raft_index } => (*raft_index, [0; 32]),
        };
        (self.offender.clone(), self.kind.code(), n, extra)
    }
}

/// The trust window: 30 days.
pub const TRUST_WINDOW_MS: u64 = 30 * 24 * 3600 * 1000;

/// How far outside a drill's window evidence still counts as the drill's:
/// the recorder's clock may differ from the declaring facility's, and a
/// heuristic (withholding) names a streak some seconds after it began.
pub const DRILL_SLACK_MS: u64 = 30_000;

/// Drills a validator keeps at most (a memory bound: drills whose window
/// left the trust window are dropped first).
pub const DRILLS_KEPT: usize = 1024;

/// A drill the operator declared through consensus ([`crate::schedule::Op::Drill`],
/// admitted to the ledger): evidence against `facility` recorded within
/// its window (give or take [`DRILL_SLACK_MS`]) is drill evidence, kept
/// and shown but costing no trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drill {
    /// The facility levers were pulled on.
    pub facility: FacilityId,
    /// From (the declaring command's timestamp).
    pub from_unix_ms: u64,
    /// Until.
    pub until_unix_ms: u64,
    /// The Raft index of the declaration.
    pub raft_index: u64,
}

impl Drill {
    /// Whether `e` was produced by this drill.
    pub fn covers(&self, e: &Evidence) -> bool {
        e.offender == self.facility
            && e.at_unix_ms.saturating_add(DRILL_SLACK_MS) >= self.from_unix_ms
            && e.at_unix_ms <= self.until_unix_ms.saturating_add(DRILL_SLACK_MS)
    }
}

/// A facility's trust at `now`: 1.0 minus the penalties of its evidence in
/// the last 30 days that no drill covers, floored at 0.
pub fn trust_score<'a>(
    facility: &FacilityId,
    evidence: impl IntoIterator<Item = &'a Evidence>,
    drills: &[Drill],
    now_unix_ms: u64,
) -> f64 {
    let since = now_unix_ms.saturating_sub(TRUST_WINDOW_MS);
    let penalty: f64 = evidence
        .into_iter()
        .filter(|e| &e.offender == facility && e.at_unix_ms >= since)
        .filter(|e| !drills.iter().any(|d| d.covers(e)))
        .map(|e| e.kind.severity().penalty())
        .sum();
    (1.0 - penalty).max(0.0)
}

/// Fewest proposals before a proposer's rates are judged.
pub const PATTERN_PROPOSALS_MIN: u64 = 10;

/// Favoritism is judged over at least this many assignments by one
/// proposer...
pub const FAVORITISM_ASSIGNMENTS_MIN: u64 = 100;
/// ... among at least this many people ...
pub const FAVORITISM_PEOPLE_MIN: u64 = 10;
/// ... and names a person only with at least this many: small samples of
/// an ordinary schedule hold 3× outliers by chance.
pub const FAVORITISM_COUNT_MIN: u64 = 10;

/// Per-proposer statistics over the committed proposals this validator saw
/// since it started (they are rebuilt from the live stream, not stored).
#[derive(Debug, Default)]
pub struct Patterns {
    per: BTreeMap<FacilityId, ProposerStats>,
    reported: BTreeSet<(FacilityId, &'static str, String)>,
}

#[derive(Debug, Default)]
struct ProposerStats {
    proposals: u64,
    violations: u64,
    assignments: BTreeMap<String, u64>,
}

impl Patterns {
    /// Notes one committed proposal: whether it broke the duty rules and,
    /// if it put people on blocks, who. Returns new findings (each reported
    /// once).
    pub fn note(
        &mut self,
        proposer: &FacilityId,
        violation: bool,
        assigned: &[String],
    ) -> Vec<Kind> {
        let st = self.per.entry(proposer.clone()).or_default();
        st.proposals += 1;
        st.violations += u64::from(violation);
        for p in assigned {
            *st.assignments.entry(p.clone()).or_default() += 1;
        }
        let mut found = Vec::new();
        if st.proposals >= PATTERN_PROPOSALS_MIN && st.violations * 10 > st.proposals * 3 {
            let key = (proposer.clone(), "evasion", String::new());
            if self.reported.insert(key) {
                found.push(Kind::DutyHourEvasion {
                    violations: st.violations,
                    proposals: st.proposals,
                });
            }
        }
        let total: u64 = st.assignments.values().sum();
        let people = st.assignments.len() as u64;
        if total >= FAVORITISM_ASSIGNMENTS_MIN && people >= FAVORITISM_PEOPLE_MIN {
            for (person, &count) in &st.assignments {
                // count > 3 × (total / people), in integers.
                if count >= FAVORITISM_COUNT_MIN && count * people > 3 * total {
                    let key = (proposer.clone(), "favoritism", person.clone());
                    if self.reported.insert(key) {
                        found.push(Kind::Favoritism {
                            person: person.clone(),
                            count,
                            average_milli: total * 1000 / people,
                        });
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> FacilityId {
        s.parse().unwrap()
    }

    #[test]
    fn trust_deducts_per_severity_within_the_window_and_floors_at_zero() {
        let ev = |sev: Kind, at| Evidence {
            offender: f("bravo"),
            at_unix_ms: at,
            kind: sev,
        };
        let now = TRUST_WINDOW_MS + 1_000;
        let list = vec![
            ev(
                Kind::Withholding {
                    since: 1,
                    missed: 16,
                },
                now,
            ), // suspicious
            ev(
                Kind::FutureTimestamp {
                    raft_index: 1,
                    ahead_ms: 1,
                },
                now,
            ), // warning
            ev(
                Kind::Withholding {
                    since: 2,
                    missed: 16,
                },
                0,
            ), // outside the window
        ];
        let t = trust_score(&f("bravo"), &list, &[], now);
        assert!((t - 0.80).abs() < 1e-9, "{t}");
        assert_eq!(trust_score(&f("alpha"), &list, &[], now), 1.0);
        let many: Vec<Evidence> = (0..5)
            .map(|i| ev(Kind::TimestampManipulation { raft_index: i }, now))
            .collect();
        assert_eq!(trust_score(&f("bravo"), &many, &[], now), 0.0);
    }

    /// Favoritism: more than 3× the proposer's average, judged only over
    /// a sample that can show it (100 assignments, 10 people, 10 for the
    /// person named).
    #[test]
    fn favoritism_needs_more_than_three_times_the_average_of_a_real_sample() {
        let me = f("bravo");
        let run = |counts: &[u64]| {
            let mut p = Patterns::default();
            let mut found = Vec::new();
            let most = counts.iter().copied().max().unwrap_or(0);
            // Round robin, so the detector sees every prefix of the run.
            for round in 0..most {
                for (i, &c) in counts.iter().enumerate() {
                    if round < c {
                        found.extend(p.note(&me, false, &[format!("p{i}")]));
                    }
                }
            }
            found
        };
        // 10 people, "p0" with 40 of 112: average 11.2, 40 > 33.6 (named
        // once it passes 3x on the way: at 31 of 103).
        let mut counts = vec![8; 10];
        counts[0] = 40;
        let found = run(&counts);
        assert!(
            matches!(&found[..], [Kind::Favoritism { person, count: 31, .. }] if person == "p0"),
            "{found:?}"
        );
        // Under 100 assignments nothing is judged: the old rule named "a"
        // with 13 of 16 among 4 people.
        assert!(run(&[13, 1, 1, 1]).is_empty());
        // Exactly 3× is not favoritism: 9 people with 10, one with 30
        // (average 12, 3× = 36 > 30); one with 37 of 127 among 10 is.
        let mut counts = vec![10; 10];
        counts[0] = 36;
        assert!(run(&counts).is_empty(), "36 of 126: 3x of 12.6 is 37.8");
        counts[0] = 43;
        assert_eq!(run(&counts).len(), 1, "43 of 133: over 3x of 13.3");
    }

    /// A realistic year (60 residents, 4 blocks of 2 a day, everyone drawn
    /// at random for each slot, seeded) never looks like favoritism; the
    /// same year with one resident given 4× their share does.
    #[test]
    fn an_ordinary_year_is_not_favoritism_and_a_real_favourite_is() {
        use rand::{Rng, SeedableRng};
        let me = f("bravo");
        for seed in 0..8u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (mut fair, mut bent) = (Patterns::default(), Patterns::default());
            let (mut fair_found, mut bent_found) = (Vec::new(), Vec::new());
            for _ in 0..365 * 4 * 2 {
                let who = format!("r{}", rng.random_range(0..60));
                fair_found.extend(fair.note(&me, false, std::slice::from_ref(&who)));
                // One slot in 15 goes to the favourite: 4.9x their share.
                let who = if rng.random_range(0..15) == 0 {
                    "r0".to_string()
                } else {
                    who
                };
                bent_found.extend(bent.note(&me, false, &[who]));
            }
            assert!(fair_found.is_empty(), "seed {seed}: {fair_found:?}");
            assert!(
                matches!(&bent_found[..], [Kind::Favoritism { person, .. }] if person == "r0"),
                "seed {seed}: {bent_found:?}"
            );
        }
    }

    #[test]
    fn evasion_needs_more_than_thirty_percent_of_at_least_ten() {
        let mut p = Patterns::default();
        let me = f("bravo");
        let mut found = Vec::new();
        for i in 0..10 {
            found.extend(p.note(&me, i < 3, &[]));
        }
        assert!(found.is_empty(), "30% exactly is not evasion");
        found.extend(p.note(&me, true, &[]));
        assert!(matches!(
            &found[..],
            [Kind::DutyHourEvasion {
                violations: 4,
                proposals: 11
            }]
        ));
    }
}
