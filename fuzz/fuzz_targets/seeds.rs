//! Writes the seed corpus, `fuzz/corpus/<target>/`: a few valid values of
//! each type (signed with the keys of `bulwark_fuzz::rings`), so each
//! fuzzer starts from inputs that decode and verify.
//!
//! It is built like the targets (cargo-fuzz instruments every binary of
//! this crate, so it links libFuzzer): run it once from `fuzz/` with
//! `cargo +nightly fuzz run seeds -- -runs=1`.

// raft-rs's protobuf structs are built with `default()` and field writes.
#![allow(clippy::field_reassign_with_default)]
#![no_main]

use std::path::Path;

use bulwark::http::chaos::ChaosAction;
use bulwark_actors::bft::wire::BftWire;
use bulwark_actors::bft::LedgerStore;
use bulwark_actors::chaos::inject::{Condition, Lifetime, ScheduledFault, Timing};
use bulwark_actors::chaos::propagation::{default_rules, Direction, Effect, Rule, Trigger};
use bulwark_actors::detect::actor::Heartbeat;
use bulwark_actors::flow::mesh::MeshWire;
use bulwark_actors::hlc::Hlc;
use bulwark_actors::keys::Domain;
use bulwark_actors::ledger::{
    admit, Certificate, FinalEntry, Link, SignedProposal, Verdict, Vote, VoteBody,
};
use bulwark_actors::raft::wire::{
    WireConfChangeSingle, WireConfChangeV2, WireConfState, WireEntry, WireEntryData, WireMessage,
    WireSnapshot,
};
use bulwark_actors::raft::{EntryPayload, RaftWire, Refusal};
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, Op, Person, PersonId, Pool, Role, ScheduleState,
};
use bulwark_fuzz::{ids, keys, rings};
use bulwark_runtime::builtin::ProbeWire;
use bulwark_runtime::{Address, Envelope, Kind};
use bulwark_storage::{codec, DiskFaultSpec, Store};
use bulwark_transport::quic::{Hello, PROTOCOL_MIN, PROTOCOL_VERSION};
use bulwark_transport::simnet::LinkSpec;
use bulwark_transport::{frame, FaultRule, Selector};
use serde_json::json;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v).expect("encodes")
}

/// Two signed proposals admitted into a chain, certified by two signers.
fn chain() -> (Vec<Vec<u8>>, Vec<Link>, Vec<FinalEntry>) {
    let rings = rings();
    let ids = ids();
    let keys = keys();
    let mut state = ScheduleState::new();
    let (mut proposals, mut links, mut finals) = (Vec::new(), Vec::new(), Vec::new());
    let ops = [
        Op::AddPerson(Person {
            id: "p0".parse::<PersonId>().expect("id"),
            name: "Person 0".into(),
            role: Role::Resident { pgy: 2 },
        }),
        Op::AddBlock(Block {
            id: "b1".parse::<BlockId>().expect("id"),
            day: 1,
            start_min: 0,
            duration_min: 60,
            pool: Pool::Clinic,
            required: 1,
        }),
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let proposer = ids[i % 3].clone();
        let payload = EntryPayload {
            proposer: proposer.clone(),
            seq: i as u64,
            anchor: state.chain().anchor(),
            command: Command {
                key: IdempotencyKey([i as u8; 16]),
                issued_by: proposer.clone(),
                at_unix_ms: 1_000 + i as u64,
                hlc: Hlc::ZERO,
                op,
            },
        };
        let body = enc(&payload);
        let sig = rings[&proposer].sign(Domain::Proposal, &body);
        let data = enc(&SignedProposal { body, sig });
        let Verdict::Admitted(link) = admit(
            &mut state,
            &bulwark_actors::epoch::ValidatorSet::genesis(keys.clone()),
            i as u64 + 1,
            1,
            &data,
        )
        .verdict
        else {
            panic!("seed entry {i} not admitted")
        };
        let votes = ids[..2]
            .iter()
            .map(|s| {
                let body = VoteBody {
                    signer: s.clone(),
                    height: link.entry.height,
                    hash: link.hash,
                    prev: link.entry.prev,
                };
                Vote::sign(&rings[s], &body).expect("signs")
            })
            .collect();
        finals.push(FinalEntry {
            entry: link.bytes.clone(),
            cert: Certificate {
                height: link.entry.height,
                hash: link.hash,
                prev: link.entry.prev,
                votes,
            },
        });
        proposals.push(data);
        links.push(link);
    }
    (proposals, links, finals)
}

