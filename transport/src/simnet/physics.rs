//! Physics: a [`LinkModel`] built from what delays a packet on a real path
//! (seed 003, chapter 21).
//!
//! One payload's delay on a directed link is the sum of
//! - propagation: the link's distance at [`FIBRE_KM_PER_MS`];
//! - transmission: the payload's bits at the link's bandwidth;
//! - processing: hops × the per-hop cost;
//! - queuing: drawn from a [`Distribution`], times the [`Congestion`] factor
//!   at the link's utilization;
//! - jitter: drawn from another distribution, or none;
//!
//! and each part is reported in a [`Breakdown`].
//!
//! Utilization ρ is offered load over capacity: the bytes sent on this
//! directed link within the last [`UTILIZATION_WINDOW`] of the net's virtual
//! clock, over what its bandwidth carries in that time, plus the spec's
//! `background_utilization` (traffic of others that the sim does not carry).
//! ρ can exceed 1 when senders offer more than the link carries. Loss is
//! `base_loss + LOSS_SLOPE × max(0, ρ − LOSS_KNEE)`, at most 1: flat below
//! 90 % utilization, then rising (seed 003 §21.3).
//!
//! Limits: each delay part is at most [`COMPONENT_MS_MAX`] (a heavy tail
//! cannot hold a payload for ever or overflow a `Duration`); a link's window
//! is [`WINDOW_BUCKETS`] fixed buckets whatever the traffic; a
//! [`Distribution::Bimodal`] nests at most [`DISTRIBUTION_DEPTH_MAX`] deep.
//! Every parameter is checked when a spec is set ([`PhysicsError`]).
//!
//! Randomness: every draw comes from the caller's RNG (the SimNet's seeded
//! ChaCha), with a fixed number of draws per sample, so a seed replays.
//! The distributions are written here (inverse CDF, Box-Muller) rather than
//! taken from `rand_distr`, which the workspace does not carry.

use super::{Breakdown, LinkCtx, LinkModel};
use crate::FacilityId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Signal speed in fibre, km per millisecond (about two thirds of light's).
pub const FIBRE_KM_PER_MS: f64 = 200.0;

/// How far back utilization looks, on the net's virtual clock.
pub const UTILIZATION_WINDOW: Duration = Duration::from_millis(100);

/// Buckets per window. Utilization sums whole buckets, so it sees between
/// 90 and 100 ms of traffic; memory per link stays fixed under any load.
pub const WINDOW_BUCKETS: usize = 10;

const BUCKET_MS: u64 = UTILIZATION_WINDOW.as_millis() as u64 / WINDOW_BUCKETS as u64;
const _: () = assert!(BUCKET_MS * WINDOW_BUCKETS as u64 == UTILIZATION_WINDOW.as_millis() as u64);

/// Utilization above which loss starts to rise.
pub const LOSS_KNEE: f64 = 0.9;

/// Loss added per unit of utilization above [`LOSS_KNEE`]: 0.5, as in seed
/// 003, so a link at ρ = 1 loses 5 points more than its base, and one offered
/// twice its capacity 55 points more.
pub const LOSS_SLOPE: f64 = 0.5;

/// Largest value of any one delay part, in milliseconds (60 s).
pub const COMPONENT_MS_MAX: f64 = 60_000.0;

/// Longest link: more than twice round the Earth, room for detours.
pub const DISTANCE_KM_MAX: f64 = 100_000.0;

/// Most routers on one link.
pub const HOPS_MAX: u32 = 255;

/// Slowest router, in microseconds per hop (seed 003: 10 to 100 µs).
pub const PROCESSING_PER_HOP_US_MAX: u32 = 10_000;

/// Deepest nesting of [`Distribution::Bimodal`].
pub const DISTRIBUTION_DEPTH_MAX: usize = 4;

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PhysicsError {
    /// A parameter is NaN, infinite or outside its range.
    #[error("{field} = {value} is outside {range}")]
    OutOfRange {
        /// Which parameter, as `Type.field`.
        field: &'static str,
        /// The refused value.
        value: f64,
        /// The accepted range, in words.
        range: &'static str,
    },
    /// [`Distribution::Bimodal`] nested deeper than
    /// [`DISTRIBUTION_DEPTH_MAX`].
    #[error("distributions nest more than {DISTRIBUTION_DEPTH_MAX} deep")]
    TooDeep,
}

fn check(
    field: &'static str,
    value: f64,
    ok: bool,
    range: &'static str,
) -> Result<(), PhysicsError> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(PhysicsError::OutOfRange {
            field,
            value,
            range,
        })
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<(), PhysicsError> {
    check(field, value, value >= 0.0, ">= 0")
}

fn positive(field: &'static str, value: f64) -> Result<(), PhysicsError> {
    check(field, value, value > 0.0, "> 0")
}

fn unit(field: &'static str, value: f64) -> Result<(), PhysicsError> {
    check(field, value, (0.0..=1.0).contains(&value), "0..=1")
}

/// A random delay, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Distribution {
    /// Always `ms`.
    Constant {
        /// The delay.
        ms: f64,
    },
    /// Exponential with mean `mean_ms`: light traffic at a queue.
    Exponential {
        /// Mean (and standard deviation).
        mean_ms: f64,
    },
    /// `exp(mu + sigma · N(0, 1))` ms: median `e^mu`, skewed right, the
    /// seed's shape for datacenter and cross-region paths.
    LogNormal {
        /// Mean of the log; the median is `e^mu` ms.
        mu: f64,
        /// Standard deviation of the log.
        sigma: f64,
    },
    /// Pareto: at least `scale_ms`, with a tail that thins as `shape`
    /// grows (no finite mean for `shape <= 1`); a congested path.
    Pareto {
        /// Smallest value.
        scale_ms: f64,
        /// Tail index.
        shape: f64,
    },
    /// A mixture: `slow` with chance `slow_fraction`, else `fast`; good and
    /// bad routes on the public internet.
    Bimodal {
        /// The usual path.
        fast: Box<Distribution>,
        /// The bad path.
        slow: Box<Distribution>,
        /// Chance of the slow path (0..=1).
        slow_fraction: f64,
    },
}

