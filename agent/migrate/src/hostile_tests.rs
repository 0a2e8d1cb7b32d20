//! A hostile peer: a node with its own certificate of the cluster CA that sends what no honest
//! source sends. Every attempt is refused, nothing is written outside the staging area, and
//! the receiving side goes on serving honest transfers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::journal::{now_ms, Journal, TargetEntry, TargetPhase};
use super::protocol::{Handoff, Msg, Switched, HANDOFF, SERVICE};
use super::scan::FileMeta;
use super::*;
use godwit_runtime::service::{Manager, Runtime, ServiceSpec, ServicesSection};
use godwit_transport::testing::{node, pki, serve, Pki};
use godwit_transport::{open, Endpoint, Peer, Piece, Services};

struct Rig {
    _pki: Pki,
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
    /// `a`: the honest source; `c`: another node of the same CA.
    a: Endpoint,
    c: Endpoint,
    b_addr: std::net::SocketAddr,
    /// `b`'s switch latencies as a target.
    switches: Arc<agent::SwitchHistory>,
    _server: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    async fn peer(&self, from: &Endpoint) -> Peer {
        from.connect(self.b_addr, "b").await.unwrap()
    }

    /// Everything under the state root, relative.
    fn tree(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                out.insert(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
}

/// Node `b` receives migrations with its journal and a service manager (no cgroup is ever
/// touched: every request here is refused before a start).
async fn rig() -> Rig {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (node(&p, "a"), node(&p, "b"), node(&p, "c"));
    let root = dir.path().join("state");
    std::fs::create_dir_all(&root).unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("journal")).unwrap());
    let manager = Manager::new(Runtime {
        node: "b".into(),
        v2_root: dir.path().join("no-cgroup"),
        memory_v1_root: None,
        cpu_v1_root: None,
        section: ServicesSection {
            state_root: root.clone(),
            max_state_bytes: 1 << 20,
            ..ServicesSection::default()
        },
        images: None,
        run_root: dir.path().join("run"),
        default_user: Ok(godwit_runtime::service::Identity::current()),
    });
    let tasks = Tasks::default();
    let (pending, _rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(_rx);
    let services = Services::default();
    register_with(
        &services,
        root,
        Some(TargetHooks {
            journal: journal.clone(),
            pending,
            manager: Some(manager.clone()),
            tasks: tasks.clone(),
        }),
    );
    let target = agent::Target::new(journal.clone(), manager, tasks, None);
    let switches = Arc::new(agent::SwitchHistory::default());
    target.keep_switches(switches.clone());
    agent::register_handoff(&services, target);
    let server = serve(&b, services);
    let b_addr = b.local_addr().unwrap();
    Rig {
        _pki: p,
        dir,
        journal,
        a,
        c,
        b_addr,
        switches,
        _server: server,
    }
}

fn spec(name: &str) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "command": ["/bin/true"],
        "state": ["data"],
    }))
    .unwrap()
}

fn file(rel: &str, size: u64, mode: u32) -> FileMeta {
    FileMeta {
        rel: rel.into(),
        size: Some(size),
        mode,
    }
}

/// A raw piece of `data` at `offset` of listed file `file`.
fn piece(file: u32, offset: u64, data: Vec<u8>) -> Piece {
    Piece::pack(file, offset, data, None)
}

/// Opens a transfer of `service` as `migration` from `from` with `spec`: the receiver's
/// answer to the `Begin` when it refused at once, else the open channel.
async fn begin(
    rig: &Rig,
    from: &Endpoint,
    migration: &str,
    service: &str,
    spec: Option<ServiceSpec>,
) -> Result<godwit_transport::Channel, String> {
    let peer = rig.peer(from).await;
    let mut ch = open(&peer, SERVICE).await.unwrap();
    ch.send(&Msg::Begin {
        migration: migration.into(),
        service: service.into(),
        spec: spec.map(Box::new),
        replace: false,
    })
    .await
    .unwrap();
    match ch.recv::<Msg>().await {
        Ok(Some(Msg::Failed { reason })) => Err(reason),
        Ok(Some(Msg::Begun)) => Ok(ch),
        other => panic!("unexpected answer to Begin: {other:?}"),
    }
}

