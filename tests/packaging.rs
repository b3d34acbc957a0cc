//! What `packaging/` ships matches what the node exports: every bulwark
//! metric the Prometheus alert rules and the Grafana dashboard name is in
//! a fresh three-facility cluster's `/metrics`, and the rules pass
//! `promtool check rules` (where promtool is installed: `.ci/run` installs
//! Debian's prometheus package).

#[path = "support/procs.rs"]
mod procs;

use std::collections::BTreeSet;
use std::time::Duration;

use procs::*;

/// Every `bulwark_…` name in `text`, histogram suffixes taken off.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("bulwark_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                name = n;
            }
        }
        if !name.ends_with('_') {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rules_and_dashboard_name_only_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/packaging/prometheus/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(format!("{root}/packaging/grafana/bulwark.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let wanted: BTreeSet<String> = names(&rules).union(&names(&dashboard)).cloned().collect();
    assert!(wanted.len() >= 15, "{wanted:?}");

    let tmp = tempfile::tempdir().unwrap();
    let mut s = sites(tmp.path(), &["alpha", "bravo", "charlie"], "");
    let c = client();
    let lead = start_all(&c, &mut s).await;
    let (person, _) = setup_bodies(0);
    let (st, v) = write_until_final(&c, &s[lead].url("/v1/people"), "p0", &person).await;
    assert_eq!(st, 200, "{v}");
    // The Raft gauges are exported once a second; a request is counted
    // after its answer, so the second scrape shows the first; the ledger's
    // counters once the write's entry is final. A name never exported
    // times out here, naming what was still missing.
    let scrape = || async {
        let text = metrics_text(&c, &s[lead]).await?;
        let got: BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(names)
            .collect();
        Some(got)
    };
    let mut exported = BTreeSet::new();
    for _ in 0..300 {
        exported = scrape().await.unwrap_or_default();
        if wanted.is_subset(&exported) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The check catches a misspelt name.
    let planted = names("rate(bulwark_raft_terms[1m])");
    assert_eq!(planted.difference(&exported).count(), 1);
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in packaging/ but not exported: {missing:?}"
    );
    for x in s.iter_mut() {
        x.kill();
    }

    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(format!("{root}/packaging/prometheus/alerts.yml"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("promtool not installed ({e}): `.ci/run` checks the rules"),
    }
}