impl Distribution {
    /// Checks every parameter: delays and spreads finite and `>= 0`,
    /// Pareto parameters `> 0`, `slow_fraction` in 0..=1, nesting at most
    /// [`DISTRIBUTION_DEPTH_MAX`].
    pub fn validate(&self) -> Result<(), PhysicsError> {
        self.validate_at(1)
    }

    fn validate_at(&self, depth: usize) -> Result<(), PhysicsError> {
        if depth > DISTRIBUTION_DEPTH_MAX {
            return Err(PhysicsError::TooDeep);
        }
        match self {
            Distribution::Constant { ms } => non_negative("Constant.ms", *ms),
            Distribution::Exponential { mean_ms } => non_negative("Exponential.mean_ms", *mean_ms),
            Distribution::LogNormal { mu, sigma } => {
                check("LogNormal.mu", *mu, true, "finite")?;
                non_negative("LogNormal.sigma", *sigma)
            }
            Distribution::Pareto { scale_ms, shape } => {
                positive("Pareto.scale_ms", *scale_ms)?;
                positive("Pareto.shape", *shape)
            }
            Distribution::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => {
                unit("Bimodal.slow_fraction", *slow_fraction)?;
                fast.validate_at(depth + 1)?;
                slow.validate_at(depth + 1)
            }
        }
    }

    /// One draw, in milliseconds, within `0..=COMPONENT_MS_MAX`. Uses a
    /// fixed number of draws from `rng` per variant (none for `Constant`).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let ms = match self {
            Distribution::Constant { ms } => *ms,
            Distribution::Exponential { mean_ms } => -mean_ms * open_unit(rng).ln(),
            Distribution::LogNormal { mu, sigma } => (mu + sigma * standard_normal(rng)).exp(),
            Distribution::Pareto { scale_ms, shape } => {
                scale_ms * open_unit(rng).powf(-1.0 / shape)
            }
            Distribution::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => {
                if rng.random::<f64>() < *slow_fraction {
                    slow.sample(rng)
                } else {
                    fast.sample(rng)
                }
            }
        };
        clamp_ms(ms)
    }
}

/// Uniform in (0, 1]: never 0, so logarithms and negative powers stay finite.
fn open_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    1.0 - rng.random::<f64>()
}

/// Box-Muller: one standard normal from two uniforms. The pair's second
/// normal is thrown away so that every sample costs the same two draws.
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let radius = (-2.0 * open_unit(rng).ln()).sqrt();
    let angle = std::f64::consts::TAU * rng.random::<f64>();
    radius * angle.cos()
}

/// Milliseconds into `0..=COMPONENT_MS_MAX`; NaN becomes 0.
fn clamp_ms(ms: f64) -> f64 {
    if ms > 0.0 {
        ms.min(COMPONENT_MS_MAX)
    } else {
        0.0
    }
}

fn ms_to_duration(ms: f64) -> Duration {
    Duration::from_nanos((clamp_ms(ms) * 1e6).round() as u64)
}