fn raft_messages() -> Vec<WireMessage> {
    let base = WireMessage {
        msg_type: 3,
        to: 2,
        from: 1,
        term: 4,
        log_term: 3,
        index: 9,
        entries: vec![
            WireEntry {
                term: 4,
                index: 10,
                data: WireEntryData::Normal(b"schedule".to_vec()),
                context: Vec::new(),
            },
            WireEntry {
                term: 4,
                index: 11,
                data: WireEntryData::ConfChangeV2(WireConfChangeV2 {
                    transition: 0,
                    changes: vec![WireConfChangeSingle {
                        change_type: 0,
                        node_id: 4,
                    }],
                    context: Vec::new(),
                }),
                context: Vec::new(),
            },
        ],
        commit: 9,
        commit_term: 3,
        snapshot: None,
        request_snapshot: 0,
        reject: false,
        reject_hint: 0,
        context: Vec::new(),
        priority: 0,
    };
    let snapshot = WireMessage {
        msg_type: 7,
        entries: Vec::new(),
        snapshot: Some(WireSnapshot {
            index: 40,
            term: 3,
            conf_state: WireConfState {
                voters: vec![1, 2, 3],
                ..WireConfState::default()
            },
            data: b"state".to_vec(),
        }),
        ..base.clone()
    };
    let vote = WireMessage {
        msg_type: 17,
        entries: Vec::new(),
        reject: true,
        reject_hint: 8,
        priority: -1,
        ..base.clone()
    };
    vec![base, snapshot, vote]
}

fn small_ledger_file(finals: &[FinalEntry]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("bulwark-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("ledger.redb");
    let _ = std::fs::remove_file(&path);
    {
        let store = Store::open(&path, "alpha").expect("store").store;
        let rows: Vec<(u64, FinalEntry)> = finals
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, f)| (i as u64 + 1, f))
            .collect();
        LedgerStore::new(store)
            .append_finals(&rows)
            .expect("append");
    }
    let bytes = std::fs::read(&path).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// The shipped experiments, and the skew review found (`i64::MIN` has no
/// absolute value, so it passed the one-day check; tests/fuzz_regressions.rs).
fn experiment_seeds() {
    let mut files: Vec<_> = std::fs::read_dir("../experiments")
        .expect("experiments/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().expect("name").to_string_lossy();
        write("experiment", &name, &std::fs::read(&path).expect("read"));
    }
    let skew = std::fs::read_to_string("../experiments/clock_skew.toml").expect("toml");
    assert!(skew.contains("skew_ms = 5000"), "clock_skew.toml changed");
    let skew_min = skew.replace("skew_ms = 5000", "skew_ms = -9223372036854775808");
    write(
        "experiment",
        "regression-skew-min.toml",
        skew_min.as_bytes(),
    );
    // No shipped experiment has a [schedule]: one of each timing and
    // lifetime, with nested conditions, on the partition experiment.
    let partition = std::fs::read_to_string("../experiments/partition.toml").expect("toml");
    let when = r#"timing = { when = { all = [{ above = { metric = "probes", value = 10 } },
    { any = [{ below = { metric = "commit", value = 1e3 } }, { at_least_ms = { ms = 500 } }] }] } }
lifetime = { until = { above = { metric = "error_rate", value = 0.2 } } }
"#;
    let chance = r#"timing = { chance = { probability = 0.25, every_ms = 500 } }
lifetime = { fixed = { ms = 2000 } }
"#;
    let at = "timing = { at = { ms = 1000 } }\nlifetime = \"permanent\"\n";
    for (name, schedule) in [("when", when), ("chance", chance), ("at", at)] {
        let text = format!("{partition}\n[schedule]\n{schedule}");
        write(
            "experiment",
            &format!("schedule-{name}.toml"),
            text.as_bytes(),
        );
    }
}

/// One fault rule of each kind.
fn fault_rules() -> Vec<FaultRule> {
    let (a, b) = (ids()[0].clone(), ids()[1].clone());
    vec![
        FaultRule::Partition {
            side_a: [a.clone()].into(),
            side_b: [b.clone()].into(),
            one_way: false,
        },
        FaultRule::Slow {
            from: Selector::one(&a),
            to: Selector::Any,
            delay_ms: 200,
            ramp_ms: Some(1_000),
        },
        FaultRule::Partial {
            from: Selector::Any,
            to: Selector::one(&b),
            fraction: 0.3,
            delay_ms: 40,
            loss: 0.5,
        },
        FaultRule::Drop {
            from: Selector::Any,
            to: Selector::Any,
            probability: 0.2,
            class: None,
        },
        FaultRule::Delay {
            from: Selector::one(&b),
            to: Selector::one(&a),
            delay_ms: 150,
        },
    ]
}

