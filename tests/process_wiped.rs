//! A follower's data directory is wiped, over real processes: started
//! again with the same config it gets a new, empty store, and must not
//! vote as if it had never voted. The leader recognises it, so it is
//! vote-fenced for good: `/health/ready` fails naming why, its log says
//! so, and a restart keeps the fence. It still follows: every write
//! acknowledged before and after the wipe is read back through it.
//!
//! Then the documented way back: `bulwark member replace` gives it a new
//! Raft identity (its next incarnation) as a learner, which catches up;
//! `bulwark member promote` makes it a voter and removes the old identity.
//! Its fence is gone (ready again), and it counts: with the third facility
//! killed, writes commit with the leader and it; with the leader killed
//! too after the third is back, it helps elect the next leader.

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

/// The documented way back for facility `fi`: `bulwark member replace`
/// asked at the leader `li` until taken (`via` lists the members), the
/// learner caught up as the leader sees it, `bulwark member promote` (asked again while the leader refuses),
/// and `fi` ready again.
async fn replace_and_promote(c: &reqwest::Client, s: &[Site], via: usize, li: usize, fi: usize) {
    let f = s[fi].id.clone();
    // Asked at the leader until it takes it (refused, named, while the
    // facility's log is behind); `via` lists the members as it knows them.
    let out = until(Duration::from_secs(60), "the replacement taken", || async {
        let (code, out, _) = cli(&s[li], TOKEN, &["member", "replace", "--facility", &f]);
        (code == 0).then_some(out)
    })
    .await;
    assert!(out.contains("proposed by the leader"), "{out}");
    if via != li {
        let (code, out, err) = cli(&s[via], TOKEN, &["member", "list"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // Its learner catches up (the leader's view shows how far it matches).
    until(Duration::from_secs(60), "the learner caught up", || async {
        let (st, v) = get(c, &s[li].url("/v1/admin/members")).await;
        let commit = v["commit"].as_u64()?;
        let m = v["members"].as_array()?.iter().find(|m| {
            m["facility"] == f.as_str() && m["role"] == "learner" && m["incarnation"] == 1
        })?;
        (st == 200 && m["matched"].as_u64()? >= commit).then_some(())
    })
    .await;
    // Promoted (the leader refuses while it is behind: asked again).
    let out = until(Duration::from_secs(60), "the promotion", || async {
        let (code, out, _) = cli(&s[li], TOKEN, &["member", "promote", "--facility", &f]);
        (code == 0 && out.contains("in force")).then_some(out)
    })
    .await;
    assert!(out.contains("voter"), "{out}");
    let (code, list, _) = cli(&s[fi], TOKEN, &["member", "list"]);
    assert_eq!(code, 0, "{list}");
    // Its fence belonged to the old identity: it is ready again.
    until(Duration::from_secs(60), "ready again", || async {
        let (st, _) = get(c, &s[fi].url("/health/ready")).await;
        (st == 200).then_some(())
    })
    .await;
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

    // ---- the replace procedure, through the CLI at another facility.
    let oi = (li + 2) % 3;
    replace_and_promote(&c, &s, oi, li, fi).await;
    // It counts: with the third facility down, writes commit with it.
    s[oi].kill();
    for i in 0..5 {
        let id = format!("replaced{i}");
        write(&c, &s[li], &id).await;
        acked.push(id);
    }
    s[oi].start();
    // And with the leader down, it helps elect the next one.
    until(
        Duration::from_secs(60),
        "the third facility caught up",
        || async {
            let (st, _) = get(&c, &s[oi].url("/v1/people/replaced4")).await;
            (st == 200).then_some(())
        },
    )
    .await;
    s[li].kill();
    for i in 0..5 {
        let id = format!("newleader{i}");
        write(&c, &s[fi], &id).await;
        acked.push(id);
    }
    s[li].start();
    for x in [&s[0], &s[1], &s[2]] {
        for id in &acked {
            let url = x.url(&format!("/v1/people/{id}"));
            until(
                Duration::from_secs(60),
                "every acked write everywhere",
                || async {
                    let (st, _) = get(&c, &url).await;
                    (st == 200).then_some(())
                },
            )
            .await;
        }
    }
    no_evidence(&c, &s).await;
    for x in &s {
        assert!(!x.log().contains("panicked"), "{}: {}", x.id, x.log());
    }
}

/// One facility restored from a backup while the others run: `bulwark
/// restore` refuses without saying which restore; with
/// `--into-running-cluster` the store is the backup's, cut at its
/// checkpoint and vote-fenced (it forgot the votes it cast since). It
/// starts, catches up from the checkpoint, and the replace procedure makes
/// it a voter again; nothing acknowledged before or after is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_facility_restored_alone_comes_back_fenced_and_is_replaced() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    let c = client();
    let li = start_all(&c, &mut s).await;
    let fi = (li + 1) % 3;
    let mut acked = Vec::new();
    for i in 0..10 {
        let id = format!("before{i}");
        write(&c, &s[li], &id).await;
        acked.push(id);
    }
    let out = run(&["backup", "--config", s[li].config.to_str().unwrap()]);
    let index = out.split_whitespace().nth(1).unwrap().to_string();
    for i in 0..10 {
        let id = format!("since{i}");
        write(&c, &s[li], &id).await;
        acked.push(id);
    }
    s[fi].kill();
    let config = s[fi].config.to_str().unwrap().to_string();
    let refused = std::process::Command::new(BIN)
        .args(["restore", "--config", &config, "--index", &index])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a restore must say which");
    let out = run(&[
        "restore",
        "--config",
        &config,
        "--index",
        &index,
        "--into-running-cluster",
    ]);
    assert!(
        out.contains(&format!("its log ends at index {index} ")),
        "{out}"
    );
    s[fi].start();
    let why = fenced(&c, &s[fi]).await;
    assert!(why.contains("restored from a backup"), "{why}");
    for i in 0..5 {
        let id = format!("after{i}");
        write(&c, &s[li], &id).await;
        acked.push(id);
    }
    // It caught up from the checkpoint: everything reads back through it.
    for id in &acked {
        let url = s[fi].url(&format!("/v1/people/{id}"));
        until(
            Duration::from_secs(60),
            "the write at the restored one",
            || async {
                let (st, _) = get(&c, &url).await;
                (st == 200).then_some(())
            },
        )
        .await;
    }
    replace_and_promote(&c, &s, fi, li, fi).await;
    let oi = (li + 2) % 3;
    s[oi].kill();
    write(&c, &s[li], "with-the-restored").await;
    s[oi].start();
    let url = s[oi].url("/v1/people/with-the-restored");
    until(Duration::from_secs(60), "the third caught up", || async {
        let (st, _) = get(&c, &url).await;
        (st == 200).then_some(())
    })
    .await;
    no_evidence(&c, &s).await;
    for x in &s {
        assert!(!x.log().contains("panicked"), "{}: {}", x.id, x.log());
    }
}