/// How queuing grows with utilization ρ: the factor that multiplies the
/// drawn queuing delay. Every model is 1 at ρ = 0 and never decreases in ρ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Congestion {
    /// Queuing ignores load.
    None,
    /// `1 + ρ · factor`.
    Linear {
        /// Extra queuing per unit of utilization (`>= 0`).
        factor: f64,
    },
    /// An M/M/1 queue: `1 / (1 − ρ)`, at most `cap` (and `cap` from ρ = 1
    /// on, where the formula has no finite value).
    MM1 {
        /// Largest factor (`>= 1`).
        cap: f64,
    },
    /// `factor` once ρ exceeds `threshold`, else 1.
    Step {
        /// Utilization where the step happens (0..=1).
        threshold: f64,
        /// Factor above it (`>= 1`).
        factor: f64,
    },
}

impl Congestion {
    /// Checks the parameters named on each variant.
    pub fn validate(&self) -> Result<(), PhysicsError> {
        match *self {
            Congestion::None => Ok(()),
            Congestion::Linear { factor } => non_negative("Linear.factor", factor),
            Congestion::MM1 { cap } => check("MM1.cap", cap, cap >= 1.0, ">= 1"),
            Congestion::Step { threshold, factor } => {
                unit("Step.threshold", threshold)?;
                check("Step.factor", factor, factor >= 1.0, ">= 1")
            }
        }
    }

    /// The queuing multiplier at `utilization` (negative or NaN counts as 0).
    pub fn factor(&self, utilization: f64) -> f64 {
        let rho = utilization.max(0.0);
        match *self {
            Congestion::None => 1.0,
            Congestion::Linear { factor } => 1.0 + rho * factor,
            Congestion::MM1 { cap } if rho >= 1.0 => cap,
            Congestion::MM1 { cap } => (1.0 / (1.0 - rho)).min(cap),
            Congestion::Step { threshold, factor } if rho > threshold => factor,
            Congestion::Step { .. } => 1.0,
        }
    }
}

/// The physics of one directed link. Build one from a preset and adjust
/// fields; [`LinkSpec::validate`] runs whenever a spec is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Fibre length, km (0..=[`DISTANCE_KM_MAX`]).
    pub distance_km: f64,
    /// Capacity, megabits per second (`> 0`).
    pub bandwidth_mbps: f64,
    /// Routers and switches on the path (at most [`HOPS_MAX`]).
    pub hops: u32,
    /// Cost of each hop, µs (at most [`PROCESSING_PER_HOP_US_MAX`]).
    pub processing_per_hop_us: u32,
    /// Queuing delay at zero load; scaled by `congestion`.
    pub queuing: Distribution,
    /// How queuing grows with utilization.
    pub congestion: Congestion,
    /// Extra variation on top, or none.
    #[serde(default)]
    pub jitter: Option<Distribution>,
    /// Chance of loss at low utilization (0..=1).
    pub base_loss: f64,
    /// Utilization by traffic the sim does not carry (0..=1), added to what
    /// it measures; how a preset models a busy shared link.
    #[serde(default)]
    pub background_utilization: f64,
}

impl LinkSpec {
    /// Same datacenter, across racks: 1 km, 10 Gbps, 3 switches at 10 µs,
    /// log-normal queuing (μ = −0.55, σ = 0.4). Median about 0.6 ms, p99
    /// about 1.5 ms (seed 003 §21.4), no loss.
    pub fn same_datacenter() -> Self {
        LinkSpec {
            distance_km: 1.0,
            bandwidth_mbps: 10_000.0,
            hops: 3,
            processing_per_hop_us: 10,
            queuing: Distribution::LogNormal {
                mu: -0.55,
                sigma: 0.4,
            },
            congestion: Congestion::MM1 { cap: 100.0 },
            jitter: None,
            base_loss: 0.0,
            background_utilization: 0.0,
        }
    }

    /// Cross-region: 8,000 km of fibre (40 ms), 1 Gbps, 15 hops at 100 µs,
    /// log-normal queuing (μ = 2.6, σ = 0.75: median 13.5 ms), exponential
    /// jitter (mean 0.5 ms), 0.01 % loss. Median about 55 ms, p99 about
    /// 120 ms (seed 003 §21.4).
    pub fn cross_region() -> Self {
        LinkSpec {
            distance_km: 8_000.0,
            bandwidth_mbps: 1_000.0,
            hops: 15,
            processing_per_hop_us: 100,
            queuing: Distribution::LogNormal {
                mu: 2.6,
                sigma: 0.75,
            },
            congestion: Congestion::MM1 { cap: 100.0 },
            jitter: Some(Distribution::Exponential { mean_ms: 0.5 }),
            base_loss: 0.0001,
            background_utilization: 0.0,
        }
    }

