//! The data life cycle over real processes: three `bulwark node`
//! processes take two months of a schedule through `POST /v1/batch`, the
//! days are finally approved, and the leader's archiver (`[schedule]
//! archive_after_days`) moves the old days out of the hot tables while
//! every facility still serves them by day. People and blocks retire
//! through `POST /v1/retirements`; the archive and the retirements survive
//! `kill -9` and a restart.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::{json, Value};

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const PEOPLE: usize = 60;
const DAYS: usize = 60;
const BLOCKS_PER_DAY: usize = 20;
const KEEP_DAYS: u32 = 14;

/// The last day the archiver reaches: the last approved day less the
/// days kept.
const ARCHIVED_THROUGH: u32 = DAYS as u32 - 1 - KEEP_DAYS;

async fn batch(c: &reqwest::Client, site: &Site, key: &str, commands: &[Value]) {
    let body = json!({ "commands": commands });
    let (status, answer) = write_until_final(c, &site.url("/v1/batch"), key, &body).await;
    assert_eq!(status, 200, "{key}: {answer}");
    for (i, o) in answer["outcomes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(o["status"], "applied", "{key} command {i}: {o}");
    }
}

/// Every block of days `from..=to` at `site` (stale read: the local
/// replica), by pages of 50; each block with its people.
async fn days(c: &reqwest::Client, site: &Site, from: u32, to: u32) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let mut url =
            format!("/v1/schedule?consistency=stale&from_day={from}&to_day={to}&limit=50");
        if let Some(c) = &cursor {
            url += &format!("&cursor={c}");
        }
        let (s, v) = get(c, &site.url(&url)).await;
        if s != 200 {
            return None;
        }
        out.extend(v["blocks"].as_array()?.iter().cloned());
        match v["next"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => return Some(out),
        }
    }
    panic!("more than 1,000 pages");
}

async fn archived_through(c: &reqwest::Client, site: &Site) -> Option<u64> {
    let (s, v) = get(
        c,
        &site.url("/v1/schedule?consistency=stale&from_day=0&to_day=0&limit=1"),
    )
    .await;
    (s == 200).then(|| v["archived_through"].as_u64()).flatten()
}

