//! A reference model of the schedule, written for the checkers and
//! apart from the implementation: it shares the command *types* with
//! `bulwark_actors::schedule` and nothing of its logic (no `rules::check`,
//! no window constant, no `ScheduleState`). It is meant to be obviously
//! right rather than fast: a person's duty is a count per minute, and every
//! rule is read off those counts.
//!
//! The rules, as the README and the API document them:
//! - nobody is on two blocks in one minute (`DOUBLE_BOOKING`);
//! - at most 80 h of duty in any 7 × 24 h window (`DUTY_HOURS_80`);
//! - no 7 days in a row with duty (`DAY_OFF_IN_7`);
//! - no continuous duty over 28 h, touching blocks being one shift
//!   (`SHIFT_TOO_LONG`);
//! - nobody works a block that touches a day of their leave (`ON_LEAVE`);
//! - a block holds at most `required` people (`BLOCK_FULL`), finally
//!   approved days change only by leave, emergency coverage or a
//!   reconciliation (`FROZEN`), an approval needs every block up to its day
//!   fully staffed (`UNDERSTAFFED`);
//! - an idempotency key decides once: a retry of the same command repeats
//!   the first outcome, another command under the key is `KEY_REUSED`.
//!
//! [`Model::evaluate`] names *every* rule a command breaks (the
//! implementation names the first it finds, in an order the model does
//! not copy), so a refusal agrees when its rule is among them.

use std::collections::{BTreeMap, BTreeSet};

use bulwark_actors::schedule::{Block, Command, Op, Role, ScheduleState};

/// Minutes in a day.
const DAY: u64 = 24 * 60;
/// The rolling window of the duty-hour rule.
const WEEK: u64 = 7 * DAY;
/// Most duty minutes in a window.
const WEEK_DUTY_MAX: u64 = 80 * 60;
/// Longest continuous duty, in minutes.
const SHIFT_MAX: u64 = 28 * 60;
/// Days in a row with duty that break the day-off rule.
const DAYS_IN_A_ROW_BAD: usize = 7;
/// Days after the archived ones that take no change (`ARCHIVED`).
const ARCHIVE_QUIET_DAYS: u64 = 8;
/// Most days one archive command moves.
const ARCHIVE_STEP_DAYS: u64 = 7;
/// Ids of experiments' namespaces start so (`chaos:<ns>:…`).
const SANDBOX: &str = "chaos:";
/// Blocks plus people one namespace drop removes.
const DROP_STEP: usize = 256;
/// Longest drill, ms.
const DRILL_LONGEST_MS: u64 = 86_400_000;

/// The duty rules' codes.
pub const DUTY_RULES: [&str; 4] = [
    "DOUBLE_BOOKING",
    "DUTY_HOURS_80",
    "DAY_OFF_IN_7",
    "SHIFT_TOO_LONG",
];

/// A block as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    day: u64,
    start: u64,
    end: u64,
    required: usize,
}

impl Slot {
    fn of(b: &Block) -> Slot {
        let start = u64::from(b.day) * DAY + u64::from(b.start_min);
        Slot {
            day: u64::from(b.day),
            start,
            end: start + u64::from(b.duration_min),
            required: usize::from(b.required),
        }
    }

    /// Days with at least one minute of the block.
    fn days(&self) -> BTreeSet<u64> {
        (self.start..self.end).map(|m| m / DAY).collect()
    }
}

/// What the model expects of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// It applies.
    Accept,
    /// It is refused, for any of these rules.
    Reject(BTreeSet<&'static str>),
    /// A retry: nothing changes, the first outcome is repeated.
    Duplicate,
}

/// The implementation's decision on one committed command, as the model
/// compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Applied (and appended to the ledger chain).
    Applied,
    /// Refused, with the ledger's reason code.
    Refused(String),
    /// Answered as a retry.
    Duplicate,
}

