//! Real QUIC over loopback. Every wait is bounded by a timeout; nothing
//! sleeps to wait for a condition.

use super::*;

const T: Duration = Duration::from_secs(10);

fn id(s: &str) -> FacilityId {
    s.parse().unwrap()
}

fn test_config() -> QuicConfig {
    QuicConfig {
        handshake_timeout: Duration::from_millis(1500),
        hello_timeout: Duration::from_millis(1500),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        frame_read_timeout: Duration::from_millis(500),
        seed: Some(7),
        ..QuicConfig::default()
    }
}

struct Node {
    t: QuicTransport,
    rx: mpsc::Receiver<Inbound>,
    tasks: JoinSet<()>,
}

impl Node {
    fn start(t: QuicTransport, rx: mpsc::Receiver<Inbound>) -> Node {
        let mut tasks = JoinSet::new();
        for peer in t.peers() {
            tasks.spawn(t.link_driver(&peer).unwrap());
        }
        tasks.spawn(t.accept_driver().unwrap());
        Node { t, rx, tasks }
    }

    async fn recv(&mut self) -> Inbound {
        tokio::time::timeout(T, self.rx.recv())
            .await
            .expect("payload within the timeout")
            .expect("channel open")
    }
}

/// Identities, sockets and configs for facilities that all pin each other.
fn mesh(names: &[&str]) -> (Vec<Identity>, Vec<UdpSocket>, Vec<QuicConfig>) {
    let ids: Vec<Identity> = names
        .iter()
        .map(|n| Identity::generate(id(n)).unwrap())
        .collect();
    let sockets: Vec<UdpSocket> = names.iter().map(|_| loopback_socket().unwrap()).collect();
    let configs = (0..names.len())
        .map(|i| QuicConfig {
            peers: (0..names.len())
                .filter(|&j| j != i)
                .map(|j| PeerSpec {
                    id: ids[j].id.clone(),
                    addr: sockets[j].local_addr().unwrap(),
                    pin: ids[j].pin(),
                    pin_next: None,
                    host: None,
                })
                .collect(),
            ..test_config()
        })
        .collect();
    (ids, sockets, configs)
}

fn start_mesh(names: &[&str]) -> Vec<Node> {
    let (ids, sockets, configs) = mesh(names);
    ids.into_iter()
        .zip(sockets)
        .zip(configs)
        .map(|((ident, sock), cfg)| {
            let (t, rx) = QuicTransport::bind(ident, cfg, Some(sock)).unwrap();
            Node::start(t, rx)
        })
        .collect()
}

#[tokio::test]
async fn three_facilities_exchange_control_and_heartbeats() {
    let mut nodes = start_mesh(&["alpha", "bravo", "charlie"]);
    let ids: Vec<FacilityId> = nodes.iter().map(|n| n.t.local_id().clone()).collect();
    for (i, node) in nodes.iter().enumerate() {
        for (j, to) in ids.iter().enumerate() {
            if i != j {
                let msg = format!("{i}->{j}").into_bytes();
                node.t.send(to, TrafficClass::Control, msg).unwrap();
            }
        }
    }
    for (j, node) in nodes.iter_mut().enumerate() {
        let mut got = vec![node.recv().await, node.recv().await];
        got.sort_by(|a, b| a.from.cmp(&b.from));
        for g in &got {
            let i = ids.iter().position(|x| x == &g.from).unwrap();
            assert_eq!(
                g.payload,
                format!("{i}->{j}").into_bytes(),
                "sender is the pinned identity"
            );
            assert_eq!(g.class, TrafficClass::Control);
        }
    }
    // Links are confirmed by the hello, so heartbeats (datagrams) now flow.
    assert!(
        tokio::time::timeout(T, nodes[0].t.wait_link(&ids[1], LinkStatus::Up))
            .await
            .unwrap()
    );
    nodes[0]
        .t
        .send(&ids[1], TrafficClass::Heartbeat, b"hb".to_vec())
        .unwrap();
    let hb = nodes[1].recv().await;
    assert_eq!(
        (hb.from, hb.class, hb.payload),
        (ids[0].clone(), TrafficClass::Heartbeat, b"hb".to_vec())
    );
    // Order is kept on the control stream.
    for k in 0..50u32 {
        nodes[2]
            .t
            .send(&ids[0], TrafficClass::Control, k.to_be_bytes().to_vec())
            .unwrap();
    }
    for k in 0..50u32 {
        assert_eq!(nodes[0].recv().await.payload, k.to_be_bytes().to_vec());
    }
    for n in &mut nodes {
        n.tasks.abort_all();
        n.t.close();
    }
}

