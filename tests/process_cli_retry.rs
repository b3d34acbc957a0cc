//! The CLI client's retries over real processes: a write to a facility
//! that lost its majority is retried with the same key while the answer
//! says nothing was decided, then reported as refused (exit 2) or, if a
//! try may have been appended, unknown (exit 3) with its key; run again
//! with that key once the majority is back, it applies once. A rule refusal is final at once (exit 2, never retried).

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_writes_are_retried_with_their_key_and_apply_once() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], "");
    let c = client();
    start_all(&c, &mut s).await;
    let person = [
        "schedule",
        "add-person",
        "--id",
        "p1",
        "--name",
        "Ada",
        "--role",
        "faculty",
    ];
    let (code, out, err) = cli(&s[0], TOKEN, &person);
    assert_eq!(code, 0, "{out}{err}");
    // A rule refusal: final at once.
    let (code, out, err) = cli(&s[0], TOKEN, &person);
    assert_eq!(code, 2, "{out}{err}");
    assert!(!err.contains("retrying"), "a refusal was retried: {err}");

    // Alpha alone: no leader. Each try has 400 ms; every answer says
    // nothing was decided, so the client retries, then gives the key.
    s[1].kill();
    s[2].kill();
    let block = [
        "schedule",
        "add-block",
        "--id",
        "b1",
        "--day",
        "2",
        "--start-min",
        "480",
        "--duration-min",
        "600",
        "--pool",
        "clinic",
        "--timeout-ms",
        "400",
    ];
    let mut block: Vec<&str> = block.to_vec();
    block.extend(["--key", "k-b1"]);
    let (code, out, err) = cli(&s[0], TOKEN, &block);
    assert!(err.contains("retrying with the same key"), "{err}");
    // Every try said nothing was decided (no leader) and the last that the
    // facility is cut off: refused (2). If one timed out instead, it may
    // have been appended: unknown (3), with the key to retry with.
    match code {
        2 => assert!(!err.contains("TIMED_OUT"), "{err}"),
        3 => assert!(err.contains("--key k-b1"), "{err}"),
        _ => panic!("exit {code}: {out}{err}"),
    }
    let key = "k-b1".to_string();

    // The majority back: the same key applies once, however often sent.
    s[1].start();
    s[2].start();
    leader(&c, &s[0]).await;
    let with_key = block.clone();
    assert!(with_key.contains(&key.as_str()));
    for _ in 0..2 {
        let (code, out, err) = until(Duration::from_secs(60), "the block", || {
            let r = cli(&s[0], TOKEN, &with_key);
            async move { (r.0 == 0).then_some(r) }
        })
        .await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let (st, v) = get(&c, &s[0].url("/v1/schedule?consistency=linearizable")).await;
    assert_eq!(st, 200, "{v}");
    let blocks: Vec<&serde_json::Value> = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["id"] == "b1")
        .collect();
    assert_eq!(blocks.len(), 1, "{v}");
    for x in s.iter_mut() {
        x.kill();
    }
}