/// A body for every lever (a rule of each kind), the skew review found,
/// and the coverage queries.
fn chaos_body_seeds() {
    let mut bodies: Vec<(String, serde_json::Value)> = fault_rules()
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let action = ChaosAction::FaultRule { rule };
            (format!("rule-{i}.json"), json!({ "action": action }))
        })
        .collect();
    let disk = json!({"kind": "disk", "latency_ms": 0, "write_failure": 0.25, "seed": 9});
    let kill = json!({"kind": "kill_actor", "zone": "consensus", "name": "raft"});
    bodies.extend([
        (
            "disk.json".into(),
            json!({"action": {"kind": "disk", "latency_ms": 500}}),
        ),
        (
            "disk-failing.json".into(),
            json!({"action": disk, "dead_man_ms": 60_000}),
        ),
        (
            "skew.json".into(),
            json!({"action": {"kind": "clock_skew", "skew_ms": 5000}}),
        ),
        (
            "behaviour.json".into(),
            json!({"action": {"kind": "behaviour", "behaviour": "equivocate"}}),
        ),
        ("kill.json".into(), json!({"action": kill})),
        (
            "clear.json".into(),
            json!({"action": {"kind": "clear"}, "dead_man_ms": 1}),
        ),
        (
            "regression-skew-min.json".into(),
            json!({"action": {"kind": "clock_skew", "skew_ms": i64::MIN}}),
        ),
    ]);
    for (name, body) in bodies {
        write("chaos_body", &name, body.to_string().as_bytes());
    }
    write("chaos_body", "coverage-1", b"lose=1");
    write("chaos_body", "coverage-2", b"lose=2");
}

/// `value` for `chaos_specs` of `kind`, in both formats (first byte:
/// kind << 1, | 1 for JSON).
fn spec<T: serde::Serialize>(kind: u8, name: &str, value: &T) {
    let json = serde_json::to_vec(value).expect("json");
    write(
        "chaos_specs",
        &format!("{name}.bin"),
        &[&[kind << 1][..], &enc(value)].concat(),
    );
    write(
        "chaos_specs",
        &format!("{name}.json"),
        &[&[kind << 1 | 1][..], &json].concat(),
    );
}

/// Every link preset, a disk fault, a schedule of three faults (each
/// timing and lifetime), a nested condition, and the default rules plus one.
fn chaos_specs_seeds() {
    let links = [
        ("same-datacenter", LinkSpec::same_datacenter()),
        ("cross-region", LinkSpec::cross_region()),
        ("public-internet", LinkSpec::public_internet()),
        ("congested", LinkSpec::congested()),
    ];
    for (name, link) in links {
        spec(0, &format!("link-{name}"), &link);
    }
    let disk = DiskFaultSpec {
        latency_ms: 500,
        write_failure: 0.1,
        seed: 4,
    };
    spec(1, "disk", &disk);
    let slow_queue = Condition::All(vec![
        Condition::Above {
            metric: "queue".into(),
            value: 100.0,
        },
        Condition::Any(vec![
            Condition::Below {
                metric: "error_rate".into(),
                value: 0.5,
            },
            Condition::AtLeastMs { ms: 2_000 },
        ]),
    ]);
    let rules = fault_rules();
    let scheduled = |id: &str, fault: &FaultRule, timing, duration| ScheduledFault {
        id: id.into(),
        fault: fault.clone(),
        timing,
        duration,
    };
    let schedule = vec![
        scheduled(
            "cut",
            &rules[0],
            Timing::At { ms: 1_000 },
            Lifetime::Fixed { ms: 5_000 },
        ),
        scheduled(
            "flaky",
            &rules[2],
            Timing::Chance {
                probability: 0.3,
                every_ms: 500,
            },
            Lifetime::Until(Condition::AtLeastMs { ms: 30_000 }),
        ),
        scheduled(
            "slow",
            &rules[1],
            Timing::When(slow_queue.clone()),
            Lifetime::Permanent,
        ),
    ];
    spec(2, "schedule", &schedule);
    spec(3, "condition", &slow_queue);
    let mut rules = default_rules();
    rules.push(Rule {
        name: "load_back".into(),
        trigger: Trigger::QueueDepth { above: 500 },
        direction: Direction::ToDependencies,
        effect: Effect::Fail,
        delay_ms: 250,
    });
    spec(4, "rules", &rules);
}

