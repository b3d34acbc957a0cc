//! A linearizability checker for recorded client histories, after Wing &
//! Gong's search with Lowe's memoization (the method of Knossos and
//! Porcupine).
//!
//! A history is a list of [`Operation`]s: when each was called, when it
//! returned (if it did) and what it returned (if known). The checker looks
//! for one total order of the operations that
//! - respects real time: if `a` returned before `b` was called, `a` comes
//!   first;
//! - replays through the sequential [`Model`], each operation producing
//!   exactly the output recorded for it.
//!
//! An operation whose outcome is unknown (a timeout: it may or may not have
//! taken effect) has no return time and no output: it may be placed
//! anywhere after its call, with whatever output the model gives, or left
//! out altogether. Equal timestamps count as overlapping, so a coarse clock
//! only makes the checker more permissive, never wrong.
//!
//! The search is exponential in the worst case; [`check`] takes a budget of
//! visited states and answers [`Verdict::Unknown`] past it.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The model's state.
    type State: Clone + Eq + Hash;
    /// An operation's input.
    type Input;
    /// An operation's output.
    type Output: PartialEq;
    /// The initial state.
    fn init(&self) -> Self::State;
    /// Applies `input` to `state`: the next state and the output.
    fn apply(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);
}

/// One client operation as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client issued it (informative).
    pub client: u64,
    /// What it asked.
    pub input: I,
    /// When it was called.
    pub call: u64,
    /// When it returned with a known outcome, and that outcome. `None`:
    /// it never returned or its outcome is unknown.
    pub ret: Option<(u64, O)>,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains the history.
    Linearizable,
    /// No order does. `deepest` is the longest valid prefix of an order the
    /// search found (operation indices), to show where it got stuck.
    NotLinearizable {
        /// Longest valid partial order found.
        deepest: Vec<usize>,
    },
    /// The budget ran out first.
    Unknown,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// Checks `history` against `model`, visiting at most `budget` states.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Verdict {
    let n = history.len();
    let must: Vec<usize> = (0..n).filter(|&i| history[i].ret.is_some()).collect();
    let ret_time = |i: usize| history[i].ret.as_ref().map_or(u64::MAX, |(t, _)| *t);

    // Depth-first search over (linearized set, state), each frame keeping
    // the candidates it has not tried yet.
    struct Frame<S> {
        done: Bits,
        state: S,
        order: Vec<usize>,
        candidates: Vec<usize>,
    }
    let candidates = |done: &Bits| -> Vec<usize> {
        // An operation may come next if no pending one returned before it
        // was called.
        let horizon = (0..n)
            .filter(|&i| !done.get(i))
            .map(ret_time)
            .min()
            .unwrap_or(u64::MAX);
        (0..n)
            .filter(|&i| !done.get(i) && history[i].call <= horizon)
            .collect()
    };
    let complete = |done: &Bits| must.iter().all(|&i| done.get(i));

    let start = Bits::new(n);
    if complete(&start) {
        return Verdict::Linearizable;
    }
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    let mut deepest: Vec<usize> = Vec::new();
    let mut stack = vec![Frame {
        candidates: candidates(&start),
        done: start,
        state: model.init(),
        order: Vec::new(),
    }];
    let mut visited = 0u64;
    while let Some(top) = stack.last_mut() {
        let Some(op) = top.candidates.pop() else {
            stack.pop();
            continue;
        };
        visited += 1;
        if visited > budget {
            return Verdict::Unknown;
        }
        let (next, out) = model.apply(&top.state, &history[op].input);
        if let Some((_, want)) = &history[op].ret {
            if *want != out {
                continue;
            }
        }
        let mut done = top.done.clone();
        done.set(op);
        if !seen.insert((done.clone(), next.clone())) {
            continue;
        }
        let mut order = top.order.clone();
        order.push(op);
        if complete(&done) {
            return Verdict::Linearizable;
        }
        if order.len() > deepest.len() {
            deepest.clone_from(&order);
        }
        stack.push(Frame {
            candidates: candidates(&done),
            done,
            state: next,
            order,
        });
    }
    Verdict::NotLinearizable { deepest }
}