/// The reference schedule.
#[derive(Debug, Default, Clone)]
pub struct Model {
    people: BTreeSet<String>,
    blocks: BTreeMap<String, Slot>,
    /// block -> people on it.
    on: BTreeMap<String, BTreeSet<String>>,
    leave: BTreeMap<String, BTreeSet<u64>>,
    approved: Option<u64>,
    /// Every key decided, with its command.
    keys: BTreeMap<[u8; 16], Op>,
    /// Person -> the first day they cannot work.
    retired: BTreeMap<String, u64>,
    /// The last archived day.
    archived: Option<u64>,
    /// Archived blocks and who was on them: gone from the schedule, but
    /// still their people's duty (the rules hold over the whole history).
    past: Vec<(Slot, BTreeSet<String>)>,
    /// Archived block ids: never used again.
    archived_ids: BTreeSet<String>,
    /// The last index of a command the model decided.
    last_index: u64,
    /// The validator set, facility -> vote key bytes, once told the
    /// genesis set (None: validator changes are not judged).
    validators: Option<BTreeMap<String, [u8; 32]>>,
    /// Ledger entries so far, by the model's own count: one per command
    /// it expected to apply.
    height: u64,
    /// The first height of each validator epoch after genesis (a change
    /// applied at height h certifies from h + 1), oldest first.
    epochs: Vec<u64>,
}

impl Model {
    /// An empty schedule.
    pub fn new() -> Model {
        Model::default()
    }

    /// Starts the validator set at `genesis`.
    pub fn set_validators(&mut self, genesis: &bulwark_actors::keys::PublicKeys) {
        self.validators = Some(
            genesis
                .facilities()
                .map(|f| (f.to_string(), *genesis.get(f).expect("listed").as_bytes()))
                .collect(),
        );
    }

    /// The index of the last command decided.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// What `cmd` should do now.
    pub fn expect(&self, cmd: &Command) -> Expect {
        self.expect_at(cmd, None)
    }

    /// Whether a proposal anchored at ledger height `anchor` comes too
    /// late: two validator changes took effect since its anchor, so the
    /// set its proposer signed under is no longer kept (INVALID_INPUT, the
    /// proposer is asked to propose again).
    fn stale(&self, anchor: Option<u64>) -> bool {
        match (anchor, self.epochs.len()) {
            (Some(a), n) if n >= 2 => a + 1 < self.epochs[n - 2],
            _ => false,
        }
    }

    /// What `cmd`, proposed at ledger anchor `anchor` (`None`: not known,
    /// taken as current), should do now.
    pub fn expect_at(&self, cmd: &Command, anchor: Option<u64>) -> Expect {
        match self.keys.get(&cmd.key.0) {
            Some(op) if *op == cmd.op => Expect::Duplicate,
            _ if self.stale(anchor) => Expect::Reject(BTreeSet::from(["INVALID_INPUT"])),
            Some(_) => Expect::Reject(BTreeSet::from(["KEY_REUSED"])),
            None => {
                let mut broken = self.evaluate(&cmd.op);
                // Nobody declares a drill on itself.
                if matches!(&cmd.op, Op::Drill { facility, .. } if *facility == cmd.issued_by) {
                    broken.insert("INVALID_INPUT");
                }
                if broken.is_empty() {
                    Expect::Accept
                } else {
                    Expect::Reject(broken)
                }
            }
        }
    }

    /// The implementation decided `seen` on `cmd`, committed at `index`:
    /// `Err` says how that disagrees with the model. Either way the model
    /// moves on as the rules say (not as the implementation did).
    pub fn step(&mut self, index: u64, cmd: &Command, seen: &Decision) -> Result<(), String> {
        self.step_at(index, cmd, None, seen)
    }

