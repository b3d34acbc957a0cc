//! The duty rules, over one person's duty as sorted, disjoint intervals of
//! minutes since the schedule's epoch. Pure and deterministic.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::DAY_MIN;
use crate::plant::{self, Bug};

/// Longest continuous duty, in minutes: 24 h plus 4 h of handover.
pub const SHIFT_MIN_MAX: u64 = 28 * 60;
/// The rolling window of the duty-hour limit, in minutes (7 days).
pub const DUTY_WINDOW_MIN: u64 = 7 * DAY_MIN;
/// Most duty minutes in any rolling window (80 h).
pub const DUTY_MIN_MAX: u64 = 80 * 60;
/// Longest run of days with duty; the next one must be off.
pub const DAYS_ON_MAX: u32 = 6;

/// A half-open span of minutes `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// First minute.
    pub start: u64,
    /// One past the last minute.
    pub end: u64,
}

impl Interval {
    /// The days the interval touches.
    pub fn days(&self) -> impl Iterator<Item = u32> {
        let first = self.start / DAY_MIN;
        let last = self.end.saturating_sub(1).max(self.start) / DAY_MIN;
        (first..=last).map(|d| u32::try_from(d).unwrap_or(u32::MAX))
    }

    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// The rules, and the other reasons a command is refused. [`Rule::code`] is
/// the stable name used in logs, metrics and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    /// Somebody would be in two places at once.
    DoubleBooking,
    /// More than 80 duty hours in some rolling 7 days.
    DutyHours80,
    /// Seven days in a row with duty.
    DayOffIn7,
    /// Continuous duty over 24 h plus 4 h of handover.
    ShiftTooLong,
    /// The person is on leave then.
    OnLeave,
    /// The block already has the people it needs.
    BlockFull,
    /// The block is finally approved.
    Frozen,
    /// Approval asked for days with blocks not fully staffed.
    Understaffed,
    /// Those days are already approved.
    AlreadyApproved,
    /// The person is not on that block.
    NotAssigned,
    /// No such person.
    UnknownPerson,
    /// No such block.
    UnknownBlock,
    /// The id is taken.
    AlreadyExists,
    /// A field is out of range.
    InvalidInput,
    /// The idempotency key was used for a different command.
    KeyReused,
    /// The proposal's anchor is not a recent entry of the ledger chain.
    ChainBreak,
    /// The proposal's timestamp steps back past its proposer's previous one
    /// by more than the allowed skew.
    TimeTravel,
    /// The person is retired from that day.
    Retired,
    /// The person or block still holds assignments.
    HoldsAssignments,
    /// The day is archived, or too near the archive to change.
    Archived,
    /// Only finally approved days can be archived.
    NotFinal,
    /// A person and a block of different namespaces (an experiment's
    /// `chaos:` ids never meet the schedule's own).
    Namespace,
}

impl Rule {
    /// The stable name.
    pub fn code(self) -> &'static str {
        match self {
            Rule::DoubleBooking => "DOUBLE_BOOKING",
            Rule::DutyHours80 => "DUTY_HOURS_80",
            Rule::DayOffIn7 => "DAY_OFF_IN_7",
            Rule::ShiftTooLong => "SHIFT_TOO_LONG",
            Rule::OnLeave => "ON_LEAVE",
            Rule::BlockFull => "BLOCK_FULL",
            Rule::Frozen => "FROZEN",
            Rule::Understaffed => "UNDERSTAFFED",
            Rule::AlreadyApproved => "ALREADY_APPROVED",
            Rule::NotAssigned => "NOT_ASSIGNED",
            Rule::UnknownPerson => "UNKNOWN_PERSON",
            Rule::UnknownBlock => "UNKNOWN_BLOCK",
            Rule::AlreadyExists => "ALREADY_EXISTS",
            Rule::InvalidInput => "INVALID_INPUT",
            Rule::KeyReused => "KEY_REUSED",
            Rule::ChainBreak => "CHAIN_BREAK",
            Rule::TimeTravel => "TIME_TRAVEL",
            Rule::Retired => "RETIRED",
            Rule::HoldsAssignments => "HOLDS_ASSIGNMENTS",
            Rule::Archived => "ARCHIVED",
            Rule::NotFinal => "NOT_FINAL",
            Rule::Namespace => "NAMESPACE",
        }
    }

    /// Whether the rule is one of the four duty rules.
    pub fn is_duty_rule(self) -> bool {
        matches!(
            self,
            Rule::DoubleBooking | Rule::DutyHours80 | Rule::DayOffIn7 | Rule::ShiftTooLong
        )
    }
}

