//! The healer's review queue over real processes, driven by the CLI:
//! under `conflict_policy = "manual_review"`, charlie, cut off by a chaos
//! lever, covers a block in an emergency while the majority fills it with
//! someone else. On heal the change waits for an operator:
//! `bulwark review list` shows it, `bulwark review resolve ID --accept`
//! puts charlie's cover on the block through consensus, and deciding
//! again is refused (exit 2, NOT_FOUND). A token without the operator
//! scope is not allowed (exit 4).

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

/// Who holds `block`, by a linearizable read at `site`.
async fn holders(c: &reqwest::Client, site: &Site, block: &str) -> Option<Vec<String>> {
    let (st, v) = get(
        c,
        &site.url(&format!("/v1/blocks/{block}?consistency=linearizable")),
    )
    .await;
    (st == 200).then(|| {
        v["block"]["assigned"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["person"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_emergency_cover_waits_for_the_operator() {
    let root = tempfile::tempdir().unwrap();
    // A read-only token next to the all-scope one.
    let reader = "reader-token-for-the-review-test";
    let extra = format!(
        "[[api.tokens]]\nname = \"reader\"\nhash = \"{}\"\nscopes = [\"read\"]\n\n\
         [chaos]\nenabled = true\n\n[detection]\nconflict_policy = \"manual_review\"\n",
        blake3::hash(reader.as_bytes()).to_hex()
    );
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], &extra);
    let c = client();
    start_all(&c, &mut s).await;
    let a = &s[0];
    for (id, body) in [
        (
            "people",
            json!({"id": "ann", "name": "Ann", "role": "faculty"}),
        ),
        (
            "people",
            json!({"id": "bob", "name": "Bob", "role": "faculty"}),
        ),
        (
            "blocks",
            json!({"id": "b1", "day": 3, "start_min": 480, "duration_min": 600, "pool": "clinic", "required": 1}),
        ),
    ] {
        let key = format!("setup-{}", body["id"]);
        let (st, v) = write_until_final(&c, &a.url(&format!("/v1/{id}")), &key, &body).await;
        assert_eq!(st, 200, "{v}");
    }
    // Charlie has everything, then is cut off.
    until(Duration::from_secs(60), "b1 at charlie", || async {
        let (st, _) = get(&c, &s[2].url("/v1/blocks/b1?consistency=stale")).await;
        (st == 200).then_some(())
    })
    .await;
    let cut = json!({
        "action": {"kind": "fault_rule", "rule": {"Partition": {
            "side_a": ["charlie"], "side_b": ["alpha", "bravo"], "one_way": false}}},
        "dead_man_ms": 600_000,
    });
    let (st, v) = post(&c, &s[2].url("/v1/admin/chaos"), "cut", &cut).await;
    assert_eq!(st, 200, "{v}");

    // Alone, charlie takes the emergency cover provisionally.
    let (st, v) = until(Duration::from_secs(60), "a provisional cover", || async {
        let (st, v) = post(
            &c,
            &s[2].url("/v1/emergency"),
            "cover-ann",
            &json!({"person": "ann", "block": "b1"}),
        )
        .await;
        (st == 202).then_some((st, v))
    })
    .await;
    assert_eq!(v["status"], "provisional", "{st} {v}");
    // The majority fills b1 with bob meanwhile.
    let (st, v) = write_until_final(
        &c,
        &a.url("/v1/assignments"),
        "assign-bob",
        &json!({"person": "bob", "block": "b1"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");

    // Heal: the replay meets bob on b1 and waits for review.
    let (st, v) = post(
        &c,
        &s[2].url("/v1/admin/chaos"),
        "heal",
        &json!({"action": {"kind": "clear"}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let id = until(
        Duration::from_secs(90),
        "the change queued for review",
        || async {
            let (st, v) = get(&c, &s[2].url("/v1/admin/reviews")).await;
            (st == 200)
                .then(|| v["reviews"].as_array()?.first()?["id"].as_u64())
                .flatten()
        },
    )
    .await;

    let (code, out, err) = cli(&s[2], TOKEN, &["review", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("emergency") && out.contains("charlie"),
        "{out}"
    );
    let (code, out, err) = cli(&s[2], reader, &["review", "list"]);
    assert_eq!(code, 4, "a read token listed the queue: {out}{err}");
    assert!(err.contains("operator"), "{err}");
    assert_eq!(holders(&c, a, "b1").await, Some(vec!["bob".to_string()]));

    let idt = id.to_string();
    let (code, out, err) = cli(&s[2], TOKEN, &["review", "resolve", &idt, "--accept"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("WON"), "{out}");
    until(Duration::from_secs(30), "ann on b1 at alpha", || async {
        (holders(&c, a, "b1").await? == vec!["ann".to_string()]).then_some(())
    })
    .await;
    // Decided once: again is refused, and the queue is empty.
    let (code, out, err) = cli(&s[2], TOKEN, &["review", "resolve", &idt, "--refuse"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("NOT_FOUND"), "{err}");
    let (code, out, err) = cli(&s[2], TOKEN, &["review", "list"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "nothing waits for review\n"),
        "{err}"
    );
    for x in s.iter_mut() {
        x.kill();
    }
}