/// The status and the broken rule (409) or the error code.
fn rule(answer: &(u16, Value)) -> (u16, String) {
    let v = &answer.1;
    let name = v["rule"].as_str().or(v["code"].as_str());
    (answer.0, name.unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_days_archive_out_of_the_hot_tables_and_people_and_blocks_retire() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &NAMES,
        &format!(
            "[backup]\nevery_s = 0\n\n[schedule]\narchive_after_days = {KEEP_DAYS}\narchive_every_s = 1\n"
        ),
    );
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;

    // Sixty residents; each day twenty eight-hour blocks, one person each:
    // everyone works one day in three.
    let people: Vec<Value> = (0..PEOPLE)
        .map(|p| json!({"op": "add_person", "id": format!("p{p}"), "name": format!("Resident {p}"), "role": "resident", "pgy": 1 + p % 7}))
        .collect();
    batch(&c, &s[0], "people", &people).await;
    let mut commands = Vec::new();
    for d in 0..DAYS {
        for k in 0..BLOCKS_PER_DAY {
            let id = format!("d{d}k{k}");
            commands.push(json!({"op": "add_block", "id": id, "day": d, "start_min": 480, "duration_min": 480, "pool": "clinic", "required": 1}));
            commands.push(json!({"op": "assign", "person": format!("p{}", (d * BLOCKS_PER_DAY + k) % PEOPLE), "block": id}));
        }
    }
    for (n, chunk) in commands.chunks(1_000).enumerate() {
        batch(&c, &s[1], &format!("load-{n}"), chunk).await;
    }
    let before = days(&c, &s[0], 0, DAYS as u32).await.unwrap();
    assert_eq!(before.len(), DAYS * BLOCKS_PER_DAY);

    // Archiving waits for final approval.
    let early = write_until_final(
        &c,
        &s[0].url("/v1/archive"),
        "early",
        &json!({"through_day": 3}),
    )
    .await;
    assert_eq!(rule(&early), (409, "NOT_FINAL".into()), "{early:?}");
    let (st, v) = write_until_final(
        &c,
        &s[0].url("/v1/approvals"),
        "approve",
        &json!({"through_day": DAYS - 1}),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    // The leader's archiver catches up, a week per command.
    for x in &s {
        until(
            Duration::from_secs(60),
            "the archive at every facility",
            || async {
                (archived_through(&c, x).await? == u64::from(ARCHIVED_THROUGH)).then_some(())
            },
        )
        .await;
    }
    // Every facility serves the same days as before, the old ones from the
    // archive, each block with its people.
    for x in &s {
        let after = days(&c, x, 0, DAYS as u32).await.unwrap();
        assert_eq!(after.len(), before.len(), "{}", x.id);
        for (a, b) in after.iter().zip(&before) {
            assert_eq!(a["id"], b["id"]);
            assert_eq!(a["assigned"][0]["person"], b["assigned"][0]["person"]);
            let old = a["day"].as_u64().unwrap() <= u64::from(ARCHIVED_THROUGH);
            assert_eq!(a["archived"].as_bool().unwrap_or(false), old, "{a}");
        }
    }
    // An archived block is out of the hot tables; the days just after the
    // archive take no change that adds duty.
    let (st, _) = get(&c, &s[0].url("/v1/blocks/d3k1")).await;
    assert_eq!(st, 404);
    let late_day = ARCHIVED_THROUGH + 3;
    let near = write_until_final(
        &c,
        &s[2].url("/v1/blocks"),
        "near",
        &json!({"id": "near", "day": late_day, "start_min": 0, "duration_min": 60, "pool": "icu", "required": 1}),
    )
    .await;
    assert_eq!(rule(&near), (409, "ARCHIVED".into()), "{near:?}");

    // Retirements: p7 holds no block from day 70 on, and then takes none.
    let retire = |key: &'static str, body: Value| {
        let c = c.clone();
        let url = s[1].url("/v1/retirements");
        async move { write_until_final(&c, &url, key, &body).await }
    };
    let held = retire("r0", json!({"person": "p7", "from_day": 57})).await;
    assert_eq!(rule(&held), (409, "HOLDS_ASSIGNMENTS".into()), "{held:?}");
    let (st, v) = retire("r1", json!({"person": "p7", "from_day": 70})).await;
    assert_eq!(
        (st, v["effect"].as_str()),
        (200, Some("person_retired")),
        "{v}"
    );
    let again = retire("r2", json!({"person": "p7", "from_day": 80})).await;
    assert_eq!(rule(&again), (409, "RETIRED".into()));
    batch(
        &c,
        &s[0],
        "late-blocks",
        &[
            json!({"op": "add_block", "id": "late1", "day": 75, "start_min": 480, "duration_min": 480, "pool": "icu", "required": 1}),
            json!({"op": "add_block", "id": "late2", "day": 76, "start_min": 480, "duration_min": 480, "pool": "icu", "required": 1}),
        ],
    )
    .await;
    let taken = write_until_final(
        &c,
        &s[0].url("/v1/assignments"),
        "late-p7",
        &json!({"person": "p7", "block": "late1"}),
    )
    .await;
    assert_eq!(rule(&taken), (409, "RETIRED".into()), "{taken:?}");
    let (st, v) = retire("r3", json!({"block": "late2"})).await;
    assert_eq!(
        (st, v["effect"].as_str()),
        (200, Some("block_retired")),
        "{v}"
    );
    let bad = post(
        &c,
        &s[1].url("/v1/retirements"),
        "r4",
        &json!({"person": "p1"}),
    )
    .await;
    assert_eq!(rule(&bad), (400, "BAD_REQUEST".into()), "{bad:?}");

    // kill -9 of a follower and of the leader: both come back with the
    // archive, the retirement and the removed block.
    let lead = leader(&c, &s[0]).await;
    let follower = s.iter().position(|x| x.id != lead).unwrap();
    for i in [follower, s.iter().position(|x| x.id == lead).unwrap()] {
        s[i].kill();
        s[i].start();
        until(
            Duration::from_secs(60),
            "a restarted facility serves",
            || async {
                (archived_through(&c, &s[i]).await? == u64::from(ARCHIVED_THROUGH)).then_some(())
            },
        )
        .await;
    }
    leader(&c, &s[0]).await;
    for x in &s {
        let back = days(&c, x, 0, ARCHIVED_THROUGH).await.unwrap();
        assert_eq!(back.len(), (ARCHIVED_THROUGH as usize + 1) * BLOCKS_PER_DAY);
        assert!(back.iter().all(|b| b["archived"] == true));
        let (st, _) = get(&c, &x.url("/v1/blocks/late2?consistency=stale")).await;
        assert_eq!(st, 404, "{}", x.id);
    }
    let after = write_until_final(
        &c,
        &s[2].url("/v1/assignments"),
        "late-p7-after",
        &json!({"person": "p7", "block": "late1"}),
    )
    .await;
    assert_eq!(rule(&after), (409, "RETIRED".into()), "{after:?}");
}

