//! A follower's data directory is wiped, over real processes: started
//! again with the same config it gets a new, empty store, and must not
//! vote as if it had never voted. The leader recognises it, so it is
//! vote-fenced for good: `/health/ready` fails naming why, its log says
//! so, and a restart keeps the fence. It still follows: every write
//! acknowledged before and after the wipe is read back through it.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

async fn write(c: &reqwest::Client, site: &Site, id: &str) {
    let body = json!({"id": id, "name": "Dr Kept", "role": "faculty"});
    let (st, v) = write_until_final(c, &site.url("/v1/people"), id, &body).await;
    assert_eq!(st, 200, "{id}: {v}");
}

/// Waits until `site`'s readiness fails with the vote fence's reason.
async fn fenced(c: &reqwest::Client, site: &Site) -> String {
    until(Duration::from_secs(60), "the vote fence", || async {
        let (st, v) = get(c, &site.url("/health/ready")).await;
        let text = v.to_string();
        (st == 503 && text.contains("were lost")).then_some(text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_is_fenced_from_voting_and_still_follows() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    let c = client();
    let li = start_all(&c, &mut s).await;
    let lead = s[li].id.clone();
    let fi = (li + 1) % 3;
    let mut acked = Vec::new();
    for i in 0..30 {
        let id = format!("before{i}");
        write(&c, &s[li], &id).await;
        acked.push(id);
    }
    // The follower's data directory is deleted; it starts on a new store.
    s[fi].kill();
    std::fs::remove_dir_all(s[fi].dir.join("data")).unwrap();
    s[fi].start();
    let why = fenced(&c, &s[fi]).await;
    assert!(why.contains(&lead), "the leader is named: {why}");
    assert!(s[fi].log().contains("never votes again"), "{}", s[fi].log());
    for i in 0..10 {
        let id = format!("after{i}");
        write(&c, &s[li], &id).await;
        acked.push(id);
    }
    // It follows: everything acknowledged reads back through it.
    for id in &acked {
        let url = s[fi].url(&format!("/v1/people/{id}"));
        until(
            Duration::from_secs(60),
            "the write at the wiped one",
            || async {
                let (st, _) = get(&c, &url).await;
                (st == 200).then_some(())
            },
        )
        .await;
    }
    // A restart keeps the fence (it is durable).
    s[fi].kill();
    s[fi].start();
    fenced(&c, &s[fi]).await;
}
