//! A health heatmap: for each component, its level at each sample time
//! (healthy / degraded / warning / critical), kept for a bounded number of
//! samples, rendered as text (one row per component, one character per
//! sample) and as an SVG chart.
//!
//! The status page and `/v1/heatmap` show a facility's; chaos reports show
//! an experiment's.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

/// Samples kept by default (two minutes at one a second).
pub const SAMPLES_MAX: usize = 120;

/// Components tracked at most (more are dropped, counted in `dropped`).
pub const COMPONENTS_MAX: usize = 64;

/// How healthy a component is, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Working as configured.
    Healthy,
    /// Working, below its normal margin.
    Degraded,
    /// About to fail, or failing for some requests.
    Warning,
    /// Failed.
    Critical,
}

impl Level {
    /// One character for the text rendering.
    pub fn glyph(self) -> char {
        match self {
            Level::Healthy => '.',
            Level::Degraded => '-',
            Level::Warning => '+',
            Level::Critical => '#',
        }
    }

    /// The SVG fill colour.
    pub fn colour(self) -> &'static str {
        match self {
            Level::Healthy => "#2e7d32",
            Level::Degraded => "#f9a825",
            Level::Warning => "#ef6c00",
            Level::Critical => "#c62828",
        }
    }

    /// The level's name.
    pub fn name(self) -> &'static str {
        match self {
            Level::Healthy => "healthy",
            Level::Degraded => "degraded",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// One sample: the time and each component's level then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When, in ms (wall clock or virtual, as the recorder chose).
    pub at_ms: u64,
    /// Each component's level; a component missing here was not observed.
    pub levels: BTreeMap<String, Level>,
}

/// The heatmap. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heatmap {
    /// Components in the order they were first seen.
    pub components: Vec<String>,
    /// Samples, oldest first.
    pub samples: VecDeque<Sample>,
    /// Samples kept at most.
    pub samples_max: usize,
    /// Observations of components beyond [`COMPONENTS_MAX`], dropped.
    pub dropped: u64,
}

impl Default for Heatmap {
    fn default() -> Self {
        Heatmap::new(SAMPLES_MAX)
    }
}

impl Heatmap {
    /// An empty heatmap keeping `samples_max` samples (at least one).
    pub fn new(samples_max: usize) -> Heatmap {
        Heatmap {
            components: Vec::new(),
            samples: VecDeque::new(),
            samples_max: samples_max.max(1),
            dropped: 0,
        }
    }

    /// Records one sample at `at_ms`; the oldest is forgotten beyond the cap.
    pub fn record(&mut self, at_ms: u64, levels: impl IntoIterator<Item = (String, Level)>) {
        let mut kept = BTreeMap::new();
        for (c, l) in levels {
            if !self.components.contains(&c) {
                if self.components.len() >= COMPONENTS_MAX {
                    self.dropped += 1;
                    continue;
                }
                self.components.push(c.clone());
            }
            kept.insert(c, l);
        }
        if self.samples.len() == self.samples_max {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms,
            levels: kept,
        });
    }

    /// The worst level `component` had in the samples kept.
    pub fn worst(&self, component: &str) -> Option<Level> {
        self.samples
            .iter()
            .filter_map(|s| s.levels.get(component).copied())
            .max()
    }

    /// The latest level of `component`.
    pub fn latest(&self, component: &str) -> Option<Level> {
        self.samples
            .iter()
            .rev()
            .find_map(|s| s.levels.get(component).copied())
    }

    /// One line per component: its name, then one glyph per sample
    /// (`.` healthy, `-` degraded, `+` warning, `#` critical, space: not
    /// observed), then a legend line.
    pub fn render_text(&self) -> String {
        let width = self.components.iter().map(|c| c.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.components {
            let row: String = self
                .samples
                .iter()
                .map(|s| s.levels.get(c).map_or(' ', |l| l.glyph()))
                .collect();
            let _ = writeln!(out, "{c:>width$} |{row}|");
        }
        let _ = writeln!(
            out,
            "{:>width$}  . healthy  - degraded  + warning  # critical  ({} samples)",
            "",
            self.samples.len()
        );
        out
    }

    /// An SVG chart: one row per component, one cell per sample, coloured
    /// by level, with the component names and a legend.
    pub fn render_svg(&self, title: &str) -> String {
        const CELL: usize = 8;
        const ROW: usize = 16;
        const LABEL: usize = 170;
        let cols = self.samples.len().max(1);
        let width = LABEL + cols * CELL + 20;
        let height = 40 + self.components.len() * ROW + 40;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
        );
        let _ = write!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="8" y="18" font-size="13">{}</text>"#,
            escape(title)
        );
        for (r, c) in self.components.iter().enumerate() {
            let y = 30 + r * ROW;
            let _ = write!(s, r#"<text x="8" y="{}">{}</text>"#, y + 11, escape(c));
            for (i, sample) in self.samples.iter().enumerate() {
                if let Some(l) = sample.levels.get(c) {
                    let _ = write!(
                        s,
                        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} at {} ms: {}</title></rect>"#,
                        LABEL + i * CELL,
                        y,
                        CELL - 1,
                        ROW - 2,
                        l.colour(),
                        escape(c),
                        sample.at_ms,
                        l.name()
                    );
                }
            }
        }
        let y = 40 + self.components.len() * ROW;
        for (i, l) in [
            Level::Healthy,
            Level::Degraded,
            Level::Warning,
            Level::Critical,
        ]
        .into_iter()
        .enumerate()
        {
            let x = 8 + i * 100;
            let _ = write!(
                s,
                r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                l.colour(),
                x + 14,
                y + 9,
                l.name()
            );
        }
        s.push_str("</svg>");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(h: &mut Heatmap, at: u64, a: Level, b: Option<Level>) {
        let mut v = vec![("alpha".to_string(), a)];
        if let Some(b) = b {
            v.push(("bravo<link>".to_string(), b));
        }
        h.record(at, v);
    }

    #[test]
    fn keeps_the_last_samples_and_renders_each_level() {
        let mut h = Heatmap::new(3);
        sample(&mut h, 1, Level::Healthy, None);
        sample(&mut h, 2, Level::Critical, Some(Level::Warning));
        sample(&mut h, 3, Level::Degraded, Some(Level::Healthy));
        sample(&mut h, 4, Level::Healthy, Some(Level::Healthy));
        assert_eq!(h.samples.len(), 3);
        assert_eq!(h.samples[0].at_ms, 2);
        assert_eq!(h.worst("alpha"), Some(Level::Critical));
        assert_eq!(h.latest("alpha"), Some(Level::Healthy));
        assert_eq!(h.worst("nobody"), None);
        let text = h.render_text();
        assert!(text.contains("      alpha |#-.|"), "{text}");
        assert!(text.contains("bravo<link> |+..|"), "{text}");
        let svg = h.render_svg("t & t");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("bravo&lt;link&gt;") && svg.contains("t &amp; t"));
        assert_eq!(svg.matches(Level::Critical.colour()).count(), 2, "{svg}");
    }

    #[test]
    fn caps_the_components() {
        let mut h = Heatmap::new(2);
        h.record(
            0,
            (0..COMPONENTS_MAX + 3).map(|i| (format!("c{i}"), Level::Healthy)),
        );
        assert_eq!(h.components.len(), COMPONENTS_MAX);
        assert_eq!(h.dropped, 3);
    }
}
