//! The status page in a real headless browser (Debian's chromium): it
//! asks for a token without one, then, with a read token, shows the three
//! facilities, and shows one as down after its
//! process is killed. `.ci/run` installs chromium and runs this test
//! (`cargo test --test status_page -- --ignored`); `BULWARK_CHROMIUM`
//! names another browser binary, and `BULWARK_SCREENSHOT=docs/status-page.png`
//! keeps the screenshot.

#[path = "support/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use procs::*;

fn chromium() -> String {
    std::env::var("BULWARK_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Runs headless chromium on `url` with `what` (`--dump-dom` or
/// `--screenshot=FILE`), after 6 s of page time (three refreshes).
fn browse(profile: &Path, url: &str, what: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1100,1250",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(what)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (install chromium)", chromium()));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn row(dom: &str, facility: &str) -> Option<String> {
    let at = dom.find(&format!("data-facility=\"{facility}\""))?;
    let end = dom[at..].find('>')? + at;
    Some(dom[at..end].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium; .ci/run installs it and runs this"]
async fn the_status_page_shows_three_facilities_then_one_down() {
    let root = tempfile::tempdir().unwrap();
    let names = ["alpha", "bravo", "charlie"];
    let mut s = sites(root.path(), &names, "[backup]\nevery_s = 0\n");
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    // A few writes, so the ledger head is not empty.
    for i in 0..3 {
        let (person, block) = setup_bodies(i);
        let (st, v) =
            write_until_final(&c, &s[0].url("/v1/people"), &format!("person-{i}"), &person).await;
        assert_eq!(st, 200, "{v}");
        let (st, v) =
            write_until_final(&c, &s[0].url("/v1/blocks"), &format!("block-{i}"), &block).await;
        assert_eq!(st, 200, "{v}");
    }
    let profile = root.path().join("chromium");
    // Without a token the page shows no data, only the form asking for one.
    let dom = browse(&profile, &s[0].url("/"), "--dump-dom");
    assert!(row(&dom, "alpha").is_none(), "data without a token: {dom}");
    assert!(
        dom.contains("<form id=\"login\">"),
        "no token form shown: {dom}"
    );
    // With a read token in the address's fragment (never sent to the
    // server), it shows the cluster.
    let page = format!("{}#token={TOKEN}", s[0].url("/"));
    let dom = browse(&profile, &page, "--dump-dom");
    for n in names {
        let r = row(&dom, n).unwrap_or_else(|| panic!("no row for {n}: {dom}"));
        assert!(r.contains("data-liveness=\"up\""), "{r}");
    }
    assert!(dom.contains("leader "), "{dom}");
    // The traffic charts have samples (one a second), and the evidence
    // table says there is none.
    let samples = dom
        .split("id=\"rate\"")
        .nth(1)
        .and_then(|r| r.split("data-samples=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no rate chart: {dom}"));
    assert!(samples >= 1, "{dom}");
    assert!(dom.contains("none recorded"), "{dom}");
    // Every facility's ledger head, side by side.
    for n in ["bravo", "charlie"] {
        assert!(
            dom.contains(&format!("data-head=\"{n}\"")),
            "no head for {n}: {dom}"
        );
    }

    // Kill charlie; once alpha's detector has it down, so does the page.
    s[2].kill();
    until(Duration::from_secs(60), "charlie down at alpha", || async {
        let (st, v) = get(&c, &s[0].url("/v1/cluster")).await;
        let down = v["peers"]
            .as_array()?
            .iter()
            .any(|p| p["id"] == "charlie" && p["liveness"] == "down" && p["link"] == "down");
        (st == 200 && down).then_some(())
    })
    .await;
    let dom = browse(&profile, &page, "--dump-dom");
    let r = row(&dom, "charlie").unwrap_or_else(|| panic!("no charlie: {dom}"));
    assert!(r.contains("data-liveness=\"down\""), "{r}");
    // The link agrees with the detector (QUIC's 3 s silence), and φ reads
    // as a number or ∞, never as the largest float.
    assert!(r.contains("data-link=\"down\""), "{r}");
    let phi = r
        .split("data-phi=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no φ: {r}"));
    assert!(
        phi == "∞" || phi.parse::<f64>().is_ok_and(|v| v < 1e12),
        "φ shown as {phi:?}"
    );
    for n in ["alpha", "bravo"] {
        assert!(row(&dom, n).unwrap().contains("data-liveness=\"up\""));
    }

    let shot: PathBuf = std::env::var("BULWARK_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.path().join("status-page.png"));
    let shot = std::env::current_dir().unwrap().join(shot);
    browse(&profile, &page, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
}
