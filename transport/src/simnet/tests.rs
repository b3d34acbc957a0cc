use super::*;

fn id(s: &str) -> FacilityId {
    s.parse().unwrap()
}

async fn run(seed: u64) -> Vec<TraceEvent> {
    let net = SimNet::new(seed);
    net.set_default_link(LinkParams {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(20),
        loss: 0.2,
    });
    let (ta, mut ra) = net.join(id("a"), 1024);
    let (tb, mut rb) = net.join(id("b"), 1024);
    for i in 0..50u32 {
        ta.send(&id("b"), TrafficClass::Control, i.to_le_bytes().to_vec())
            .unwrap();
        tb.send(&id("a"), TrafficClass::Heartbeat, i.to_be_bytes().to_vec())
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while ra.try_recv().is_ok() {}
    while rb.try_recv().is_ok() {}
    net.trace()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn same_seed_same_trace() {
    let first = run(42).await;
    let second = run(42).await;
    let other = run(43).await;
    assert_eq!(first.len(), 100);
    assert_eq!(first, second);
    assert_ne!(first, other, "a different seed should change the run");
    let lost = first.iter().filter(|e| e.outcome == Outcome::Lost).count();
    assert!(lost > 0 && lost < 50, "loss 0.2 over 100 sends gave {lost}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn partition_stops_delivery_and_heal_restores_it() {
    let net = SimNet::new(1);
    let (ta, _ra) = net.join(id("a"), 16);
    let (_tb, mut rb) = net.join(id("b"), 16);
    let cut = net.faults().partition([id("a")], [id("b")]).unwrap();
    ta.send(&id("b"), TrafficClass::Control, b"x".to_vec())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rb.try_recv().is_err(), "a partitioned payload arrived");
    net.faults().remove(cut);
    ta.send(&id("b"), TrafficClass::Control, b"y".to_vec())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rb.try_recv().unwrap().payload, b"y");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn in_flight_payloads_to_a_crashed_facility_are_lost() {
    let net = SimNet::new(1);
    let (ta, _ra) = net.join(id("a"), 16);
    let (_tb, _rb) = net.join(id("b"), 16);
    ta.send(&id("b"), TrafficClass::Control, b"x".to_vec())
        .unwrap();
    net.leave(&id("b"));
    let (_tb2, mut rb2) = net.join(id("b"), 16);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        rb2.try_recv().is_err(),
        "the restarted facility got a pre-crash payload"
    );
    assert_eq!(net.trace().last().unwrap().outcome, Outcome::ReceiverGone);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn full_inbound_drops_instead_of_growing() {
    let net = SimNet::new(1);
    let (ta, _ra) = net.join(id("a"), 16);
    let (_tb, mut rb) = net.join(id("b"), 2);
    for _ in 0..5 {
        ta.send(&id("b"), TrafficClass::Control, b"x".to_vec())
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = 0;
    while rb.try_recv().is_ok() {
        got += 1;
    }
    assert_eq!(got, 2);
    let full = net
        .trace()
        .iter()
        .filter(|e| e.outcome == Outcome::ReceiverFull)
        .count();
    assert_eq!(full, 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn oversized_heartbeat_is_refused_with_payload_back() {
    let net = SimNet::new(1);
    let (ta, _ra) = net.join(id("a"), 16);
    let err = ta
        .send(
            &id("b"),
            TrafficClass::Heartbeat,
            vec![0; DATAGRAM_LEN_MAX + 1],
        )
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::TooLarge);
    assert_eq!(err.payload.len(), DATAGRAM_LEN_MAX + 1);
}