fn write_all() {
    let (proposals, links, finals) = chain();
    let alpha = ids()[0].clone();
    let ping = enc(&ProbeWire::Ping { nonce: 7 });
    let envelope = Envelope {
        from: alpha.clone(),
        to: Address::new(ids()[1].clone(), "probe"),
        trace_id: 1,
        deadline_unix_ms: Some(5_000),
        kind: Kind::Request { corr: 3 },
        body: ping.clone(),
    };
    write("frame", "hello", &frame::encode(b"hello").expect("frame"));
    write(
        "frame",
        "envelope",
        &frame::encode(&enc(&envelope)).expect("frame"),
    );
    write("envelope", "request", &enc(&envelope));
    let refused = Envelope {
        kind: Kind::Refused {
            corr: 3,
            reason: bulwark_runtime::Refusal::Overloaded,
        },
        deadline_unix_ms: None,
        body: enc(&ProbeWire::Pong {
            nonce: 7,
            facility: alpha.clone(),
        }),
        ..envelope.clone()
    };
    write("envelope", "refused", &enc(&refused));
    write("envelope", "ping", &ping);

    for (i, m) in raft_messages().into_iter().enumerate() {
        write("raft_mirror", &format!("message-{i}"), &enc(&m));
        write(
            "raft_wire",
            &format!("raft-{i}"),
            &enc(&RaftWire::Raft(Box::new(m))),
        );
    }
    write(
        "raft_wire",
        "forward",
        &enc(&RaftWire::Forward {
            payload: proposals[0].clone(),
        }),
    );
    write(
        "raft_wire",
        "refused",
        &enc(&RaftWire::ForwardRefused {
            seq: 3,
            refusal: Refusal::NotLeader {
                hint: Some(ids()[1].clone()),
            },
        }),
    );
    write("raft_wire", "proposal", &proposals[1]);

    let cert = &finals[0].cert;
    write(
        "bft_wire",
        "votes",
        &enc(&BftWire::Votes(cert.votes.clone())),
    );
    write("bft_wire", "finals", &enc(&BftWire::Finals(finals.clone())));
    write("bft_wire", "head", &enc(&BftWire::Head { height: 2 }));
    write(
        "bft_wire",
        "head_of",
        &enc(&BftWire::HeadOf {
            height: 2,
            holds: 2,
        }),
    );
    write(
        "bft_wire",
        "fetch",
        &enc(&BftWire::Fetch { from: 1, max: 16 }),
    );
    write(
        "bft_wire",
        "entry",
        &enc(&BftWire::Entry(links[1].bytes.clone())),
    );
    for (i, f) in finals.iter().enumerate() {
        write("certificate", &format!("certificate-{i}"), &enc(&f.cert));
    }
    write("certificate", "vote", &enc(&cert.votes[0]));

    let hb = Heartbeat {
        seq: 12,
        hlc: Hlc {
            wall_ms: 1_700_000_000_000,
            logical: 2,
            node: 99,
        },
        suspects: vec![ids()[2].clone()],
    };
    write("heartbeat", "suspects", &enc(&hb));
    for id in ids() {
        write(
            "hello",
            id.as_str(),
            &enc(&Hello::booted(id.clone(), PROTOCOL_VERSION, 7, [7; 16])),
        );
    }
    write(
        "hello",
        "oldest-version",
        &enc(&Hello::booted(ids()[0].clone(), PROTOCOL_MIN, 7, [7; 16])),
    );
    write(
        "hello",
        "newer-version",
        &enc(&Hello {
            facility: ids()[0].clone(),
            protocol: PROTOCOL_VERSION + 1,
            boot: 7,
            cluster: [7; 16],
        }),
    );
    write(
        "heartbeat",
        "quiet",
        &enc(&Heartbeat {
            suspects: Vec::new(),
            ..hb
        }),
    );
    write(
        "mesh_wire",
        "open",
        &enc(&MeshWire {
            dependency: "ehr".into(),
            state: "open".into(),
            at_unix_ms: 1_700_000_000_000,
        }),
    );
    write(
        "mesh_wire",
        "closed",
        &enc(&MeshWire {
            dependency: "pager".into(),
            state: "closed".into(),
            at_unix_ms: 5,
        }),
    );

    let config = r#"[facility]
id = "alpha"
data_dir = "alpha"
quic_listen = "127.0.0.1:7401"
http_listen = "127.0.0.1:8401"
key = "alpha/facility.key"
cert = "alpha/facility.crt"
vote_key = "alpha/vote.key"

[[peer]]
id = "bravo"
addr = "127.0.0.1:7402"
pin = "blake3:0000000000000000000000000000000000000000000000000000000000000000"
vote_key = "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
"#;
    write("config", "minimal", config.as_bytes());
    let with_env = format!("{config}\0BULWARK_FACILITY__HTTP_LISTEN=127.0.0.1:9000\n");
    write("config", "env-override", with_env.as_bytes());

    let ledger = small_ledger_file(&finals);
    println!("ledger seed: {} bytes", ledger.len());
    write("ledger_verify", "empty", b"");
    write("ledger_verify", "ledger", &ledger);
    // The header pages only: a file redb recognises and cannot read.
    write(
        "ledger_verify",
        "header",
        &ledger[..ledger.len().min(4_096)],
    );
    experiment_seeds();
    chaos_body_seeds();
    chaos_specs_seeds();
}

libfuzzer_sys::fuzz_target!(|_data: &[u8]| {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(write_all);
});
