//! Cluster identity over real processes. Three facilities whose configs
//! name no cluster id derive one from their members' ids and pins, stamp it
//! into their stores and carry it in every hello. Charlie's config then
//! names another cluster:
//!
//! 1. on its old data dir, it refuses to start, saying the store belongs to
//!    another cluster (nothing in the store changes: with its config put
//!    back it starts and has every write);
//! 2. on an empty data dir, it starts, but alpha and bravo refuse its
//!    hellos (counted by reason, logged naming it): it never learns a
//!    leader and the other two keep committing.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

const OTHER: &str = "00112233445566778899aabbccddeeff";

/// Waits (bounded) for `site`'s process to exit; its exit status.
fn exited(site: &mut Site) -> std::process::ExitStatus {
    let child = site.proc.as_mut().expect("started");
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            site.proc = None;
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} did not exit: {}", site.id, site.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_or_a_peer_of_another_cluster_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], "");
    let c = client();
    start_all(&c, &mut s).await;
    for i in 0..10 {
        let body = json!({"id": format!("p{i}"), "name": format!("P {i}"), "role": "faculty"});
        let (st, v) =
            write_until_final(&c, &s[i % 3].url("/v1/people"), &format!("p{i}"), &body).await;
        assert_eq!(st, 200, "{v}");
    }
    // Charlie has every write, then stops.
    until(
        Duration::from_secs(30),
        "charlie holds the writes",
        || async {
            let (st, v) = get(&c, &s[2].url("/v1/schedule?consistency=stale")).await;
            (st == 200 && v["people"].as_array().map(Vec::len) == Some(10)).then_some(())
        },
    )
    .await;
    assert!(s[2].terminate());
    let good = std::fs::read_to_string(&s[2].config).unwrap();
    let foreign = good.replace(
        "vote_key = \"vote.key\"\n",
        &format!("vote_key = \"vote.key\"\ncluster_id = \"{OTHER}\"\n"),
    );
    assert_ne!(good, foreign);

    // 1. Its store belongs to the cluster it was part of.
    std::fs::write(&s[2].config, &foreign).unwrap();
    s[2].start();
    let status = exited(&mut s[2]);
    assert!(!status.success());
    let log = s[2].log();
    assert!(
        log.contains("this store belongs to cluster") && log.contains(OTHER),
        "{log}"
    );
    // Nothing changed: with its own config it starts and has every write.
    std::fs::write(&s[2].config, &good).unwrap();
    s[2].start();
    until(
        Duration::from_secs(60),
        "charlie back with the writes",
        || async {
            let (st, v) = get(&c, &s[2].url("/v1/schedule?consistency=linearizable")).await;
            (st == 200 && v["people"].as_array().map(Vec::len) == Some(10)).then_some(())
        },
    )
    .await;
    assert!(s[2].terminate());

    // 2. On an empty data dir it starts, and its peers refuse its hellos.
    std::fs::rename(s[2].dir.join("data"), s[2].dir.join("data.old")).unwrap();
    std::fs::write(&s[2].config, &foreign).unwrap();
    s[2].start();
    until(
        Duration::from_secs(60),
        "alpha refusing charlie's hello",
        || async {
            let text = metrics_text(&c, &s[0]).await?;
            text.lines()
                .any(|l| {
                    l.starts_with("bulwark_quic_hello_refused_total{")
                        && l.contains("reason=\"cluster\"")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        },
    )
    .await;
    let (st, v) = get(&c, &s[2].url("/v1/cluster")).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["leader"].is_null(), "charlie found a leader: {v}");
    let (st, v) = write_until_final(
        &c,
        &s[0].url("/v1/people"),
        "after",
        &json!({"id": "after", "name": "After", "role": "faculty"}),
    )
    .await;
    assert_eq!(st, 200, "alpha and bravo keep committing: {v}");
    let log = s[0].log();
    assert!(
        log.contains("belongs to cluster") && log.contains(OTHER),
        "{log}"
    );
}