    /// [`Model::step`] for a command proposed at ledger anchor `anchor`.
    pub fn step_at(
        &mut self,
        index: u64,
        cmd: &Command,
        anchor: Option<u64>,
        seen: &Decision,
    ) -> Result<(), String> {
        if let Decision::Refused(code) = seen {
            match code.as_str() {
                // Signatures are the ledger checker's: no key is decided.
                "FORGED_SIGNATURE" => return Ok(()),
                // The chain's own checks, which the model does not keep: the
                // key is decided as refused unless it was decided before.
                "CHAIN_BREAK" | "TIME_TRAVEL" if !self.keys.contains_key(&cmd.key.0) => {
                    self.last_index = index;
                    self.keys.insert(cmd.key.0, cmd.op.clone());
                    return Ok(());
                }
                _ => {}
            }
        }
        let expect = self.expect_at(cmd, anchor);
        self.last_index = index;
        let agrees = match (&expect, seen) {
            (Expect::Accept, Decision::Applied) => true,
            (Expect::Duplicate, Decision::Duplicate) => true,
            (Expect::Reject(rules), Decision::Refused(code)) => match code.as_str() {
                "DOUBLE_ASSIGN" => rules.contains("DOUBLE_BOOKING"),
                "ACGME_VIOLATION" => DUTY_RULES[1..].iter().any(|r| rules.contains(r)),
                other => rules.contains(other),
            },
            _ => false,
        };
        // A key decides once: its first command stays its command.
        self.keys.entry(cmd.key.0).or_insert_with(|| cmd.op.clone());
        if expect == Expect::Accept {
            self.apply(&cmd.op);
            self.height += 1;
            if matches!(cmd.op, Op::Validator(_)) {
                self.epochs.push(self.height + 1);
            }
        }
        if agrees {
            Ok(())
        } else {
            Err(format!(
                "index {index}: {} ({}) was decided {seen:?}; the reference model expects {expect:?}",
                cmd.op.name(),
                key_text(cmd)
            ))
        }
    }