/// A register of `Option<V>` with compare-and-set writes: the model of one
/// schedule slot (a one-person block): assign fills it if empty, unassign
/// empties it if it holds that person, read returns it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotModel;

/// An operation on a [`SlotModel`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SlotOp {
    /// Fill with this person if empty.
    Assign(u32),
    /// Empty if it holds this person.
    Unassign(u32),
    /// Read.
    Read,
}

/// What a [`SlotOp`] returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SlotOut {
    /// The write took effect.
    Ok,
    /// The write was refused (full, or not that person).
    Refused,
    /// The value read.
    Value(Option<u32>),
}

impl Model for SlotModel {
    type State = Option<u32>;
    type Input = SlotOp;
    type Output = SlotOut;

    fn init(&self) -> Option<u32> {
        None
    }

    fn apply(&self, s: &Option<u32>, op: &SlotOp) -> (Option<u32>, SlotOut) {
        match (op, s) {
            (SlotOp::Assign(p), None) => (Some(*p), SlotOut::Ok),
            (SlotOp::Assign(_), Some(_)) => (*s, SlotOut::Refused),
            (SlotOp::Unassign(p), Some(q)) if p == q => (None, SlotOut::Ok),
            (SlotOp::Unassign(_), _) => (*s, SlotOut::Refused),
            (SlotOp::Read, _) => (*s, SlotOut::Value(*s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<SlotOp, SlotOut>;

    fn op(client: u64, input: SlotOp, call: u64, ret: u64, out: SlotOut) -> Op {
        Operation {
            client,
            input,
            call,
            ret: Some((ret, out)),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, SlotOp::Assign(7), 0, 1, SlotOut::Ok),
            op(1, SlotOp::Read, 2, 3, SlotOut::Value(Some(7))),
            op(1, SlotOp::Unassign(7), 4, 5, SlotOut::Ok),
            op(1, SlotOp::Read, 6, 7, SlotOut::Value(None)),
        ];
        assert_eq!(check(&SlotModel, &h, 10_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            op(1, SlotOp::Assign(7), 0, 1, SlotOut::Ok),
            op(2, SlotOp::Read, 5, 6, SlotOut::Value(None)),
        ];
        assert!(matches!(
            check(&SlotModel, &h, 10_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // The read overlaps the write, so it may see either value.
        for seen in [None, Some(7)] {
            let h = vec![
                op(1, SlotOp::Assign(7), 0, 10, SlotOut::Ok),
                op(2, SlotOp::Read, 5, 6, SlotOut::Value(seen)),
            ];
            assert_eq!(check(&SlotModel, &h, 10_000), Verdict::Linearizable);
        }
    }

    #[test]
    fn two_winners_of_one_empty_slot_are_caught() {
        let h = vec![
            op(1, SlotOp::Assign(1), 0, 10, SlotOut::Ok),
            op(2, SlotOp::Assign(2), 0, 10, SlotOut::Ok),
        ];
        assert!(matches!(
            check(&SlotModel, &h, 10_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        let timed_out = Operation {
            client: 1,
            input: SlotOp::Assign(3),
            call: 0,
            ret: None,
        };
        for seen in [None, Some(3)] {
            let h = vec![
                timed_out.clone(),
                op(2, SlotOp::Read, 5, 6, SlotOut::Value(seen)),
            ];
            assert_eq!(check(&SlotModel, &h, 10_000), Verdict::Linearizable);
        }
        // But once seen, it cannot be unseen.
        let h = vec![
            timed_out,
            op(2, SlotOp::Read, 5, 6, SlotOut::Value(Some(3))),
            op(2, SlotOp::Read, 7, 8, SlotOut::Value(None)),
        ];
        assert!(matches!(
            check(&SlotModel, &h, 10_000),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn the_budget_is_honoured() {
        // Many overlapping refused writes: a large search space.
        let h: Vec<Op> = (0..40)
            .map(|i| op(i, SlotOp::Unassign(i as u32), 0, 100, SlotOut::Refused))
            .chain([op(99, SlotOp::Read, 0, 100, SlotOut::Value(Some(1)))])
            .collect();
        assert_eq!(check(&SlotModel, &h, 50), Verdict::Unknown);
    }
}
