//! Physics: the distributions, congestion, loss and presets against seed
//! 003 chapter 21. Every sample comes from a seeded ChaCha8Rng.

use super::*;
use rand::SeedableRng;

const N: usize = 20_000;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn id(s: &str) -> FacilityId {
    s.parse().unwrap()
}

fn samples(d: &Distribution, seed: u64) -> Vec<f64> {
    d.validate().unwrap();
    let mut r = rng(seed);
    let mut v: Vec<f64> = (0..N).map(|_| d.sample(&mut r)).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn near(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= want.abs() * tolerance
}

#[test]
fn exponential_sample_mean_is_mean_ms() {
    let v = samples(&Distribution::Exponential { mean_ms: 4.0 }, 1);
    assert!(near(mean(&v), 4.0, 0.03), "mean {}", mean(&v));
    // Median of an exponential is mean · ln 2.
    let median = quantile(&v, 0.5);
    assert!(near(median, 4.0 * 2f64.ln(), 0.04), "median {median}");
    assert!(v[0] >= 0.0);
}

#[test]
fn lognormal_sample_median_is_e_to_mu() {
    let (mu, sigma) = (2.0, 0.5);
    let v = samples(&Distribution::LogNormal { mu, sigma }, 2);
    let median = quantile(&v, 0.5);
    assert!(near(median, mu.exp(), 0.03), "median {median}");
    // One sigma above the median holds about 84.1 % of the mass.
    let below = v.iter().filter(|&&x| x < (mu + sigma).exp()).count();
    let share = below as f64 / N as f64;
    assert!(
        (0.83..0.85).contains(&share),
        "share below e^(mu+sigma) {share}"
    );
}

#[test]
fn pareto_stays_above_scale_and_median_is_scale_times_two_to_one_over_shape() {
    let (scale_ms, shape) = (5.0, 1.5);
    let v = samples(&Distribution::Pareto { scale_ms, shape }, 3);
    assert!(v[0] >= scale_ms, "min {}", v[0]);
    let median = quantile(&v, 0.5);
    let want = scale_ms * 2f64.powf(1.0 / shape);
    assert!(near(median, want, 0.04), "median {median}, want {want}");
    // p99 of a Pareto is scale · 100^(1/shape).
    let p99 = quantile(&v, 0.99);
    let want = scale_ms * 100f64.powf(1.0 / shape);
    assert!(near(p99, want, 0.15), "p99 {p99}, want {want}");
}

#[test]
fn bimodal_takes_the_slow_path_about_slow_fraction_of_the_time() {
    let d = Distribution::Bimodal {
        fast: Box::new(Distribution::Constant { ms: 1.0 }),
        slow: Box::new(Distribution::Constant { ms: 100.0 }),
        slow_fraction: 0.25,
    };
    let v = samples(&d, 4);
    let slow = v.iter().filter(|&&x| x == 100.0).count();
    let fast = v.iter().filter(|&&x| x == 1.0).count();
    assert_eq!(slow + fast, N);
    let share = slow as f64 / N as f64;
    assert!((0.24..0.26).contains(&share), "slow share {share}");
}

#[test]
fn heavy_tails_are_capped_at_component_ms_max() {
    let v = samples(
        &Distribution::Pareto {
            scale_ms: 1.0,
            shape: 0.1,
        },
        5,
    );
    let max = *v.last().unwrap();
    assert_eq!(max, COMPONENT_MS_MAX, "a tail this heavy reaches the cap");
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn congestion_factor_is_one_when_idle_monotone_in_rho_and_capped() {
    let models = [
        Congestion::None,
        Congestion::Linear { factor: 3.0 },
        Congestion::MM1 { cap: 50.0 },
        Congestion::Step {
            threshold: 0.7,
            factor: 4.0,
        },
    ];
    for m in models {
        m.validate().unwrap();
        assert_eq!(m.factor(0.0), 1.0, "{m:?} at rho 0");
        let mut last = 1.0;
        for i in 0..=150 {
            let f = m.factor(f64::from(i) / 100.0);
            assert!(f >= last, "{m:?} fell at rho {}", f64::from(i) / 100.0);
            last = f;
        }
    }
    let mm1 = Congestion::MM1 { cap: 50.0 };
    assert!(near(mm1.factor(0.5), 2.0, 1e-12));
    assert!(near(mm1.factor(0.9), 10.0, 1e-9));
    assert_eq!(mm1.factor(0.99), 50.0, "1/(1-0.99) = 100, capped");
    assert_eq!(mm1.factor(1.0), 50.0);
    assert_eq!(mm1.factor(3.0), 50.0);
    let step = Congestion::Step {
        threshold: 0.7,
        factor: 4.0,
    };
    assert_eq!((step.factor(0.7), step.factor(0.71)), (1.0, 4.0));
    assert!(near(
        Congestion::Linear { factor: 3.0 }.factor(0.5),
        2.5,
        1e-12
    ));
}

#[test]
fn loss_is_flat_up_to_ninety_percent_utilization_and_rises_above() {
    let spec = LinkSpec {
        base_loss: 0.01,
        ..LinkSpec::same_datacenter()
    };
    for i in 0..=90 {
        let rho = f64::from(i) / 100.0;
        assert_eq!(spec.loss_probability(rho), 0.01, "rho {rho}");
    }
    let mut last = 0.01;
    for i in 91..=400 {
        let p = spec.loss_probability(f64::from(i) / 100.0);
        assert!(p > last || p == 1.0, "loss did not rise at {i} %");
        last = p;
    }
    assert!(near(
        spec.loss_probability(1.0),
        0.01 + LOSS_SLOPE * 0.1,
        1e-9
    ));
    assert_eq!(spec.loss_probability(10.0), 1.0, "clamped to 1");
}

#[test]
fn fixed_parts_follow_distance_bandwidth_and_hops() {
    let spec = LinkSpec {
        distance_km: 8_000.0,
        bandwidth_mbps: 1_000.0,
        hops: 15,
        processing_per_hop_us: 100,
        ..LinkSpec::cross_region()
    };
    // Seed 003 §21.1: 1 MB over 1 Gbps takes 8 ms; 1 KB, 0.008 ms.
    assert_eq!(spec.transmission(1_000_000), Duration::from_millis(8));
    assert_eq!(spec.transmission(1_000), Duration::from_micros(8));
    let ten_gig = LinkSpec {
        bandwidth_mbps: 10_000.0,
        ..spec.clone()
    };
    assert_eq!(ten_gig.transmission(1_000_000), Duration::from_micros(800));
    assert_eq!(spec.propagation(), Duration::from_millis(40));
    assert_eq!(spec.processing(), Duration::from_micros(1_500));
}

fn ctx<'a>(
    from: &'a FacilityId,
    to: &'a FacilityId,
    params: &'a super::super::LinkParams,
    bytes: usize,
    elapsed_ms: u64,
) -> LinkCtx<'a> {
    LinkCtx {
        from,
        to,
        params,
        bytes,
        elapsed: Duration::from_millis(elapsed_ms),
    }
}