    /// Every rule `op` breaks now (empty: it applies).
    pub fn evaluate(&self, op: &Op) -> BTreeSet<&'static str> {
        let mut broken = BTreeSet::new();
        match op {
            Op::AddPerson(p) => {
                let n = p.name.chars().count();
                if n == 0 || n > 128 || p.name.chars().any(char::is_control) {
                    broken.insert("INVALID_INPUT");
                }
                if matches!(p.role, Role::Resident { pgy } if pgy == 0 || pgy > 7) {
                    broken.insert("INVALID_INPUT");
                }
                if self.people.contains(p.id.as_str()) {
                    broken.insert("ALREADY_EXISTS");
                }
            }
            Op::AddBlock(b) => {
                self.live_day(u64::from(b.day), &mut broken);
                let bad = b.start_min >= 1440
                    || b.duration_min == 0
                    || u64::from(b.duration_min) > SHIFT_MAX
                    || b.required == 0
                    || b.required > 32;
                if bad {
                    broken.insert("INVALID_INPUT");
                }
                if self.blocks.contains_key(b.id.as_str())
                    || self.archived_ids.contains(b.id.as_str())
                {
                    broken.insert("ALREADY_EXISTS");
                }
            }
            Op::Assign { person, block } => {
                self.taking(person.as_str(), block.as_str(), false, &mut broken)
            }
            Op::EmergencyCoverage { block, person } => {
                self.taking(person.as_str(), block.as_str(), true, &mut broken)
            }
            Op::Unassign { person, block } => {
                let (p, b) = (person.as_str(), block.as_str());
                if self.known(&[p], &[b], &mut broken) {
                    if !self.is_on(p, b) {
                        broken.insert("NOT_ASSIGNED");
                    }
                    if self.frozen(b) {
                        broken.insert("FROZEN");
                    }
                }
            }
            Op::Swap {
                a,
                a_block,
                b,
                b_block,
            } => self.swapping(
                (a.as_str(), a_block.as_str()),
                (b.as_str(), b_block.as_str()),
                &mut broken,
            ),
            Op::Leave {
                person,
                from_day,
                to_day,
            } => {
                self.known(&[person.as_str()], &[], &mut broken);
                if from_day > to_day || u64::from(*to_day) - u64::from(*from_day) + 1 > 366 {
                    broken.insert("INVALID_INPUT");
                }
                self.live_day(u64::from(*from_day), &mut broken);
            }
            Op::Approve { through_day } => {
                let through = u64::from(*through_day);
                if self.approved.is_some_and(|d| d >= through) {
                    broken.insert("ALREADY_APPROVED");
                }
                let short = self
                    .blocks
                    .iter()
                    .any(|(id, s)| s.day <= through && self.staffed(id) < s.required);
                if short {
                    broken.insert("UNDERSTAFFED");
                }
            }
            Op::Reconcile {
                block,
                remove,
                cover,
            } => {
                let removed: BTreeSet<&str> = remove.iter().map(|p| p.as_str()).collect();
                if removed.len() != remove.len() || removed.contains(cover.as_str()) {
                    broken.insert("INVALID_INPUT");
                    return broken;
                }
                let (c, b) = (cover.as_str(), block.as_str());
                let mut known = self.known(&[c], &[b], &mut broken);
                for p in &removed {
                    if !self.known(&[p], &[], &mut broken) {
                        known = false;
                    } else if self.blocks.contains_key(b) && !self.is_on(p, b) {
                        broken.insert("NOT_ASSIGNED");
                    }
                }
                if !known || broken.contains("NOT_ASSIGNED") {
                    return broken;
                }
                if self.is_on(c, b) {
                    broken.insert("DOUBLE_BOOKING");
                }
                if self.staffed(b) - removed.len() >= self.blocks[b].required {
                    broken.insert("BLOCK_FULL");
                }
                self.duty_after(c, &[], &[b], &mut broken);
            }
            // A batch is refused only as a whole shape; each command in it
            // is judged, in order, when it applies.
            Op::Batch(ops) => {
                let nested = ops.iter().any(|o| {
                    matches!(
                        o,
                        Op::Batch(_)
                            | Op::EmergencyCoverage { .. }
                            | Op::Archive { .. }
                            | Op::DropNamespace { .. }
                            | Op::Drill { .. }
                            | Op::Checkpoint
                            | Op::Validator(_)
                    )
                });
                if ops.is_empty() || ops.len() > 1000 || nested {
                    broken.insert("INVALID_INPUT");
                }
            }
            Op::RetirePerson { person, from_day } => {
                let (p, from) = (person.as_str(), u64::from(*from_day));
                if self.known(&[p], &[], &mut broken) {
                    self.live_day(from, &mut broken);
                    if self.retired.contains_key(p) {
                        broken.insert("RETIRED");
                    }
                    let holds = self
                        .on
                        .iter()
                        .any(|(b, people)| people.contains(p) && self.blocks[b].day >= from);
                    if holds {
                        broken.insert("HOLDS_ASSIGNMENTS");
                    }
                }
            }
            Op::RetireBlock { block } => {
                if self.known(&[], &[block.as_str()], &mut broken) {
                    if self.frozen(block.as_str()) {
                        broken.insert("FROZEN");
                    }
                    if self.staffed(block.as_str()) > 0 {
                        broken.insert("HOLDS_ASSIGNMENTS");
                    }
                }
            }
            Op::Archive { through_day } => {
                let through = u64::from(*through_day);
                // The archive stays the quiet days behind the last approval.
                if self
                    .approved
                    .is_none_or(|a| through + ARCHIVE_QUIET_DAYS > a)
                {
                    broken.insert("NOT_FINAL");
                }
                // A block short of people (left so by leave) stays hot.
                let short = self
                    .blocks
                    .iter()
                    .any(|(id, s)| s.day <= through && self.staffed(id) < s.required);
                if short {
                    broken.insert("UNDERSTAFFED");
                }
                let first = self.archived.map_or(0, |a| a + 1);
                if through < first {
                    broken.insert("ARCHIVED");
                } else if through - first + 1 > ARCHIVE_STEP_DAYS {
                    broken.insert("INVALID_INPUT");
                }
            }
            Op::DropNamespace { namespace } => {
                let ok = namespace.len() <= 32
                    && namespace
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !ok {
                    broken.insert("INVALID_INPUT");
                }
            }
            Op::Drill { for_ms, .. } => {
                if *for_ms == 0 || *for_ms > DRILL_LONGEST_MS {
                    broken.insert("INVALID_INPUT");
                }
            }
            Op::Checkpoint => {}
            // Written out here: one facility per change; a key is a valid,
            // non-weak point held by nobody else; no change that changes
            // nothing; never the last validator removed; at most 64.
            Op::Validator(c) => {
                if let Some(set) = &self.validators {
                    let f = c.facility.to_string();
                    let bad = match &c.key {
                        Some(k) => {
                            let point = ed25519_dalek::VerifyingKey::from_bytes(&k.0)
                                .is_ok_and(|v| !v.is_weak());
                            let held_by_other = set.iter().any(|(g, v)| *v == k.0 && *g != f);
                            let same = set.get(&f) == Some(&k.0);
                            let over = !set.contains_key(&f) && set.len() >= 64;
                            !point || held_by_other || same || over
                        }
                        None => !set.contains_key(&f) || set.len() == 1,
                    };
                    if bad {
                        broken.insert("INVALID_INPUT");
                    }
                }
            }
        }
        broken
    }

    /// The ids under namespace `ns` start so (empty: every namespace).
    fn sandbox(ns: &str) -> String {
        match ns {
            "" => SANDBOX.to_string(),
            _ => format!("{SANDBOX}{ns}:"),
        }
    }

    /// The namespace of an id, if it has one.
    fn sandbox_of(id: &str) -> Option<&str> {
        let rest = id.strip_prefix(SANDBOX)?;
        match rest.find(':') {
            Some(at) => Some(&rest[..at]),
            None => Some(""),
        }
    }

    /// `ARCHIVED` if `day` is archived or within the quiet days after.
    fn live_day(&self, day: u64, broken: &mut BTreeSet<&'static str>) {
        if self.archived.is_some_and(|a| day <= a + ARCHIVE_QUIET_DAYS) {
            broken.insert("ARCHIVED");
        }
    }

    /// `RETIRED`, `ARCHIVED` or `NAMESPACE` for `p` working the blocks
    /// `add`.
    fn may_work(&self, p: &str, add: &[&str], broken: &mut BTreeSet<&'static str>) {
        for b in add {
            if Model::sandbox_of(p) != Model::sandbox_of(b) {
                broken.insert("NAMESPACE");
            }
            let day = self.blocks[*b].day;
            self.live_day(day, broken);
            if self.retired.get(p).is_some_and(|r| day >= *r) {
                broken.insert("RETIRED");
            }
        }
    }

    /// `person` takes a slot on `block` (an assignment, or emergency
    /// coverage, which may change approved days).
    fn taking(&self, p: &str, b: &str, emergency: bool, broken: &mut BTreeSet<&'static str>) {
        if !self.known(&[p], &[b], broken) {
            return;
        }
        if self.is_on(p, b) {
            broken.insert("DOUBLE_BOOKING");
        }
        if self.staffed(b) >= self.blocks[b].required {
            broken.insert("BLOCK_FULL");
        }
        if !emergency && self.frozen(b) {
            broken.insert("FROZEN");
        }
        self.duty_after(p, &[], &[b], broken);
    }

    /// `a` leaves `a_block` for `b_block`, and `b` the other way.
    fn swapping(
        &self,
        (a, a_block): (&str, &str),
        (b, b_block): (&str, &str),
        broken: &mut BTreeSet<&'static str>,
    ) {
        if a == b || a_block == b_block {
            broken.insert("INVALID_INPUT");
            return;
        }
        // Each side on its own: a side whose names resolve can be judged
        // even when the other's do not.
        let mut known = true;
        for (p, blk) in [(a, a_block), (b, b_block)] {
            if self.known(&[p], &[blk], broken) {
                if !self.is_on(p, blk) {
                    broken.insert("NOT_ASSIGNED");
                }
            } else {
                known = false;
            }
        }
        if !known {
            return;
        }
        if self.frozen(a_block) || self.frozen(b_block) {
            broken.insert("FROZEN");
        }
        if self.is_on(a, b_block) || self.is_on(b, a_block) {
            broken.insert("DOUBLE_BOOKING");
        }
        self.duty_after(a, &[a_block], &[b_block], broken);
        self.duty_after(b, &[b_block], &[a_block], broken);
    }

    /// Whether every person and block named exists (each missing one
    /// named in `broken`).
    fn known(&self, people: &[&str], blocks: &[&str], broken: &mut BTreeSet<&'static str>) -> bool {
        let mut ok = true;
        if people.iter().any(|p| !self.people.contains(*p)) {
            broken.insert("UNKNOWN_PERSON");
            ok = false;
        }
        for b in blocks.iter().filter(|b| !self.blocks.contains_key(**b)) {
            broken.insert(if self.archived_ids.contains(*b) {
                "ARCHIVED"
            } else {
                "UNKNOWN_BLOCK"
            });
            ok = false;
        }
        ok
    }

    fn is_on(&self, p: &str, b: &str) -> bool {
        self.on.get(b).is_some_and(|s| s.contains(p))
    }

    fn staffed(&self, b: &str) -> usize {
        self.on.get(b).map_or(0, BTreeSet::len)
    }

    fn frozen(&self, b: &str) -> bool {
        self.approved.is_some_and(|d| self.blocks[b].day <= d)
    }

    /// The leave and duty rules for `p` after dropping `drop` and taking
    /// `add`.
    fn duty_after(
        &self,
        p: &str,
        drop: &[&str],
        add: &[&str],
        broken: &mut BTreeSet<&'static str>,
    ) {
        let leave = self.leave.get(p);
        for b in add {
            let days = self.blocks[*b].days();
            if leave.is_some_and(|l| days.iter().any(|d| l.contains(d))) {
                broken.insert("ON_LEAVE");
            }
        }
        self.may_work(p, add, broken);
        let mut slots: Vec<Slot> = self
            .on
            .iter()
            .filter(|(b, people)| people.contains(p) && !drop.contains(&b.as_str()))
            .map(|(b, _)| self.blocks[b])
            .collect();
        slots.extend(
            self.past
                .iter()
                .filter(|(_, people)| people.contains(p))
                .map(|(s, _)| *s),
        );
        slots.extend(add.iter().map(|b| self.blocks[*b]));
        broken.extend(duty_rules(&slots));
    }

    fn apply(&mut self, op: &Op) {
        let put = |on: &mut BTreeMap<String, BTreeSet<String>>, p: &str, b: &str| {
            on.entry(b.to_string()).or_default().insert(p.to_string());
        };
        if let Op::Batch(ops) = op {
            for sub in ops {
                if self.evaluate(sub).is_empty() {
                    self.apply(sub);
                }
            }
            return;
        }
        match op {
            Op::AddPerson(p) => {
                self.people.insert(p.id.to_string());
            }
            Op::AddBlock(b) => {
                self.blocks.insert(b.id.to_string(), Slot::of(b));
            }
            Op::Assign { person, block } | Op::EmergencyCoverage { block, person } => {
                put(&mut self.on, person.as_str(), block.as_str());
            }
            Op::Unassign { person, block } => self.take_off(person.as_str(), block.as_str()),
            Op::Swap {
                a,
                a_block,
                b,
                b_block,
            } => {
                self.take_off(a.as_str(), a_block.as_str());
                self.take_off(b.as_str(), b_block.as_str());
                put(&mut self.on, a.as_str(), b_block.as_str());
                put(&mut self.on, b.as_str(), a_block.as_str());
            }
            Op::Leave {
                person,
                from_day,
                to_day,
            } => {
                let days: BTreeSet<u64> = (u64::from(*from_day)..=u64::from(*to_day)).collect();
                let vacate: Vec<String> = self
                    .on
                    .iter()
                    .filter(|(b, people)| {
                        people.contains(person.as_str())
                            && self.blocks[*b].days().iter().any(|d| days.contains(d))
                    })
                    .map(|(b, _)| b.clone())
                    .collect();
                for b in vacate {
                    self.take_off(person.as_str(), &b);
                }
                self.leave
                    .entry(person.to_string())
                    .or_default()
                    .extend(days);
            }
            Op::Approve { through_day } => self.approved = Some(u64::from(*through_day)),
            Op::Reconcile {
                block,
                remove,
                cover,
            } => {
                for p in remove {
                    self.take_off(p.as_str(), block.as_str());
                }
                put(&mut self.on, cover.as_str(), block.as_str());
            }
            Op::Batch(_) => {}
            Op::RetirePerson { person, from_day } => {
                self.retired
                    .insert(person.to_string(), u64::from(*from_day));
            }
            Op::RetireBlock { block } => {
                self.blocks.remove(block.as_str());
            }
            Op::Archive { through_day } => {
                let through = u64::from(*through_day);
                let first = self.archived.map_or(0, |a| a + 1);
                let moving: Vec<String> = self
                    .blocks
                    .iter()
                    .filter(|(_, s)| (first..=through).contains(&s.day))
                    .map(|(b, _)| b.clone())
                    .collect();
                for b in moving {
                    let slot = self.blocks.remove(&b).expect("listed above");
                    self.past
                        .push((slot, self.on.remove(&b).unwrap_or_default()));
                    self.archived_ids.insert(b);
                }
                self.archived = Some(through);
            }
            Op::DropNamespace { namespace } => {
                let prefix = Model::sandbox(namespace);
                let blocks: Vec<String> = self
                    .blocks
                    .keys()
                    .filter(|b| b.starts_with(&prefix))
                    .take(DROP_STEP)
                    .cloned()
                    .collect();
                for b in &blocks {
                    self.blocks.remove(b);
                    self.on.remove(b);
                }
                if blocks.len() < DROP_STEP {
                    let people: Vec<String> = self
                        .people
                        .iter()
                        .filter(|p| p.starts_with(&prefix))
                        .take(DROP_STEP - blocks.len())
                        .cloned()
                        .collect();
                    for p in &people {
                        let on: Vec<String> = self.on.keys().cloned().collect();
                        for b in on {
                            self.take_off(p, &b);
                        }
                        self.people.remove(p);
                        self.leave.remove(p);
                        self.retired.remove(p);
                    }
                }
            }
            Op::Validator(c) => {
                if let Some(set) = &mut self.validators {
                    match &c.key {
                        Some(k) => {
                            set.insert(c.facility.to_string(), k.0);
                        }
                        None => {
                            set.remove(c.facility.as_str());
                        }
                    }
                }
            }
            Op::Drill { .. } | Op::Checkpoint => {}
        }
    }

    fn take_off(&mut self, p: &str, b: &str) {
        if let Some(people) = self.on.get_mut(b) {
            people.remove(p);
            if people.is_empty() {
                self.on.remove(b);
            }
        }
    }

    /// Who is on which block: `(block, person)` pairs, sorted.
    pub fn assignments(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (b, people) in &self.on {
            out.extend(people.iter().map(|p| (b.clone(), p.clone())));
        }
        out
    }
}