#[tokio::test]
async fn send_refusals_are_typed() {
    let nodes = start_mesh(&["alpha", "bravo"]);
    let t = &nodes[0].t;
    let err = t
        .send(&id("zulu"), TrafficClass::Control, vec![1])
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::UnknownPeer);
    assert_eq!(err.payload, vec![1], "payload handed back");
    let err = t
        .send(
            &id("bravo"),
            TrafficClass::Heartbeat,
            vec![0; DATAGRAM_LEN_MAX + 1],
        )
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::TooLarge);
    let err = t
        .send(
            &id("bravo"),
            TrafficClass::Control,
            vec![0; FRAME_LEN_MAX + 1],
        )
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::TooLarge);
}

#[tokio::test]
async fn full_send_queue_answers_overloaded() {
    // bravo's socket exists but nobody serves it, so nothing drains.
    let (ids, sockets, mut configs) = mesh(&["alpha", "bravo"]);
    configs[0].send_queue_len = 4;
    let (t, _rx) = QuicTransport::bind(ids[0].clone(), configs[0].clone(), None).unwrap();
    for k in 0..4u8 {
        t.send(&ids[1].id, TrafficClass::Control, vec![k]).unwrap();
    }
    let err = t
        .send(&ids[1].id, TrafficClass::Control, vec![9])
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::Overloaded);
    drop(sockets);
}

#[tokio::test]
async fn unknown_certificate_is_refused_during_the_handshake() {
    let (ids, sockets, configs) = mesh(&["alpha", "bravo"]);
    let mut sockets = sockets.into_iter();
    let (alpha, alpha_rx) =
        QuicTransport::bind(ids[0].clone(), configs[0].clone(), sockets.next()).unwrap();
    let alpha = Node::start(alpha, alpha_rx);
    // mallory trusts alpha's pin, but alpha has never heard of mallory.
    let mallory = Identity::generate(id("mallory")).unwrap();
    let cfg = QuicConfig {
        peers: vec![PeerSpec {
            id: id("alpha"),
            addr: alpha.t.local_addr().unwrap(),
            pin: ids[0].pin(),
            pin_next: None,
            host: None,
        }],
        ..test_config()
    };
    let (m, _mrx) = QuicTransport::bind(mallory, cfg, None).unwrap();
    // The client's handshake "completes"; the refusal arrives as a close.
    let err = m.dial_once(&id("alpha")).await.unwrap_err();
    assert!(
        matches!(err, DialError::Refused { code: 0x131, .. }),
        "expected access_denied (0x131), got {err:?}"
    );
    assert_eq!(QuicStats::get(&alpha.t.stats().handshakes_refused), 1);
    assert!(QuicStats::get(&alpha.t.stats().incoming_failed) >= 1);
    assert_eq!(m.link_status(&id("alpha")), LinkStatus::Down);
}

#[tokio::test]
async fn a_peer_presenting_another_facilitys_pinned_key_is_refused() {
    // bravo's config says alpha is at an address where charlie (also pinned
    // by bravo) actually listens: the names do not match the pin.
    let (ids, sockets, configs) = mesh(&["alpha", "bravo", "charlie"]);
    let mut sockets = sockets.into_iter();
    let _alpha_sock = sockets.next();
    let _bravo_sock = sockets.next();
    let (charlie, crx) =
        QuicTransport::bind(ids[2].clone(), configs[2].clone(), sockets.next()).unwrap();
    let charlie = Node::start(charlie, crx);
    let mut bravo_cfg = configs[1].clone();
    for p in &mut bravo_cfg.peers {
        if p.id == id("alpha") {
            p.addr = charlie.t.local_addr().unwrap();
        }
    }
    let (bravo, _brx) = QuicTransport::bind(ids[1].clone(), bravo_cfg, None).unwrap();
    let err = bravo.dial_once(&id("alpha")).await.unwrap_err();
    assert!(matches!(err, DialError::Failed(_)), "{err:?}");
    assert_eq!(QuicStats::get(&bravo.stats().handshakes_refused), 1);
}

