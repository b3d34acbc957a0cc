//! What an experiment measured and what it concluded.
//!
//! Every finding is computed from measurements the agent took (probe
//! answers and their latencies, each facility's view of the cluster over
//! time), never drawn: [`PhaseMetrics::of`] turns probes into numbers and
//! the agent compares those numbers with the experiment's thresholds.

use crate::heatmap::Heatmap;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Which part of the run a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Baseline, before the fault.
    Before,
    /// While the fault is held.
    During,
    /// After the rollback.
    After,
}

impl Phase {
    /// Every phase in order.
    pub const ALL: [Phase; 3] = [Phase::Before, Phase::During, Phase::After];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

/// What a probe asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A schedule write (an assignment in the chaos namespace).
    Write,
    /// A linearizable schedule read.
    Read,
    /// An operator request (`GET /v1/cluster`).
    Operator,
}

/// How a probe was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// 2xx.
    Ok,
    /// 409: a schedule rule refused it (an answer, not a failure).
    Rule,
    /// 429: shed by admission or a bulkhead.
    Shed,
    /// 503 PARTITIONED or NO_LEADER: refused for consistency.
    Refused,
    /// Any other 5xx, or 4xx the agent did not expect.
    Error,
    /// No answer within the request timeout, or the facility unreachable.
    Timeout,
}

impl Answer {
    /// Classifies an HTTP answer: `status` 0 means none came.
    pub fn of(status: u16, code: Option<&str>) -> Answer {
        match status {
            0 => Answer::Timeout,
            200..=299 => Answer::Ok,
            409 => Answer::Rule,
            429 => Answer::Shed,
            503 if matches!(code, Some("PARTITIONED") | Some("NO_LEADER")) => Answer::Refused,
            _ => Answer::Error,
        }
    }

    /// Counts against the error-rate ceiling.
    pub fn failed(self) -> bool {
        matches!(self, Answer::Error | Answer::Timeout)
    }
}

/// One probe, as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// When it was sent, ms since the run started.
    pub at_ms: u64,
    /// Its phase.
    pub phase: Phase,
    /// Index of the facility it went to.
    pub facility: usize,
    /// What it asked.
    pub kind: ProbeKind,
    /// How it was answered.
    pub answer: Answer,
    /// Time to the answer (the timeout for [`Answer::Timeout`]).
    pub latency_ms: u64,
}

/// Numbers of one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseMetrics {
    /// Probes sent.
    pub probes: u64,
    /// 2xx.
    pub ok: u64,
    /// 409.
    pub rule: u64,
    /// 429.
    pub shed: u64,
    /// 503 for consistency.
    pub refused: u64,
    /// Other errors.
    pub errors: u64,
    /// No answer.
    pub timeouts: u64,
    /// (errors + timeouts) / probes.
    pub error_rate: f64,
    /// Median latency of answered probes, ms.
    pub p50_ms: u64,
    /// 99th percentile latency of answered probes, ms.
    pub p99_ms: u64,
    /// Largest latency, ms.
    pub max_ms: u64,
    /// Leaders seen (distinct, in order of appearance).
    pub leaders: Vec<String>,
    /// Highest commit index seen minus the lowest.
    pub commit_advance: u64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl PhaseMetrics {
    /// The numbers of the probes that pass `keep`.
    pub fn of<'a>(probes: impl IntoIterator<Item = &'a Probe>) -> PhaseMetrics {
        let mut m = PhaseMetrics::default();
        let mut lat = Vec::new();
        for p in probes {
            m.probes += 1;
            match p.answer {
                Answer::Ok => m.ok += 1,
                Answer::Rule => m.rule += 1,
                Answer::Shed => m.shed += 1,
                Answer::Refused => m.refused += 1,
                Answer::Error => m.errors += 1,
                Answer::Timeout => m.timeouts += 1,
            }
            if p.answer != Answer::Timeout {
                lat.push(p.latency_ms);
            }
        }
        lat.sort_unstable();
        m.error_rate = if m.probes == 0 {
            0.0
        } else {
            (m.errors + m.timeouts) as f64 / m.probes as f64
        };
        m.p50_ms = percentile(&lat, 0.50);
        m.p99_ms = percentile(&lat, 0.99);
        m.max_ms = lat.last().copied().unwrap_or(0);
        m
    }

    /// Fraction of probes answered 2xx or 409 (the request was served).
    pub fn served(&self) -> f64 {
        if self.probes == 0 {
            return 0.0;
        }
        (self.ok + self.rule) as f64 / self.probes as f64
    }
}

/// A weakness: what was measured against what was required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// One line: what is weak.
    pub title: String,
    /// The measurement.
    pub measured: String,
    /// The bound it broke.
    pub required: String,
}

/// The experiment's conclusion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "reason")]
pub enum Verdict {
    /// Ran to the end; nothing broke a threshold.
    Passed,
    /// Ran; at least one weakness found.
    WeaknessesFound,
    /// The error-rate ceiling was crossed; rolled back early.
    RolledBack(String),
    /// Not started: a safety check or the blast radius refused it.
    Refused(String),
}

/// The rollback, as carried out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// Fault actions reverted.
    pub reverted: Vec<String>,
    /// Facilities that confirmed they hold no fault afterwards.
    pub confirmed: Vec<String>,
    /// Facilities that did not confirm (unreachable); their dead-man timer
    /// clears them.
    pub unconfirmed: Vec<String>,
}