    /// Public internet: 2,000 km (10 ms), 100 Mbps, 18 hops at 100 µs,
    /// bimodal queuing: 80 % good routes (log-normal, median 10 ms), 20 %
    /// bad ones (median 150 ms); exponential jitter (mean 2 ms), 0.1 % loss.
    /// Two peaks, near 23 ms and 165 ms (seed 003 §21.4).
    pub fn public_internet() -> Self {
        LinkSpec {
            distance_km: 2_000.0,
            bandwidth_mbps: 100.0,
            hops: 18,
            processing_per_hop_us: 100,
            queuing: Distribution::Bimodal {
                fast: Box::new(Distribution::LogNormal {
                    mu: 10f64.ln(),
                    sigma: 0.5,
                }),
                slow: Box::new(Distribution::LogNormal {
                    mu: 150f64.ln(),
                    sigma: 0.5,
                }),
                slow_fraction: 0.2,
            },
            congestion: Congestion::MM1 { cap: 100.0 },
            jitter: Some(Distribution::Exponential { mean_ms: 2.0 }),
            base_loss: 0.001,
            background_utilization: 0.0,
        }
    }

    /// A congested link: 1,000 km (5 ms), 100 Mbps, 12 hops at 100 µs,
    /// Pareto queuing (scale 5 ms, shape 1.5) behind an M/M/1 factor at
    /// 88 % background utilization (×8.3), exponential jitter (mean 2 ms),
    /// 1 % loss. Median about 75 ms, p99 near 1 s; a little traffic of its
    /// own pushes ρ past 0.9, and loss rises (seed 003 §21.4).
    pub fn congested() -> Self {
        LinkSpec {
            distance_km: 1_000.0,
            bandwidth_mbps: 100.0,
            hops: 12,
            processing_per_hop_us: 100,
            queuing: Distribution::Pareto {
                scale_ms: 5.0,
                shape: 1.5,
            },
            congestion: Congestion::MM1 { cap: 100.0 },
            jitter: Some(Distribution::Exponential { mean_ms: 2.0 }),
            base_loss: 0.01,
            background_utilization: 0.88,
        }
    }

    /// Checks every field against the range in its doc.
    pub fn validate(&self) -> Result<(), PhysicsError> {
        let d = self.distance_km;
        check(
            "LinkSpec.distance_km",
            d,
            (0.0..=DISTANCE_KM_MAX).contains(&d),
            "0..=100000",
        )?;
        positive("LinkSpec.bandwidth_mbps", self.bandwidth_mbps)?;
        let hops = self.hops;
        check("LinkSpec.hops", hops.into(), hops <= HOPS_MAX, "0..=255")?;
        let per_hop = self.processing_per_hop_us;
        let ok = per_hop <= PROCESSING_PER_HOP_US_MAX;
        check(
            "LinkSpec.processing_per_hop_us",
            per_hop.into(),
            ok,
            "0..=10000",
        )?;
        self.queuing.validate()?;
        self.congestion.validate()?;
        if let Some(jitter) = &self.jitter {
            jitter.validate()?;
        }
        unit("LinkSpec.base_loss", self.base_loss)?;
        unit(
            "LinkSpec.background_utilization",
            self.background_utilization,
        )
    }

    /// Time for the signal to cover the distance.
    pub fn propagation(&self) -> Duration {
        ms_to_duration(self.distance_km / FIBRE_KM_PER_MS)
    }

    /// Time to put `bytes` on the wire (1 Mbps carries 125 bytes per ms).
    pub fn transmission(&self, bytes: usize) -> Duration {
        ms_to_duration(bytes as f64 / (125.0 * self.bandwidth_mbps))
    }

    /// Time spent in the routers.
    pub fn processing(&self) -> Duration {
        Duration::from_micros(u64::from(self.hops) * u64::from(self.processing_per_hop_us))
    }

    /// Bytes the link carries in one [`UTILIZATION_WINDOW`].
    pub fn window_capacity_bytes(&self) -> f64 {
        125.0 * self.bandwidth_mbps * UTILIZATION_WINDOW.as_millis() as f64
    }

    /// Chance of loss at `utilization`: `base_loss` up to [`LOSS_KNEE`],
    /// then rising by [`LOSS_SLOPE`] per unit, at most 1.
    pub fn loss_probability(&self, utilization: f64) -> f64 {
        let over = (utilization - LOSS_KNEE).max(0.0);
        (self.base_loss + LOSS_SLOPE * over).clamp(0.0, 1.0)
    }
}