/// 1 Mbps carries 12,500 bytes per 100 ms window; no queuing, no loss.
fn one_megabit() -> LinkSpec {
    LinkSpec {
        bandwidth_mbps: 1.0,
        queuing: Distribution::Constant { ms: 0.0 },
        jitter: None,
        base_loss: 0.0,
        background_utilization: 0.0,
        ..LinkSpec::same_datacenter()
    }
}

#[test]
fn utilization_counts_bytes_sent_in_the_last_window_per_directed_link() {
    let (a, b) = (id("a"), id("b"));
    let params = Default::default();
    let mut physics = Physics::new(one_megabit()).unwrap();
    let mut r = rng(6);
    for _ in 0..10 {
        physics.transit(&ctx(&a, &b, &params, 1_000, 5), &mut r);
    }
    let rho = physics.utilization(&a, &b, Duration::from_millis(5));
    assert!(near(rho, 0.8, 1e-9), "10 KB of 12.5 KB: {rho}");
    assert_eq!(physics.utilization(&b, &a, Duration::from_millis(5)), 0.0);
    let later = physics.utilization(&a, &b, Duration::from_millis(95));
    assert!(near(later, 0.8, 1e-9), "still in the window: {later}");
    let gone = physics.utilization(&a, &b, Duration::from_millis(200));
    assert_eq!(gone, 0.0, "the window slid past");
    let background = LinkSpec {
        background_utilization: 0.5,
        ..one_megabit()
    };
    physics.set_link(&b, &a, background).unwrap();
    assert_eq!(physics.utilization(&b, &a, Duration::ZERO), 0.5);
}

