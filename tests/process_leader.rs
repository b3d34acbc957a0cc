//! Leadership transfer from the CLI over real processes: `bulwark leader
//! transfer --to F`, sent to the one facility that neither leads nor is
//! F, moves leadership to F (every facility names it), writes go on, and
//! asking again says F leads already; a facility that is not a voter is a
//! bad request (exit 2) and moves nothing. Then the ledger verifies from a
//! file of public keys alone (`bulwark ledger keys`, `ledger verify
//! --keys`), and fails with a wrong one.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_moves_leadership_and_the_ledger_verifies_from_public_keys() {
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

    // The ledger verifies from public keys alone: alpha's operator exports
    // them, an auditor checks bravo's stopped store with that file; a file
    // with a wrong key fails, naming the height.
    for x in s.iter_mut() {
        assert!(x.terminate());
    }
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let config = s[0].config.display().to_string();
    let (code, keys, err) = run(&["ledger", "keys", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(!keys.contains("secret"), "{keys}");
    let file = root.path().join("keys.toml");
    std::fs::write(&file, &keys).unwrap();
    let db = s[1]
        .dir
        .join("data")
        .join("bulwark.redb")
        .display()
        .to_string();
    let file_s = file.display().to_string();
    let (code, out, err) = run(&["ledger", "verify", "--db", &db, "--keys", &file_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ok: ") && !out.starts_with("ok: 0 "),
        "{out}"
    );
    let alpha_key = keys
        .lines()
        .find(|l| l.starts_with("alpha = "))
        .unwrap()
        .trim_start_matches("alpha = ")
        .to_string();
    let wrong: String = keys
        .lines()
        .map(|l| {
            if l.starts_with("bravo = ") {
                format!("bravo = {alpha_key}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&file, wrong).unwrap();
    let (code, out, err) = run(&["ledger", "verify", "--db", &db, "--keys", &file_s]);
    assert_eq!(code, 1, "a wrong key must fail: {out}{err}");
    assert!(err.contains("height"), "{err}");
}