/// Bytes sent on one link per bucket of the sliding window.
#[derive(Debug, Clone, Default)]
struct Window {
    /// Which bucket number (virtual ms / bucket length) each slot holds.
    bucket: [u64; WINDOW_BUCKETS],
    bytes: [u64; WINDOW_BUCKETS],
}

impl Window {
    fn bucket_of(elapsed: Duration) -> u64 {
        (elapsed.as_millis() / u128::from(BUCKET_MS)) as u64
    }

    fn add(&mut self, elapsed: Duration, bytes: u64) {
        let bucket = Self::bucket_of(elapsed);
        let slot = (bucket % WINDOW_BUCKETS as u64) as usize;
        if self.bucket[slot] != bucket {
            self.bucket[slot] = bucket;
            self.bytes[slot] = 0;
        }
        self.bytes[slot] = self.bytes[slot].saturating_add(bytes);
    }

    fn bytes_at(&self, elapsed: Duration) -> u64 {
        let now = Self::bucket_of(elapsed);
        let oldest = now.saturating_sub(WINDOW_BUCKETS as u64 - 1);
        (0..WINDOW_BUCKETS)
            .filter(|&i| (oldest..=now).contains(&self.bucket[i]))
            .map(|i| self.bytes[i])
            .fold(0, u64::saturating_add)
    }
}

/// The physics link model: a default [`LinkSpec`], per-link overrides and
/// each directed link's recent traffic. Plain data: time comes in through
/// [`LinkCtx::elapsed`], chance through the RNG.
#[derive(Debug, Clone)]
pub struct Physics {
    default: LinkSpec,
    links: BTreeMap<(FacilityId, FacilityId), LinkSpec>,
    windows: BTreeMap<(FacilityId, FacilityId), Window>,
}

impl Physics {
    /// Every link follows `default` until set one by one.
    pub fn new(default: LinkSpec) -> Result<Self, PhysicsError> {
        default.validate()?;
        Ok(Physics {
            default,
            links: BTreeMap::new(),
            windows: BTreeMap::new(),
        })
    }

    /// Replaces the spec of every link not set one by one.
    pub fn set_default(&mut self, spec: LinkSpec) -> Result<(), PhysicsError> {
        spec.validate()?;
        self.default = spec;
        Ok(())
    }

    /// Sets the spec of the directed link `from -> to`.
    pub fn set_link(
        &mut self,
        from: &FacilityId,
        to: &FacilityId,
        spec: LinkSpec,
    ) -> Result<(), PhysicsError> {
        spec.validate()?;
        self.links.insert((from.clone(), to.clone()), spec);
        Ok(())
    }

    /// The spec the link `from -> to` follows.
    pub fn spec(&self, from: &FacilityId, to: &FacilityId) -> &LinkSpec {
        self.links
            .get(&(from.clone(), to.clone()))
            .unwrap_or(&self.default)
    }

    /// The link's utilization ρ at `elapsed` (virtual time since the net
    /// started): measured bytes over capacity, plus the background.
    pub fn utilization(&self, from: &FacilityId, to: &FacilityId, elapsed: Duration) -> f64 {
        let spec = self.spec(from, to);
        let sent = self
            .windows
            .get(&(from.clone(), to.clone()))
            .map_or(0, |w| w.bytes_at(elapsed));
        spec.background_utilization + sent as f64 / spec.window_capacity_bytes()
    }
}

impl LinkModel for Physics {
    /// Counts the payload into the link's window, then draws loss (only when
    /// its chance is above 0), queuing, and jitter (when the spec has any).
    fn transit(&mut self, link: &LinkCtx<'_>, rng: &mut ChaCha8Rng) -> Option<Breakdown> {
        let key = (link.from.clone(), link.to.clone());
        self.windows
            .entry(key)
            .or_default()
            .add(link.elapsed, link.bytes as u64);
        let rho = self.utilization(link.from, link.to, link.elapsed);
        let spec = self.spec(link.from, link.to);
        let loss = spec.loss_probability(rho);
        if loss > 0.0 && rng.random_bool(loss) {
            return None;
        }
        let queuing_ms = spec.queuing.sample(rng) * spec.congestion.factor(rho);
        let jitter_ms = spec.jitter.as_ref().map_or(0.0, |j| j.sample(rng));
        Some(Breakdown {
            propagation: spec.propagation(),
            transmission: spec.transmission(link.bytes),
            processing: spec.processing(),
            queuing: ms_to_duration(queuing_ms),
            jitter: ms_to_duration(jitter_ms),
            fault: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests;