#[test]
fn loss_appears_only_once_measured_load_passes_ninety_percent() {
    let (a, b) = (id("a"), id("b"));
    let params = Default::default();
    let mut physics = Physics::new(one_megabit()).unwrap();
    let mut r = rng(7);
    // Light load: 1 KB per window, rho 0.08, never lost.
    for i in 0..200 {
        let ok = physics.transit(&ctx(&a, &b, &params, 1_000, i * 100), &mut r);
        assert!(ok.is_some(), "lost at light load");
    }
    // A burst in one instant: each KB adds 0.08 to rho.
    let burst_ms = 200 * 100 + 1_000;
    let mut lost_at = Vec::new();
    for k in 1..=60u32 {
        let got = physics.transit(&ctx(&a, &b, &params, 1_000, burst_ms), &mut r);
        if got.is_none() {
            lost_at.push(k);
        }
    }
    // Up to the 11th KB rho <= 0.88: no loss may happen there.
    assert!(
        lost_at.iter().all(|&k| k >= 12),
        "lost below 0.9: {lost_at:?}"
    );
    // At rho 1..4.8 the chance is 5..100 %: many are lost.
    assert!(
        lost_at.len() >= 20,
        "too few losses under overload: {lost_at:?}"
    );
}

#[test]
fn queuing_grows_with_measured_load() {
    let (a, b) = (id("a"), id("b"));
    let params = Default::default();
    let spec = LinkSpec {
        queuing: Distribution::Constant { ms: 1.0 },
        congestion: Congestion::MM1 { cap: 100.0 },
        ..one_megabit()
    };
    let mut physics = Physics::new(spec).unwrap();
    let mut r = rng(8);
    let mut last = Duration::ZERO;
    for _ in 0..11 {
        let got = physics.transit(&ctx(&a, &b, &params, 1_000, 0), &mut r);
        let queuing = got.expect("no loss below 0.9").queuing;
        assert!(queuing > last, "queuing did not grow: {queuing:?}");
        last = queuing;
    }
    // Eleven KB: rho 0.88, factor 1 / 0.12.
    assert!(near(last.as_secs_f64() * 1e3, 1.0 / 0.12, 1e-6), "{last:?}");
}

/// Total delays (ms) of `n` 1 KB payloads on a fresh window each time.
fn preset_totals(spec: LinkSpec, seed: u64, n: usize) -> Vec<f64> {
    let (a, b) = (id("a"), id("b"));
    let params = Default::default();
    let mut physics = Physics::new(spec).unwrap();
    let mut r = rng(seed);
    let mut v: Vec<f64> = (0..n as u64)
        .filter_map(|i| physics.transit(&ctx(&a, &b, &params, 1_000, i * 1_000), &mut r))
        .map(|bd| bd.total().as_secs_f64() * 1e3)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn presets_match_the_seed_latency_table() {
    let dc = preset_totals(LinkSpec::same_datacenter(), 10, N);
    let (median, p99) = (quantile(&dc, 0.5), quantile(&dc, 0.99));
    assert!((0.55..0.67).contains(&median), "same DC median {median}");
    assert!((1.2..1.8).contains(&p99), "same DC p99 {p99}");

    let cross = preset_totals(LinkSpec::cross_region(), 11, N);
    let (median, p99) = (quantile(&cross, 0.5), quantile(&cross, 0.99));
    assert!(
        (52.0..58.0).contains(&median),
        "cross-region median {median}"
    );
    assert!((105.0..135.0).contains(&p99), "cross-region p99 {p99}");
    assert!(
        cross[0] >= 41.5,
        "below propagation + processing: {}",
        cross[0]
    );

    let public = preset_totals(LinkSpec::public_internet(), 12, N);
    let slow = public.iter().filter(|&&ms| ms > 70.0).count() as f64;
    let share = slow / public.len() as f64;
    assert!((0.18..0.22).contains(&share), "slow-route share {share}");
    let fast_median = quantile(&public[..public.len() * 3 / 4], 0.5);
    assert!(
        (18.0..28.0).contains(&fast_median),
        "fast median {fast_median}"
    );

    let congested = preset_totals(LinkSpec::congested(), 13, N);
    let lost = N - congested.len();
    let (median, p99) = (quantile(&congested, 0.5), quantile(&congested, 0.99));
    assert!((60.0..95.0).contains(&median), "congested median {median}");
    assert!(p99 > 500.0, "congested p99 {p99}: the tail should be long");
    assert!(
        (150..260).contains(&lost),
        "congested base loss 1 %: {lost}"
    );
}

fn out_of_range(e: PhysicsError) -> &'static str {
    match e {
        PhysicsError::OutOfRange { field, .. } => field,
        other => panic!("expected OutOfRange, got {other:?}"),
    }
}