/// Sends a round's listing (and `pieces`); the receiver's failure, if it failed.
async fn round(
    ch: &mut godwit_transport::Channel,
    files: Vec<FileMeta>,
    pieces: Vec<Piece>,
) -> Result<(), String> {
    ch.send(&Msg::Round { round: 0, files }).await.unwrap();
    for p in &pieces {
        if ch.write_piece(p).await.is_err() {
            break;
        }
    }
    let _ = ch.write_pieces_end().await;
    match ch.recv::<Msg>().await {
        Ok(Some(Msg::RoundDone { .. })) => Ok(()),
        Ok(Some(Msg::Failed { reason })) => Err(reason),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_sender_is_refused_and_writes_nothing_outside_the_staging_area() {
    let rig = rig().await;
    // Another service's state lives here.
    std::fs::create_dir_all(rig.root().join("other/data")).unwrap();
    std::fs::write(rig.root().join("other/data/db"), b"precious").unwrap();

    // Refused at the Begin.
    let refused = [
        ("m-name", "kv", Some(spec("other"))),
        ("m-other", "other", Some(spec("other"))),
        ("m-other2", "other", None),
        ("m-host", "kv", {
            let mut s = spec("kv");
            s.image = Some("/etc".into());
            Some(s)
        }),
        ("../m", "kv", None),
        ("m-bad", "../kv", None),
        ("m-empty", "", None),
    ];
    for (id, service, spec) in refused {
        let why = begin(&rig, &rig.c, id, service, spec).await.err();
        assert!(why.is_some(), "{id} {service:?}: accepted");
    }

    // Refused at the listing or at a piece: each on a fresh migration.
    let listings: Vec<(&str, Vec<FileMeta>, Vec<Piece>)> = vec![
        (
            "climbs",
            vec![file("data/../../escape", 4096, 0o644)],
            vec![],
        ),
        ("absolute", vec![file("/etc/escape", 4096, 0o644)], vec![]),
        ("empty", vec![file("", 4096, 0o644)], vec![]),
        ("dot", vec![file("data/./x", 4096, 0o644)], vec![]),
        (
            "file-and-dir",
            vec![
                file("data/x", 4096, 0o644),
                FileMeta {
                    rel: "data/x".into(),
                    size: None,
                    mode: 0o755,
                },
            ],
            vec![],
        ),
        (
            "under-a-file",
            vec![file("data/x", 4096, 0o644), file("data/x/y", 4096, 0o644)],
            vec![],
        ),
        ("huge", vec![file("data/huge", 16 << 40, 0o644)], vec![]),
        (
            "too-much-in-all",
            vec![
                file("data/a", 768 << 10, 0o644),
                file("data/b", 768 << 10, 0o644),
            ],
            vec![],
        ),
        (
            "offset-wraps",
            vec![file("data/x", 8192, 0o644)],
            vec![piece(0, u64::MAX - 4095, vec![7u8; 4096])],
        ),
        (
            "past-the-end",
            vec![file("data/x", 8192, 0o644)],
            vec![piece(0, 8192, vec![7u8; 4096])],
        ),
        (
            "not-listed",
            vec![file("data/x", 8192, 0o644)],
            vec![piece(5, 0, vec![7u8; 4096])],
        ),
    ];
    for (id, files, pieces) in listings {
        let mut ch = begin(&rig, &rig.c, &format!("m-{id}"), "kv", Some(spec("kv")))
            .await
            .unwrap_or_else(|e| panic!("{id}: Begin refused: {e}"));
        let got = round(&mut ch, files, pieces).await;
        assert!(got.is_err(), "{id}: accepted");
        drop(ch);
        // The receiver cleans up once the channel ends.
        let clean = || {
            !rig.tree()
                .iter()
                .any(|p| p.starts_with("state/kv") && p != "state/kv")
        };
        for _ in 0..200 {
            if clean() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(clean(), "{id}: left {:?}", rig.tree());
    }

    // Nothing outside the staging area, and no staging area left either.
    let tree = rig.tree();
    let outside: Vec<&String> = tree
        .iter()
        .filter(|p| !p.starts_with("journal") && !p.starts_with("state/other"))
        .filter(|p| !p.starts_with("no-cgroup"))
        // The empty directory a start forked ahead makes.
        .filter(|p| !["state", "state/kv"].contains(&p.as_str()))
        .collect();
    assert!(outside.is_empty(), "written: {outside:?}");
    assert_eq!(
        std::fs::read(rig.root().join("other/data/db")).unwrap(),
        b"precious"
    );
    assert!(!Path::new("/etc/escape").exists());

    // The receiver is alive: an honest transfer still commits.
    let src = rig.dir.path().join("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/db"), vec![5u8; 20_000]).unwrap();
    let peer = rig.peer(&rig.a).await;
    let scan = StateScan::new(&src, &["data".into()]).unwrap();
    let mut tx =
        StateSender::begin_with_spec(&peer, "m-honest", "kv", Some(spec("kv")), false, scan, None)
            .await
            .unwrap();
    tx.round().await.unwrap();
    tx.verify().await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        std::fs::read(rig.root().join("kv/data/db")).unwrap(),
        vec![5u8; 20_000]
    );
}

/// Asks `b`'s hand-off service `request` from `from`; the answer.
async fn ask(rig: &Rig, from: &Endpoint, request: Handoff) -> Handoff {
    let peer = rig.peer(from).await;
    let mut ch = open(&peer, HANDOFF).await.unwrap();
    ch.send(&request).await.unwrap();
    ch.recv::<Handoff>().await.unwrap().unwrap()
}

fn entry(rig: &Rig, id: &str, phase: TargetPhase) -> TargetEntry {
    TargetEntry {
        migration: id.into(),
        service: "kv".into(),
        from: "a".into(),
        phase,
        staging: rig.root().join(format!("kv.staging-{id}")),
        dest: rig.root().join("kv"),
        staging_id: None,
        spec: None,
        at_unix_ms: now_ms(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_source_hands_off_abandons_or_forgets_and_outcomes_are_kept() {
    let rig = rig().await;
    for (id, phase) in [
        ("m-prepared", TargetPhase::Prepared),
        ("m-started", TargetPhase::Started),
    ] {
        let g = rig.journal.lock(id).await;
        g.put_target(&entry(&rig, id, phase)).unwrap();
    }
    std::fs::create_dir_all(rig.root().join("kv/data")).unwrap();

    // Another node of the cluster moves nothing: refused, and the journal is unchanged.
    for request in [
        Handoff::Start {
            migration: "m-prepared".into(),
            spec: Box::new(spec("kv")),
            timings: None,
        },
        Handoff::Abandon {
            migration: "m-prepared".into(),
        },
        Handoff::Abandon {
            migration: "m-started".into(),
        },
        Handoff::Forget {
            migration: "m-started".into(),
            switched: Some(Switched {
                mode: SwitchMode::Transitional,
                downtime_s: 9.0,
            }),
        },
    ] {
        let answer = ask(&rig, &rig.c, request).await;
        assert!(matches!(answer, Handoff::Refused { .. }), "{answer:?}");
    }
    assert_eq!(
        rig.journal.target("m-prepared").unwrap().phase,
        TargetPhase::Prepared
    );
    assert!(rig.root().join("kv/data").exists());

    // An abandon after the start: the service stays, and the source hears it runs.
    let answer = ask(
        &rig,
        &rig.a,
        Handoff::Abandon {
            migration: "m-started".into(),
        },
    )
    .await;
    assert!(matches!(answer, Handoff::Started { .. }), "{answer:?}");
    assert_eq!(
        rig.journal.target("m-started").unwrap().phase,
        TargetPhase::Started
    );
    assert!(rig.root().join("kv/data").exists());

    // A start or an abandon for an id this node does not hold (expired, forgotten, never
    // seen): "not held", never "failed" (which the source would read as given back).
    for request in [
        Handoff::Start {
            migration: "m-unknown".into(),
            spec: Box::new(spec("kv")),
            timings: None,
        },
        Handoff::Abandon {
            migration: "m-unknown".into(),
        },
    ] {
        let answer = ask(&rig, &rig.a, request).await;
        assert!(matches!(answer, Handoff::NotHeld { .. }), "{answer:?}");
    }

    assert!(
        rig.switches.latencies_s().is_empty(),
        "another node's figure is not this node's switch latency"
    );

    // The source forgets the outcome: only then does the entry go, and the move's downtime
    // becomes this node's switch latency, once.
    let switched = Some(Switched {
        mode: SwitchMode::Transitional,
        downtime_s: 0.25,
    });
    for _ in 0..2 {
        let answer = ask(
            &rig,
            &rig.a,
            Handoff::Forget {
                migration: "m-started".into(),
                switched,
            },
        )
        .await;
        assert!(matches!(answer, Handoff::Forgotten), "{answer:?}");
    }
    assert!(rig.journal.target("m-started").is_none());
    assert_eq!(rig.switches.latencies_s(), [0.25], "counted once");
    // A migration still under way is not forgotten, and its figure not kept.
    let answer = ask(
        &rig,
        &rig.a,
        Handoff::Forget {
            migration: "m-prepared".into(),
            switched,
        },
    )
    .await;
    assert!(matches!(answer, Handoff::Refused { .. }), "{answer:?}");
    assert_eq!(rig.switches.latencies_s(), [0.25]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_exchange_and_the_vote_keeps_the_previous_state() {
    let rig = rig().await;
    let id = "m-crash";
    let (staging, dest) = (
        rig.root().join(format!("kv.staging-{id}")),
        rig.root().join("kv"),
    );
    // The previous state, complete, and a verified copy staged to replace it.
    std::fs::create_dir_all(dest.join("data")).unwrap();
    std::fs::write(dest.join("data/db"), b"previous, complete").unwrap();
    std::fs::create_dir_all(staging.join("data")).unwrap();
    std::fs::write(staging.join("data/db"), b"new, never voted for").unwrap();
    let staging_id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&staging).unwrap();
        (m.dev(), m.ino())
    };
    {
        let g = rig.journal.lock(id).await;
        g.put_target(&TargetEntry {
            staging_id: Some(staging_id),
            ..entry(&rig, id, TargetPhase::Committing)
        })
        .unwrap();
    }
    // The commit's exchange, then the crash (nothing more is recorded).
    let previous = super::receiver::swap_into_place(&staging, &dest).unwrap();
    assert_eq!(previous.as_deref(), Some(staging.as_path()));
    assert_eq!(
        std::fs::read(dest.join("data/db")).unwrap(),
        b"new, never voted for"
    );
    // The restart's recovery.
    let (pending, _rx) = tokio::sync::mpsc::unbounded_channel();
    let manager = Manager::new(Runtime {
        node: "b".into(),
        v2_root: rig.dir.path().join("no-cgroup"),
        memory_v1_root: None,
        cpu_v1_root: None,
        section: ServicesSection {
            state_root: rig.root(),
            ..ServicesSection::default()
        },
        images: None,
        run_root: rig.dir.path().join("run"),
        default_user: Ok(godwit_runtime::service::Identity::current()),
    });
    let target = agent::Target::new(rig.journal.clone(), manager, Tasks::default(), None);
    target.recover(&rig.root(), &pending);
    assert_eq!(
        std::fs::read(dest.join("data/db")).unwrap(),
        b"previous, complete"
    );
    assert!(!staging.exists(), "the copy goes");
    assert!(rig.journal.target(id).is_none());

    // Crashed before the exchange: the destination is left as it was.
    let id = "m-crash-early";
    let staging = rig.root().join(format!("kv.staging-{id}"));
    std::fs::create_dir_all(staging.join("data")).unwrap();
    let staging_id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&staging).unwrap();
        (m.dev(), m.ino())
    };
    {
        let g = rig.journal.lock(id).await;
        g.put_target(&TargetEntry {
            staging: staging.clone(),
            staging_id: Some(staging_id),
            ..entry(&rig, id, TargetPhase::Committing)
        })
        .unwrap();
    }
    target.recover(&rig.root(), &pending);
    assert_eq!(
        std::fs::read(dest.join("data/db")).unwrap(),
        b"previous, complete"
    );
    assert!(!staging.exists());
}
