//! The FailureDetector in the harness: three facilities exchanging real
//! heartbeats (datagram class) over SimNet on virtual time, with 30%
//! jitter on a 1 s interval and 1% of the heartbeats lost. For several
//! thresholds: false suspicions per hour of healthy running, then the time
//! from a crash to Suspect and to Down. The figures are printed and kept
//! in docs/BENCHMARKS.md.

mod support;

use std::time::Duration;

use bulwark_actors::detect::{
    detector_child, DetectConfig, Detection, Liveness, MembershipEvent, PhiConfig,
};
use bulwark_runtime::Harness;
use bulwark_transport::{FacilityId, FaultRule, Selector, TrafficClass};
use support::{harness_id, on_paused_thread};
use tokio::sync::broadcast::error::TryRecvError;

struct Figures {
    false_suspicions_per_hour: f64,
    crash_to_suspect: Duration,
    crash_to_down: Duration,
}

async fn measure(suspect_phi: f64, down_phi: f64, pause_ms: f64, hours: u64, seed: u64) -> Figures {
    let ids: Vec<FacilityId> = (0..3).map(harness_id).collect();
    let config = DetectConfig {
        phi: PhiConfig {
            suspect_phi,
            down_phi,
            acceptable_pause_ms: pause_ms,
            ..PhiConfig::default()
        },
        heartbeat_ms: 1_000,
        heartbeat_jitter: 0.3,
        ..DetectConfig::default()
    };
    let dets: Vec<Detection> = ids
        .iter()
        .map(|f| {
            let peers: Vec<FacilityId> = ids.iter().filter(|p| *p != f).cloned().collect();
            Detection::new(f.clone(), &peers, config.clone())
        })
        .collect();
    let d2 = dets.clone();
    let mut h = Harness::builder(3, seed)
        .children(move |i| vec![detector_child(d2[i].clone())])
        .start()
        .await
        .expect("harness");
    h.net()
        .faults()
        .add(FaultRule::Drop {
            from: Selector::Any,
            to: Selector::Any,
            probability: 0.01,
            class: Some(TrafficClass::Heartbeat),
        })
        .unwrap();
    // Learn the intervals first (the detectors' window is 200 beats).
    h.step(Duration::from_secs(200)).await;
    let mut events = dets[0].subscribe();
    let mut false_suspicions = 0u64;
    let step = Duration::from_millis(100);
    for _ in 0..hours * 36_000 {
        h.step(step).await;
        loop {
            match events.try_recv() {
                Ok(MembershipEvent::Peer(c)) if c.from == Liveness::Up => false_suspicions += 1,
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }
    // Crash facility 2 and time what facility 0 concludes.
    h.crash(2).await;
    let crashed = tokio::time::Instant::now();
    let (mut suspect, mut down) = (None, None);
    for _ in 0..600 {
        h.step(Duration::from_millis(10)).await;
        match dets[0].view().liveness(&ids[2]) {
            Some(Liveness::Suspect) => suspect = suspect.or(Some(crashed.elapsed())),
            Some(Liveness::Down) => {
                suspect = suspect.or(Some(crashed.elapsed()));
                down = Some(crashed.elapsed());
                break;
            }
            _ => {}
        }
    }
    h.shutdown().await;
    Figures {
        false_suspicions_per_hour: false_suspicions as f64 / hours as f64,
        crash_to_suspect: suspect.expect("suspected after the crash"),
        crash_to_down: down.expect("down after the crash"),
    }
}

#[test]
fn detection_time_and_false_suspicions_by_threshold() {
    let hours = std::env::var("BULWARK_DETECT_HOURS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // The default run measures the embedded default pause (1 s); set
    // BULWARK_DETECT_PAUSES=0,1000 for the table in the docs.
    let pauses: Vec<f64> = std::env::var("BULWARK_DETECT_PAUSES")
        .ok()
        .map(|s| s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![PhiConfig::default().acceptable_pause_ms]);
    for pause in pauses {
        let thresholds = [(4.0, 8.0), (8.0, 16.0), (12.0, 24.0)];
        let runs: Vec<_> = thresholds
            .iter()
            .map(|&(s, d)| on_paused_thread(move || measure(s, d, pause, hours, 17)))
            .collect();
        let mut rows = Vec::new();
        for ((s, d), run) in thresholds.into_iter().zip(runs) {
            let f = run.join().expect("measure");
            eprintln!(
                "pause {pause:>5} ms, suspect φ {s:>4} / down φ {d:>4}: crash to suspect {:>5} ms, to down {:>5} ms; false suspicions {:.1}/hour over {hours} h",
                f.crash_to_suspect.as_millis(),
                f.crash_to_down.as_millis(),
                f.false_suspicions_per_hour
            );
            rows.push(f);
        }
        // A crash is always caught, within seconds; higher thresholds
        // catch it later and suspect falsely no more often.
        for f in &rows {
            assert!(f.crash_to_suspect <= f.crash_to_down);
            assert!(f.crash_to_down < Duration::from_secs(30));
        }
        for w in rows.windows(2) {
            assert!(w[1].crash_to_down >= w[0].crash_to_down);
            assert!(w[1].false_suspicions_per_hour <= w[0].false_suspicions_per_hour);
        }
    }
}