/// Every duty rule that `slots` (one person's blocks) break, read off a
/// count of blocks per minute. Stretches of duty more than a week apart
/// cannot interact under any rule and are counted apart.
fn duty_rules(slots: &[Slot]) -> BTreeSet<&'static str> {
    let mut broken = BTreeSet::new();
    let mut spans: Vec<(u64, u64)> = slots.iter().map(|s| (s.start, s.end)).collect();
    spans.sort_unstable();
    let mut k = 0;
    while k < spans.len() {
        // One stretch: spans whose gaps are under a week.
        let lo = spans[k].0;
        let mut hi = spans[k].1;
        let mut j = k + 1;
        while j < spans.len() && spans[j].0 < hi + WEEK {
            hi = hi.max(spans[j].1);
            j += 1;
        }
        broken.extend(stretch_rules(&spans[k..j], lo, hi));
        k = j;
    }
    broken
}

fn stretch_rules(spans: &[(u64, u64)], lo: u64, hi: u64) -> BTreeSet<&'static str> {
    let mut broken = BTreeSet::new();
    let len = usize::try_from(hi - lo).unwrap_or(usize::MAX);
    let mut count = vec![0u32; len];
    for &(s, e) in spans {
        for m in s..e {
            count[(m - lo) as usize] += 1;
        }
    }
    if count.iter().any(|&c| c > 1) {
        broken.insert("DOUBLE_BOOKING");
    }
    // Continuous duty: the longest run of busy minutes.
    let mut run = 0u64;
    for &c in &count {
        run = if c > 0 { run + 1 } else { 0 };
        if run > SHIFT_MAX {
            broken.insert("SHIFT_TOO_LONG");
            break;
        }
    }
    // Every window of a week that overlaps the stretch: minutes outside
    // it are free, so windows starting from `lo - WEEK + 1` to `hi - 1`.
    let week = WEEK as usize;
    let busy = |m: usize| u64::from(count[m]);
    let mut window: u64 = 0;
    for m in 0..len + week {
        if m < len {
            window += busy(m);
        }
        if m >= week {
            window -= busy(m - week);
        }
        if window > WEEK_DUTY_MAX {
            broken.insert("DUTY_HOURS_80");
            break;
        }
    }
    // Days with duty, and the longest run of them.
    let first_day = lo / DAY;
    let mut worked = vec![false; ((hi - 1) / DAY - first_day + 1) as usize];
    for (m, &c) in count.iter().enumerate() {
        if c > 0 {
            worked[((lo + m as u64) / DAY - first_day) as usize] = true;
        }
    }
    let mut in_a_row = 0usize;
    for w in worked {
        in_a_row = if w { in_a_row + 1 } else { 0 };
        if in_a_row >= DAYS_IN_A_ROW_BAD {
            broken.insert("DAY_OFF_IN_7");
            break;
        }
    }
    broken
}

