//! Admission priorities over real processes. Bravo admits one request a
//! second (burst 1) and lets four wait (10 s at most). Five reads arrive
//! together: one is served at once, four wait. An approval sent after them
//! finds the queue full and displaces the newest read (answered 429
//! `OVERLOADED`, "displaced", at once); a routine write sent after the
//! approval displaces the next newest. The approval is then served first,
//! the write second, and the two reads that kept their places last: the
//! order is the priority's (approvals, writes, reads), not the arrival's.

#[path = "support/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use procs::*;
use serde_json::{json, Value};

/// One request's answer and when it came.
struct Done {
    what: String,
    status: u16,
    body: Value,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_serves_approvals_then_writes_then_reads() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], "");
    {
        let b = &s[1];
        let mut cfg = std::fs::read_to_string(&b.config).unwrap();
        cfg += "[flow]\nadmission_rate_per_s = 1\nadmission_burst = 1\n\
                admission_queue_len = 4\nadmission_queue_timeout_ms = 10000\n\n";
        std::fs::write(&b.config, cfg).unwrap();
    }
    let c = client();
    start_all(&c, &mut s).await;
    let b = &s[1];
    // Bravo serves (its one token a second), and its bucket is full again.
    until(Duration::from_secs(60), "bravo serving", || async {
        (get(&c, &b.url("/v1/schedule?consistency=stale")).await.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut tasks = Vec::new();
    for i in 0..5 {
        let (c, url) = (c.clone(), b.url("/v1/schedule?consistency=stale"));
        tasks.push(tokio::spawn(async move {
            let (status, body) = get(&c, &url).await;
            Done {
                what: format!("read{i}"),
                status,
                body,
                at: Instant::now(),
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sends = [
        ("approval", "/v1/approvals", json!({"through_day": 0})),
        (
            "write",
            "/v1/people",
            json!({"id": "w1", "name": "Writer", "role": "faculty"}),
        ),
    ];
    for (what, path, body) in sends {
        let (c, url) = (c.clone(), b.url(path));
        tasks.push(tokio::spawn(async move {
            let (status, body) = post(&c, &url, what, &body).await;
            Done {
                what: what.to_string(),
                status,
                body,
                at: Instant::now(),
            }
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    let show: Vec<String> = done
        .iter()
        .map(|d| format!("{} {} {}", d.what, d.status, d.body))
        .collect();
    let find = |w: &str| done.iter().find(|d| d.what == w).unwrap();
    let (approval, write) = (find("approval"), find("write"));
    assert_eq!(approval.status, 200, "{show:#?}");
    assert_eq!(write.status, 200, "{show:#?}");
    let displaced: Vec<&Done> = done
        .iter()
        .filter(|d| {
            d.status == 429
                && d.body["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("displaced")
        })
        .collect();
    assert_eq!(
        displaced.len(),
        2,
        "the newest two reads made room: {show:#?}"
    );
    assert!(
        displaced.iter().all(|d| d.what.starts_with("read")),
        "{show:#?}"
    );
    let mut served: Vec<&Done> = done
        .iter()
        .filter(|d| d.what.starts_with("read") && d.status == 200)
        .collect();
    served.sort_by_key(|d| d.at);
    assert_eq!(served.len(), 3, "{show:#?}");
    // The first read took the burst; the two that waited come after both.
    assert!(approval.at < write.at, "{show:#?}");
    assert!(write.at < served[1].at, "{show:#?}");
}
