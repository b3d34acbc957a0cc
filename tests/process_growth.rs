//! Growth over real processes: three `bulwark node` processes take a
//! schedule whose snapshot is over 4 MiB (the old single-message ceiling,
//! which issue 19 hit at 61,500 writes): 1,500 people, 100 days of 500
//! twelve-hour blocks, every block filled (101,500 writes), loaded through
//! `POST /v1/batch`. A follower
//! stopped before the load catches up by a streamed snapshot (the log is
//! compacted every 10 entries), then every process is killed with
//! `kill -9` and started again, and every acknowledged assignment is still
//! there at every facility, which all agree.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::{json, Value};

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const PEOPLE: usize = 1_500;
const DAYS: usize = 100;
const BLOCKS_PER_DAY: usize = 500;
const BATCH: usize = 1_000;

/// Posts `commands` as batches at `site` until each is answered 200, with
/// one key per batch; returns how many commands were applied.
async fn load(c: &reqwest::Client, site: &Site, what: &str, commands: Vec<Value>) -> usize {
    let mut applied = 0;
    for (n, chunk) in commands.chunks(BATCH).enumerate() {
        let body = json!({ "commands": chunk });
        let (status, answer) =
            write_until_final(c, &site.url("/v1/batch"), &format!("{what}-{n}"), &body).await;
        assert_eq!(status, 200, "{what} batch {n}: {answer}");
        let outcomes = answer["outcomes"].as_array().expect("outcomes");
        assert_eq!(outcomes.len(), chunk.len());
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(o["status"], "applied", "{what} batch {n} command {i}: {o}");
        }
        applied += outcomes.len();
    }
    applied
}

/// Block `k` of day `d` goes to person `(d * 500 + k) % 1500`: everybody
/// works one twelve-hour block every third day.
fn person_of(d: usize, k: usize) -> usize {
    (d * BLOCKS_PER_DAY + k) % PEOPLE
}

/// The digest and assignment count of `site`'s schedule, by a
/// linearizable read; `None` until it answers.
async fn digest(c: &reqwest::Client, site: &Site) -> Option<(String, usize)> {
    let (s, v) = get(c, &site.url("/v1/schedule?consistency=linearizable")).await;
    if s != 200 {
        return None;
    }
    let n = v["blocks"]
        .as_array()?
        .iter()
        .map(|b| b["assigned"].as_array().map_or(0, Vec::len))
        .sum();
    Some((v["digest"].as_str()?.to_string(), n))
}

async fn all_agree(c: &reqwest::Client, s: &[Site], want: usize, what: &str) -> String {
    until(Duration::from_secs(180), what, || async {
        let mut seen = Vec::new();
        for x in s {
            seen.push(digest(c, x).await?);
        }
        let same = seen.windows(2).all(|w| w[0] == w[1]);
        (same && seen[0].1 == want).then(|| seen[0].0.clone())
    })
    .await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_past_the_old_snapshot_ceiling_streams_and_survives_kill_9_of_everyone() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &NAMES,
        "[backup]\nevery_s = 0\n\n[consensus]\nsnapshot_every_entries = 10\n",
    );
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    // charlie misses the whole load.
    s[2].kill();

    let people: Vec<Value> = (0..PEOPLE)
        .map(|p| json!({"op": "add_person", "id": format!("p{p}"), "name": format!("Resident {p}"), "role": "resident", "pgy": 1 + p % 7}))
        .collect();
    let mut blocks = Vec::new();
    let mut assigns = Vec::new();
    for d in 0..DAYS {
        for k in 0..BLOCKS_PER_DAY {
            let id = format!("d{d}k{k}");
            blocks.push(json!({"op": "add_block", "id": id, "day": d, "start_min": 420, "duration_min": 720, "pool": "icu", "required": 1}));
            assigns.push(
                json!({"op": "assign", "person": format!("p{}", person_of(d, k)), "block": id}),
            );
        }
    }
    let mut applied = load(&c, &s[0], "people", people).await;
    applied += load(&c, &s[1], "blocks", blocks).await;
    applied += load(&c, &s[0], "assign", assigns).await;
    assert_eq!(applied, PEOPLE + 2 * DAYS * BLOCKS_PER_DAY);
    let want = DAYS * BLOCKS_PER_DAY;
    let digest = all_agree(&c, &s[..2], want, "alpha and bravo agree after the load").await;

    // Bounded reads: one person's four weeks, and a day's blocks by pages.
    let (st, v) = get(&c, &s[1].url("/v1/people/p7?from_day=14&to_day=41")).await;
    assert_eq!(st, 200, "{v}");
    let days: Vec<u64> = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["day"].as_u64().unwrap())
        .collect();
    let want_days: Vec<u64> = (14..=41u64)
        .filter(|d| (0..BLOCKS_PER_DAY).any(|k| person_of(*d as usize, k) == 7))
        .collect();
    assert_eq!(days, want_days);
    let (st, v) = get(&c, &s[1].url("/v1/people/nobody")).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("NOT_FOUND")));
    let (st, _) = get(&c, &s[1].url("/v1/schedule?limit=0")).await;
    assert_eq!(st, 400);
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    for _ in 0..10 {
        let mut url = s[0].url("/v1/schedule?from_day=30&to_day=30&limit=200");
        if let Some(c) = &cursor {
            url += &format!("&cursor={c}");
        }
        let (st, v) = get(&c, &url).await;
        assert_eq!(st, 200, "{v}");
        let page = v["blocks"].as_array().unwrap();
        assert!(page.len() <= 200);
        assert!(page
            .iter()
            .all(|b| b["day"] == 30 && b["assigned"].as_array().unwrap().len() == 1));
        seen += page.len();
        match v["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, BLOCKS_PER_DAY);
    let (_, b) = get(&c, &s[0].url("/v1/blocks/d30k7")).await;
    assert_eq!(
        b["block"]["assigned"][0]["person"],
        format!("p{}", person_of(30, 7))
    );

    // charlie comes back far behind the compacted log: a streamed snapshot.
    s[2].start();
    let caught = all_agree(&c, &s, want, "charlie caught up").await;
    assert_eq!(caught, digest);
    let (_, m) = get(&c, &s[2].url("/metrics")).await;
    let text = if m.is_null() {
        c.get(s[2].url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    } else {
        m.to_string()
    };
    assert!(
        metric(&text, "bulwark_snapshot_installed_total") >= 1.0,
        "charlie caught up without a snapshot install:\n{text}"
    );
    let received = metric(&text, "bulwark_snapshot_received_bytes_total");
    eprintln!("charlie received {received} bytes of snapshot chunks");
    assert!(
        received > 4.0 * 1024.0 * 1024.0,
        "the snapshot ({received} bytes) was not past the old 4 MiB ceiling"
    );

    // Everyone killed at once, everyone started again: nothing lost.
    for x in s.iter_mut() {
        x.kill();
    }
    for x in s.iter_mut() {
        x.start();
    }
    let after = all_agree(&c, &s, want, "all agree after kill -9 of everyone").await;
    assert_eq!(
        after, digest,
        "the schedule changed across kill -9 of every process"
    );
    for x in &s {
        assert!(!x.log().contains("panicked"), "{}: {}", x.id, x.log());
    }
}