#[test]
fn bad_parameters_are_typed_errors_naming_the_field() {
    let bad_distributions = [
        (
            Distribution::Exponential { mean_ms: -1.0 },
            "Exponential.mean_ms",
        ),
        (
            Distribution::LogNormal {
                mu: 0.0,
                sigma: f64::NAN,
            },
            "LogNormal.sigma",
        ),
        (
            Distribution::LogNormal {
                mu: f64::INFINITY,
                sigma: 1.0,
            },
            "LogNormal.mu",
        ),
        (
            Distribution::Pareto {
                scale_ms: 1.0,
                shape: 0.0,
            },
            "Pareto.shape",
        ),
        (Distribution::Constant { ms: -0.5 }, "Constant.ms"),
        (
            Distribution::Bimodal {
                fast: Box::new(Distribution::Constant { ms: 1.0 }),
                slow: Box::new(Distribution::Constant { ms: 2.0 }),
                slow_fraction: 1.5,
            },
            "Bimodal.slow_fraction",
        ),
    ];
    for (d, field) in bad_distributions {
        assert_eq!(out_of_range(d.validate().unwrap_err()), field);
        let spec = LinkSpec {
            queuing: d,
            ..LinkSpec::same_datacenter()
        };
        assert_eq!(out_of_range(Physics::new(spec).unwrap_err()), field);
    }
    let base = LinkSpec::same_datacenter;
    let bad_specs = [
        (
            LinkSpec {
                bandwidth_mbps: 0.0,
                ..base()
            },
            "LinkSpec.bandwidth_mbps",
        ),
        (
            LinkSpec {
                distance_km: -3.0,
                ..base()
            },
            "LinkSpec.distance_km",
        ),
        (
            LinkSpec {
                base_loss: 1.01,
                ..base()
            },
            "LinkSpec.base_loss",
        ),
        (
            LinkSpec {
                background_utilization: f64::NAN,
                ..base()
            },
            "LinkSpec.background_utilization",
        ),
        (
            LinkSpec {
                hops: HOPS_MAX + 1,
                ..base()
            },
            "LinkSpec.hops",
        ),
        (
            LinkSpec {
                congestion: Congestion::MM1 { cap: 0.5 },
                ..base()
            },
            "MM1.cap",
        ),
        (
            LinkSpec {
                congestion: Congestion::Step {
                    threshold: 0.5,
                    factor: 0.5,
                },
                ..base()
            },
            "Step.factor",
        ),
        (
            LinkSpec {
                jitter: Some(Distribution::Exponential { mean_ms: f64::NAN }),
                ..base()
            },
            "Exponential.mean_ms",
        ),
    ];
    let mut physics = Physics::new(base()).unwrap();
    for (spec, field) in bad_specs {
        let e = physics.set_link(&id("a"), &id("b"), spec).unwrap_err();
        assert_eq!(out_of_range(e), field);
    }
    assert_eq!(physics.spec(&id("a"), &id("b")), &base(), "nothing was set");
}

#[test]
fn distributions_nested_too_deep_are_refused() {
    let mut d = Distribution::Constant { ms: 1.0 };
    for depth in 1..=DISTRIBUTION_DEPTH_MAX + 1 {
        let verdict = d.validate();
        if depth <= DISTRIBUTION_DEPTH_MAX {
            assert_eq!(verdict, Ok(()), "depth {depth}");
        } else {
            assert_eq!(verdict, Err(PhysicsError::TooDeep));
        }
        d = Distribution::Bimodal {
            fast: Box::new(d.clone()),
            slow: Box::new(d),
            slow_fraction: 0.5,
        };
    }
}

#[test]
fn presets_are_valid_and_round_trip_through_serde() {
    let presets = vec![
        LinkSpec::same_datacenter(),
        LinkSpec::cross_region(),
        LinkSpec::public_internet(),
        LinkSpec::congested(),
    ];
    for p in &presets {
        p.validate().unwrap();
    }
    let bytes = bulwark_storage::codec::encode(&presets).unwrap();
    let back: Vec<LinkSpec> = bulwark_storage::codec::decode(&bytes).unwrap();
    assert_eq!(back, presets);
}
