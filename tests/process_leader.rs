//! Leadership transfer from the CLI over real processes: `bulwark leader
//! transfer --to F`, sent to the one facility that neither leads nor is
//! F, moves leadership to F (every facility names it), writes go on, and
//! asking again says F leads already; a facility that is not a voter is a
//! bad request (exit 2) and moves nothing.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_hands_leadership_to_a_voter() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], "");
    let c = client();
    let li = start_all(&c, &mut s).await;
    let lead = s[li].id.clone();
    let (fi, ti) = ((li + 1) % 3, (li + 2) % 3);
    let to = s[fi].id.clone();
    for i in 0..5 {
        let body = json!({"id": format!("a{i}"), "name": "A", "role": "faculty"});
        let (st, v) =
            write_until_final(&c, &s[i % 3].url("/v1/people"), &format!("a{i}"), &body).await;
        assert_eq!(st, 200, "{v}");
    }
    let (code, out, err) = cli(&s[ti], TOKEN, &["leader", "transfer", "--to", &to]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{to} leads now")), "{out}");
    for x in &s {
        let named = until(
            Duration::from_secs(30),
            "the new leader everywhere",
            || async {
                let (st, v) = get(&c, &x.url("/v1/cluster")).await;
                (st == 200 && v["leader"] == to.as_str()).then_some(())
            },
        )
        .await;
        let () = named;
    }
    for i in 0..5 {
        let body = json!({"id": format!("b{i}"), "name": "B", "role": "faculty"});
        let (st, v) = post(&c, &s[i % 3].url("/v1/people"), &format!("b{i}"), &body).await;
        assert_eq!(st, 200, "a write after the transfer: {v}");
    }
    let (code, out, err) = cli(&s[li], TOKEN, &["leader", "transfer", "--to", &to]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{to} leads already")), "{out}");
    let (code, out, err) = cli(&s[li], TOKEN, &["leader", "transfer", "--to", "zulu"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("BAD_REQUEST") && err.contains("not a voter"),
        "{err}"
    );
    let (st, v) = get(&c, &s[li].url("/v1/cluster")).await;
    assert_eq!(st, 200);
    assert_eq!(v["leader"], to.as_str(), "{lead} -> {to}: {v}");
}
