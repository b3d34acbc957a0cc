//! The chaos drill over real QUIC and real HTTP (what
//! `examples/chaos_drill.rs` runs): every experiment runs to a report with
//! every phase measured, its heatmap written, and its rollback confirmed by
//! every facility. Verdicts are not asserted here: on real time they are
//! measurements, and the harness tests pin the findings.

use bulwark_actors::chaos::report::{Phase, Verdict};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_partitions_kills_the_leader_and_spikes_the_load_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let reports = bulwark::chaos::drill::run(&dir.path().join("cluster"), &out)
        .await
        .unwrap();
    let kinds: Vec<&str> = reports.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["network_partition", "leader_kill", "load_spike"]);
    for r in &reports {
        assert!(
            !matches!(r.verdict, Verdict::Refused(_)),
            "{}: {:?}",
            r.name,
            r.verdict
        );
        for phase in Phase::ALL {
            assert!(
                r.phase(phase).is_some_and(|m| m.probes > 0),
                "{}: {phase:?} unmeasured",
                r.name
            );
        }
        assert_eq!(
            r.rollback.confirmed.len(),
            3,
            "{}: {:?}",
            r.name,
            r.rollback
        );
        assert!(
            r.observations
                .iter()
                .any(|o| o.contains("injected") || o.contains("load spike")),
            "{}: {:?}",
            r.name,
            r.observations
        );
        let svg = std::fs::read_to_string(out.join(format!("{}.svg", r.name))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("alpha/api"),
            "{}",
            r.name
        );
        assert!(out.join(format!("{}.json", r.name)).exists());
    }
}
