//! A rolling upgrade across a wire version bump, over real processes.
//!
//! Three facilities start held at wire version 5 (`[facility]
//! wire_protocol_max = 5`: each offers only what a version-5 build offers,
//! and sends only the messages version 5 knows). A client writes
//! throughout, through whichever facility is up, and keeps its own record of
//! acknowledged writes. One facility at a time is stopped with SIGTERM and
//! started again on version 6; in between, the cluster is mixed: links
//! between upgraded facilities run at 6, links to the others at 5, as
//! `/v1/cluster` shows. Writes go on, the ledger keeps finalizing, and at
//! the end every acknowledged write is at every facility and nobody holds
//! evidence.
//!
//! With `BULWARK_UPGRADE_FROM=<path of an older bulwark binary>`, the
//! facilities start on that build instead of being held (a version-5 build
//! reports no link versions, so only the upgraded facilities' links are
//! checked): the same run against the real previous release.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::{json, Value};

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const HELD: &str = "wire_protocol_max = 5\n";
/// Writes acknowledged between two upgrade steps, at least.
const WRITES_PER_STEP: usize = 15;

/// Holds `site` at wire version 5, or lets it speak its newest.
fn hold(site: &Site, held: bool) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    let without = text.replace(HELD, "");
    let text = if held {
        without.replacen(
            "vote_key = \"vote.key\"\n",
            &format!("vote_key = \"vote.key\"\n{HELD}"),
            1,
        )
    } else {
        without
    };
    std::fs::write(&site.config, text).unwrap();
}

/// The wire version of each of `site`'s links, by peer, once every link is
/// up and reports one.
async fn wires(c: &reqwest::Client, site: &Site) -> Option<Vec<(String, u64)>> {
    let (st, v) = get(c, &site.url("/v1/cluster")).await;
    if st != 200 {
        return None;
    }
    let peers = v["peers"].as_array()?;
    let all_up = peers.iter().all(|p| p["link"] == "up");
    (all_up && peers.len() == 2).then(|| {
        peers
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["wire"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    })
}

/// Waits until every link of `s[i]` runs at the version both ends speak:
/// 6 between two facilities in `upgraded`, 5 otherwise.
async fn links_settle(c: &reqwest::Client, s: &[Site], i: usize, upgraded: &[bool]) {
    let want: Vec<(String, u64)> = (0..s.len())
        .filter(|&j| j != i)
        .map(|j| {
            let v = if upgraded[i] && upgraded[j] { 6 } else { 5 };
            (s[j].id.clone(), v)
        })
        .collect();
    until(
        Duration::from_secs(60),
        &format!("{}'s links at {want:?}", s[i].id),
        || async {
            let got = wires(c, &s[i]).await?;
            (got == want).then_some(())
        },
    )
    .await;
}

/// `site`'s final ledger height, once it answers.
async fn ledger_height(c: &reqwest::Client, site: &Site) -> u64 {
    until(Duration::from_secs(60), "a ledger height", || async {
        let (_, v) = get(c, &site.url("/v1/cluster")).await;
        v["ledger"]["height"].as_u64()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_wire_5_to_6_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    let old_bin = std::env::var("BULWARK_UPGRADE_FROM").ok();
    for x in s.iter_mut() {
        match &old_bin {
            Some(bin) => x.start_bin(bin),
            None => {
                hold(x, true);
                x.start();
            }
        }
    }
    let c = client();
    leader(&c, &s[0]).await;
    let mut upgraded = [false; 3];
    // A facility of the old build reports no link versions.
    let reports = |i: usize, upgraded: &[bool; 3]| old_bin.is_none() || upgraded[i];
    for i in 0..3 {
        if reports(i, &upgraded) {
            links_settle(&c, &s, i, &upgraded).await;
        }
    }

    // The client: writes people one by one through the facilities in
    // turn, each write retried under its key until acknowledged.
    let writer = Writer::spawn(&c, urls_of(&s), "u");
    writer.more(WRITES_PER_STEP, "writes acknowledged").await;

    // One facility at a time: a planned stop, then version 6.
    for i in 0..3 {
        let before = ledger_height(&c, &s[(i + 1) % 3]).await;
        assert!(s[i].terminate(), "{} did not stop cleanly", s[i].id);
        hold(&s[i], false);
        s[i].start();
        upgraded[i] = true;
        until(Duration::from_secs(60), "ready again", || async {
            let (st, _) = get(&c, &s[i].url("/health/ready")).await;
            (st == 200).then_some(())
        })
        .await;
        for j in 0..3 {
            if reports(j, &upgraded) {
                links_settle(&c, &s, j, &upgraded).await;
            }
        }
        writer.more(WRITES_PER_STEP, "writes acknowledged").await;
        // The mixed cluster's ledger goes on finalizing, at every facility.
        for x in &s {
            until(Duration::from_secs(60), "the ledger finalizing", || async {
                (ledger_height(&c, x).await > before).then_some(())
            })
            .await;
        }
        eprintln!(
            "{} upgraded: {} writes acknowledged so far",
            s[i].id,
            writer.acked()
        );
    }

    let acked = writer.stop().await;
    // A marker after the last write: once a facility holds it, it holds
    // everything acknowledged before it.
    let marker = json!({"id": "marker", "name": "Dr Last", "role": "faculty"});
    let (st, v) = write_until_final(&c, &s[0].url("/v1/people"), "marker", &marker).await;
    assert_eq!(st, 200, "{v}");
    for x in &s {
        until(Duration::from_secs(60), "the marker", || async {
            let (st, _) = get(&c, &x.url("/v1/people/marker")).await;
            (st == 200).then_some(())
        })
        .await;
        for id in &acked {
            let (st, v): (u16, Value) = get(&c, &x.url(&format!("/v1/people/{id}"))).await;
            assert_eq!(st, 200, "{} lost acknowledged write {id}: {v}", x.id);
        }
    }
    eprintln!("{} acknowledged writes, all at every facility", acked.len());
    no_evidence(&c, &s).await;
    // Nobody was sent a message it could not read, nor refused a hello.
    for x in &s {
        for m in [
            "bulwark_bft_malformed_total",
            "bulwark_quic_hello_refused_total",
        ] {
            assert_eq!(metric(&c, x, m).await, 0.0, "{}: {m}", x.id);
        }
        let log = x.log();
        assert!(!log.contains("panicked"), "{}: {log}", x.id);
        assert!(!log.contains("malformed"), "{}: {log}", x.id);
    }
}

fn urls_of(s: &[Site]) -> Vec<String> {
    s.iter().map(|x| x.url("/v1/people")).collect()
}
