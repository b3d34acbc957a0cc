//! Peers named by DNS over real processes: three facilities whose configs
//! name every peer `localhost:<port>` elect a leader and commit; a peer
//! killed and restarted is dialled again by name; a facility whose config
//! names a peer that does not resolve still starts, counts the failure,
//! serves what it holds, and the others go on committing.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_named_by_dns_are_dialled_by_name() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], "");
    for x in &s {
        let cfg = std::fs::read_to_string(&x.config).unwrap();
        let named = cfg.replace("addr = \"127.0.0.1:", "addr = \"localhost:");
        assert_ne!(cfg, named);
        std::fs::write(&x.config, named).unwrap();
    }
    let c = client();
    start_all(&c, &mut s).await;
    let urls: Vec<String> = s.iter().map(|x| x.url("/v1/people")).collect();
    let write = |i: usize, at: usize| {
        let (c, url) = (c.clone(), urls[at].clone());
        async move {
            let body = json!({"id": format!("p{i}"), "name": "P", "role": "faculty"});
            write_until_final(&c, &url, &format!("p{i}"), &body).await
        }
    };
    for i in 0..6 {
        let (st, v) = write(i, i % 3).await;
        assert_eq!(st, 200, "{v}");
    }
    // Killed and restarted: the others dial it again by name.
    s[1].kill();
    s[1].start();
    until(
        Duration::from_secs(60),
        "bravo back with every write",
        || async {
            let (st, v) = get(&c, &s[1].url("/v1/schedule?consistency=linearizable")).await;
            (st == 200 && v["people"].as_array().map(Vec::len) == Some(6)).then_some(())
        },
    )
    .await;
    // A name that does not resolve: charlie still starts and serves.
    assert!(s[2].terminate());
    let cfg = std::fs::read_to_string(&s[2].config).unwrap();
    let first_peer = cfg.find("addr = \"localhost:").unwrap();
    let mut broken = cfg.clone();
    broken.replace_range(
        first_peer..first_peer + "addr = \"localhost".len(),
        "addr = \"nowhere.invalid",
    );
    std::fs::write(&s[2].config, broken).unwrap();
    s[2].start();
    // It cannot send to that peer (a link is dialled by its sender), so it
    // serves what it holds (stale reads) and the cluster goes on.
    until(Duration::from_secs(60), "charlie serving", || async {
        let (st, v) = get(&c, &s[2].url("/v1/schedule?consistency=stale")).await;
        (st == 200 && v["people"].as_array().map(Vec::len) == Some(6)).then_some(())
    })
    .await;
    let failed = metric(&c, &s[2], "bulwark_quic_resolve_failed_total").await;
    assert!(failed >= 1.0, "{failed}");
    let (st, v) = write(6, 1).await;
    assert_eq!(st, 200, "{v}");
}