/// The whole-schedule digest at `site` from its local replica.
async fn stale_digest(c: &reqwest::Client, site: &Site) -> Option<String> {
    let (s, v) = get(c, &site.url("/v1/schedule?consistency=stale")).await;
    (s == 200)
        .then(|| v["digest"].as_str().map(str::to_string))
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_facility_whose_replica_does_not_open_takes_it_again_from_its_peers() {
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
    let person = |i: usize| json!({"id": format!("p{i}"), "name": format!("Resident {i}"), "role": "resident", "pgy": 2});
    for i in 0..30 {
        let (st, v) = write_until_final(
            &c,
            &s[i % 2].url("/v1/people"),
            &format!("p{i}"),
            &person(i),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    until(Duration::from_secs(60), "charlie caught up", || async {
        let a = stale_digest(&c, &s[0]).await?;
        (stale_digest(&c, &s[2]).await? == a).then_some(())
    })
    .await;

    // charlie dies, and its replica's scalars row is damaged on disk
    // (the log was compacted past the start, so it cannot replay).
    s[2].kill();
    {
        let path = s[2].dir.join("data").join(bulwark_runtime::STORE_FILE);
        let store = bulwark_storage::Store::open(&path, "charlie")
            .unwrap()
            .store;
        let tx = store.begin_write().unwrap();
        {
            let mut t = tx.open_table(bulwark_storage::schema::SCHED_META).unwrap();
            t.insert(b"meta".as_slice(), b"not a meta row".as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    s[2].start();
    // It starts, and takes its state again from the leader while writes
    // go on (each poll writes one more person).
    let mut next = 30;
    until(
        Duration::from_secs(120),
        "charlie recovered and agrees",
        || {
            next += 1;
            let (c, s, i) = (&c, &s, next);
            async move {
                let (st, _) = post(c, &s[0].url("/v1/people"), &format!("p{i}"), &person(i)).await;
                if st != 200 {
                    return None;
                }
                let (ready, _) = get(c, &s[2].url("/health/ready")).await;
                let a = stale_digest(c, &s[0]).await?;
                (ready == 200 && stale_digest(c, &s[2]).await? == a).then_some(())
            }
        },
    )
    .await;
    let log = s[2].log();
    assert!(log.contains("the replica does not open"), "{log}");
    assert!(
        log.contains("replica taken again from the leader's snapshot"),
        "{log}"
    );
    // Every write is there at charlie.
    let (st, v) = get(&c, &s[2].url("/v1/people/p3?consistency=stale")).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulwark_import_loads_a_csv_once_however_often_it_runs() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    // 300 people, 30 days of 40 blocks, each block with one person: 2,700
    // rows, three batches; one row breaks a rule.
    let mut csv =
        String::from("op,id,name,role,pgy,day,start_min,duration_min,pool,required,person,block\n");
    for p in 0..300 {
        csv += &format!(
            "add_person,p{p},\"Resident {p}, MD\",resident,{},,,,,,,\n",
            1 + p % 7
        );
    }
    for d in 0..30 {
        for k in 0..40 {
            csv += &format!("add_block,d{d}k{k},,,,{d},420,600,icu,1,,\n");
            csv += &format!("assign,,,,,,,,,,p{},d{d}k{k}\n", (d * 40 + k) % 300);
        }
    }
    // p0 is already on d0k0 at 07:00: a second block then is a double booking.
    csv += "add_block,clash,,,,0,480,60,call,1,,\nassign,,,,,,,,,,p0,clash\n";
    let file = root.path().join("schedule.csv");
    std::fs::write(&file, &csv).unwrap();
    let url = format!("http://{}", s[1].http);
    let import = || {
        std::process::Command::new(BIN)
            .args(["import", "--url", &url, "--token", TOKEN])
            .arg(&file)
            .output()
            .unwrap()
    };
    let first = import();
    let out = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first.status.code(), Some(1), "{out}");
    assert!(out.contains("2701 applied, 1 refused"), "{out}");
    assert!(out.contains("line 2703: refused DOUBLE_BOOKING"), "{out}");
    // Again: every batch answered as before, nothing applied twice.
    let again = import();
    let out = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(out.contains("2701 applied, 1 refused"), "{out}");
    assert!(
        out.contains("3 batches answered from an earlier import"),
        "{out}"
    );
    let (st, v) = get(&c, &s[2].url("/v1/people/p7?from_day=0&to_day=29")).await;
    assert_eq!(st, 200, "{v}");
    let blocks = days(&c, &s[0], 0, 29).await.unwrap();
    assert_eq!(blocks.len(), 30 * 40 + 1);
    let staffed = blocks
        .iter()
        .filter(|b| b["assigned"].as_array().is_some_and(|a| a.len() == 1));
    assert_eq!(staffed.count(), 30 * 40);
    // A file with a bad row sends nothing and names the line.
    std::fs::write(&file, "op,id,day\nadd_block,x,soon\n").unwrap();
    let bad = import();
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(!bad.status.success());
    assert!(err.contains("line 2") && err.contains("`day`"), "{err}");
}
