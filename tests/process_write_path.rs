//! The write path's group commit over real processes: three `bulwark
//! node` processes take writes from eight concurrent clients, and each
//! facility's durable commits are read from its own metrics over the load
//! alone: `bulwark_store_durable_writes_total` over
//! `bulwark_raft_durable_persists_total` (the Raft peer's persists of log
//! entries, each one fsync) and over `bulwark_raft_applied_batches_total`
//! (committed batches). A validator's votes, final entries and evidence
//! ride the Raft peer's persists rather than taking commits of their own,
//! so under load every durable write is a Raft persist but for the
//! validator's few fallback syncs; the validators still certify every
//! write (the ledger is final everywhere at the end), every acknowledged
//! write is at every facility, and nobody holds evidence.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
/// Concurrent clients.
const CLIENTS: usize = 8;
/// Writes each client has acknowledged before the load stops.
const PER_CLIENT: usize = 15;
/// The bound on durable commits per Raft persist at every facility, not
/// counting the validator's fallback syncs. One is the design; the margin
/// covers the rare commits of other kinds (about one a second).
const FSYNCS_PER_PERSIST_MAX: f64 = 1.1;
/// The bound on the validator's fallback syncs (no persist came within its
/// wait) per Raft persist. A debug build under this load persists every
/// 25-40 ms, near the wait, so some votes pay one; were the votes not
/// riding the persists at all, there would be about one per persist.
const SYNCS_PER_PERSIST_MAX: f64 = 0.25;

/// `(durable writes, applied batches, fallback vote syncs, Raft
/// persists)` of `site`.
async fn counts(c: &reqwest::Client, site: &Site) -> (f64, f64, f64, f64) {
    (
        metric(c, site, "bulwark_store_durable_writes_total").await,
        metric(c, site, "bulwark_raft_applied_batches_total").await,
        metric(c, site, "bulwark_bft_vote_syncs_total").await,
        metric(c, site, "bulwark_raft_durable_persists_total").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_the_validators_writes_ride_the_raft_persists() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sites(dir.path(), &NAMES, "");
    let c = client();
    let lead = start_all(&c, &mut s).await;
    let leader_url = s[lead].url("/v1/people");
    // Warm up (elections, the first entries) outside the window.
    let warm = Writer::spawn(&c, vec![leader_url.clone()], "warm-");
    warm.more(10, "warm-up writes").await;
    let warmed = warm.stop().await.len();
    let mut before = Vec::new();
    for site in &s {
        before.push(counts(&c, site).await);
    }
    let writers: Vec<Writer> = (0..CLIENTS)
        .map(|i| Writer::spawn(&c, vec![leader_url.clone()], &format!("w{i}-")))
        .collect();
    for (i, w) in writers.iter().enumerate() {
        w.more(PER_CLIENT, &format!("client {i}'s writes")).await;
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.stop().await);
    }
    // Every write certified everywhere: the validators' held votes left
    // (each acknowledged write is one ledger entry).
    let want = (acked.len() + warmed) as u64;
    for site in &s {
        until(
            Duration::from_secs(60),
            "the ledger final everywhere",
            || async {
                let (_, v) = get(&c, &site.url("/v1/cluster")).await;
                (v["ledger"]["height"].as_u64().unwrap_or(0) >= want).then_some(())
            },
        )
        .await;
    }
    let (mut worst, mut worst_syncs): (f64, f64) = (0.0, 0.0);
    for (site, b) in s.iter().zip(&before) {
        let a = counts(&c, site).await;
        let (fsyncs, batches, syncs, persists) = (a.0 - b.0, a.1 - b.1, a.2 - b.2, a.3 - b.3);
        assert!(
            batches > 0.0 && persists > 0.0,
            "{}: nothing committed",
            site.id
        );
        let per = (fsyncs - syncs) / persists;
        println!(
            "{}: {fsyncs} durable writes, {persists} Raft persists ({per:.2} per persist besides the fallback syncs), {batches} committed batches ({:.2} per batch), {syncs} fallback vote syncs; {} writes acknowledged",
            site.id,
            fsyncs / batches,
            acked.len()
        );
        worst = worst.max(per);
        worst_syncs = worst_syncs.max(syncs / persists);
    }
    assert!(
        worst <= FSYNCS_PER_PERSIST_MAX,
        "a facility made {worst:.2} durable commits per Raft persist"
    );
    assert!(
        worst_syncs <= SYNCS_PER_PERSIST_MAX,
        "a validator made {worst_syncs:.2} fallback syncs per Raft persist"
    );
    // Every acknowledged write is at every facility.
    for site in &s {
        for id in acked.iter().step_by(7) {
            let (st, v) = get(&c, &site.url(&format!("/v1/people/{id}"))).await;
            assert_eq!(st, 200, "{id} at {}: {v}", site.id);
        }
    }
    no_evidence(&c, &s).await;
}