/// Checks one person's duty, sorted by start, against the four rules. The
/// first broken rule comes back with what broke it.
pub fn check(duty: &[Interval]) -> Result<(), (Rule, String)> {
    debug_assert!(duty.windows(2).all(|w| w[0] <= w[1]), "duty must be sorted");
    // Nobody in two places: sorted by start, any overlap shows between
    // neighbours.
    for w in duty.windows(2) {
        let overlap = if plant::active(Bug::TouchingIsOverlapFree) {
            w[0].start < w[1].start && w[1].start < w[0].end
        } else {
            w[1].start < w[0].end
        };
        if overlap {
            return Err((
                Rule::DoubleBooking,
                format!(
                    "minutes {}..{} overlap {}..{}",
                    w[0].start, w[0].end, w[1].start, w[1].end
                ),
            ));
        }
    }
    // Continuous duty: touching intervals make one shift.
    let shift_max = if plant::active(Bug::Shift30h) {
        30 * 60
    } else {
        SHIFT_MIN_MAX
    };
    let mut shift: Option<Interval> = None;
    for iv in duty {
        shift = Some(match shift {
            Some(s) if iv.start <= s.end => Interval {
                start: s.start,
                end: iv.end.max(s.end),
            },
            _ => *iv,
        });
        if let Some(s) = shift.filter(|s| s.len() > shift_max) {
            return Err((
                Rule::ShiftTooLong,
                format!(
                    "continuous duty of {} min from minute {} exceeds {shift_max}",
                    s.len(),
                    s.start
                ),
            ));
        }
    }
    // Rolling 7 days: the busiest window starts where some duty starts or
    // ends where some duty ends.
    let window = if plant::active(Bug::DutyWindow6Days) {
        6 * DAY_MIN
    } else {
        DUTY_WINDOW_MIN
    };
    let starts = duty.iter().map(|iv| iv.start);
    let ends = duty.iter().map(|iv| iv.end.saturating_sub(window));
    for t in starts.chain(ends) {
        let busy = busy_in(duty, t, t + window);
        if busy > DUTY_MIN_MAX {
            return Err((
                Rule::DutyHours80,
                format!("{busy} duty min in the 7 days from minute {t} exceed {DUTY_MIN_MAX}"),
            ));
        }
    }
    // A day off in every 7.
    let days: BTreeSet<u32> = duty.iter().flat_map(Interval::days).collect();
    let days_on_7 = plant::active(Bug::DaysOn7);
    let too_many = |(f, l): &(u32, u32)| {
        if days_on_7 {
            l - f > DAYS_ON_MAX
        } else {
            l - f >= DAYS_ON_MAX
        }
    };
    let mut run: Option<(u32, u32)> = None;
    for d in days {
        run = Some(match run {
            Some((first, last)) if last.checked_add(1) == Some(d) => (first, d),
            _ => (d, d),
        });
        if let Some((first, last)) = run.filter(too_many) {
            return Err((
                Rule::DayOffIn7,
                format!("duty on every day {first}..={last}"),
            ));
        }
    }
    Ok(())
}

/// Duty minutes of sorted, disjoint `duty` within `[from, to)`.
fn busy_in(duty: &[Interval], from: u64, to: u64) -> u64 {
    let first = duty.partition_point(|iv| iv.end <= from);
    duty[first..]
        .iter()
        .take_while(|iv| iv.start < to)
        .map(|iv| iv.end.min(to).saturating_sub(iv.start.max(from)))
        .sum()
}