/// Everything an experiment produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The experiment's name.
    pub name: String,
    /// The fault kind.
    pub kind: String,
    /// The conclusion.
    pub verdict: Verdict,
    /// What the agent saw, in order, each with its time.
    pub observations: Vec<String>,
    /// Weaknesses, each from a measurement.
    pub weaknesses: Vec<Finding>,
    /// Before, during, after.
    pub phases: Vec<(Phase, PhaseMetrics)>,
    /// Each component's health over the run.
    pub heatmap: Heatmap,
    /// How the failure spread (the propagation engine's causal timeline).
    pub timeline: Vec<String>,
    /// The rollback.
    pub rollback: Rollback,
    /// Every probe.
    pub probes: Vec<Probe>,
}

impl Report {
    /// The numbers of one phase.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseMetrics> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, m)| m)
    }

    /// The report as text: verdict, observations, weaknesses, the phases'
    /// table, the timeline and the heatmap.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let verdict = match &self.verdict {
            Verdict::Passed => "PASSED".to_string(),
            Verdict::WeaknessesFound => format!("WEAKNESSES FOUND ({})", self.weaknesses.len()),
            Verdict::RolledBack(r) => format!("ROLLED BACK: {r}"),
            Verdict::Refused(r) => format!("REFUSED: {r}"),
        };
        let _ = writeln!(s, "experiment {} ({}): {verdict}", self.name, self.kind);
        let _ = writeln!(s, "\nobservations:");
        for o in &self.observations {
            let _ = writeln!(s, "  {o}");
        }
        let _ = writeln!(s, "\nweaknesses:");
        if self.weaknesses.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for w in &self.weaknesses {
            let _ = writeln!(
                s,
                "  - {}\n      measured: {}\n      required: {}",
                w.title, w.measured, w.required
            );
        }
        let _ = writeln!(
            s,
            "\nphase    probes     ok   409   429   503  errors timeouts  err%   p50ms   p99ms   maxms  commit+  leaders"
        );
        for (p, m) in &self.phases {
            let _ = writeln!(
                s,
                "{:<7} {:>7} {:>6} {:>5} {:>5} {:>5} {:>7} {:>8} {:>5.1} {:>7} {:>7} {:>7} {:>8}  {}",
                p.name(),
                m.probes,
                m.ok,
                m.rule,
                m.shed,
                m.refused,
                m.errors,
                m.timeouts,
                m.error_rate * 100.0,
                m.p50_ms,
                m.p99_ms,
                m.max_ms,
                m.commit_advance,
                m.leaders.join(" -> ")
            );
        }
        if !self.timeline.is_empty() {
            let _ = writeln!(s, "\ntimeline:");
            for t in &self.timeline {
                let _ = writeln!(s, "  {t}");
            }
        }
        let _ = writeln!(s, "\nrollback: reverted {:?}", self.rollback.reverted);
        let _ = writeln!(
            s,
            "  confirmed clean: {:?}; unconfirmed: {:?}",
            self.rollback.confirmed, self.rollback.unconfirmed
        );
        let _ = writeln!(
            s,
            "\nhealth heatmap (. healthy, - degraded, + warning, # critical):"
        );
        s.push_str(&self.heatmap.render_text());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(answer: Answer, latency_ms: u64) -> Probe {
        Probe {
            at_ms: 0,
            phase: Phase::During,
            facility: 0,
            kind: ProbeKind::Write,
            answer,
            latency_ms,
        }
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        assert_eq!(Answer::of(0, None), Answer::Timeout);
        assert_eq!(Answer::of(201, None), Answer::Ok);
        assert_eq!(Answer::of(409, Some("RULE_VIOLATION")), Answer::Rule);
        assert_eq!(Answer::of(429, Some("OVERLOADED")), Answer::Shed);
        assert_eq!(Answer::of(503, Some("PARTITIONED")), Answer::Refused);
        assert_eq!(Answer::of(503, Some("TIMED_OUT")), Answer::Error);
        assert_eq!(Answer::of(500, None), Answer::Error);
        assert!(Answer::Timeout.failed() && Answer::Error.failed());
        assert!(!Answer::Shed.failed() && !Answer::Refused.failed());
    }

    #[test]
    fn phase_metrics_count_and_rank() {
        let mut probes: Vec<Probe> = (1..=100).map(|ms| probe(Answer::Ok, ms)).collect();
        probes.push(probe(Answer::Timeout, 5_000));
        probes.push(probe(Answer::Error, 3));
        probes.push(probe(Answer::Shed, 1));
        let m = PhaseMetrics::of(&probes);
        assert_eq!(
            (m.probes, m.ok, m.timeouts, m.errors, m.shed),
            (103, 100, 1, 1, 1)
        );
        assert!((m.error_rate - 2.0 / 103.0).abs() < 1e-12);
        // Timeouts are not latencies: 102 answered, p99 is the 101st.
        assert_eq!(m.p99_ms, 99);
        assert_eq!(m.max_ms, 100);
        assert_eq!(m.p50_ms, 49, "51st of 1,1,2,3,3,4..100");
        assert_eq!(PhaseMetrics::of(&[]).p99_ms, 0);
    }

    #[test]
    fn the_text_report_names_the_verdict_and_each_weakness() {
        let r = Report {
            name: "spike".into(),
            kind: "load_spike".into(),
            verdict: Verdict::WeaknessesFound,
            observations: vec!["t=0ms started".into()],
            weaknesses: vec![Finding {
                title: "operator requests refused".into(),
                measured: "7 of 10".into(),
                required: "0".into(),
            }],
            phases: vec![(Phase::During, PhaseMetrics::of(&[probe(Answer::Ok, 4)]))],
            heatmap: Heatmap::new(10),
            timeline: vec![],
            rollback: Rollback::default(),
            probes: vec![],
        };
        let t = r.render_text();
        assert!(t.contains("WEAKNESSES FOUND (1)"), "{t}");
        assert!(
            t.contains("operator requests refused") && t.contains("7 of 10"),
            "{t}"
        );
        assert!(t.contains("during"), "{t}");
    }
}
