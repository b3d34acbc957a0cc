//! Router tests: bad input is dropped and counted, and nothing else changes.

use bulwark_runtime::builtin::{ping, ProbeWire, PROBE};
use bulwark_runtime::{Address, Clock, Envelope, Harness, Kind, Refusal, RouteError};
use bulwark_storage::codec;
use bulwark_transport::{Inbound, TrafficClass};
use std::time::Duration;

const T: Duration = Duration::from_secs(1);

fn dropped(h: &Harness, i: usize, reason: &str) -> u64 {
    h.counter(i, "bulwark_router_dropped_total", &[("reason", reason)])
}

fn ping_envelope(h: &Harness, from: usize, to: usize) -> Envelope {
    Envelope {
        from: h.id(from),
        to: Address::new(h.id(to), PROBE),
        trace_id: 1,
        deadline_unix_ms: None,
        kind: Kind::OneWay,
        body: codec::encode(&ProbeWire::Ping { nonce: 1 }).unwrap(),
    }
}

/// The TLS (or link) identity, not the envelope's claim, names the sender.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn envelope_claiming_another_sender_is_dropped() {
    let h = Harness::new(3, 2).await.unwrap();
    let forged = ping_envelope(&h, 2, 1); // claims charlie
    let inbound = Inbound {
        from: h.id(0), // but arrived from alpha
        class: TrafficClass::Control,
        payload: codec::encode(&forged).unwrap(),
    };
    h.router(1).on_inbound(inbound);
    assert_eq!(dropped(&h, 1, "identity_mismatch"), 1);
    assert_eq!(h.counter(1, "bulwark_actor_messages_in_total", &[]), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn malformed_and_misaddressed_payloads_are_dropped_and_node_keeps_serving() {
    let h = Harness::new(3, 2).await.unwrap();
    let garbage = Inbound {
        from: h.id(0),
        class: TrafficClass::Control,
        payload: vec![0xff; 37],
    };
    h.router(1).on_inbound(garbage);
    let misaddressed = ping_envelope(&h, 0, 2); // for charlie, handed to bravo
    h.router(1).on_inbound(Inbound {
        from: h.id(0),
        class: TrafficClass::Control,
        payload: codec::encode(&misaddressed).unwrap(),
    });
    assert_eq!(dropped(&h, 1, "malformed"), 1);
    assert_eq!(dropped(&h, 1, "misaddressed"), 1);
    assert!(ping(h.router(0), &h.id(1), T).await.is_ok());
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn request_to_unknown_actor_is_refused_not_timed_out() {
    let h = Harness::new(2, 2).await.unwrap();
    let to = Address::new(h.id(1), "nobody");
    let err = h.router(0).request(to, vec![], T).await.unwrap_err();
    assert!(
        matches!(
            err,
            RouteError::Refused {
                reason: Refusal::UnknownActor,
                ..
            }
        ),
        "{err}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn expired_deadline_is_dropped_not_processed() {
    let h = Harness::new(2, 2).await.unwrap();
    h.step(Duration::from_secs(10)).await;
    let mut env = ping_envelope(&h, 0, 1);
    env.deadline_unix_ms = Some(h.clock(1).unix_ms() - 1);
    env.kind = Kind::Request { corr: 99 };
    h.router(1).on_inbound(Inbound {
        from: h.id(0),
        class: TrafficClass::Control,
        payload: codec::encode(&env).unwrap(),
    });
    assert_eq!(dropped(&h, 1, "deadline_expired"), 1);
    assert_eq!(h.counter(1, "bulwark_actor_messages_in_total", &[]), 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn request_timeout_is_typed() {
    let h = Harness::new(2, 2).await.unwrap();
    h.partition(&[0], &[1]).unwrap();
    let err = ping(h.router(0), &h.id(1), T).await.unwrap_err();
    assert!(err.to_string().contains("no reply"), "{err}");
    h.shutdown().await;
}
