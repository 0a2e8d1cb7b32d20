//! Endpoints on loopback with real certificates: who is accepted, who is refused and counted.

use std::time::Duration;

use super::testing::{bind, identity, node, pki, serve};
use super::*;

/// Accepts peers on `server` and echoes one message on their control channel.
fn serve_echo(server: &Endpoint) -> tokio::task::JoinHandle<Vec<String>> {
    let server = server.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(mut peer)) =
            tokio::time::timeout(Duration::from_secs(3), server.accept()).await
        {
            seen.push(peer.node().to_string());
            if let Ok(Some(msg)) = peer.control.recv::<String>().await {
                let _ = peer.control.send(&format!("echo {msg}")).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), peer.closed()).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_ca_talk_and_know_who_they_talk_to() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let server = serve_echo(&b);
    let mut peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    assert_eq!(peer.node(), "b");
    peer.control.send(&"ping".to_string()).await.unwrap();
    assert_eq!(
        peer.control.recv::<String>().await.unwrap().as_deref(),
        Some("echo ping")
    );
    assert!(peer.rtt() < Duration::from_secs(1));
    peer.close("done");
    assert_eq!(server.await.unwrap(), vec!["a".to_string()]);
    assert_eq!((a.stats().connected, b.stats().accepted), (1, 1));
    assert_eq!(a.stats().refused_out + b.stats().refused_in, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_both_ways_and_counted() {
    let p = pki();
    let b = node(&p, "b");
    let server = serve_echo(&b);
    // A client whose certificate and trust come from another CA.
    let stranger = bind(identity(&p.other_ca, "a", &p.root.join("stranger")));
    let err = stranger
        .connect(b.local_addr().unwrap(), "b")
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Connect { .. }),
        "refused by the client's own check of the server: {err}"
    );
    assert_eq!(stranger.stats().refused_out, 1);
    // A client that trusts our CA but holds a certificate of another CA.
    let dir = p.root.join("mixed");
    let files = issue_node(&p.other_ca, "m", &dir).unwrap();
    let mut mixed = files.clone();
    mixed.ca = p.ca.join(CA_CERT);
    let client = bind(Identity::load_unchecked_for_tests("m", &mixed));
    let err = client
        .connect(b.local_addr().unwrap(), "b")
        .await
        .unwrap_err();
    eprintln!("client with a foreign certificate: {err}");
    let refused = tokio::time::timeout(Duration::from_secs(3), async {
        while b.stats().refused_in < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "server counted {:?}", b.stats());
    assert_eq!(b.stats().accepted, 0);
    assert!(server.await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_node_at_an_address_is_refused() {
    let p = pki();
    let a = node(&p, "a");
    let c = node(&p, "c");
    let _server = serve_echo(&c);
    // `a` dials "b" but "c" answers: the server's certificate does not name b.
    let err = a.connect(c.local_addr().unwrap(), "b").await.unwrap_err();
    assert!(err.to_string().contains("b"), "{err}");
    assert_eq!(a.stats().refused_out, 1);
    assert_eq!(a.stats().connected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_another_name_is_refused() {
    let p = pki();
    // `a`'s certificate, but it says hello as "b".
    let files = issue_node(&p.ca, "a", &p.root.join("a")).unwrap();
    let liar = bind(Identity::load_unchecked_for_tests("b", &files));
    let c = node(&p, "c");
    let server = serve_echo(&c);
    let err = liar
        .connect(c.local_addr().unwrap(), "c")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Refused(_)), "{err}");
    // The server counts the refusal once its side of the handshake has ended.
    let counted = tokio::time::timeout(Duration::from_secs(3), async {
        while c.stats().refused_in == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{:?}", c.stats());
    assert_eq!((c.stats().refused_in, c.stats().accepted), (1, 0));
    assert!(server.await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_on_parallel_streams_arrives_intact() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i / 4096 % 251) as u8).collect();
    let expected = data.clone();
    let receiver = tokio::spawn({
        let b = b.clone();
        async move {
            let peer = b.accept().await.unwrap();
            let mut parts = Vec::new();
            for _ in 0..4 {
                let mut ch = peer.accept().await.unwrap();
                parts.push(tokio::spawn(async move {
                    let index: u32 = ch.recv().await.unwrap().unwrap();
                    let mut out = Vec::new();
                    read_bulk(&mut ch.recv, &mut out, 2 << 20).await.unwrap();
                    (index, out)
                }));
            }
            let mut got = Vec::new();
            for part in parts {
                got.push(part.await.unwrap());
            }
            got.sort_by_key(|(i, _)| *i);
            got.into_iter().flat_map(|(_, d)| d).collect::<Vec<u8>>()
        }
    });
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    let quarter = data.len() / 4;
    let mut senders = Vec::new();
    for i in 0..4u32 {
        let mut ch = peer.open().await.unwrap();
        let part = data[i as usize * quarter..(i as usize + 1) * quarter].to_vec();
        senders.push(tokio::spawn(async move {
            ch.send(&i).await.unwrap();
            let stats = write_bulk(&mut ch.send, &part, 256 << 10, Some(1))
                .await
                .unwrap();
            ch.finish().unwrap();
            stats
        }));
    }
    let mut wire = 0;
    for s in senders {
        wire += s.await.unwrap().wire_bytes;
    }
    let got = receiver.await.unwrap();
    assert!(got == expected, "data differs after transfer");
    assert!(
        wire < expected.len() as u64 / 10,
        "repetitive data compresses: {wire} wire bytes for {}",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_to_a_peer_is_measured() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let services = Services::default();
    path::register(&services);
    let server = serve(&b, services);
    let m = measure(&a, b.local_addr().unwrap(), "b", 32 << 20)
        .await
        .unwrap();
    eprintln!("{m:?}");
    assert_eq!((m.node.as_str(), m.probe_bytes), ("b", 32 << 20));
    assert!(m.rtt_ms > 0.0 && m.rtt_ms < 500.0, "{m:?}");
    // Loopback moves far more than 10 MB/s even in a debug build on a busy machine.
    assert!(m.bandwidth_bytes_per_second > 10e6, "{m:?}");
    // Over the limit: refused before anything is sent.
    assert!(
        measure(&a, b.local_addr().unwrap(), "b", MAX_PROBE_BYTES + 1)
            .await
            .is_err()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_is_refused_and_the_connection_lives_on() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let services = Services::default();
    path::register(&services);
    let _server = serve(&b, services);
    let peer = b_peer(&a, &b).await;
    let err = open(&peer, "no-such-service").await.unwrap_err();
    assert!(err.to_string().contains("no-such-service"), "{err}");
    // The same connection still serves a known one.
    assert!(open(&peer, path::SERVICE).await.is_ok());
}

async fn b_peer(a: &Endpoint, b: &Endpoint) -> Peer {
    a.connect(b.local_addr().unwrap(), "b").await.unwrap()
}

/// An operator's client endpoint, signed by the CA in `ca_dir`.
fn operator(ca_dir: &std::path::Path, name: &str, out: &std::path::Path) -> Endpoint {
    let files = issue_operator(ca_dir, name, out).unwrap();
    let id = Identity::load_operator(name, &files).unwrap();
    assert_eq!(id.principal(), &Principal::Operator(name.into()));
    Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_opens_only_the_services_for_operators() {
    let p = pki();
    let b = node(&p, "b");
    let services = Services::default();
    path::register(&services);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    services.register_for_operators("control", move |peer, mut ch| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(peer.principal.clone());
            let _ = ch.send(&peer.principal.to_string()).await;
            let _ = ch.finish();
        }
    });
    let _server = serve(&b, services);
    let alice = operator(&p.ca, "alice", &p.root.join("ops"));
    let peer = alice.connect(b.local_addr().unwrap(), "b").await.unwrap();
    // A service of nodes only looks like no service at all.
    let err = open(&peer, path::SERVICE).await.unwrap_err();
    assert!(err.to_string().contains("no service"), "{err}");
    let mut ch = open(&peer, "control").await.unwrap();
    assert_eq!(
        ch.recv::<String>().await.unwrap().as_deref(),
        Some("operator alice")
    );
    assert_eq!(seen.recv().await, Some(Principal::Operator("alice".into())));
    // A node opens both.
    let a = node(&p, "a");
    let peer = b_peer(&a, &b).await;
    assert!(open(&peer, path::SERVICE).await.is_ok());
    let mut ch = open(&peer, "control").await.unwrap();
    assert_eq!(
        ch.recv::<String>().await.unwrap().as_deref(),
        Some("node a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_never_passes_for_a_node_nor_one_of_another_ca() {
    let p = pki();
    let c = node(&p, "c");
    let server = serve_echo(&c);
    // alice's operator certificate, saying hello as the node "alice".
    let files = issue_operator(&p.ca, "alice", &p.root.join("ops")).unwrap();
    let liar = bind(Identity::load_unchecked_for_tests("alice", &files));
    let err = liar
        .connect(c.local_addr().unwrap(), "c")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Refused(_)), "{err}");
    // An operator of another CA (trusting ours) is refused by the TLS handshake.
    let files = issue_operator(&p.other_ca, "mallory", &p.root.join("other-ops")).unwrap();
    let mut mixed = files.clone();
    mixed.ca = p.ca.join(CA_CERT);
    assert!(
        Identity::load_operator("mallory", &mixed).is_err(),
        "not loadable against our CA"
    );
    let counted = tokio::time::timeout(Duration::from_secs(3), async {
        while c.stats().refused_in == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{:?}", c.stats());
    assert_eq!(c.stats().accepted, 0);
    assert!(server.await.unwrap().is_empty());
}

/// A QUIC long-header packet that looks like a client's Initial (version 1, a fresh
/// connection id, padded to 1200 bytes) but carries junk where the protection and the crypto
/// frames would be.
fn initial_like(i: u64) -> Vec<u8> {
    let mut p = vec![0xc3, 0, 0, 0, 1, 8];
    p.extend_from_slice(&i.to_be_bytes());
    p.push(8);
    p.extend_from_slice(&(!i).to_be_bytes());
    p.push(0); // no token
    p.extend_from_slice(&[0x44, 0x9a]); // length
    let mut x = i | 1;
    while p.len() < 1200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p
}

/// Lone Initials hammering the port and peers that open QUIC connections but never say hello
/// do not stop a real peer from connecting and moving data (handshakes used to be completed
/// one at a time, each waited for up to 5 s, so a few silent peers made every connect time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_initials_and_stalled_handshakes_do_not_stop_a_real_peer() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let b_addr = b.local_addr().unwrap();
    let services = Services::default();
    path::register(&services);
    let server = serve(&b, services);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let junk = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..32 {
                    i += 1;
                    if sock.send_to(&initial_like(i), b_addr).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // Silent peers of the cluster CA: QUIC connections that never open the handshake stream.
    const SILENT: usize = 8;
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..SILENT {
        let s = node(&p, &format!("s{i}"));
        let held_tx = held_tx.clone();
        tokio::spawn(async move {
            let conn = s.connect_silent(b_addr, "b").await;
            let _ = held_tx.send((s, conn));
        });
    }
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let (s, conn) = tokio::time::timeout(Duration::from_secs(10), held.recv())
            .await
            .expect("a silent peer's QUIC connection was not accepted within 10 s")
            .unwrap();
        silent.push((s, conn.expect("silent peer connects at the QUIC level")));
    }
    // All of them stall their handshake on b now; a real peer still gets through (within the
    // client's own handshake timeout) and moves data.
    let mut peer = a.connect(b_addr, "b").await.unwrap();
    assert_eq!(peer.node(), "b");
    let mut ch = open(&peer, path::SERVICE).await.unwrap();
    ch.send(&path::Request::Ping { seq: 7 }).await.unwrap();
    assert!(matches!(
        ch.recv::<path::Reply>().await.unwrap(),
        Some(path::Reply::Pong { seq: 7 })
    ));
    let m = measure(&a, b_addr, "b", 8 << 20).await.unwrap();
    assert_eq!(m.probe_bytes, 8 << 20);
    assert!(m.bandwidth_bytes_per_second > 0.0, "{m:?}");
    peer.control.finish().unwrap();
    stop.store(true, Ordering::Relaxed);
    junk.await.unwrap();
    let stats = b.stats();
    eprintln!(
        "junk datagrams sent: {}; {stats:?}",
        sent.load(Ordering::Relaxed)
    );
    assert!(sent.load(Ordering::Relaxed) > 100);
    // Every connection was address-validated first: the silent ones and the real ones.
    assert!(stats.retried >= SILENT as u64 + 2, "{stats:?}");
    assert_eq!(stats.accepted, 2, "{stats:?}");
    drop(silent);
    server.abort();
}

/// Over the per-address cap, a connection is refused and counted; once a peer leaves, its
/// place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_peer_cap_are_refused() {
    let p = pki();
    let a = node(&p, "a");
    let limits = AcceptLimits {
        handshakes: 4,
        per_peer: 2,
        total: 16,
    };
    let b = Endpoint::bind_with_limits(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        identity(&p.ca, "b", &p.root.join("b")),
        limits,
    )
    .unwrap();
    let b_addr = b.local_addr().unwrap();
    let _server = serve(&b, Services::default());
    let first = a.connect(b_addr, "b").await.unwrap();
    let _second = a.connect(b_addr, "b").await.unwrap();
    let err = a.connect(b_addr, "b").await.unwrap_err();
    eprintln!("third connection: {err}");
    assert_eq!(b.stats().refused_limit, 1);
    assert_eq!(b.stats().accepted, 2);
    first.close("done");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if a.connect(b_addr, "b").await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed peer's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.stats().accepted, 3);
}

/// One probe an operator asked for at a time: a second one meanwhile is refused as busy (not
/// queued), and once the first is done the next runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_probe_is_refused_as_busy() {
    let p = pki();
    let start = |node: &str| {
        let dir = p.root.join(format!("tls-{node}"));
        issue_node(&p.ca, node, &dir).unwrap();
        let cfg = TransportSection {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_dir: dir,
            ..TransportSection::default()
        };
        agent::start(&cfg, node).unwrap().unwrap()
    };
    let a = start("a");
    let b = start("b");
    let (first, second) = tokio::join!(a.probe("b", b.advertise(), 32 << 20), async {
        // The first has entered the gate when it first waited.
        tokio::task::yield_now().await;
        a.probe("b", b.advertise(), 1 << 20).await
    });
    assert_eq!(first.unwrap().probe_bytes, 32 << 20);
    let err = second.unwrap_err();
    assert!(matches!(err, TransportError::Busy(_)), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(
        a.probe("b", b.advertise(), 1 << 20)
            .await
            .unwrap()
            .probe_bytes,
        1 << 20
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The SHA-256 fingerprint of the certificate in a PEM file.
fn fingerprint_of(pem: &std::path::Path) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    fingerprint(&der)
}

/// A node on the deny list of another is refused by it as a client and as a server, from the
/// moment the list names it and without a restart; taken off the list, it is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_certificate_is_refused_both_ways_without_restart() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let _serve_a = serve(&a, Services::default());
    let _serve_b = serve(&b, Services::default());
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    a.connect(b_addr, "b").await.unwrap();
    b.connect(a_addr, "a").await.unwrap();
    let deny = p.root.join("b").join(DENY_FILE);
    std::fs::write(
        &deny,
        format!(
            "# a's key leaked\n{}\n",
            fingerprint_of(&p.root.join("a/a.pem"))
        ),
    )
    .unwrap();
    let before = b.stats().refused_in;
    let err = a.connect(b_addr, "b").await.unwrap_err();
    eprintln!("a as client: {err}");
    assert!(
        err.to_string().to_lowercase().contains("revoked"),
        "refused by TLS: {err}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.stats().refused_in == before {
        assert!(tokio::time::Instant::now() < deadline, "b did not count it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = b.connect(a_addr, "a").await.unwrap_err();
    eprintln!("a as server: {err}");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    std::fs::write(&deny, "# nobody\n").unwrap();
    a.connect(b_addr, "b").await.unwrap();
    b.connect(a_addr, "a").await.unwrap();
}

/// An expired certificate of the cluster CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let p = pki();
    let b = node(&p, "b");
    let _server = serve(&b, Services::default());
    let today = days_since_epoch();
    let files =
        issue_node_between(&p.ca, "old", &p.root.join("old"), today - 400, today - 35).unwrap();
    assert!(
        Identity::load("old", &files).is_err(),
        "an expired identity does not load"
    );
    let old = bind(Identity::load_unchecked_for_tests("old", &files));
    let err = old.connect(b.local_addr().unwrap(), "b").await.unwrap_err();
    eprintln!("expired: {err}");
    assert_eq!(b.stats().refused_in, 1);
    assert_eq!(b.stats().accepted, 0);
}

/// A renewed certificate (same name and key, new validity) is accepted, also when the old one
/// is denied; the old one is then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_accepted() {
    let p = pki();
    let b = node(&p, "b");
    let _server = serve(&b, Services::default());
    let dir = p.root.join("a");
    let issued = issue_node_for(&p.ca, "a", &dir, 30).unwrap();
    assert_eq!(issued.days, 30);
    assert_eq!(issued.fingerprint, fingerprint_of(&dir.join("a.pem")));
    let old = bind(Identity::load("a", &issued.files).unwrap());
    let key_before = std::fs::read(dir.join("a.key")).unwrap();
    let renewed = renew_node(&p.ca, "a", &dir, 400).unwrap();
    assert_ne!(renewed.fingerprint, issued.fingerprint);
    assert_eq!(std::fs::read(dir.join("a.key")).unwrap(), key_before);
    assert!(!dir.join("a.pem.new").exists());
    std::fs::write(
        p.root.join("b").join(DENY_FILE),
        format!("{}\n", issued.fingerprint),
    )
    .unwrap();
    let new = bind(Identity::load("a", &renewed.files).unwrap());
    new.connect(b.local_addr().unwrap(), "b").await.unwrap();
    assert!(old.connect(b.local_addr().unwrap(), "b").await.is_err());
    // Renewal needs an existing certificate.
    assert!(renew_node(&p.ca, "zz", &p.root.join("zz"), 30).is_err());
}