/// Checks a facility's schedule with the model's rules: every assignment
/// names a person and a block that exist, no block holds more than it
/// needs, nobody works on leave, every person keeps the duty rules. Reads
/// the state only through its public accessors.
pub fn check_state(s: &ScheduleState) -> Result<(), String> {
    let people: BTreeSet<String> = s.people().map(|p| p.id.to_string()).collect();
    let blocks: BTreeMap<String, Slot> = s
        .blocks()
        .map(|b| (b.id.to_string(), Slot::of(b)))
        .collect();
    let mut duty: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    let mut staffed: BTreeMap<String, usize> = BTreeMap::new();
    for (b, p, _) in s.assignments() {
        let slot = *blocks
            .get(b.as_str())
            .ok_or_else(|| format!("{p} is on {b}, which does not exist"))?;
        if !people.contains(p.as_str()) {
            return Err(format!("{p} is on {b} but does not exist"));
        }
        let leave: BTreeSet<u64> = s.leave_of(p).into_iter().map(u64::from).collect();
        if let Some(d) = slot.days().iter().find(|d| leave.contains(d)) {
            return Err(format!("{p} works {b} while on leave on day {d}"));
        }
        *staffed.entry(b.to_string()).or_insert(0) += 1;
        duty.entry(p.to_string()).or_default().push(slot);
    }
    for (b, n) in &staffed {
        if *n > blocks[b].required {
            return Err(format!("{b} holds {n} of {} people", blocks[b].required));
        }
    }
    for (p, slots) in &duty {
        let broken = duty_rules(slots);
        if !broken.is_empty() {
            let rules: Vec<&str> = broken.into_iter().collect();
            return Err(format!("{p} breaks {}", rules.join(", ")));
        }
    }
    Ok(())
}

fn key_text(cmd: &Command) -> String {
    cmd.key.0.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