/// A raw quinn client with `identity` (or none), trusting `server`'s pin.
fn raw_client(
    identity: Option<&Identity>,
    server: &Identity,
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let stats = Arc::new(QuicStats::default());
    let pins = Arc::new(HashMap::from([(server.pin(), server.id.clone())]));
    let verifier = Arc::new(PinVerifier::new(pins, stats));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some(i) => builder
            .with_client_auth_cert(vec![i.cert_der().clone()], i.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    client.transport_config(Arc::new(transport_config(&test_config()).unwrap()));
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    (endpoint, client)
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (ids, sockets, configs) = mesh(&["alpha", "bravo"]);
    let (alpha, arx) = QuicTransport::bind(
        ids[0].clone(),
        configs[0].clone(),
        sockets.into_iter().next(),
    )
    .unwrap();
    let alpha = Node::start(alpha, arx);
    let (ep, client) = raw_client(None, &ids[0]);
    let conn = ep
        .connect_with(client, alpha.t.local_addr().unwrap(), "alpha.bulwark")
        .unwrap()
        .await;
    // With TLS 1.3 the client may look connected; the close tells the truth.
    let err = match conn {
        Ok(c) => c.closed().await,
        Err(e) => e,
    };
    match err {
        ConnectionError::ConnectionClosed(close) => {
            assert_eq!(u64::from(close.error_code), 0x174, "certificate_required")
        }
        other => panic!("expected a transport close, got {other:?}"),
    }
    assert!(QuicStats::get(&alpha.t.stats().incoming_failed) >= 1);
}

#[tokio::test]
async fn bad_frames_and_datagrams_stop_only_their_stream() {
    let (ids, sockets, configs) = mesh(&["alpha", "bravo"]);
    let (alpha, arx) = QuicTransport::bind(
        ids[0].clone(),
        configs[0].clone(),
        sockets.into_iter().next(),
    )
    .unwrap();
    let mut alpha = Node::start(alpha, arx);
    // A raw client holding bravo's real identity: pinned, so accepted, but it
    // writes whatever it likes.
    let (ep, client) = raw_client(Some(&ids[1]), &ids[0]);
    let conn = ep
        .connect_with(client, alpha.t.local_addr().unwrap(), "alpha.bulwark")
        .unwrap()
        .await
        .unwrap();
    let mut hello = tokio::time::timeout(T, conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let body = read_frame(&mut hello, HELLO_LEN_MAX).await.unwrap();
    let hello: Hello = codec::decode(&body).unwrap();
    assert_eq!(hello.facility, id("alpha"));
    // The raw client offers only the id of version 5 and before: alpha
    // answers at version 5, as it would a version-5 build.
    assert_eq!(hello.protocol, PROTOCOL_MIN);
    // The dialler's hello comes first.
    let mut s = conn.open_uni().await.unwrap();
    let ours = codec::encode(&Hello::booted(id("bravo"), PROTOCOL_MIN, 9, [0; 16])).unwrap();
    s.write_all(&crate::frame::encode(&ours).unwrap())
        .await
        .unwrap();
    s.finish().unwrap();

    // 1. A length prefix far beyond the limit: stream stopped, nothing allocated.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let stopped = tokio::time::timeout(T, s.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(VarInt::from_u32(STOP_FRAME_ERROR)));

    // 2. A stream that ends inside a frame.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&100u32.to_be_bytes()).await.unwrap();
    s.write_all(&[1; 10]).await.unwrap();
    s.finish().unwrap();

    // 3. A frame body that never arrives in full: timed out.
    let mut stall = conn.open_uni().await.unwrap();
    stall.write_all(&100u32.to_be_bytes()).await.unwrap();
    stall.write_all(&[1; 10]).await.unwrap();
    let stopped = tokio::time::timeout(T, stall.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Some(VarInt::from_u32(STOP_FRAME_ERROR)));

    // 4. A datagram over the heartbeat limit.
    conn.send_datagram(vec![7u8; DATAGRAM_LEN_MAX + 100].into())
        .unwrap();

    // The connection still serves: a good frame and a good datagram arrive.
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&frame::encode(b"still here").unwrap())
        .await
        .unwrap();
    s.finish().unwrap();
    let got = alpha.recv().await;
    assert_eq!(
        (got.from.as_str(), got.payload.as_slice()),
        ("bravo", &b"still here"[..])
    );
    conn.send_datagram(b"beat".to_vec().into()).unwrap();
    let got = alpha.recv().await;
    assert_eq!(
        (got.class, got.payload.as_slice()),
        (TrafficClass::Heartbeat, &b"beat"[..])
    );

    assert_eq!(QuicStats::get(&alpha.t.stats().frame_errors), 3);
    assert_eq!(QuicStats::get(&alpha.t.stats().datagrams_oversized), 1);
}

#[tokio::test]
async fn the_link_comes_up_once_the_peer_starts() {
    let (ids, sockets, configs) = mesh(&["alpha", "bravo"]);
    let mut sockets = sockets.into_iter();
    let (alpha, arx) =
        QuicTransport::bind(ids[0].clone(), configs[0].clone(), sockets.next()).unwrap();
    let alpha = Node::start(alpha, arx);
    // Queued while bravo is not serving yet.
    alpha
        .t
        .send(&id("bravo"), TrafficClass::Control, b"early".to_vec())
        .unwrap();
    // Let alpha fail at least once against the silent socket.
    let failed = async {
        loop {
            if QuicStats::get(&alpha.t.stats().dial_failures) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(T, failed)
        .await
        .expect("a dial failure");
    assert_eq!(alpha.t.link_status(&id("bravo")), LinkStatus::Down);
    let (bravo, brx) =
        QuicTransport::bind(ids[1].clone(), configs[1].clone(), sockets.next()).unwrap();
    let mut bravo = Node::start(bravo, brx);
    let got = bravo.recv().await;
    assert_eq!(got.payload, b"early");
    assert!(
        tokio::time::timeout(T, alpha.t.wait_link(&id("bravo"), LinkStatus::Up))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn the_link_reconnects_after_the_peer_restarts() {
    let (ids, sockets, configs) = mesh(&["alpha", "bravo"]);
    let mut sockets = sockets.into_iter();
    let (alpha, arx) =
        QuicTransport::bind(ids[0].clone(), configs[0].clone(), sockets.next()).unwrap();
    let alpha = Node::start(alpha, arx);
    let bravo_sock = sockets.next().unwrap();
    let bravo_addr = bravo_sock.local_addr().unwrap();
    let (bravo, brx) =
        QuicTransport::bind(ids[1].clone(), configs[1].clone(), Some(bravo_sock)).unwrap();
    let mut bravo = Node::start(bravo, brx);
    alpha
        .t
        .send(&id("bravo"), TrafficClass::Control, b"one".to_vec())
        .unwrap();
    assert_eq!(bravo.recv().await.payload, b"one");

    // bravo dies: endpoint closed, tasks gone.
    bravo.tasks.shutdown().await;
    bravo.t.close();
    bravo.t.inner.endpoint.wait_idle().await;
    drop(bravo);
    assert!(
        tokio::time::timeout(T, alpha.t.wait_link(&id("bravo"), LinkStatus::Down))
            .await
            .unwrap()
    );

    // bravo comes back on the same address; alpha's backoff finds it.
    // quinn's endpoint driver lets go of the socket once it has seen the
    // last handle dropped; give it turns until it has (bounded).
    let mut sock = None;
    for _ in 0..10_000 {
        match UdpSocket::bind(bravo_addr) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
    let sock = sock.expect("bravo's address is free again");
    let (bravo, brx) = QuicTransport::bind(ids[1].clone(), configs[1].clone(), Some(sock)).unwrap();
    let mut bravo = Node::start(bravo, brx);
    assert!(
        tokio::time::timeout(T, alpha.t.wait_link(&id("bravo"), LinkStatus::Up))
            .await
            .unwrap()
    );
    alpha
        .t
        .send(&id("bravo"), TrafficClass::Control, b"two".to_vec())
        .unwrap();
    assert_eq!(bravo.recv().await.payload, b"two");
}

#[tokio::test]
async fn fault_plan_partitions_a_real_link() {
    let mut nodes = start_mesh(&["alpha", "bravo"]);
    let (a, b) = (id("alpha"), id("bravo"));
    nodes[0]
        .t
        .send(&b, TrafficClass::Control, b"before".to_vec())
        .unwrap();
    assert_eq!(nodes[1].recv().await.payload, b"before");
    let rule = nodes[0]
        .t
        .faults()
        .partition([a.clone()], [b.clone()])
        .unwrap();
    nodes[0]
        .t
        .send(&b, TrafficClass::Control, b"cut".to_vec())
        .unwrap();
    // alpha's plan also governs what alpha receives.
    nodes[1]
        .t
        .send(&a, TrafficClass::Control, b"cut too".to_vec())
        .unwrap();
    let both_dropped = async {
        while QuicStats::get(&nodes[0].t.stats().fault_drops) < 2 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(T, both_dropped)
        .await
        .expect("both payloads judged");
    assert!(nodes[0].t.faults().remove(rule));
    nodes[0]
        .t
        .send(&b, TrafficClass::Control, b"after".to_vec())
        .unwrap();
    nodes[1]
        .t
        .send(&a, TrafficClass::Control, b"after".to_vec())
        .unwrap();
    assert_eq!(
        nodes[1].recv().await.payload,
        b"after",
        "the cut payload never arrived"
    );
    assert_eq!(nodes[0].recv().await.payload, b"after");
    assert_eq!(QuicStats::get(&nodes[0].t.stats().fault_drops), 2);
}

/// The new fault rules reach QUIC through the same `judge` call: a
/// `Partial` rule that loses every payload cuts the real link, and one that
/// only delays holds the payload at least `delay_ms` before it leaves.
#[tokio::test]
async fn partial_fault_rule_loses_and_delays_on_a_real_link() {
    let mut nodes = start_mesh(&["alpha", "bravo"]);
    let (a, b) = (id("alpha"), id("bravo"));
    let partial = |delay_ms, loss| crate::FaultRule::Partial {
        from: crate::Selector::one(&a),
        to: crate::Selector::one(&b),
        fraction: 1.0,
        delay_ms,
        loss,
    };
    let lose_all = nodes[0].t.faults().add(partial(0, 1.0)).unwrap();
    nodes[0]
        .t
        .send(&b, TrafficClass::Control, b"lost".to_vec())
        .unwrap();
    assert_eq!(QuicStats::get(&nodes[0].t.stats().fault_drops), 1);
    assert!(nodes[0].t.faults().remove(lose_all));
    nodes[0].t.faults().add(partial(150, 0.0)).unwrap();
    let sent = Instant::now();
    nodes[0]
        .t
        .send(&b, TrafficClass::Control, b"late".to_vec())
        .unwrap();
    assert_eq!(
        nodes[1].recv().await.payload,
        b"late",
        "the lost payload arrived"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(150),
        "the affected payload left before its delay"
    );
    assert_eq!(QuicStats::get(&nodes[0].t.stats().fault_drops), 1);
}

#[test]
fn a_hello_is_accepted_only_from_the_dialled_facility_at_this_version_and_cluster() {
    let alpha = id("alpha");
    let ours = [7u8; 16];
    let hello = |f: FacilityId| Hello::booted(f, PROTOCOL_VERSION, 0, ours);
    let good = codec::encode(&hello(alpha.clone())).unwrap();
    assert_eq!(
        Hello::accept(&good, &alpha, &ours, PROTOCOL_VERSION).unwrap(),
        hello(alpha.clone())
    );

    let bad_hello =
        |body: &[u8], why: &str| match Hello::accept(body, &alpha, &ours, PROTOCOL_VERSION) {
            Err(DialError::BadHello(msg)) => msg,
            other => panic!("{why}: {other:?}"),
        };
    // Another facility (its certificate would have failed first; the
    // hello is checked all the same).
    let other = codec::encode(&hello(id("bravo"))).unwrap();
    assert!(bad_hello(&other, "another facility").contains("bravo"));
    // Another protocol version.
    let newer = codec::encode(&Hello {
        facility: alpha.clone(),
        protocol: PROTOCOL_VERSION + 1,
        boot: 7,
        cluster: ours,
    })
    .unwrap();
    bad_hello(&newer, "another version");
    // A version this build speaks, but not the one the connection
    // negotiated.
    let older = codec::encode(&Hello::booted(alpha.clone(), PROTOCOL_MIN, 0, ours)).unwrap();
    assert!(bad_hello(&older, "not the negotiated version").contains("connection's is"));
    // Another cluster: named, both ids shown.
    let foreign =
        codec::encode(&Hello::booted(alpha.clone(), PROTOCOL_VERSION, 0, [9; 16])).unwrap();
    let msg = bad_hello(&foreign, "another cluster");
    assert!(
        msg.contains(&cluster_text(&[9; 16])) && msg.contains(&cluster_text(&ours)),
        "{msg}"
    );
    // Trailing bytes, a truncated body, an id that is not a facility id,
    // a body over the limit, nothing at all.
    let mut trailing = good.clone();
    trailing.push(0);
    bad_hello(&trailing, "trailing byte");
    bad_hello(&good[..good.len() - 1], "truncated");
    let upper = codec::encode(&("ALPHA".to_string(), PROTOCOL_VERSION)).unwrap();
    bad_hello(&upper, "invalid facility id");
    bad_hello(&vec![1u8; HELLO_LEN_MAX + 1], "oversized");
    bad_hello(&[], "empty");
}

#[test]
fn cluster_ids_read_and_print_as_32_hex_digits() {
    let id = parse_cluster("00112233445566778899aabbccddeeff").unwrap();
    assert_eq!(cluster_text(&id), "00112233445566778899aabbccddeeff");
    for bad in [
        "",
        "0011",
        "zz112233445566778899aabbccddeeff",
        "00112233445566778899aabbccddeeff00",
    ] {
        assert!(parse_cluster(bad).is_err(), "{bad}");
    }
}

#[test]
fn config_validation_names_the_problem() {
    let me = id("alpha");
    let pin = Identity::generate(id("bravo")).unwrap().pin();
    let peer = |name: &str| PeerSpec {
        id: id(name),
        addr: "127.0.0.1:1".parse().unwrap(),
        pin,
        pin_next: None,
        host: None,
    };
    let cfg = |peers| QuicConfig {
        peers,
        ..QuicConfig::default()
    };
    assert!(cfg(vec![peer("bravo")]).validate(&me).is_ok());
    let e = cfg(vec![peer("alpha")]).validate(&me).unwrap_err();
    assert!(e.to_string().contains("is this facility"), "{e}");
    let e = cfg(vec![peer("bravo"), peer("bravo")])
        .validate(&me)
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let e = cfg(vec![peer("bravo"), peer("charlie")])
        .validate(&me)
        .unwrap_err();
    assert!(e.to_string().contains("pin"), "{e}");
    let e = QuicConfig {
        keep_alive: Duration::from_secs(20),
        ..QuicConfig::default()
    }
    .validate(&me)
    .unwrap_err();
    assert!(e.to_string().contains("keep_alive"), "{e}");
}

#[test]
fn backoff_is_capped_and_jittered() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let ident = Identity::generate(id("alpha")).unwrap();
    let cfg = QuicConfig {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        seed: Some(1),
        ..QuicConfig::default()
    };
    let (t, _rx) = QuicTransport::bind(ident, cfg, None).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for attempt in 0..40 {
        let d = t.inner.backoff(attempt);
        let cap = Duration::from_millis(100)
            .saturating_mul(1 << attempt.min(16))
            .min(Duration::from_secs(2));
        assert!(
            d >= cap / 2 && d <= cap,
            "attempt {attempt}: {d:?} outside [{:?}, {cap:?}]",
            cap / 2
        );
        seen.insert(d);
    }
    assert!(seen.len() > 20, "jitter spreads the delays");
}

/// alpha, dialling bravo (which only accepts) whose certificate is
/// `bravo_as`, with `pin_next` in alpha's spec for it.
fn dial_rotated(bravo_as: Identity, pin_next: Option<Pin>) -> (Node, Node) {
    let (ids, sockets, mut configs) = mesh(&["alpha", "bravo"]);
    configs[0].peers[0].pin_next = pin_next;
    let mut it = ids.into_iter().zip(sockets).zip(configs);
    let ((alpha, sa), ca) = it.next().unwrap();
    let ((_, sb), cb) = it.next().unwrap();
    let (ta, rxa) = QuicTransport::bind(alpha, ca, Some(sa)).unwrap();
    let a = Node::start(ta, rxa);
    // bravo only accepts: every connection is alpha's dial.
    let (tb, rxb) = QuicTransport::bind(bravo_as, cb, Some(sb)).unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(tb.accept_driver().unwrap());
    (
        a,
        Node {
            t: tb,
            rx: rxb,
            tasks,
        },
    )
}

/// A peer that rotated its certificate is dialled and accepted under the
/// new pin while the config lists it as `pin_next` (the old one still as
/// `pin`): a certificate rotation without downtime. A certificate under
/// neither pin is refused.
#[tokio::test]
async fn a_peer_is_dialled_under_its_next_pin_during_a_certificate_rotation() {
    let rotated = Identity::generate(id("bravo")).unwrap();
    let pin = rotated.pin();
    let (a, mut b) = dial_rotated(rotated, Some(pin));
    a.t.send(&id("bravo"), TrafficClass::Control, b"rotated".to_vec())
        .unwrap();
    let got = b.recv().await;
    assert_eq!((got.from, got.payload), (id("alpha"), b"rotated".to_vec()));

    // Under neither pin: refused, nothing arrives.
    let (a, mut b) = dial_rotated(Identity::generate(id("bravo")).unwrap(), None);
    a.t.send(&id("bravo"), TrafficClass::Control, b"no".to_vec())
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), b.rx.recv())
            .await
            .is_err(),
        "a certificate under neither pin was accepted"
    );
}

/// A rolling upgrade's mixed cluster: alpha speaks up to version 5 (as a
/// version-5 build does: it offers only `bulwark/1`), bravo and charlie up
/// to this build's version. Every pair links, payloads flow both ways, and
/// each link runs at the newest version both ends speak: 5 with alpha, the
/// newest between bravo and charlie.
#[tokio::test]
async fn links_run_at_the_newest_version_both_ends_speak() {
    let names = ["alpha", "bravo", "charlie"];
    let (ids, sockets, mut configs) = mesh(&names);
    configs[0].protocol_max = PROTOCOL_MIN;
    let mut nodes: Vec<Node> = ids
        .into_iter()
        .zip(sockets)
        .zip(configs)
        .map(|((ident, sock), cfg)| {
            let (t, rx) = QuicTransport::bind(ident, cfg, Some(sock)).unwrap();
            Node::start(t, rx)
        })
        .collect();
    let fids: Vec<FacilityId> = names.iter().map(|n| id(n)).collect();
    for (i, node) in nodes.iter().enumerate() {
        for (j, to) in fids.iter().enumerate() {
            if i != j {
                node.t
                    .send(to, TrafficClass::Control, vec![i as u8, j as u8])
                    .unwrap();
            }
        }
    }
    for (j, node) in nodes.iter_mut().enumerate() {
        let mut got: Vec<Vec<u8>> = vec![node.recv().await.payload, node.recv().await.payload];
        got.sort();
        let want: Vec<Vec<u8>> = (0..3)
            .filter(|i| *i != j)
            .map(|i| vec![i as u8, j as u8])
            .collect();
        assert_eq!(got, want, "{} heard from both others", fids[j]);
    }
    let version = |a: usize, b: usize| nodes[a].t.peer_protocol(&fids[b]);
    assert_eq!((version(0, 1), version(1, 0)), (PROTOCOL_MIN, PROTOCOL_MIN));
    assert_eq!((version(0, 2), version(2, 0)), (PROTOCOL_MIN, PROTOCOL_MIN));
    assert_eq!(
        (version(1, 2), version(2, 1)),
        (PROTOCOL_VERSION, PROTOCOL_VERSION)
    );
    assert_eq!(nodes[1].t.peer_protocol(&id("nobody")), PROTOCOL_MIN);
}

#[test]
fn a_protocol_max_outside_the_spoken_versions_is_refused() {
    let local = id("alpha");
    for bad in [PROTOCOL_MIN - 1, PROTOCOL_VERSION + 1] {
        let c = QuicConfig {
            protocol_max: bad,
            ..test_config()
        };
        assert!(
            matches!(c.validate(&local), Err(QuicError::Config(m)) if m.contains("protocol_max")),
            "{bad}"
        );
    }
    assert_eq!(version_of_alpn(b"bulwark/1"), Some(5));
    assert_eq!(
        version_of_alpn(&alpn_of(PROTOCOL_VERSION)),
        Some(PROTOCOL_VERSION)
    );
    assert_eq!(version_of_alpn(b"bulwark/99"), None);
}
